package token

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// certTmpl is an X.509 certificate's template: a public token object.
func certTmpl(label string, extra ...wire.Attribute) []wire.Attribute {
	return append([]wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_CERTIFICATE), AU(ck.CKA_CERTIFICATE_TYPE, ck.CKC_X_509),
		AB(ck.CKA_TOKEN, true), AB(ck.CKA_PRIVATE, false), A(ck.CKA_LABEL, []byte(label)),
		A(ck.CKA_SUBJECT, []byte("subject")), A(ck.CKA_VALUE, []byte("der")),
	}, extra...)
}

// TestTrustedCertificate: "Trusted certificates cannot be modified"
// (PKCS#11 v3.0, certificate objects), by the user or by the SO; a copy
// of one may change what a copy always may (CKA_TOKEN, CKA_PRIVATE,
// CKA_MODIFIABLE) and nothing of the certificate. An untrusted
// certificate stays modifiable.
func TestTrustedCertificate(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	so := d.dial(t)
	slot := so.NewToken("trust")
	sh := so.Open(slot, true)
	so.Must(ck.CKR_OK, "C_Login", U(sh), U(ck.CKU_SO), S(SOPIN))
	trusted := so.Create(sh, certTmpl("anchor", AB(ck.CKA_TRUSTED, true))...)
	so.Must(ck.CKR_ACTION_PROHIBITED, "C_SetAttributeValue", U(sh), U(trusted), T(A(ck.CKA_LABEL, []byte("renamed"))))
	so.Must(ck.CKR_OK, "C_Logout", U(sh))

	cl := d.dial(t)
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	found := cl.Find(h, A(ck.CKA_LABEL, []byte("anchor")))
	if len(found) != 1 {
		t.Fatalf("trusted certificate: %v", found)
	}
	trusted = found[0]
	for _, set := range []wire.Attribute{
		A(ck.CKA_LABEL, []byte("renamed")), A(ck.CKA_ID, []byte("mine")), A(ck.CKA_SUBJECT, []byte("another")),
		AB(ck.CKA_TRUSTED, false),
	} {
		if rv, _ := cl.Call("C_SetAttributeValue", U(h), U(trusted), T(set)); rv != ck.CKR_ACTION_PROHIBITED {
			t.Errorf("setting %#x on a trusted certificate: %#x, want CKR_ACTION_PROHIBITED", set.Type, rv)
		}
	}
	for _, set := range []wire.Attribute{A(ck.CKA_ID, []byte("mine")), A(ck.CKA_SUBJECT, []byte("another"))} {
		if rv, _ := cl.Call("C_CopyObject", U(h), U(trusted), T(set), None()); rv != ck.CKR_ATTRIBUTE_READ_ONLY {
			t.Errorf("copying a trusted certificate with %#x changed: %#x, want CKR_ATTRIBUTE_READ_ONLY", set.Type, rv)
		}
	}
	cp := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(trusted), T(AB(ck.CKA_TOKEN, false)), None())[3].Ulong
	if rv, ans := cl.Get(h, cp, ck.CKA_TRUSTED, ck.CKA_LABEL); rv != ck.CKR_OK || !isTrue(ans[0].Value) || string(ans[1].Value) != "anchor" {
		t.Fatalf("the copy: %#x %+v", rv, ans)
	}
	cl.Must(ck.CKR_ACTION_PROHIBITED, "C_SetAttributeValue", U(h), U(cp), T(A(ck.CKA_LABEL, []byte("renamed"))))

	plain := cl.Create(h, certTmpl("plain")...)
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(plain), T(A(ck.CKA_LABEL, []byte("renamed"))))
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(plain), T(AB(ck.CKA_TRUSTED, true)))
}

