package token

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// TestTPMLockoutLogin: once the TPM has counted its maximum of wrong PINs
// (here three, over two tokens), C_Login answers CKR_PIN_LOCKED for every
// token and role, the right PIN included, unless the PIN cache already
// knows it; the roles' own counters, and so their token flags, are not
// touched by the refusals.
func TestTPMLockoutLogin(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 3, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	sealed, _ := p.Sealed.MarshalBinary()
	ctx := context.Background()
	store, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "keystore.db"), keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.SetRootRecord(ctx, &keystore.RootRecord{Sealed: sealed, DomainID: root.DomainID()}); err != nil {
		t.Fatal(err)
	}
	if err := store.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	d := &testEngine{store: store, eng: New(store, nil, Config{FailureDelay: -1})}
	defer d.eng.Close()
	cl := d.dial(t)
	a, b := cl.NewToken("a"), cl.NewToken("b")
	ha, hb := cl.Open(a, true), cl.Open(b, true)
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(ha), U(ck.CKU_USER), S("wrong-1"))
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(hb), U(ck.CKU_USER), S("wrong-2"))
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(hb), U(ck.CKU_SO), S("wrong-3"))
	for _, tc := range []struct {
		h    uint64
		user uint64
		pin  string
	}{{ha, ck.CKU_USER, UserPIN}, {hb, ck.CKU_USER, UserPIN}, {ha, ck.CKU_USER, "wrong-4"}, {ha, ck.CKU_SO, "wrong-5"}} {
		cl.Must(ck.CKR_PIN_LOCKED, "C_Login", U(tc.h), U(tc.user), S(tc.pin))
	}
	// A PIN that opened its record in the last --pin-cache-ttl is
	// remembered and does not ask the TPM: token b's SO logged in when
	// NewToken set the user PIN (so did token a's).
	cl.Must(ck.CKR_OK, "C_Login", U(hb), U(ck.CKU_SO), S(SOPIN))
	if f := cl.TokenInfo(a).Flags; f&ck.CKF_USER_PIN_LOCKED != 0 || f&ck.CKF_USER_PIN_COUNT_LOW == 0 {
		t.Fatalf("token a's flags %#x: one failure counted, not locked", f)
	}
}
