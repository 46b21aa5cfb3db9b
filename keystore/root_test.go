package keystore

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"hsmemu/internal/testenv"
	"hsmemu/tpmroot"
)

// The keystore's tests run against a real TPM: one managed swtpm for the
// whole test binary, provisioned once. Every token derives its KEK from it.
var shared struct {
	once   sync.Once
	dir    string
	tpm    *tpmroot.TPM
	root   *tpmroot.Root
	sealed []byte
	err    error
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(durabilityChild())
	}
	code := m.Run()
	if shared.root != nil {
		shared.root.Close()
	}
	if shared.tpm != nil {
		shared.tpm.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	pgServer.Stop()
	os.Exit(code)
}

// needSwtpm skips a test when swtpm is not installed, except under CI, where
// a suite that skips its real parts would prove nothing.
func needSwtpm(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, tpmroot.ErrSwtpmMissing) {
		testenv.Missing(t, "swtpm not available: %v", err)
	}
	t.Fatalf("TPM: %v", err)
}

// testRoot returns the shared TPM root and its sealed master key.
func testRoot(t testing.TB) (*tpmroot.Root, []byte) {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "keystore-tpm-")
		if shared.err != nil {
			return
		}
		spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: shared.dir}
		shared.tpm, shared.err = tpmroot.Open(context.Background(), spec)
		if shared.err != nil {
			return
		}
		// Many tests give wrong PINs, in parallel, on this one TPM: its
		// dictionary-attack lockout must not get in their way. Tests of
		// the lockout itself use a TPM of their own.
		if shared.err = shared.tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 1 << 20, Recovery: time.Second, LockoutRecovery: time.Second}); shared.err != nil {
			return
		}
		p, err := shared.tpm.Provision(tpmroot.ProvisionOptions{})
		if err != nil {
			shared.err = err
			return
		}
		if shared.sealed, shared.err = p.Sealed.MarshalBinary(); shared.err != nil {
			return
		}
		shared.root, shared.err = shared.tpm.Load(p.Sealed)
	})
	needSwtpm(t, shared.err)
	return shared.root, shared.sealed
}

// cheapArgon keeps PIN checks fast in tests; the production default is
// exercised by TestDefaultArgon2.
var cheapArgon = Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

// newStore opens a fresh keystore attached to the shared TPM root, on the
// engine the run tests (engine_test.go); the location it returns is the
// file's path or the database's connection string.
func newStore(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	return newStoreAt(t, newLocation(t), opts)
}

// newStoreAt is newStore at a location of any engine's.
func newStoreAt(t testing.TB, path string, opts Options) (*Store, string) {
	t.Helper()
	root, sealed := testRoot(t)
	if opts.Argon2 == (Argon2Params{}) {
		opts.Argon2 = cheapArgon
	}
	ctx := context.Background()
	s, err := openAt(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealed, DomainID: root.DomainID()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	return s, path
}

// reopen opens a second Store on the same keystore, attached to the shared root:
// its cache is cold, so every open is a real unseal.
func reopen(t testing.TB, path string, opts Options) *Store {
	t.Helper()
	root, _ := testRoot(t)
	if opts.Argon2 == (Argon2Params{}) {
		opts.Argon2 = cheapArgon
	}
	s, err := openAt(context.Background(), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Attach(context.Background(), root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	return s
}

// tpmrootOptions provisions without escrow.
func tpmrootOptions() tpmroot.ProvisionOptions { return tpmroot.ProvisionOptions{} }

// beginMasterRotation provisions a new master key in the shared TPM and
// begins a rotation of s to it; the key, loaded, is closed when the test
// ends. It returns the key and its sealed form.
func beginMasterRotation(t *testing.T, s *Store) (*tpmroot.Root, []byte) {
	t.Helper()
	p, err := shared.tpm.Provision(tpmrootOptions())
	if err != nil {
		t.Fatal(err)
	}
	next, err := shared.tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	sealed, _ := p.Sealed.MarshalBinary()
	if err := s.BeginMasterRotation(ctx, &NextMaster{Sealed: sealed, Proof: next.DomainID()}); err != nil {
		t.Fatal(err)
	}
	return next, sealed
}
