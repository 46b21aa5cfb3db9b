package tpmroot_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"testing"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// TestEscrowRecover provisions on TPM A with three custodians (X25519,
// P-256, RSA-2048), threshold 2, and recovers into a fresh TPM B from two
// shares: B derives A's KEKs.
func TestEscrowRecover(t *testing.T) {
	t.Parallel()
	custodians, privs := tpmtest.Custodians(t)

	a, b := tpmtest.Start(t), tpmtest.Start(t)
	p, err := a.Provision(tpmroot.ProvisionOptions{Custodians: custodians, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Escrowed() || len(p.Shares) != 3 || p.Escrow == nil {
		t.Fatalf("Escrowed() = %v with %d shares, metadata %v; want 3 shares", p.Escrowed(), len(p.Shares), p.Escrow)
	}
	if p.Escrow.Threshold != 2 || !bytes.Equal(p.Escrow.DomainID, p.Sealed.DomainID) {
		t.Errorf("escrow metadata: threshold %d, domain %x; want 2, %x", p.Escrow.Threshold, p.Escrow.DomainID, p.Sealed.DomainID)
	}
	rootA, err := a.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer rootA.Close()
	kekA := mustKEK(t, rootA, kekLabel)

	decrypt := func(i int) *escrow.Share {
		t.Helper()
		es := p.Shares[i]
		s, err := escrow.DecryptShare(es.File, privs[es.Custodian])
		if err != nil {
			t.Fatalf("decrypting %s's share: %v", es.Custodian, err)
		}
		return s
	}

	// One share is not enough.
	one := decrypt(0)
	if _, err := b.Recover([]*escrow.Share{one}); !errors.Is(err, escrow.ErrNotEnoughShares) {
		t.Errorf("Recover from one share: err = %v, want ErrNotEnoughShares", err)
	}

	// Bob's and Carol's shares: P-256 and RSA.
	shares := []*escrow.Share{decrypt(1), decrypt(2)}
	sealedB, err := b.Recover(shares)
	for _, s := range shares {
		s.Wipe()
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sealedB.SRKName, b.SRKName()) || !bytes.Equal(sealedB.DomainID, p.Sealed.DomainID) {
		t.Errorf("recovered Sealed: SRK %x domain %x; want B's SRK %x and domain %x", sealedB.SRKName, sealedB.DomainID, b.SRKName(), p.Sealed.DomainID)
	}
	rootB, err := b.Load(sealedB)
	if err != nil {
		t.Fatal(err)
	}
	defer rootB.Close()
	if kekB := mustKEK(t, rootB, kekLabel); !bytes.Equal(kekA, kekB) {
		t.Errorf("KEK on B = %x, on A = %x", kekB, kekA)
	}
	if !bytes.Equal(rootA.DomainID(), rootB.DomainID()) {
		t.Errorf("domain ids differ: A %x, B %x", rootA.DomainID(), rootB.DomainID())
	}
	// The recovered key is B's: A refuses it.
	if _, err := a.Load(sealedB); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Errorf("Load of B's sealed key on A: err = %v, want ErrWrongTPM", err)
	}
}

func TestProvisionOptionsChecked(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if _, err := tpm.Provision(tpmroot.ProvisionOptions{Threshold: 2}); err == nil {
		t.Error("Provision with a threshold and no custodians succeeded")
	}
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	one := []escrow.Custodian{{Name: "alice", Key: x.PublicKey()}}
	if _, err := tpm.Provision(tpmroot.ProvisionOptions{Custodians: one, Threshold: 2}); err == nil {
		t.Error("Provision with threshold 2 of 1 custodian succeeded")
	}
	if hs, err := tpm.TransientHandles(); err != nil || len(hs) != 1 {
		t.Errorf("transient objects left = %x (%v), want only the SRK", hs, err)
	}
}