// TestUniqueID: every object has a CKA_UNIQUE_ID the token makes
// (PKCS#11 v3.0, "The CKA_UNIQUE_ID attribute"): its own, the same
// across changes and restarts, a new one for a copy; a template naming
// it, on any call that makes or changes an object, is
// CKR_ATTRIBUTE_READ_ONLY; a search by it finds that one object.
func TestUniqueID(t *testing.T) {
	t.Parallel()
	d, cl, _, h := symUser(t)
	uid := func(obj uint64) string {
		t.Helper()
		rv, ans := cl.Get(h, obj, ck.CKA_UNIQUE_ID)
		if rv != ck.CKR_OK || len(ans[0].Value) == 0 {
			t.Fatalf("CKA_UNIQUE_ID of %d: %#x %+v", obj, rv, ans)
		}
		return string(ans[0].Value)
	}
	tokKey := cl.Create(h, AESKey("unique", true, false)...)
	sessData := cl.Create(h, DataObject("unique data", false, false, "v")...)
	gen := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16)), None())[3].Ulong
	tokCopy := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(tokKey), T(), None())[3].Ulong
	sessCopy := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(tokKey), T(AB(ck.CKA_TOKEN, false)), None())[3].Ulong
	dataCopy := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(sessData), T(AB(ck.CKA_TOKEN, true)), None())[3].Ulong
	seen := map[string]uint64{}
	for _, obj := range []uint64{tokKey, sessData, gen, tokCopy, sessCopy, dataCopy} {
		u := uid(obj)
		if other, dup := seen[u]; dup {
			t.Fatalf("objects %d and %d share CKA_UNIQUE_ID %q", other, obj, u)
		}
		seen[u] = obj
	}
	for _, obj := range []uint64{tokKey, sessData} {
		before := uid(obj)
		cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(obj), T(A(ck.CKA_LABEL, []byte("relabelled"))))
		if got := uid(obj); got != before {
			t.Fatalf("CKA_UNIQUE_ID changed with the label: %q, then %q", before, got)
		}
		if got := cl.Find(h, A(ck.CKA_UNIQUE_ID, []byte(before))); len(got) != 1 || got[0] != obj {
			t.Fatalf("search by CKA_UNIQUE_ID %q: %v, want [%d]", before, got, obj)
		}
	}

	bad := A(ck.CKA_UNIQUE_ID, []byte("mine"))
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CreateObject", U(h), T(append(DataObject("x", false, false, "v"), bad)...), None())
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16), bad), None())
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(sessData), T(bad))
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(h), U(sessData), T(bad), None())
	kek := cl.secret(h, ck.CKK_AES, make([]byte, 32))
	wrapped := cl.wrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, cl.secret(h, ck.CKK_AES, make([]byte, 16)))
	cl.unwrapKey(ck.CKR_ATTRIBUTE_READ_ONLY, h, M(ck.CKM_AES_KEY_WRAP), kek, wrapped, readable(ck.CKK_AES, bad)...)

	// A token object keeps its CKA_UNIQUE_ID across a restart.
	want := uid(tokKey)
	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	h = cl.Open(cl.Slots()[0], true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	if got := cl.Find(h, A(ck.CKA_UNIQUE_ID, []byte(want))); len(got) != 1 || uid(got[0]) != want {
		t.Fatalf("after a restart, search by CKA_UNIQUE_ID %q: %v", want, got)
	}
}

