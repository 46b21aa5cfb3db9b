package keystore

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestAttributesCanonical(t *testing.T) {
	t.Parallel()
	a, err := NewAttributes(
		Attribute{Type: AttrLabel, Value: []byte("k")},
		Attribute{Type: AttrClass, Value: Ulong(4)},
		Attribute{Type: AttrID, Value: []byte{}},
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
	if _, err := NewAttributes(Attribute{Type: 1, Value: nil}, Attribute{Type: 1, Value: nil}); err == nil {
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
		{name: "empty", b: nil},
		{name: "short count", b: []byte{0, 0}},
		{name: "count beyond data", b: count(3)},
		{name: "huge count", b: count(1 << 31)},
		{name: "unsorted", b: cat(count(2), one(3, nil), one(1, nil))},
		{name: "duplicate", b: cat(count(2), one(1, nil), one(1, nil))},
		{name: "trailing", b: cat(count(1), one(1, nil), []byte{0})},
		{name: "length beyond data", b: cat(count(1), one(1, nil)[:8], []byte{0, 0, 0, 9})},
		{name: "huge length", b: cat(count(1), one(1, nil)[:8], []byte{0xff, 0xff, 0xff, 0xff})},
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
		Attribute{Type: AttrClass, Value: Ulong(3)},
		Attribute{Type: AttrPrivate, Value: Bool(false)},
		Attribute{Type: AttrKeyType, Value: []byte{1, 2}},
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
	a, _ := NewAttributes(Attribute{Type: AttrClass, Value: Ulong(4)}, Attribute{Type: AttrLabel, Value: []byte("key")})
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
