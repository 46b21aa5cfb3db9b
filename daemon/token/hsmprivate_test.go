package token

import (
	"bytes"
	"context"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// TestHSMKeysArePrivate: on a premium token an HSM-protected key is
// private, since a public key's secret opens with the TPM alone, no PIN.
// A template asking for a public key gets software protection (as one
// asking for an extractable key does); asking for both is inconsistent.
func TestHSMKeysArePrivate(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{DefaultTier: keystore.TierPremium})
	cl := d.dial(t)
	slot := cl.NewToken("premium")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	hsm := cl.Create(h, aesKeyBare("hsm")...)
	if rv, ans := cl.Get(h, hsm, ck.CKA_PRIVATE); rv != ck.CKR_OK || ans[0].Value[0] != 1 {
		t.Fatalf("an HSM-protected key's CKA_PRIVATE: %#x %v", rv, ans)
	}
	pub := cl.Create(h, append(aesKeyBare("public"), AB(ck.CKA_PRIVATE, false))...)
	if p := protection(t, cl, h, pub); p != ck.CKP_HSMEMU_SOFTWARE {
		t.Fatalf("a public key on premium: protection %d, want software", p)
	}
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_CreateObject", U(h),
		T(append(aesKeyBare("bad"), AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_HSM), AB(ck.CKA_PRIVATE, false))...), None())
	// Generated keys follow the same rule.
	gen := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN),
		T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("gen"))), None())[3].Ulong
	if p := protection(t, cl, h, gen); p != ck.CKP_HSMEMU_HSM {
		t.Fatalf("a generated key on premium: protection %d", p)
	}
	if rv, ans := cl.Get(h, gen, ck.CKA_PRIVATE); rv != ck.CKR_OK || ans[0].Value[0] != 1 {
		t.Fatalf("a generated HSM-protected key's CKA_PRIVATE: %#x %v", rv, ans)
	}
	// A copy of an HSM-protected key cannot be made public.
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(h), U(hsm), T(AB(ck.CKA_PRIVATE, false)), None())
}

// TestPublicHSMKeyResealedAtLogin: an HSM-protected key stored public by
// an earlier version is usable without a PIN until its token's next
// login, and then only by the logged-in user.
func TestPublicHSMKeyResealedAtLogin(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{DefaultTier: keystore.TierPremium})
	cl := d.dial(t)
	slot := cl.NewToken("vault")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Create(h, aesKeyBare("hsm")...)

	// What an earlier version could store: the same key, public.
	ctx := context.Background()
	var tok keystore.UUID
	list, err := d.store.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range list {
		if ti.Label == "vault" {
			tok = ti.UUID
		}
	}
	ids, err := d.store.Find(ctx, tok, keystore.Filter{Label: []byte("hsm"), IncludePrivate: true})
	if err != nil || len(ids) != 1 {
		t.Fatalf("find: %v %v", ids, err)
	}
	o, err := d.store.Open(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	var attrs []keystore.Attribute
	for _, a := range o.Attrs {
		switch a.Type {
		case ck.CKA_PRIVATE:
			a.Value = keystore.Bool(false)
		case ck.CKA_LABEL:
			a.Value = []byte("legacy")
		}
		attrs = append(attrs, a)
	}
	legacyAttrs, err := keystore.NewAttributes(attrs...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.Put(ctx, tok, legacyAttrs, o.Secret); err != nil {
		t.Fatal(err)
	}
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	d.stop()
	d.start(t, Config{DefaultTier: keystore.TierPremium})

	// Before a login: found and used with no PIN.
	cl = d.dial(t)
	h = cl.Open(slot, true)
	found := cl.Find(h, A(ck.CKA_LABEL, []byte("legacy")))
	if len(found) != 1 {
		t.Fatalf("the public HSM key before a login: %v", found)
	}
	in := bytes.Repeat([]byte{1}, 16)
	ct := cl.crypt(false, h, M(ck.CKM_AES_ECB), found[0], in)

	// The login reseals it; after the logout it is private.
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	if rv, ans := cl.Get(h, found[0], ck.CKA_PRIVATE); rv != ck.CKR_OK || ans[0].Value[0] != 1 {
		t.Fatalf("after the login, CKA_PRIVATE: %#x %v", rv, ans)
	}
	if got := cl.crypt(false, h, M(ck.CKM_AES_ECB), found[0], in); !bytes.Equal(got, ct) {
		t.Fatal("the resealed key computes something else")
	}
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	if found := cl.Find(h, A(ck.CKA_LABEL, []byte("legacy"))); len(found) != 0 {
		t.Fatalf("the HSM key without a login: %v", found)
	}
}