// TestCheckValue: CKA_CHECK_VALUE (PKCS#11 v3.0, secret key and
// certificate objects) is the token's for every secret key and
// certificate, however made, readable while the key is sensitive; a
// template may give the right one or an empty one (the object then has
// none), and a wrong one is CKR_ATTRIBUTE_VALUE_INVALID on every call
// that makes an object; it never changes.
func TestCheckValue(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	kcv := func(obj uint64) string {
		t.Helper()
		rv, ans := cl.Get(h, obj, ck.CKA_CHECK_VALUE)
		if rv != ck.CKR_OK {
			t.Fatalf("CKA_CHECK_VALUE of %d: %#x", obj, rv)
		}
		return fmt.Sprintf("%x", ans[0].Value)
	}
	zero32 := make([]byte, 32)
	aes := cl.secret(h, ck.CKK_AES, zero32, AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_EXTRACTABLE, false))
	generic := cl.secret(h, ck.CKK_GENERIC_SECRET, zero32)
	cert := cl.Create(h, certTmpl("kcv")...)
	for _, c := range []struct {
		name string
		obj  uint64
		want string
	}{
		{"AES-256 zero key: its ECB encryption of a zero block", aes, "dc95c0"},
		{"generic secret of 32 zero bytes: its SHA-1", generic, "de8a84"},
		{"certificate: the SHA-1 of its CKA_VALUE", cert, "7d44c3"},
	} {
		if got := kcv(c.obj); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	cp := cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(aes), T(AB(ck.CKA_TOKEN, true)), None())[3].Ulong
	if got := kcv(cp); got != "dc95c0" {
		t.Errorf("copy: %s", got)
	}
	if got := cl.Find(h, A(ck.CKA_CHECK_VALUE, []byte{0xde, 0x8a, 0x84})); len(got) != 1 || got[0] != generic {
		t.Errorf("search by the check value: %v, want [%d]", got, generic)
	}
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(aes), T(A(ck.CKA_CHECK_VALUE, []byte{0xdc, 0x95, 0xc0})))

	// Given: the right one, an empty one, a wrong one.
	right := cl.secret(h, ck.CKK_AES, zero32, A(ck.CKA_CHECK_VALUE, []byte{0xdc, 0x95, 0xc0}))
	if got := kcv(right); got != "dc95c0" {
		t.Errorf("given right: %s", got)
	}
	none := cl.secret(h, ck.CKK_AES, zero32, A(ck.CKA_CHECK_VALUE, nil))
	if got := kcv(none); got != "" {
		t.Errorf("given empty: %s, want none", got)
	}
	wrong := A(ck.CKA_CHECK_VALUE, []byte{1, 2, 3})
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(secretTmpl(ck.CKK_AES, zero32, wrong)...), None())
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(certTmpl("wrong", wrong)...), None())
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16), wrong), None())
	kek := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{7}, 32))
	wrapped := cl.wrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, generic)
	cl.unwrapKey(ck.CKR_ATTRIBUTE_VALUE_INVALID, h, M(ck.CKM_AES_KEY_WRAP), kek, wrapped, readable(ck.CKK_GENERIC_SECRET, wrong)...)
	u := cl.unwrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, wrapped, readable(ck.CKK_GENERIC_SECRET, A(ck.CKA_CHECK_VALUE, []byte{0xde, 0x8a, 0x84}))...)
	if got := kcv(u); got != "de8a84" {
		t.Errorf("unwrapped: %s", got)
	}
	gen := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16)), None())[3].Ulong
	if got := kcv(gen); len(got) != 6 {
		t.Errorf("generated: %q", got)
	}
}

