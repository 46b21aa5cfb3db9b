package tpmroot_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// counterAuth has zero bytes, inside and trailing, which the TPM and
// go-tpm each treat their own way (counter.go, authValue).
var counterAuth = append(bytes.Repeat([]byte{0xa5, 0x00}, 15), 0xa5, 0x00)

// nvPublic reads an NV index's public area and name.
func nvPublic(t *testing.T, tpm *tpmroot.TPM, h uint32) (*tpm2.TPMSNVPublic, tpm2.TPM2BName) {
	t.Helper()
	var pub *tpm2.TPMSNVPublic
	var name tpm2.TPM2BName
	err := tpm.Raw(func(tt transport.TPM) error {
		rsp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(h)}.Execute(tt)
		if err != nil {
			return err
		}
		name = rsp.NVName
		pub, err = rsp.NVPublic.Contents()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return pub, name
}

// TestCounter: a counter defined, incremented and read; it is monotonic
// and nothing decrements it: not this package (which has no method for
// it), not its own authorisation, not the owner's.
func TestCounter(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	h := tpmroot.AnchorHandle([]byte("domain-a"))
	if !tpmroot.ValidAnchorHandle(h) || h != tpmroot.AnchorHandle([]byte("domain-a")) || h == tpmroot.AnchorHandle([]byte("domain-b")) {
		t.Fatalf("handle %#x", h)
	}
	if _, err := tpm.OpenCounter(h, counterAuth); !errors.Is(err, tpmroot.ErrNoCounter) {
		t.Fatalf("open before define: %v", err)
	}
	c, err := tpm.DefineCounter(h, counterAuth)
	if err != nil {
		t.Fatal(err)
	}
	if _, written, err := c.Value(); err != nil || written {
		t.Fatalf("a new counter: written %v, %v", written, err)
	}
	first, err := c.Increment()
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 3; i++ {
		v, err := c.Increment()
		if err != nil || v != first+i {
			t.Fatalf("increment %d: %d %v", i, v, err)
		}
	}
	if v, written, err := c.Value(); err != nil || !written || v != first+3 {
		t.Fatalf("value %d %v %v", v, written, err)
	}
	if _, err := tpm.DefineCounter(h, counterAuth); !errors.Is(err, tpmroot.ErrCounterExists) {
		t.Fatalf("define again: %v", err)
	}
	// Wrong authorisation: refused, and the TPM is not locked out for it.
	wrong, err := tpm.OpenCounter(h, bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := wrong.Value(); !errors.Is(err, tpmroot.ErrCounterAuth) {
		t.Fatalf("read with the wrong authorisation: %v", err)
	}
	if _, err := wrong.Increment(); !errors.Is(err, tpmroot.ErrCounterAuth) {
		t.Fatalf("increment with the wrong authorisation: %v", err)
	}
	// TPM2_NV_Write with the counter's own authorisation, and
	// TPM2_NV_Increment with the owner's: both refused by the TPM.
	pub, name := nvPublic(t, tpm, h)
	err = tpm.Raw(func(tt transport.TPM) error {
		_, err := tpm2.NVWrite{
			AuthHandle: tpm2.AuthHandle{Handle: pub.NVIndex, Name: name, Auth: tpm2.PasswordAuth(bytes.ReplaceAll(counterAuth, []byte{0}, []byte{1}))},
			NVIndex:    tpm2.NamedHandle{Handle: pub.NVIndex, Name: name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: make([]byte, 8)},
		}.Execute(tt)
		return err
	})
	if !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("TPM2_NV_Write of zero: %v", err)
	}
	err = tpm.Raw(func(tt transport.TPM) error {
		_, err := tpm2.NVIncrement{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: pub.NVIndex, Name: name},
		}.Execute(tt)
		return err
	})
	if !errors.Is(err, tpm2.TPMRCNVAuthorization) {
		t.Fatalf("TPM2_NV_Increment by the owner: %v", err)
	}
	if v, _, err := c.Value(); err != nil || v != first+3 {
		t.Fatalf("value after the refused writes: %d %v", v, err)
	}
	// Deleted (by the owner, as anyone with its authorisation can) and
	// defined again, the counter starts no lower than it was.
	err = tpm.Raw(func(tt transport.TPM) error {
		_, err := tpm2.NVUndefineSpace{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: pub.NVIndex, Name: name},
		}.Execute(tt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Value(); !errors.Is(err, tpmroot.ErrNoCounter) {
		t.Fatalf("read a deleted counter: %v", err)
	}
	again, err := tpm.DefineCounter(h, counterAuth)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := again.Increment(); err != nil || v < first+3 {
		t.Fatalf("a counter defined again starts at %d (%v); the old one was at %d", v, err, first+3)
	}
}

// TestCounterForeignIndex: an index that is not an anchor counter is
// refused, not used.
func TestCounterForeignIndex(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	h := tpmroot.AnchorHandle([]byte("foreign"))
	err := tpm.Raw(func(tt transport.TPM) error {
		_, err := tpm2.NVDefineSpace{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			Auth:       tpm2.TPM2BAuth{Buffer: counterAuth},
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex:    tpm2.TPMHandle(h),
				NameAlg:    tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{AuthWrite: true, AuthRead: true, OwnerRead: true, NT: tpm2.TPMNTOrdinary, NoDA: true},
				DataSize:   8,
			}),
		}.Execute(tt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.OpenCounter(h, counterAuth); !errors.Is(err, tpmroot.ErrForeignIndex) {
		t.Fatalf("an ordinary index: %v", err)
	}
	if _, err := tpm.DefineCounter(0x01800000, counterAuth); err == nil {
		t.Fatal("a handle outside the owner range")
	}
}

// TestCounterPersists: the counter's value survives the TPM's restart.
func TestCounterPersists(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()}
	tpm := tpmtest.Open(t, spec)
	h := tpmroot.AnchorHandle([]byte("persist"))
	c, err := tpm.DefineCounter(h, counterAuth)
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Increment()
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Value(); !errors.Is(err, tpmroot.ErrClosed) {
		t.Fatalf("a closed TPM's counter: %v", err)
	}
	tpm2nd, err := tpmroot.Open(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2nd.Close()
	c2, err := tpm2nd.OpenCounter(h, counterAuth)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, err := c2.Value(); err != nil || got != v {
		t.Fatalf("after a restart: %d %v, want %d", got, err, v)
	}
}
