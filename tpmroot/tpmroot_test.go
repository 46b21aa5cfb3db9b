package tpmroot_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

func softHMAC(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func mustKEK(t testing.TB, r *tpmroot.Root, label string) []byte {
	t.Helper()
	k, err := r.DeriveKEK([]byte(label))
	if err != nil {
		t.Fatalf("DeriveKEK(%q): %v", label, err)
	}
	return k
}

func TestProvisionLoadDeriveKEK(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)

	info := tpm.Info()
	t.Logf("TPM: %+v", info)
	if info.Kind != "managed swtpm" || info.Manufacturer == "" {
		t.Errorf("Info() = %+v, want Kind %q and a manufacturer", info, "managed swtpm")
	}

	p, secret, err := tpm.ProvisionWithSecret(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Escrowed() || p.Shares != nil || p.Escrow != nil {
		t.Errorf("Provision without custodians: Escrowed() = %v, %d shares, metadata %v", p.Escrowed(), len(p.Shares), p.Escrow)
	}
	if len(secret) != 32 || bytes.Equal(secret, make([]byte, 32)) {
		t.Fatalf("secret seen by the test hook: %d bytes, all zero: %v", len(secret), bytes.Equal(secret, make([]byte, 32)))
	}
	if !bytes.Equal(p.Sealed.SRKName, tpm.SRKName()) {
		t.Errorf("Sealed.SRKName = %x, TPM's SRK name is %x", p.Sealed.SRKName, tpm.SRKName())
	}
	if !bytes.Equal(p.Sealed.DomainID, escrow.DomainID(secret)) {
		t.Errorf("Sealed.DomainID = %x, want escrow.DomainID(secret) = %x", p.Sealed.DomainID, escrow.DomainID(secret))
	}
	if bytes.Contains(p.Sealed.Private, secret) || bytes.Contains(p.Sealed.Public, secret) {
		t.Error("the sealed master key contains the secret in clear")
	}

	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if !bytes.Equal(root.DomainID(), p.Sealed.DomainID) {
		t.Errorf("Root.DomainID() = %x, want %x", root.DomainID(), p.Sealed.DomainID)
	}

	for _, label := range []string{"hsmemu/kek/v1 token-a 1", "hsmemu/kek/v1 token-b 1", "", strings.Repeat("x", tpmroot.MaxLabel)} {
		got := mustKEK(t, root, label)
		if want := softHMAC(secret, []byte(label)); !bytes.Equal(got, want) {
			t.Errorf("DeriveKEK(%.30q) = %x, software HMAC-SHA256 = %x", label, got, want)
		}
	}
	if a, b := mustKEK(t, root, "label"), mustKEK(t, root, "label"); !bytes.Equal(a, b) {
		t.Errorf("same label, different KEKs: %x, %x", a, b)
	}
	if a, b := mustKEK(t, root, "label-1"), mustKEK(t, root, "label-2"); bytes.Equal(a, b) {
		t.Errorf("different labels, same KEK %x", a)
	}
	if got := mustKEK(t, root, escrow.DomainLabel); !bytes.Equal(got, root.DomainID()) {
		t.Errorf("DeriveKEK(DomainLabel) = %x, DomainID() = %x", got, root.DomainID())
	}

	_, err = root.DeriveKEK(make([]byte, tpmroot.MaxLabel+1))
	if err == nil || !strings.Contains(err.Error(), "at most 1024") {
		t.Errorf("DeriveKEK of a %d-byte label: err = %v, want a clear length error", tpmroot.MaxLabel+1, err)
	}

	// Many goroutines, one TPM.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 4 {
				label := fmt.Sprintf("concurrent %d %d", g, i)
				got, err := root.DeriveKEK([]byte(label))
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, softHMAC(secret, []byte(label))) {
					t.Errorf("concurrent DeriveKEK(%q) wrong", label)
				}
			}
		}()
	}
	wg.Wait()

	if err := root.Close(); err != nil {
		t.Fatal(err)
	}
	if err := root.Close(); err != nil {
		t.Errorf("second Root.Close: %v", err)
	}
	if _, err := root.DeriveKEK([]byte("x")); !errors.Is(err, tpmroot.ErrClosed) {
		t.Errorf("DeriveKEK after Close: err = %v, want ErrClosed", err)
	}
}

// TestCloseWithRootLoaded: the TPM's Close flushes a Root still loaded,
// and the Root then fails cleanly.
func TestCloseWithRootLoaded(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	tpm := tpmtest.Open(t, tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()})
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := root.DeriveKEK([]byte("x")); !errors.Is(err, tpmroot.ErrClosed) {
		t.Errorf("DeriveKEK after TPM.Close: err = %v, want ErrClosed", err)
	}
	if err := root.Close(); err != nil {
		t.Errorf("Root.Close after TPM.Close: %v", err)
	}
	if _, err := tpm.Load(p.Sealed); !errors.Is(err, tpmroot.ErrClosed) {
		t.Errorf("Load after Close: err = %v, want ErrClosed", err)
	}
	if err := tpm.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