// TestObjectSizeBounds: an object the keystore could not open again is
// never made. A value over keystore.MaxAttributeValue is
// CKR_ATTRIBUTE_VALUE_INVALID, on create and on change, for token and
// session objects alike; a key whose parts together are over what the
// keystore decodes is CKR_DEVICE_MEMORY, and nothing is stored. A stored
// object that does not open (made by an earlier version) is left out of
// a search, which goes on.
func TestObjectSizeBounds(t *testing.T) {
	t.Parallel()
	d, cl, slot, h := symUser(t)
	ctx := context.Background()
	limit := make([]byte, keystore.MaxAttributeValue)
	over := make([]byte, keystore.MaxAttributeValue+1)
	for _, token := range []bool{true, false} {
		cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(AU(ck.CKA_CLASS, ck.CKO_DATA), AB(ck.CKA_TOKEN, token), A(ck.CKA_VALUE, over)), None())
		cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(AU(ck.CKA_CLASS, ck.CKO_DATA), AB(ck.CKA_TOKEN, token), A(ck.CKA_LABEL, over)), None())
		o := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_DATA), AB(ck.CKA_TOKEN, token), A(ck.CKA_VALUE, limit))
		cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_SetAttributeValue", U(h), U(o), T(A(ck.CKA_VALUE, over)))
		cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(o))
	}
	// Seven parts of 1 MiB: more than the sealed part of one object holds.
	n := append([]byte{0xc1}, limit[1:]...)
	rsa := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_RSA), AB(ck.CKA_TOKEN, true),
		A(ck.CKA_MODULUS, n), A(ck.CKA_PRIVATE_EXPONENT, n), A(ck.CKA_PRIME_1, n), A(ck.CKA_PRIME_2, n),
		A(ck.CKA_EXPONENT_1, n), A(ck.CKA_EXPONENT_2, n), A(ck.CKA_COEFFICIENT, n)}
	cl.Must(ck.CKR_DEVICE_MEMORY, "C_CreateObject", U(h), T(rsa...), None())
	// Five of 1 MiB in the attributes that are not sealed apart.
	cert := certTmpl("big", A(ck.CKA_ID, limit), A(ck.CKA_ISSUER, limit), A(ck.CKA_SERIAL_NUMBER, limit), A(ck.CKA_URL, limit))
	for i := range cert {
		if cert[i].Type == ck.CKA_VALUE || cert[i].Type == ck.CKA_SUBJECT {
			cert[i].Value = limit
		}
	}
	cl.Must(ck.CKR_DEVICE_MEMORY, "C_CreateObject", U(h), T(cert...), None())

	// An object stored whole whose sealed part does not decode: as an
	// earlier version could store.
	tokens, err := d.store.Tokens(ctx)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens: %v %v", tokens, err)
	}
	secret := make([]byte, 0, 5<<20)
	secret = binary.BigEndian.AppendUint32(secret, 5)
	for i := range 5 {
		secret = binary.BigEndian.AppendUint64(secret, ck.CKA_PRIME_1+uint64(i))
		secret = binary.BigEndian.AppendUint32(secret, uint32(len(n)))
		secret = append(secret, n...)
	}
	attrs, err := keystore.NewAttributes(keystore.Attribute{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_PRIVATE_KEY)},
		keystore.Attribute{Type: ck.CKA_KEY_TYPE, Value: keystore.Ulong(ck.CKK_RSA)}, keystore.Attribute{Type: ck.CKA_TOKEN, Value: []byte{1}},
		keystore.Attribute{Type: ck.CKA_PRIVATE, Value: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.Put(ctx, tokens[0].UUID, attrs, secret); err != nil {
		t.Fatalf("planting the object: %v", err)
	}
	kept := cl.Create(h, DataObject("kept", true, true, "v")...)
	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	h = cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	if got := cl.Find(h); len(got) != 1 {
		t.Fatalf("search after a restart: %v, want the data object alone (handle %d before)", got, kept)
	}
}

// interleaved is a Store that runs another call just before the next
// write of an object: the write of a call that read the object before
// that other call changed it.
type interleaved struct {
	*keystore.Store
	before func()
}

func (s *interleaved) run() {
	if f := s.before; f != nil {
		s.before = nil
		f()
	}
}

func (s *interleaved) Update(ctx context.Context, id keystore.ObjectID, attrs keystore.Attributes, secret []byte) error {
	s.run()
	return s.Store.Update(ctx, id, attrs, secret)
}

func (s *interleaved) UpdateLocked(ctx context.Context, id keystore.ObjectID, change func(*keystore.Object) (keystore.Attributes, []byte, error)) error {
	s.run()
	return s.Store.UpdateLocked(ctx, id, change)
}

