package tpmroot_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// TestMasterDup: a master key provisioned on TPM A with B's import key
// given comes with a duplication blob B imports: the imported key, kept
// as a version 3 Sealed, loads on B (again after a round trip through its
// encoding) and derives what A's derives, and TPM2_Unseal does not
// return it. A refuses B's blob; B refuses
// it altered, and a blob of another master key presented with this one's
// sealed form (the domain proof).
func TestMasterDup(t *testing.T) {
	t.Parallel()
	a, b := tpmtest.Start(t), tpmtest.Start(t)
	ikA, err := a.CreateImportKey()
	if err != nil {
		t.Fatal(err)
	}
	ikB, err := b.CreateImportKey()
	if err != nil {
		t.Fatal(err)
	}
	encA, _ := ikA.MarshalBinary()
	encB, _ := ikB.MarshalBinary()
	p, err := a.Provision(tpmroot.ProvisionOptions{ImportKeys: [][]byte{encB, []byte("no key")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Duplicates) != 2 || p.Duplicates[0] == nil || p.DuplicateErr[0] != nil || p.Duplicates[1] != nil || p.DuplicateErr[1] == nil {
		t.Fatalf("duplicates: %d, errors %v", len(p.Duplicates), p.DuplicateErr)
	}
	blob := p.Duplicates[0]
	rootA, err := a.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer rootA.Close()

	sealed, err := b.ImportMaster(encB, blob, p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	if sealed.Version != tpmroot.SealedImportedVersion || !bytes.Equal(sealed.Parent, encB) || !bytes.Equal(sealed.SRKName, b.SRKName()) {
		t.Fatalf("imported: version %d", sealed.Version)
	}
	enc, err := sealed.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var again tpmroot.Sealed
	if err := again.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	rootB, err := b.Load(&again)
	if err != nil {
		t.Fatal(err)
	}
	defer rootB.Close()
	if !bytes.Equal(rootB.DomainID(), rootA.DomainID()) {
		t.Fatal("the imported key computes another domain id")
	}
	ka, err := rootA.DeriveKEK([]byte("label"))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := rootB.DeriveKEK([]byte("label"))
	if err != nil || !bytes.Equal(ka, kb) {
		t.Fatalf("B's imported key derives another KEK: %v", err)
	}
	// Imported, it is still a signing key: TPM2_Unseal gives nothing.
	if err := rootB.Unseal(); !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("TPM2_Unseal of the imported master key: %v, want TPM_RC_ATTRIBUTES", err)
	}
	// Loaded beside another master key, as in a rotation (the SRK and
	// the two keys fill swtpm's three slots): the import key's slot is
	// made while it loads.
	rootB.Close()
	p2, err := b.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.Load(p2.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	third, err := b.Load(&again)
	if err != nil {
		t.Fatalf("loading the imported key with two master keys loaded: %v", err)
	}
	third.Close()
	other.Close()

	// Refusals.
	if _, err := a.ImportMaster(encA, blob, p.Sealed); !errors.Is(err, tpmroot.ErrMasterDupRefused) {
		t.Fatalf("B's blob on A: %v", err)
	}
	for _, at := range []int{len(blob) - 1, len(blob) - 80, len(blob) / 2} {
		bad := bytes.Clone(blob)
		bad[at] ^= 0x40
		if _, err := b.ImportMaster(encB, bad, p.Sealed); !errors.Is(err, tpmroot.ErrMasterDupRefused) {
			t.Fatalf("byte %d of %d changed: %v", at, len(blob), err)
		}
	}
	p3, err := a.Provision(tpmroot.ProvisionOptions{ImportKeys: [][]byte{encB}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportMaster(encB, p3.Duplicates[0], p.Sealed); !errors.Is(err, tpmroot.ErrMasterDupRefused) || !errors.Is(err, tpmroot.ErrDomainMismatch) {
		t.Fatalf("another master key's blob: %v", err)
	}
	// A PIN duplication blob is no master key's.
	pin, err := tpmroot.DuplicatePINSecret(encB, bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportMaster(encB, pin, p.Sealed); !errors.Is(err, tpmroot.ErrMasterDupRefused) {
		t.Fatalf("a PIN blob as a master key's: %v", err)
	}
}
