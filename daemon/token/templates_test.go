package token

import (
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
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

// TestDateValues: CKA_START_DATE and CKA_END_DATE take a CK_DATE, a day
// of the calendar (year "1900" - "9999", month "01" - "12", day "01" -
// "31"), or nothing.
func TestDateValues(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("dates"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := cl.Create(h, AESKey("k", true, false)...)
	for _, c := range []struct {
		date string
		ok   bool
	}{
		{"", true},
		{"20240229", true}, // a leap year's
		{"19000101", true},
		{"99991231", true},
		{"20241301", false}, // month 13
		{"20240001", false}, // month 0
		{"20240132", false}, // day 32
		{"20240100", false}, // day 0
		{"20230229", false}, // not a leap year
		{"20240431", false}, // April has 30 days
		{"18991231", false}, // before 1900
		{"2024010", false},
		{"2024-1-1", false},
	} {
		want := uint64(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		if c.ok {
			want = ck.CKR_OK
		}
		for _, typ := range []uint64{ck.CKA_START_DATE, ck.CKA_END_DATE} {
			attrs := append(AESKey("d", true, false), A(typ, []byte(c.date)))
			attrs[2] = AB(ck.CKA_TOKEN, false)
			if rv, _ := cl.Call("C_CreateObject", U(h), T(attrs...), None()); rv != want {
				t.Errorf("C_CreateObject with attribute %#x = %q: %v, want %v", typ, c.date, ck.Error(rv), ck.Error(want))
			}
			if rv, _ := cl.Call("C_SetAttributeValue", U(h), U(key), T(A(typ, []byte(c.date)))); rv != want {
				t.Errorf("C_SetAttributeValue of attribute %#x = %q: %v, want %v", typ, c.date, ck.Error(rv), ck.Error(want))
			}
		}
	}
}