// TestSetAttributesOnCurrent: C_SetAttributeValue applies its template to
// the object as stored when it writes, not as it was when the call
// began: a change another application made meanwhile (the key made
// sensitive and unextractable) stays, and the one-way rules hold against
// it.
func TestSetAttributesOnCurrent(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	d.eng.Interrupt()
	d.eng.Close()
	st := &interleaved{Store: d.store}
	d.eng = New(st, nil, Config{FailureDelay: -1})
	a, b := d.dial(t), d.dial(t)
	slot := a.NewToken("race")
	ha, hb := a.Open(slot, true), b.Open(slot, true)
	a.Must(ck.CKR_OK, "C_Login", U(ha), U(ck.CKU_USER), S(UserPIN))
	b.Must(ck.CKR_OK, "C_Login", U(hb), U(ck.CKU_USER), S(UserPIN))
	ka := a.Create(ha, AESKey("key", false, true)...)
	found := b.Find(hb, A(ck.CKA_LABEL, []byte("key")))
	if len(found) != 1 {
		t.Fatalf("b finds %v", found)
	}
	kb := found[0]
	b.Get(hb, kb, ck.CKA_LABEL) // b's view of the key, before a's change

	st.before = func() {
		a.Must(ck.CKR_OK, "C_SetAttributeValue", U(ha), U(ka), T(AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_EXTRACTABLE, false)))
	}
	b.Must(ck.CKR_OK, "C_SetAttributeValue", U(hb), U(kb), T(A(ck.CKA_LABEL, []byte("relabelled"))))
	rv, ans := a.Get(ha, ka, ck.CKA_SENSITIVE, ck.CKA_EXTRACTABLE, ck.CKA_LABEL, ck.CKA_VALUE)
	if !isTrue(ans[0].Value) || isTrue(ans[1].Value) || string(ans[2].Value) != "relabelled" || rv != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("after both changes: %#x sensitive %x extractable %x label %q value %d bytes", rv, ans[0].Value, ans[1].Value, ans[2].Value, len(ans[3].Value))
	}

	// A one-way rule against the current state: b's template turns
	// CKA_EXTRACTABLE back on, which its stale view still allows.
	k2 := a.Create(ha, AESKey("key2", false, true)...)
	kb2 := b.Find(hb, A(ck.CKA_LABEL, []byte("key2")))[0]
	b.Get(hb, kb2, ck.CKA_LABEL)
	st.before = func() {
		a.Must(ck.CKR_OK, "C_SetAttributeValue", U(ha), U(k2), T(AB(ck.CKA_EXTRACTABLE, false)))
	}
	b.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(hb), U(kb2), T(AB(ck.CKA_EXTRACTABLE, true)))
	if _, ans := a.Get(ha, k2, ck.CKA_EXTRACTABLE); isTrue(ans[0].Value) {
		t.Fatal("CKA_EXTRACTABLE TRUE again")
	}
}

// TestEmptyTemplateAttribute: a key given no CKA_WRAP_TEMPLATE has the
// empty one, as one given an empty template does: both read with length
// 0, and a search for the empty template finds both.
func TestEmptyTemplateAttribute(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	none := cl.secret(h, ck.CKK_AES, make([]byte, 16))
	empty := cl.secret(h, ck.CKK_AES, make([]byte, 16), wire.Attribute{Type: ck.CKA_WRAP_TEMPLATE, Nested: []wire.Attribute{}})
	for _, k := range []uint64{none, empty} {
		if rv, ans := cl.Get(h, k, ck.CKA_WRAP_TEMPLATE, ck.CKA_UNWRAP_TEMPLATE, ck.CKA_DERIVE_TEMPLATE); rv != ck.CKR_OK || ans[0].Length != 0 || ans[1].Length != 0 || ans[2].Length != 0 {
			t.Fatalf("key %d: %#x %+v", k, rv, ans)
		}
	}
	got := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), wire.Attribute{Type: ck.CKA_WRAP_TEMPLATE, Nested: []wire.Attribute{}})
	if len(got) != 2 {
		t.Fatalf("search for the empty wrap template: %v, want [%d %d]", got, none, empty)
	}
}

