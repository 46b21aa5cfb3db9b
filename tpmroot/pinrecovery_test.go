package tpmroot_test

import (
	"bytes"
	"errors"
	"testing"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// TestSealedRecoveryKey: a new master key carries its PIN recovery public
// key, which custodians' shares recreate and the TPM checks; an edited one
// does not load; a master key sealed before (version 1) loads without one.
func TestSealedRecoveryKey(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	custodians, keys := tpmtest.Custodians(t)
	p, secret, err := tpm.ProvisionWithSecret(tpmroot.ProvisionOptions{Custodians: custodians[:1], Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p.Sealed.Version != tpmroot.SealedVersion || len(p.Sealed.RecoveryPublic) != 32 {
		t.Fatalf("a new sealed master key: version %d, %d-byte recovery key", p.Sealed.Version, len(p.Sealed.RecoveryPublic))
	}
	r, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.PINRecoveryKey() == nil || !bytes.Equal(r.PINRecoveryKey().Bytes(), p.Sealed.RecoveryPublic) {
		t.Fatal("the loaded root does not report the recovery key")
	}
	sh, err := escrow.DecryptShare(p.Shares[0].File, keys["alice"])
	if err != nil {
		t.Fatal(err)
	}
	priv, err := tpmroot.RecoveryKey([]*escrow.Share{sh})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(priv.PublicKey().Bytes(), p.Sealed.RecoveryPublic) {
		t.Fatal("the shares recreate another recovery key")
	}
	// The TPM's HMAC under the master key is not the recovery key's seed:
	// the TPM computes HMAC keyed by the secret, the seed is HMAC keyed
	// by the label over the secret.
	if k := mustKEK(t, r, "hsmemu/pin-recovery/v1"); bytes.Equal(k, priv.Bytes()) {
		t.Fatal("the TPM computes the recovery private key")
	}
	if want := softHMAC([]byte("hsmemu/pin-recovery/v1"), secret); !bytes.Equal(want, priv.Bytes()) {
		t.Fatalf("recovery key %x, want HMAC(label, secret) %x", priv.Bytes(), want)
	}

	// Another public key in its place is refused.
	edited := *p.Sealed
	other, _ := tpmroot.RecoveryKeyForTest()
	edited.RecoveryPublic = other
	if _, err := tpm.Load(&edited); !errors.Is(err, tpmroot.ErrDomainMismatch) {
		t.Fatalf("load with another recovery key: %v, want ErrDomainMismatch", err)
	}
	// Version 1: the same key, no recovery key.
	v1 := *p.Sealed
	v1.Version, v1.RecoveryPublic, v1.RecoveryMAC = 1, nil, nil
	b, err := v1.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back tpmroot.Sealed
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	r1, err := tpm.Load(&back)
	if err != nil {
		t.Fatalf("load of a version 1 sealed master key: %v", err)
	}
	defer r1.Close()
	if r1.PINRecoveryKey() != nil {
		t.Fatal("a version 1 master key reports a recovery key")
	}
}
