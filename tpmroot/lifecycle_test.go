package tpmroot_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/internal/swtpm"
	"hsmemu/tpmroot/tpmtest"
)

const kekLabel = "hsmemu/kek/v1 lifecycle"

// provisionAndKEK provisions on tpm and returns the sealed key and the KEK
// for kekLabel.
func provisionAndKEK(t *testing.T, tpm *tpmroot.TPM) (*tpmroot.Sealed, []byte) {
	t.Helper()
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	return p.Sealed, mustKEK(t, root, kekLabel)
}

// loadKEK loads sealed on tpm and returns the KEK for kekLabel.
func loadKEK(t *testing.T, tpm *tpmroot.TPM, sealed *tpmroot.Sealed) []byte {
	t.Helper()
	root, err := tpm.Load(sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	return mustKEK(t, root, kekLabel)
}

// Environment of the helper process.
const (
	helperEnv       = "HSMEMU_TPMROOT_HELPER"
	helperStateEnv  = "HSMEMU_TPMROOT_HELPER_STATE"
	helperSealedEnv = "HSMEMU_TPMROOT_HELPER_SEALED"
	helperOutEnv    = "HSMEMU_TPMROOT_HELPER_OUT"
)

// TestHelperProcess is not a test: TestReopenInNewProcess runs the test
// binary again with only this test selected and helperEnv set, to open the
// same managed TPM from a new process.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for TestReopenInNewProcess")
	}
	b, err := os.ReadFile(os.Getenv(helperSealedEnv))
	if err != nil {
		t.Fatal(err)
	}
	var sealed tpmroot.Sealed
	if err := sealed.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	spec, err := tpmroot.ParseSpec("managed", os.Getenv(helperStateEnv))
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := tpmroot.Open(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	kek := loadKEK(t, tpm, &sealed)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv(helperOutEnv), []byte(hex.EncodeToString(kek)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReopenInNewProcess provisions on a managed swtpm, closes it, and
// opens the same state directory from a new process: same SRK, same KEK.
func TestReopenInNewProcess(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	state := t.TempDir()
	tpm := tpmtest.Open(t, tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state})
	sealed, kek := provisionAndKEK(t, tpm)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}

	b, err := sealed.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sealedPath, outPath := filepath.Join(dir, "sealed"), filepath.Join(dir, "kek")
	if err := os.WriteFile(sealedPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperStateEnv+"="+state, helperSealedEnv+"="+sealedPath, helperOutEnv+"="+outPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, out)
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != hex.EncodeToString(kek) {
		t.Errorf("KEK in the new process = %s, want %x", got, kek)
	}

	// And once more in this process, after the child has closed it.
	tpm2 := tpmtest.Open(t, tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state})
	if got := loadKEK(t, tpm2, sealed); !bytes.Equal(got, kek) {
		t.Errorf("KEK after reopening = %x, want %x", got, kek)
	}
}

// TestSwtpmRestart provisions through a bare swtpm's socket, restarts
// swtpm on the same state, and derives the same KEK.
func TestSwtpmRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock, stop := tpmtest.StartSocket(t, dir)
	spec, err := tpmroot.ParseSpec("swtpm:unix:"+sock, "")
	if err != nil {
		t.Fatal(err)
	}
	tpm := tpmtest.Open(t, spec)
	if got := tpm.Info().Kind; got != "swtpm" {
		t.Errorf("Info().Kind = %q, want swtpm", got)
	}
	sealed, kek := provisionAndKEK(t, tpm)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	stop()

	sock, _ = tpmtest.StartSocket(t, dir)
	tpm = tpmtest.Open(t, tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: sock})
	if got := loadKEK(t, tpm, sealed); !bytes.Equal(got, kek) {
		t.Errorf("KEK after restarting swtpm = %x, want %x", got, kek)
	}
}

