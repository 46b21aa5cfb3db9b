package token

import (
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// An object's view answers Class, KeyType and Bool from what it read when
// it was made, as the attributes themselves answer: true only for a
// one-byte 1, false for 0, another value or an absent attribute, above
// the indexed types too; no key type is all ones.
func TestObjectIndex(t *testing.T) {
	b := func(v byte) []byte { return []byte{v} }
	cases := [][]keystore.Attribute{
		{{Type: ck.CKA_CLASS, Value: ulong(ck.CKO_SECRET_KEY)}, {Type: ck.CKA_KEY_TYPE, Value: ulong(ck.CKK_AES)},
			{Type: ck.CKA_TOKEN, Value: b(0)}, {Type: ck.CKA_PRIVATE, Value: b(1)}, {Type: ck.CKA_SIGN, Value: b(1)},
			{Type: ck.CKA_ENCRYPT, Value: b(2)}, {Type: ck.CKA_WRAP, Value: []byte{1, 0}}, {Type: ck.CKA_EXTRACTABLE, Value: b(1)},
			{Type: ck.CKA_ALWAYS_AUTHENTICATE, Value: b(1)}, {Type: ck.CKA_WRAP_WITH_TRUSTED, Value: b(0)},
			{Type: 1023, Value: b(1)}, {Type: 1024, Value: b(1)}, {Type: ck.CKA_VENDOR_DEFINED | 7, Value: b(1)}},
		{{Type: ck.CKA_CLASS, Value: ulong(ck.CKO_DATA)}, {Type: ck.CKA_LABEL, Value: b(1)}, {Type: ck.CKA_MODIFIABLE, Value: b(1)}},
		{},
	}
	for i, c := range cases {
		attrs, err := keystore.NewAttributes(c...)
		if err != nil {
			t.Fatal(err)
		}
		o := viewOf(attrs, nil)
		plain := &Object{attrs: attrs}
		if o.Class() != plain.Class() || o.KeyType() != plain.KeyType() {
			t.Errorf("case %d: class %#x, key type %#x; the attributes say %#x, %#x", i, o.Class(), o.KeyType(), plain.Class(), plain.KeyType())
		}
		types := []uint64{ck.CKA_VENDOR_DEFINED | 7, ck.CKA_VENDOR_DEFINED}
		for ty := range uint64(1100) {
			types = append(types, ty)
		}
		for _, ty := range types {
			if o.Bool(ty) != plain.Bool(ty) {
				t.Errorf("case %d: Bool(%#x) = %v, the attributes say %v", i, ty, o.Bool(ty), plain.Bool(ty))
			}
		}
	}
	o := viewOf(must(keystore.NewAttributes(cases[0]...)), nil)
	if !o.Bool(ck.CKA_PRIVATE) || o.Bool(ck.CKA_TOKEN) || o.Bool(ck.CKA_ENCRYPT) || o.Bool(ck.CKA_WRAP) || !o.Bool(1023) || !o.Bool(1024) ||
		o.Class() != ck.CKO_SECRET_KEY || o.KeyType() != ck.CKK_AES {
		t.Error("the first case's answers are not what its attributes hold")
	}
	if k := viewOf(nil, nil).KeyType(); k != ^uint64(0) {
		t.Errorf("an object without a key type has key type %#x", k)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
