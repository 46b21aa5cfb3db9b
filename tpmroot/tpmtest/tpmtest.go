// Package tpmtest gives tests a real TPM: a swtpm in a temporary directory.
//
// Without swtpm installed, tests that need it skip, except under CI=true,
// where they fail: a suite that skips its real parts proves nothing.
package tpmtest

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"hsmemu/internal/testenv"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/internal/swtpm"
)

// startTimeout bounds starting swtpm and opening the TPM.
const startTimeout = 30 * time.Second

// Require skips the test when swtpm is not installed, or fails it when the
// environment variable CI is "true".
func Require(t testing.TB) {
	t.Helper()
	testenv.Command(t, "swtpm", "swtpm and swtpm-tools")
}

// Start opens a managed swtpm whose state lives in a new t.TempDir(), and
// closes it when the test ends.
func Start(t testing.TB) *tpmroot.TPM {
	t.Helper()
	Require(t)
	return Open(t, tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()})
}

// Open opens the TPM spec names and closes it when the test ends. Closing
// it earlier is fine.
func Open(t testing.TB, spec tpmroot.Spec) *tpmroot.TPM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tpm, err := tpmroot.Open(ctx, spec)
	if err != nil {
		t.Fatalf("opening TPM %s: %v", spec, err)
	}
	t.Cleanup(func() {
		if err := tpm.Close(); err != nil {
			t.Errorf("closing TPM %s: %v", spec, err)
		}
	})
	return tpm
}

// StartSocket runs a bare swtpm with its state in dir and returns its data
// socket, for tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: socketPath}
// or "swtpm:unix:"+socketPath in a child process. The swtpm serves one
// connection at a time and outlives each. stop sends TPM2_Shutdown(CLEAR),
// so the state is saved cleanly, and stops swtpm; a test may call it and
// then StartSocket again on the same dir to restart the TPM. stop is also
// registered with t.Cleanup, and is idempotent.
func StartSocket(t testing.TB, dir string) (socketPath string, stop func()) {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	p, conn, err := swtpm.Start(ctx, swtpm.Config{Dir: dir})
	if err != nil {
		t.Fatalf("starting swtpm in %s: %v", dir, err)
	}
	conn.Close()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if err := shutdown(p.SocketPath); err != nil {
				t.Errorf("swtpm in %s: TPM2_Shutdown: %v", dir, err)
			}
			if err := p.Stop(5 * time.Second); err != nil {
				t.Errorf("stopping swtpm in %s: %v", dir, err)
			}
		})
	}
	t.Cleanup(stop)
	return p.SocketPath, stop
}

// Dial connects to a bare swtpm's data socket (StartSocket's) with the
// transport tpmroot uses, for a test that talks to the TPM with go-tpm
// directly, as someone bypassing hsmemu would. swtpm serves one connection
// at a time: close every tpmroot.TPM on the socket first. The connection
// is closed when the test ends, if not before.
func Dial(t testing.TB, socketPath string) transport.TPMCloser {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := swtpm.Dial(ctx, socketPath)
	if err != nil {
		t.Fatalf("dialling swtpm at %s: %v", socketPath, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// shutdown sends TPM2_Shutdown(CLEAR) on a fresh connection.
func shutdown(socketPath string) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := swtpm.Dial(ctx, socketPath)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}.Execute(c)
	return err
}

// Custodians returns three escrow custodians, one for each kind of key
// escrow takes (alice X25519, bob P-256, carol RSA-2048), with their
// private keys by name.
func Custodians(t testing.TB) ([]escrow.Custodian, map[string]crypto.PrivateKey) {
	t.Helper()
	x25519, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return []escrow.Custodian{
			{Name: "alice", Key: x25519.PublicKey()},
			{Name: "bob", Key: p256.PublicKey()},
			{Name: "carol", Key: &rsaKey.PublicKey},
		},
		map[string]crypto.PrivateKey{"alice": x25519, "bob": p256, "carol": rsaKey}
}

// UndefineNV deletes the NV index at handle from the swtpm serving
// socketPath (StartSocket; no other client connected), with the owner's
// authorisation, as anyone holding that could: tpmroot itself has no way
// to delete its anchor counter.
func UndefineNV(socketPath string, handle uint32) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := swtpm.Dial(ctx, socketPath)
	if err != nil {
		return err
	}
	defer c.Close()
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(handle)}.Execute(c)
	if err != nil {
		return err
	}
	_, err = tpm2.NVUndefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(handle), Name: pub.NVName},
	}.Execute(c)
	return err
}