// TestLeftoversFlushed: a client that dies without flushing leaves its
// objects in a bare swtpm; the next Open flushes them.
func TestLeftoversFlushed(t *testing.T) {
	t.Parallel()
	sock, _ := tpmtest.StartSocket(t, t.TempDir())
	spec := tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: sock}
	ctx := context.Background()

	for range 3 { // three crashed clients would fill libtpms's 3 object slots
		tpm, err := tpmroot.Open(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		p, err := tpm.Provision(tpmroot.ProvisionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tpm.Load(p.Sealed); err != nil {
			t.Fatal(err)
		}
		hs, err := tpm.TransientHandles()
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 2 {
			t.Errorf("transient objects while open: %x, want the SRK and the master key", hs)
		}
		if err := tpm.DropConnection(); err != nil {
			t.Fatal(err)
		}
	}
	// The premise: swtpm kept the dead client's objects.
	if hs := rawTransientHandles(t, sock); len(hs) != 2 {
		t.Errorf("transient objects after a client died = %x, want its SRK and master key", hs)
	}
	tpm := tpmtest.Open(t, spec)
	hs, err := tpm.TransientHandles()
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 {
		t.Errorf("transient objects after Open = %x, want only the SRK", hs)
	}
}

// rawTransientHandles lists a bare swtpm's transient objects over a
// connection of its own.
func rawTransientHandles(t *testing.T, sock string) []tpm2.TPMHandle {
	t.Helper()
	c, err := swtpm.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x80000000, PropertyCount: 64}.Execute(c)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	return hs.Handle
}

// TestWrongTPM loads a key sealed on one TPM into another: ErrWrongTPM,
// whether the SRK names differ or (forged) agree, and the sealed key is
// unchanged.
func TestWrongTPM(t *testing.T) {
	t.Parallel()
	a, b := tpmtest.Start(t), tpmtest.Start(t)
	if bytes.Equal(a.SRKName(), b.SRKName()) {
		t.Fatal("two fresh swtpm states have the same SRK")
	}
	p, err := a.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, err := p.Sealed.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}

	_, err = b.Load(p.Sealed)
	if !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("Load on another TPM: err = %v, want ErrWrongTPM", err)
	}
	t.Logf("Load on another TPM: %v", err)

	// With the SRK name forged to B's, the TPM itself refuses the blob.
	forged := *p.Sealed
	forged.SRKName = b.SRKName()
	_, err = b.Load(&forged)
	if !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("Load with a forged SRK name: err = %v, want ErrWrongTPM", err)
	}
	t.Logf("Load with a forged SRK name: %v", err)

	after, err := p.Sealed.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("Load changed the sealed key")
	}
	if hs, err := b.TransientHandles(); err != nil || len(hs) != 1 {
		t.Errorf("transient objects left on B = %x (%v), want only the SRK", hs, err)
	}
	// A still opens it.
	root, err := a.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	root.Close()
}

// TestLoadRefusesEditedSealed: a recorded domain id that is not the key's,
// and a public area with other attributes, are refused.
func TestLoadRefusesEditedSealed(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}

	s := *p.Sealed
	s.DomainID = bytes.Repeat([]byte{0xd0}, 32)
	if _, err := tpm.Load(&s); !errors.Is(err, tpmroot.ErrDomainMismatch) {
		t.Errorf("Load with another domain id: err = %v, want ErrDomainMismatch", err)
	}

	s = *p.Sealed
	s.Public = bytes.Clone(s.Public)
	s.Public[7] ^= 0x02 // objectAttributes' low byte: fixedTPM (bit 1)
	if _, err := tpm.Load(&s); err == nil || !strings.Contains(err.Error(), "not a master key") {
		t.Errorf("Load with fixedTPM cleared: err = %v, want a refusal", err)
	}

	s = *p.Sealed
	s.Private = bytes.Clone(s.Private)
	s.Private[len(s.Private)-1] ^= 1
	if _, err := tpm.Load(&s); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Errorf("Load with a corrupted private area: err = %v, want ErrWrongTPM", err)
	}
	if hs, err := tpm.TransientHandles(); err != nil || len(hs) != 1 {
		t.Errorf("transient objects left = %x (%v), want only the SRK", hs, err)
	}
}
