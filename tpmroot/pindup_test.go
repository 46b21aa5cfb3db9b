package tpmroot_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// TestPINDup: a PIN-bound secret duplicated in software to one TPM's
// import key is imported and unsealed there to its authorisation alone, a
// wrong one counted by that TPM; another TPM refuses the blob, and so does
// the right TPM once a byte of it is changed, before any authorisation is
// presented (nothing counted).
func TestPINDup(t *testing.T) {
	t.Parallel()
	a, b := tpmtest.Start(t), tpmtest.Start(t)
	for _, tpm := range []*tpmroot.TPM{a, b} {
		if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
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
	auth, secret := randomAuth(t), randomAuth(t)
	blob, err := tpmroot.DuplicatePINSecret(encB, auth, secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, secret) || bytes.Contains(blob, auth) {
		t.Fatal("the blob holds the secret or its authorisation in clear")
	}

	before := daInfo(t, b).Counter
	wrong := bytes.Clone(auth)
	wrong[3] ^= 1
	if _, err := b.UnsealPINDup(encB, blob, wrong); !errors.Is(err, tpmroot.ErrPINAuthFail) {
		t.Fatalf("a wrong authorisation: %v, want ErrPINAuthFail", err)
	}
	if got := daInfo(t, b).Counter; got != before+1 {
		t.Fatalf("B's TPM counted %d failures, want %d", got, before+1)
	}
	got, err := b.UnsealPINDup(encB, blob, auth)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("the right authorisation: %x, %v", got, err)
	}
	// Again: nothing was left behind in B's TPM that a second import
	// would collide with, and the blob is not used up.
	if got, err := b.UnsealPINDup(encB, blob, auth); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("a second import: %v", err)
	}

	// Refusals, none counted.
	before = daInfo(t, b).Counter
	beforeA := daInfo(t, a).Counter
	if _, err := a.UnsealPINDup(encA, blob, auth); !errors.Is(err, tpmroot.ErrPINDupRefused) {
		t.Fatalf("B's blob on A: %v, want ErrPINDupRefused", err)
	}
	// A's import key named in place of B's: the TPM's integrity check.
	forA, err := tpmroot.DuplicatePINSecret(encA, auth, secret)
	if err != nil {
		t.Fatal(err)
	}
	nameB, err := ikB.Name()
	if err != nil {
		t.Fatal(err)
	}
	swapped := bytes.Clone(forA)
	copy(swapped[7:], nameB) // after "HSPD", the version and the name's length
	if _, err := b.UnsealPINDup(encB, swapped, auth); !errors.Is(err, tpmroot.ErrPINDupRefused) {
		t.Fatalf("A's blob relabelled for B: %v, want ErrPINDupRefused", err)
	}
	for _, at := range []int{len(blob) - 1, len(blob) - 80, len(blob) / 2} {
		bad := bytes.Clone(blob)
		bad[at] ^= 0x40
		if _, err := b.UnsealPINDup(encB, bad, auth); !errors.Is(err, tpmroot.ErrPINDupRefused) {
			t.Fatalf("byte %d of %d changed: %v, want ErrPINDupRefused", at, len(blob), err)
		}
	}
	if _, err := b.UnsealPINDup(encB, blob[:len(blob)-1], auth); !errors.Is(err, tpmroot.ErrPINDupRefused) {
		t.Fatalf("a cut blob: %v", err)
	}
	if got := daInfo(t, b).Counter; got != before {
		t.Fatalf("refused blobs counted by B's TPM: %d, was %d", got, before)
	}
	if got := daInfo(t, a).Counter; got != beforeA {
		t.Fatalf("a refused blob counted by A's TPM: %d, was %d", got, beforeA)
	}
}
