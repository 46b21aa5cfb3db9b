package token

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

func aesKeyBare(label string) []wire.Attribute {
	return []wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, true),
		A(ck.CKA_LABEL, []byte(label)), A(ck.CKA_VALUE, bytes.Repeat([]byte{0x22}, 32)),
	}
}

func protection(t *testing.T, cl *client, h, obj uint64) uint64 {
	t.Helper()
	rv, ans := cl.Get(h, obj, ck.CKA_HSMEMU_PROTECTION, ck.CKA_SENSITIVE, ck.CKA_EXTRACTABLE)
	if rv != ck.CKR_OK {
		t.Fatalf("protection attributes: %#x", rv)
	}
	p := ulongOf(ans[0].Value)
	if p == ck.CKP_HSMEMU_HSM && (ans[1].Value[0] != 1 || ans[2].Value[0] != 0) {
		t.Fatalf("an HSM-protected key is sensitive %d, extractable %d", ans[1].Value[0], ans[2].Value[0])
	}
	return p
}

func TestPremiumTier(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{DefaultTier: keystore.TierPremium})
	cl := d.dial(t)
	slot := cl.NewToken("premium")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	// By default a premium token's keys are HSM-protected.
	hsm := cl.Create(h, aesKeyBare("hsm")...)
	if p := protection(t, cl, h, hsm); p != ck.CKP_HSMEMU_HSM {
		t.Fatalf("default protection on premium: %d", p)
	}
	if rv, _ := cl.Get(h, hsm, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("HSM-protected value: %#x", rv)
	}
	for _, tc := range []struct {
		name string
		call string
		set  []wire.Attribute
	}{
		{name: "set extractable", call: "C_SetAttributeValue", set: []wire.Attribute{AB(ck.CKA_EXTRACTABLE, true)}},
		{name: "set not sensitive", call: "C_SetAttributeValue", set: []wire.Attribute{AB(ck.CKA_SENSITIVE, false)}},
		{name: "set software", call: "C_SetAttributeValue", set: []wire.Attribute{AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_SOFTWARE)}},
	} {
		if got, _ := cl.Call(tc.call, U(h), U(hsm), T(tc.set...)); got != ck.CKR_ATTRIBUTE_READ_ONLY {
			t.Errorf("%s: %#x, want CKR_ATTRIBUTE_READ_ONLY", tc.name, got)
		}
	}
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(h), U(hsm), T(AB(ck.CKA_EXTRACTABLE, true)), None())
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(h), U(hsm), T(AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_SOFTWARE)), None())
	cp := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(hsm), T(A(ck.CKA_LABEL, []byte("copy"))), None())[3].Ulong
	if p := protection(t, cl, h, cp); p != ck.CKP_HSMEMU_HSM {
		t.Fatalf("copy of an HSM-protected key: protection %d", p)
	}

	// A template that asks for an exportable key gets software protection.
	soft := cl.Create(h, append(aesKeyBare("soft"), AB(ck.CKA_EXTRACTABLE, true))...)
	if p := protection(t, cl, h, soft); p != ck.CKP_HSMEMU_SOFTWARE {
		t.Fatalf("extractable key on premium: protection %d", p)
	}
	soft2 := cl.Create(h, append(aesKeyBare("soft2"), AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_SOFTWARE))...)
	if p := protection(t, cl, h, soft2); p != ck.CKP_HSMEMU_SOFTWARE {
		t.Fatalf("software asked on premium: protection %d", p)
	}
	// HSM protection with an exportable template is inconsistent.
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_CreateObject", U(h),
		T(append(aesKeyBare("bad"), AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_HSM), AB(ck.CKA_SENSITIVE, false))...), None())
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h),
		T(append(aesKeyBare("bad"), AU(ck.CKA_HSMEMU_PROTECTION, 7))...), None())
	// Data objects have no protection level.
	data := cl.Create(h, DataObject("d", true, true, "v")...)
	if rv, _ := cl.Get(h, data, ck.CKA_HSMEMU_PROTECTION); rv != ck.CKR_ATTRIBUTE_TYPE_INVALID {
		t.Fatalf("protection of a data object: %#x", rv)
	}
}

func TestStandardTierRefusesHSMKeys(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("standard")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_CreateObject", U(h),
		T(append(aesKeyBare("hsm"), AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_HSM))...), None())
	k := cl.Create(h, aesKeyBare("default")...)
	if p := protection(t, cl, h, k); p != ck.CKP_HSMEMU_SOFTWARE {
		t.Fatalf("default protection on standard: %d", p)
	}
	if rv, ans := cl.Get(h, k, ck.CKA_VALUE); rv != ck.CKR_OK || len(ans[0].Value) != 32 {
		t.Fatalf("a standard, non-sensitive key's value: %#x", rv)
	}
}

