package keystore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// Attribute types the keystore itself reads, to fill its indexed columns and
// to choose the sealing key. The values are PKCS#11's CKA_* numbers; the
// keystore keeps its own copy so it does not depend on a cgo binding.
const (
	AttrClass   uint64 = 0x000 // CKA_CLASS, CK_ULONG
	AttrToken   uint64 = 0x001 // CKA_TOKEN, CK_BBOOL
	AttrPrivate uint64 = 0x002 // CKA_PRIVATE, CK_BBOOL
	AttrLabel   uint64 = 0x003 // CKA_LABEL, bytes
	AttrKeyType uint64 = 0x100 // CKA_KEY_TYPE, CK_ULONG
	AttrID      uint64 = 0x102 // CKA_ID, bytes
)

// Bounds on the canonical encoding. They are far above what any real object
// needs and low enough that a hostile database row cannot make the daemon
// allocate without limit.
const (
	maxAttributes = 512
	// MaxAttributeValue bounds one attribute's value.
	MaxAttributeValue = 1 << 20
	maxAttributesSize = 4 << 20
)

// ErrTooLarge is NewAttributes' error for attributes over the bounds
// DecodeAttributes reads back: a value over MaxAttributeValue, too many
// attributes, or an encoding over 4 MiB. An object's attributes, and its
// secret attributes apart, must each stay within them, or the object
// would be stored and never open.
var ErrTooLarge = errors.New("keystore: attributes too large")

// Attribute is one attribute of a stored object. CK_ULONG values are encoded
// as 8 bytes big-endian and CK_BBOOL values as one byte (0 or 1), whatever the
// platform: the encoding is hashed into every seal, so it must never vary.
type Attribute struct {
	Type  uint64
	Value []byte
}

// Attributes is a set of attributes kept sorted by type, without duplicates.
// That order is what makes the encoding canonical.
type Attributes []Attribute

// NewAttributes sorts attrs and rejects duplicate types.
func NewAttributes(attrs ...Attribute) (Attributes, error) {
	a := slices.Clone(Attributes(attrs))
	slices.SortFunc(a, func(x, y Attribute) int {
		switch {
		case x.Type < y.Type:
			return -1
		case x.Type > y.Type:
			return 1
		}
		return 0
	})
	for i := 1; i < len(a); i++ {
		if a[i].Type == a[i-1].Type {
			return nil, fmt.Errorf("keystore: attribute 0x%x given twice", a[i].Type)
		}
	}
	if len(a) > maxAttributes {
		return nil, fmt.Errorf("%w: %d attributes, at most %d", ErrTooLarge, len(a), maxAttributes)
	}
	size := 4
	for _, at := range a {
		if len(at.Value) > MaxAttributeValue {
			return nil, fmt.Errorf("%w: attribute 0x%x is %d bytes, at most %d", ErrTooLarge, at.Type, len(at.Value), MaxAttributeValue)
		}
		size += 12 + len(at.Value)
	}
	if size > maxAttributesSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrTooLarge, size, maxAttributesSize)
	}
	return a, nil
}