// TestPublicKeyInfo: a public or private key's CKA_PUBLIC_KEY_INFO is the
// SubjectPublicKeyInfo of its own public half, derived when the template
// gives none (PKCS#11 v3.0, public and private key objects); one a
// template gives must be that key's (CKR_ATTRIBUTE_VALUE_INVALID
// otherwise), so no key claims another's public half.
func TestPublicKeyInfo(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	pair := func() (uint64, uint64) {
		out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
			T(A(ck.CKA_EC_PARAMS, p256), AB(ck.CKA_TOKEN, false)), T(AB(ck.CKA_TOKEN, false), AB(ck.CKA_SENSITIVE, true)), None(), None())
		return out[4].Ulong, out[5].Ulong
	}
	info := func(obj uint64) []byte {
		t.Helper()
		rv, ans := cl.Get(h, obj, ck.CKA_PUBLIC_KEY_INFO)
		if rv != ck.CKR_OK {
			t.Fatalf("CKA_PUBLIC_KEY_INFO of %d: %#x", obj, rv)
		}
		return bytes.Clone(ans[0].Value)
	}
	pub, priv := pair()
	spki := info(pub)
	parsed, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		t.Fatalf("the public key's CKA_PUBLIC_KEY_INFO does not parse: %v (%x)", err, spki)
	}
	_, ans := cl.Get(h, pub, ck.CKA_EC_POINT)
	point := ans[0].Value
	if ec, ok := parsed.(*ecdsa.PublicKey); !ok || !bytes.HasSuffix(point, elliptic.Marshal(ec.Curve, ec.X, ec.Y)) {
		t.Fatalf("CKA_PUBLIC_KEY_INFO %T is not the key's point %x", parsed, point)
	}
	if got := info(priv); !bytes.Equal(got, spki) {
		t.Fatalf("the private key's CKA_PUBLIC_KEY_INFO %x, its public key's %x", got, spki)
	}

	// Given: the key's own is taken; another key's is not.
	otherPub, _ := pair()
	other := info(otherPub)
	pubTmpl := func(v []byte) []wire.Attribute {
		return []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC), AB(ck.CKA_TOKEN, false),
			A(ck.CKA_EC_PARAMS, p256), A(ck.CKA_EC_POINT, point), A(ck.CKA_PUBLIC_KEY_INFO, v)}
	}
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(pubTmpl(other)...), None())
	if got := info(cl.Create(h, pubTmpl(spki)...)); !bytes.Equal(got, spki) {
		t.Fatalf("given its own: %x", got)
	}
	// A private key from clear material, claiming another's public half.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	own, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	privTmpl := func(extra ...wire.Attribute) []wire.Attribute {
		return append([]wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC), AB(ck.CKA_TOKEN, false),
			A(ck.CKA_EC_PARAMS, p256), A(ck.CKA_VALUE, k.D.FillBytes(make([]byte, 32)))}, extra...)
	}
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(privTmpl(A(ck.CKA_PUBLIC_KEY_INFO, other))...), None())
	if got := info(cl.Create(h, privTmpl(A(ck.CKA_PUBLIC_KEY_INFO, own))...)); !bytes.Equal(got, own) {
		t.Fatalf("private key given its own: %x", got)
	}
	if got := info(cl.Create(h, privTmpl()...)); !bytes.Equal(got, own) {
		t.Fatalf("private key given none: %x, want %x", got, own)
	}
}

