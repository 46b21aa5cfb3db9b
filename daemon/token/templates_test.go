package token

import (
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// FuzzCreateTemplate feeds arbitrary templates to the creation rules: they
// never panic, and whatever they accept splits into attributes that
// encode canonically.
func FuzzCreateTemplate(f *testing.F) {
	enc := func(attrs []attr) []byte {
		a := keystore.Attributes(attrs)
		return a.Encode()
	}
	f.Add(enc([]attr{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_DATA)}, {Type: ck.CKA_VALUE, Value: []byte("v")}}), false)
	f.Add(enc([]attr{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_SECRET_KEY)}, {Type: ck.CKA_KEY_TYPE, Value: keystore.Ulong(ck.CKK_AES)}, {Type: ck.CKA_VALUE, Value: make([]byte, 16)}}), true)
	f.Add(enc([]attr{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_PUBLIC_KEY)}, {Type: ck.CKA_KEY_TYPE, Value: keystore.Ulong(ck.CKK_RSA)}, {Type: ck.CKA_MODULUS, Value: []byte{0xc1, 0}}, {Type: ck.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}}}), false)
	f.Fuzz(func(t *testing.T, b []byte, so bool) {
		tmpl, err := keystore.DecodeAttributes(b)
		if err != nil {
			return
		}
		m, class, kt, err := checkCreate(tmpl, so, policy{tier: keystore.TierStandard})
		if err != nil {
			return
		}
		o, err := split(m, class, kt)
		if err != nil {
			t.Fatalf("accepted template does not split: %v", err)
		}
		for _, part := range []keystore.Attributes{o.attrs, o.secret} {
			if _, err := keystore.DecodeAttributes(part.Encode()); err != nil {
				t.Fatalf("accepted template does not encode: %v", err)
			}
		}
		if o.Class() != class {
			t.Fatalf("class %#x stored as %#x", class, o.Class())
		}
	})
}
