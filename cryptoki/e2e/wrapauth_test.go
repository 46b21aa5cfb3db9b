package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// C_WrapKeyAuthenticated and C_UnwrapKeyAuthenticated (PKCS#11 3.2) with
// AES-GCM through the module's 3.2 function list and a real daemon: both
// calling conventions of the wrap (a NULL buffer first, or a buffer at
// once), a short buffer, the IV and the tag written into the mechanism's
// parameter, the wrapped key opening with crypto/cipher, and a tampered
// ciphertext, tag or associated data refused.
func TestWrapKeyAuthenticatedThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	kekValue := bytes.Repeat([]byte{0x5A}, 32)
	keyValue := bytes.Repeat([]byte{0xC3}, 16)
	aesKey := func(v []byte, extra ...*pkcs11.Attribute) pkcs11.ObjectHandle {
		t.Helper()
		o, err := p.CreateObject(h, append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, v),
		}, extra...))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	kek := aesKey(kekValue, pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true))
	key := aesKey(keyValue, pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true))
	locked := aesKey(keyValue, pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false))
	aad := []byte("tenant=42")
	zero12, zero16 := make([]byte, 12), make([]byte, 16)

	// A NULL buffer first: the length, nothing in the parameter.
	_, n, iv, tag, err := f.wrapAuth(h, kek, key, authWrap{gen: ck.CKG_GENERATE, aad: aad})
	if err != nil || n != 16 || !bytes.Equal(iv, zero12) || !bytes.Equal(tag, zero16) {
		t.Fatalf("size query: %d, IV %x, tag %x, %v", n, iv, tag, err)
	}
	// A short buffer: CKR_BUFFER_TOO_SMALL with the length, nothing
	// written.
	_, n, iv, tag, err = f.wrapAuth(h, kek, key, authWrap{gen: ck.CKG_GENERATE, aad: aad, out: true, capacity: 15})
	if rvOf(err) != ck.CKR_BUFFER_TOO_SMALL || n != 16 || !bytes.Equal(iv, zero12) || !bytes.Equal(tag, zero16) {
		t.Fatalf("short buffer: %d, IV %x, tag %x, %v", n, iv, tag, err)
	}
	b, _ := aes.NewCipher(kekValue)
	g, _ := cipher.NewGCM(b)
	var ivs [][]byte
	for _, c := range []struct {
		name     string
		capacity int
	}{{"the queried length", 16}, {"a buffer at once", 4096}} {
		wrapped, n, iv, tag, err := f.wrapAuth(h, kek, key, authWrap{gen: ck.CKG_GENERATE, aad: aad, out: true, capacity: c.capacity})
		if err != nil || n != 16 || len(wrapped) != 16 {
			t.Fatalf("%s: %d bytes, %v", c.name, n, err)
		}
		if plain, err := g.Open(nil, iv, append(bytes.Clone(wrapped), tag...), aad); err != nil || !bytes.Equal(plain, keyValue) {
			t.Fatalf("%s: crypto/cipher opens %x, %v", c.name, plain, err)
		}
		for _, prev := range ivs {
			if bytes.Equal(prev, iv) {
				t.Fatalf("%s: IV %x again", c.name, iv)
			}
		}
		ivs = append(ivs, iv)

		u, err := f.unwrapAuth(h, kek, iv, tag, wrapped, aad)
		if err != nil || !bytes.Equal(attrOf(t, p, h, u, pkcs11.CKA_VALUE), keyValue) {
			t.Fatalf("%s: unwrap: %v", c.name, err)
		}
		flip := func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-1] ^= 0x80; return c }
		for _, bad := range []struct {
			name                 string
			iv, tag, wrapped, ad []byte
		}{
			{"flipped ciphertext", iv, tag, flip(wrapped), aad},
			{"flipped tag", iv, flip(tag), wrapped, aad},
			{"other associated data", iv, tag, wrapped, flip(aad)},
			{"no associated data", iv, tag, wrapped, nil},
		} {
			if _, err := f.unwrapAuth(h, kek, bad.iv, bad.tag, bad.wrapped, bad.ad); rvOf(err) != ck.CKR_WRAPPED_KEY_INVALID {
				t.Errorf("%s: %s: %v", c.name, bad.name, err)
			}
		}
	}
	// The random generator works as well.
	if _, _, iv, _, err := f.wrapAuth(h, kek, key, authWrap{gen: ck.CKG_GENERATE_RANDOM, out: true, capacity: 16}); err != nil || bytes.Equal(iv, zero12) {
		t.Fatalf("random IV %x: %v", iv, err)
	}
	for _, c := range []struct {
		name string
		key  pkcs11.ObjectHandle
		w    authWrap
		want uint
	}{
		{"a NULL mechanism", key, authWrap{noMech: true, gen: ck.CKG_GENERATE, out: true, capacity: 16}, ck.CKR_ARGUMENTS_BAD},
		{"the caller's IV", key, authWrap{gen: ck.CKG_NO_GENERATE, out: true, capacity: 16}, ck.CKR_MECHANISM_PARAM_INVALID},
		{"an unextractable key", locked, authWrap{gen: ck.CKG_GENERATE, out: true, capacity: 16}, ck.CKR_KEY_UNEXTRACTABLE},
	} {
		if _, _, _, _, err := f.wrapAuth(h, kek, c.key, c.w); rvOf(err) != c.want {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