// TestHSMKeyNeverLeaves: an HSM-protected key is not wrapped, and a
// database edit that makes it extractable makes it unusable, never
// exportable.
func TestHSMKeyNeverLeaves(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{DefaultTier: keystore.TierPremium})
	cl := d.dial(t)
	slot := cl.NewToken("vault")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	hsm := cl.Create(h, aesKeyBare("hsm")...)
	kek := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, true),
		A(ck.CKA_LABEL, []byte("kek")), A(ck.CKA_VALUE, bytes.Repeat([]byte{0x33}, 32)),
		AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_SOFTWARE), AB(ck.CKA_WRAP, true))
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), U(hsm), SizeQuery())
	// It can still be used: an HSM-protected key is for use, not export.
	iv := bytes.Repeat([]byte{1}, 16)
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_AES_CBC_PAD, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: iv}}}, U(hsm))
	cl.Must(ck.CKR_OK, "C_Encrypt", U(h), S("plaintext"), Out(64))

	// Flip CKA_EXTRACTABLE in the database, behind the daemon's back.
	d.stop()
	db, err := sql.Open("sqlite3", "file:"+d.db)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	var rec []byte
	if err := db.QueryRow("SELECT id, record FROM objects WHERE label = ?", []byte("hsm")).Scan(&id, &rec); err != nil {
		t.Fatal(err)
	}
	// The record is uuid(16) | attrs length u32 | attributes | seal.
	n := binary.BigEndian.Uint32(rec[16:])
	attrs, err := keystore.DecodeAttributes(rec[20 : 20+n])
	if err != nil {
		t.Fatal(err)
	}
	for i := range attrs {
		switch attrs[i].Type {
		case ck.CKA_EXTRACTABLE:
			attrs[i].Value = []byte{1}
		case ck.CKA_SENSITIVE:
			attrs[i].Value = []byte{0}
		}
	}
	enc := attrs.Encode()
	edited := append(append(append([]byte{}, rec[:16]...), binary.BigEndian.AppendUint32(nil, uint32(len(enc)))...), enc...)
	edited = append(edited, rec[20+n:]...)
	if _, err := db.Exec("UPDATE objects SET record = ? WHERE id = ?", edited, id); err != nil {
		t.Fatal(err)
	}
	db.Close()

	d.start(t, Config{DefaultTier: keystore.TierPremium})
	cl = d.dial(t)
	h = cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	if got := cl.Find(h, A(ck.CKA_LABEL, []byte("hsm"))); len(got) != 0 {
		t.Fatalf("the edited key was found: %v", got)
	}
	// Even through a handle obtained before the edit was noticed, the
	// value never comes out.
	all := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))
	for _, obj := range all {
		if rv, ans := cl.Get(h, obj, ck.CKA_VALUE); rv == ck.CKR_OK && len(ans[0].Value) == 32 && bytes.Equal(ans[0].Value, bytes.Repeat([]byte{0x22}, 32)) {
			t.Fatal("the HSM-protected key's value came out after the edit")
		}
	}
}

// TestAlwaysAuthenticate: a key with CKA_ALWAYS_AUTHENTICATE wants the PIN
// again (CKU_CONTEXT_SPECIFIC) for every operation.
func TestAlwaysAuthenticate(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("piv")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	edParams := []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN),
		T(A(ck.CKA_EC_PARAMS, edParams)), T(AB(ck.CKA_ALWAYS_AUTHENTICATE, true), AB(ck.CKA_TOKEN, false)), None(), None())
	priv := out[5].Ulong
	sign := func() uint64 {
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		rv, _ := cl.Call("C_Sign", U(h), S("message"), Out(64))
		return rv
	}
	// Without the PIN again: refused, and the operation is over.
	if rv := sign(); rv != ck.CKR_USER_NOT_LOGGED_IN {
		t.Fatalf("sign without context login: %#x", rv)
	}
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Sign", U(h), S("message"), Out(64))
	// With it: one operation.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S("wrong-pin"))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("message"), Out(64))
	if rv := sign(); rv != ck.CKR_USER_NOT_LOGGED_IN {
		t.Fatalf("second operation without context login: %#x", rv)
	}

	// Two uses waiting, a signature and a message-based one: one PIN is
	// for the one that began to wait last, and the other still wants its
	// own, whichever order they began in.
	none := wire.Value{Param: &wire.Param{}}
	for _, msgFirst := range []bool{false, true} {
		if msgFirst {
			cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		}
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		if !msgFirst {
			cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		}
		cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
		first, second := func() uint64 {
			rv, _ := cl.Call("C_Sign", U(h), S("message"), Out(64))
			return rv
		}, func() uint64 {
			rv, _ := cl.Call("C_SignMessage", U(h), none, S("message"), Out(64))
			return rv
		}
		if msgFirst {
			first, second = second, first
		}
		// The one that began to wait first did not get the PIN.
		if rv := first(); rv != ck.CKR_USER_NOT_LOGGED_IN {
			t.Fatalf("message first %v: the earlier use with one PIN for two: %#x", msgFirst, rv)
		}
		if rv := second(); rv != ck.CKR_OK {
			t.Fatalf("message first %v: the later use: %#x", msgFirst, rv)
		}
		// A message process wants the PIN again for its next message.
		cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_SignMessage", U(h), none, S("message"), Out(64))
		cl.Must(ck.CKR_OK, "C_MessageSignFinal", U(h))
		cl.Call("C_SignFinal", U(h), Out(64))
	}

	// A use is a use: a signature measured over one input (a prefetch
	// hands it to the module) and then asked for over another wants the
	// PIN again; the same input gets what was measured.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("one"), prefetch())
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Sign", U(h), S("two"), Out(64))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Sign", U(h), S("one"), Out(64))
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("one"), SizeQuery())
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("one"), Out(64))
	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_EDDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("one"), prefetch())
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_SignMessage", U(h), none, S("two"), Out(64))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_CONTEXT_SPECIFIC), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("two"), Out(64))
	cl.Must(ck.CKR_OK, "C_MessageSignFinal", U(h))
}

