package keystore

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestAttributesCanonical(t *testing.T) {
	t.Parallel()
	a, err := NewAttributes(
		Attribute{AttrLabel, []byte("k")},
		Attribute{AttrClass, Ulong(4)},
		Attribute{AttrID, []byte{}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if a[0].Type != AttrClass || a[1].Type != AttrLabel || a[2].Type != AttrID {
		t.Fatalf("not sorted: %v", a)
	}
	enc := a.Encode()
	b, err := DecodeAttributes(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Equal(b) || !bytes.Equal(b.Encode(), enc) {
		t.Fatal("round trip changed the attributes")
	}
	if _, err := NewAttributes(Attribute{1, nil}, Attribute{1, nil}); err == nil {
		t.Fatal("duplicate type accepted")
	}
}

func TestDecodeAttributesRejects(t *testing.T) {
	t.Parallel()
	one := func(typ uint64, v []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		return append(b, v...)
	}
	count := func(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short count", []byte{0, 0}},
		{"count beyond data", count(3)},
		{"huge count", count(1 << 31)},
		{"unsorted", cat(count(2), one(3, nil), one(1, nil))},
		{"duplicate", cat(count(2), one(1, nil), one(1, nil))},
		{"trailing", cat(count(1), one(1, nil), []byte{0})},
		{"length beyond data", cat(count(1), one(1, nil)[:8], []byte{0, 0, 0, 9})},
		{"huge length", cat(count(1), one(1, nil)[:8], []byte{0xff, 0xff, 0xff, 0xff})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := DecodeAttributes(tc.b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestAttributeAccessors(t *testing.T) {
	t.Parallel()
	a, _ := NewAttributes(
		Attribute{AttrClass, Ulong(3)},
		Attribute{AttrPrivate, Bool(false)},
		Attribute{AttrKeyType, []byte{1, 2}},
	)
	if v, ok, err := a.Ulong(AttrClass); v != 3 || !ok || err != nil {
		t.Fatalf("Ulong = %d %v %v", v, ok, err)
	}
	if _, _, err := a.Ulong(AttrKeyType); err == nil {
		t.Fatal("2-byte CK_ULONG accepted")
	}
	if v, err := a.Bool(AttrPrivate, true); v || err != nil {
		t.Fatalf("Bool = %v %v", v, err)
	}
	if v, err := a.Bool(AttrToken, true); !v || err != nil {
		t.Fatalf("absent Bool = %v %v", v, err)
	}
}

// FuzzDecodeAttributes demands that whatever decodes re-encodes byte for
// byte: there is exactly one encoding of a set of attributes, which is what
// makes its hash a binding.
func FuzzDecodeAttributes(f *testing.F) {
	a, _ := NewAttributes(Attribute{AttrClass, Ulong(4)}, Attribute{AttrLabel, []byte("key")})
	f.Add(a.Encode())
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeAttributes(b)
		if err != nil {
			return
		}
		if !bytes.Equal(a.Encode(), b) {
			t.Fatalf("decoded %x re-encodes differently", b)
		}
	})
}