// TestWrapTemplateOfTokenAttributes: a CKA_WRAP_TEMPLATE is matched, not
// imposed, so it may name attributes only the token sets: a wrapping key
// whose template asks for CKA_LOCAL TRUE wraps keys generated on the
// token and refuses keys imported in clear (CKR_KEY_NOT_WRAPPABLE). An
// unwrap template, imposed on the keys it makes, still may not.
func TestWrapTemplateOfTokenAttributes(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	local := wire.Attribute{Type: ck.CKA_WRAP_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_LOCAL, true)}}
	kek := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{9}, 32), local)
	generated := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16), AB(ck.CKA_TOKEN, false)), None())[3].Ulong
	imported := cl.secret(h, ck.CKK_AES, make([]byte, 16))
	cl.wrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, generated)
	cl.wrapKey(ck.CKR_KEY_NOT_WRAPPABLE, h, M(ck.CKM_AES_KEY_WRAP), kek, imported)
	cl.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_CreateObject", U(h),
		T(secretTmpl(ck.CKK_AES, make([]byte, 32), wire.Attribute{Type: ck.CKA_UNWRAP_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_LOCAL, true)}})...), None())
}

// TestStoredClaimsNotBelieved: a secret key's CKA_CHECK_VALUE and a key's
// CKA_PUBLIC_KEY_INFO that an earlier version stored from a template
// unchecked read as the token computes them, not as stored.
func TestStoredClaimsNotBelieved(t *testing.T) {
	t.Parallel()
	d, cl, slot, h := symUser(t)
	ctx := context.Background()
	tokens, err := d.store.Tokens(ctx)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens: %v %v", tokens, err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	own, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	a := func(t uint64, v []byte) keystore.Attribute { return keystore.Attribute{Type: t, Value: v} }
	put := func(attrs, secret []keystore.Attribute) {
		t.Helper()
		as, err := keystore.NewAttributes(attrs...)
		if err != nil {
			t.Fatal(err)
		}
		ss, err := keystore.NewAttributes(secret...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.store.Put(ctx, tokens[0].UUID, as, ss.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	bogus := []byte("not this key's")
	put([]keystore.Attribute{a(ck.CKA_CLASS, keystore.Ulong(ck.CKO_SECRET_KEY)), a(ck.CKA_KEY_TYPE, keystore.Ulong(ck.CKK_AES)),
		a(ck.CKA_TOKEN, []byte{1}), a(ck.CKA_PRIVATE, []byte{1}), a(ck.CKA_LABEL, []byte("old aes")), a(ck.CKA_CHECK_VALUE, []byte{1, 2, 3}),
		a(ck.CKA_SENSITIVE, []byte{1}), a(ck.CKA_EXTRACTABLE, []byte{0})},
		[]keystore.Attribute{a(ck.CKA_VALUE, make([]byte, 32))})
	put([]keystore.Attribute{a(ck.CKA_CLASS, keystore.Ulong(ck.CKO_PRIVATE_KEY)), a(ck.CKA_KEY_TYPE, keystore.Ulong(ck.CKK_EC)),
		a(ck.CKA_TOKEN, []byte{1}), a(ck.CKA_PRIVATE, []byte{1}), a(ck.CKA_LABEL, []byte("old ec")), a(ck.CKA_PUBLIC_KEY_INFO, bogus),
		a(ck.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}),
		a(ck.CKA_SENSITIVE, []byte{1}), a(ck.CKA_EXTRACTABLE, []byte{0})},
		[]keystore.Attribute{a(ck.CKA_VALUE, k.D.FillBytes(make([]byte, 32)))})
	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	h = cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	aes := cl.Find(h, A(ck.CKA_LABEL, []byte("old aes")))
	ec := cl.Find(h, A(ck.CKA_LABEL, []byte("old ec")))
	if len(aes) != 1 || len(ec) != 1 {
		t.Fatalf("found %v, %v", aes, ec)
	}
	if _, ans := cl.Get(h, aes[0], ck.CKA_CHECK_VALUE); fmt.Sprintf("%x", ans[0].Value) != "dc95c0" {
		t.Errorf("stored check value 010203 read as %x, want dc95c0", ans[0].Value)
	}
	if _, ans := cl.Get(h, ec[0], ck.CKA_PUBLIC_KEY_INFO); !bytes.Equal(ans[0].Value, own) {
		t.Errorf("stored CKA_PUBLIC_KEY_INFO %q read as %x, want the key's own %x", bogus, ans[0].Value, own)
	}
}