// Ulong encodes a CK_ULONG attribute value.
func Ulong(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Bool encodes a CK_BBOOL attribute value.
func Bool(v bool) []byte {
	if v {
		return []byte{1}
	}
	return []byte{0}
}

// Get returns the value of attribute t.
func (a Attributes) Get(t uint64) ([]byte, bool) {
	i, ok := slices.BinarySearchFunc(a, t, func(at Attribute, t uint64) int {
		switch {
		case at.Type < t:
			return -1
		case at.Type > t:
			return 1
		}
		return 0
	})
	if !ok {
		return nil, false
	}
	return a[i].Value, true
}

// Ulong returns attribute t decoded as a CK_ULONG.
func (a Attributes) Ulong(t uint64) (uint64, bool, error) {
	v, ok := a.Get(t)
	if !ok {
		return 0, false, nil
	}
	if len(v) != 8 {
		return 0, true, fmt.Errorf("keystore: attribute 0x%x is %d bytes, a CK_ULONG is 8", t, len(v))
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// Bool returns attribute t decoded as a CK_BBOOL; absent reads as def.
func (a Attributes) Bool(t uint64, def bool) (bool, error) {
	v, ok := a.Get(t)
	if !ok {
		return def, nil
	}
	if len(v) != 1 || v[0] > 1 {
		return false, fmt.Errorf("keystore: attribute 0x%x is not a CK_BBOOL", t)
	}
	return v[0] == 1, nil
}

// Encode returns the canonical encoding:
//
//	count u32 | { type u64 | length u32 | value } * count
//
// all big-endian, attributes in increasing type order.
func (a Attributes) Encode() []byte {
	n := 4
	for _, at := range a {
		n += 12 + len(at.Value)
	}
	b := make([]byte, 0, n)
	b = binary.BigEndian.AppendUint32(b, uint32(len(a)))
	for _, at := range a {
		b = binary.BigEndian.AppendUint64(b, at.Type)
		b = binary.BigEndian.AppendUint32(b, uint32(len(at.Value)))
		b = append(b, at.Value...)
	}
	return b
}

var errAttrEncoding = errors.New("keystore: malformed attribute encoding")

// DecodeAttributes parses a canonical encoding. Anything that would not
// re-encode to the same bytes (unsorted, duplicated, trailing data) is
// refused. The values alias b.
func DecodeAttributes(b []byte) (Attributes, error) {
	if len(b) > maxAttributesSize || len(b) < 4 {
		return nil, errAttrEncoding
	}
	count := binary.BigEndian.Uint32(b)
	b = b[4:]
	if count > maxAttributes || uint64(count)*12 > uint64(len(b)) {
		return nil, errAttrEncoding
	}
	a := make(Attributes, 0, count)
	for i := uint32(0); i < count; i++ {
		if len(b) < 12 {
			return nil, errAttrEncoding
		}
		t := binary.BigEndian.Uint64(b)
		l := binary.BigEndian.Uint32(b[8:])
		b = b[12:]
		if l > MaxAttributeValue || uint64(l) > uint64(len(b)) {
			return nil, errAttrEncoding
		}
		if i > 0 && t <= a[i-1].Type {
			return nil, errAttrEncoding
		}
		a = append(a, Attribute{Type: t, Value: b[:l:l]})
		b = b[l:]
	}
	if len(b) != 0 {
		return nil, errAttrEncoding
	}
	return a, nil
}

// Equal reports whether a and b hold the same attributes.
func (a Attributes) Equal(b Attributes) bool {
	return slices.EqualFunc(a, b, func(x, y Attribute) bool {
		return x.Type == y.Type && bytes.Equal(x.Value, y.Value)
	})
}

// index holds what the keystore copies out of the attributes into indexed
// columns, so that finding an object does not need to decode every row.
type index struct {
	class      uint64
	keyType    uint64
	hasKeyType bool
	label      []byte
	id         []byte
	private    bool
}

func (a Attributes) index() (index, error) {
	var ix index
	class, ok, err := a.Ulong(AttrClass)
	if err != nil {
		return ix, err
	}
	if !ok {
		return ix, errors.New("keystore: object has no CKA_CLASS")
	}
	ix.class = class
	ix.keyType, ix.hasKeyType, err = a.Ulong(AttrKeyType)
	if err != nil {
		return ix, err
	}
	// A present attribute with an empty value is an empty byte string, not
	// an absent one: normalise so the indexed columns agree with a decode.
	if ix.label, ok = a.Get(AttrLabel); ok && ix.label == nil {
		ix.label = []byte{}
	}
	if ix.id, ok = a.Get(AttrID); ok && ix.id == nil {
		ix.id = []byte{}
	}
	// PKCS#11 makes a missing CKA_PRIVATE mean TRUE for keys; the keystore
	// takes the safe reading for every class and seals under the token data
	// key unless the object says it is public.
	ix.private, err = a.Bool(AttrPrivate, true)
	return ix, err
}