// TestWrapTemplates: a wrapping key's CKA_WRAP_TEMPLATE limits what it
// wraps; an unwrapping key's CKA_UNWRAP_TEMPLATE is imposed on what it
// unwraps.
func TestWrapTemplates(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("templates")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	aes := func(label string, value byte, extra ...wire.Attribute) uint64 {
		return cl.Create(h, append([]wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
			A(ck.CKA_LABEL, []byte(label)), A(ck.CKA_VALUE, bytes.Repeat([]byte{value}, 32))}, extra...)...)
	}
	kek := aes("kek", 1, wire.Attribute{Type: ck.CKA_WRAP_TEMPLATE, Nested: []wire.Attribute{A(ck.CKA_LABEL, []byte("ok"))}},
		wire.Attribute{Type: ck.CKA_UNWRAP_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_SENSITIVE, true)}})
	ok, no := aes("ok", 2), aes("no", 3)
	kwp := M(ck.CKM_AES_KEY_WRAP_KWP)
	cl.Must(ck.CKR_KEY_NOT_WRAPPABLE, "C_WrapKey", U(h), kwp, U(kek), U(no), SizeQuery())
	wrapped := append([]byte(nil), cl.Must(ck.CKR_OK, "C_WrapKey", U(h), kwp, U(kek), U(ok), Out(256))[4].Bytes...)

	unwrapT := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), A(ck.CKA_LABEL, []byte("back"))}
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_UnwrapKey", U(h), kwp, U(kek), B(wrapped), T(append(unwrapT, AB(ck.CKA_SENSITIVE, false))...), None())
	back := cl.Must(ck.CKR_OK, "C_UnwrapKey", U(h), kwp, U(kek), B(wrapped), T(unwrapT...), None())[5].Ulong
	if rv, ans := cl.Get(h, back, ck.CKA_SENSITIVE, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE || ans[0].Value[0] != 1 {
		t.Fatalf("unwrapped key: %#x, sensitive %v", rv, ans[0].Value)
	}
}

// TestTemplatesCannotSmuggle: a user cannot make a trusted key through an
// unwrap template, and a base key's derive template binds derived keys.
func TestTemplatesCannotSmuggle(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("smuggle")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	secret := func(extra ...wire.Attribute) []wire.Attribute {
		return append([]wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
			A(ck.CKA_VALUE, bytes.Repeat([]byte{7}, 32))}, extra...)
	}
	// CKA_TRUSTED in a nested template is the SO's, like CKA_TRUSTED itself.
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CreateObject", U(h),
		T(secret(wire.Attribute{Type: ck.CKA_UNWRAP_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_TRUSTED, true)}})...), None())
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_CreateObject", U(h),
		T(secret(wire.Attribute{Type: ck.CKA_UNWRAP_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_LOCAL, true)}})...), None())

	// A derive template binds what is derived from the key.
	base := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		A(ck.CKA_VALUE, bytes.Repeat([]byte{9}, 32)), AB(ck.CKA_DERIVE, true),
		wire.Attribute{Type: ck.CKA_DERIVE_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_EXTRACTABLE, false)}})
	hkdf := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_HKDF_DERIVE, Present: true, Param: wire.HKDFParams{
		Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256, SaltType: ck.CKF_HKDF_SALT_NULL, Info: []byte("info")}.Param()}}
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_DeriveKey", U(h), hkdf, U(base),
		T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_SENSITIVE, false)), None())
	derived := cl.Must(ck.CKR_OK, "C_DeriveKey", U(h), hkdf, U(base), T(AU(ck.CKA_VALUE_LEN, 32)), None())[4].Ulong
	if rv, _ := cl.Get(h, derived, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("a key derived under a sensitive derive template: value rv %#x", rv)
	}
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_DeriveKey", U(h), hkdf, U(base), T(AU(ck.CKA_VALUE_LEN, 1<<63)), None())
}
