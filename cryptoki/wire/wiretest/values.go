package wiretest

import (
	"bytes"
	"encoding/binary"
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Arguments, short, as the tests write calls.

// U is a CK_ULONG argument (a handle, a slot, flags).
func U(v uint64) wire.Value { return wire.Value{Ulong: v} }

// B is a byte-string argument.
func B(b []byte) wire.Value { return wire.Value{Bytes: b} }

// S is a byte-string argument given as a string.
func S(s string) wire.Value { return wire.Value{Bytes: []byte(s)} }

// Null is a NULL byte-string argument.
func Null() wire.Value { return wire.Value{Null: true} }

// Out is an output buffer of capacity bytes (or items).
func Out(capacity uint64) wire.Value {
	return wire.Value{Out: wire.OutSpec{Present: true, Capacity: capacity}}
}

// SizeQuery is a NULL output buffer: the call asks for the length.
func SizeQuery() wire.Value { return wire.Value{} }

// None is an argument that carries nothing: an output the reply fills, or
// a parameter that does not travel.
func None() wire.Value { return wire.Value{} }

// T is a template argument.
func T(attrs ...wire.Attribute) wire.Value { return wire.Value{Template: attrs} }

// Q is C_GetAttributeValue's query.
func Q(qs ...wire.Query) wire.Value { return wire.Value{Query: qs} }

// M is a mechanism argument with no parameter.
func M(t uint64) wire.Value { return wire.Value{Mechanism: &wire.Mechanism{Type: t}} }

// MP is a mechanism argument with a parameter.
func MP(t uint64, p wire.Param) wire.Value {
	return wire.Value{Mechanism: &wire.Mechanism{Type: t, Present: true, Param: p}}
}

// A is an attribute.
func A(t uint64, v []byte) wire.Attribute { return wire.Attribute{Type: t, Value: v} }

// AU is a CK_ULONG attribute.
func AU(t uint64, v uint64) wire.Attribute { return wire.Attribute{Type: t, Value: Ulong(v)} }

// AB is a CK_BBOOL attribute.
func AB(t uint64, v bool) wire.Attribute {
	b := []byte{0}
	if v {
		b[0] = 1
	}
	return wire.Attribute{Type: t, Value: b}
}

// Ulong encodes a CK_ULONG attribute value; UlongOf reads one (all ones
// for anything but 8 bytes).
func Ulong(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func UlongOf(v []byte) uint64 {
	if len(v) != 8 {
		return ^uint64(0)
	}
	return binary.BigEndian.Uint64(v)
}

// Label32 is a 32-byte blank-padded label argument (C_InitToken).
func Label32(s string) wire.Value {
	b := []byte(s)
	for len(b) < 32 {
		b = append(b, ' ')
	}
	return wire.Value{Bytes: b}
}

// The PINs NewToken gives a token.
const (
	SOPIN   = "so-pin-1234"
	UserPIN = "user-pin-1234"
)

// NewToken initialises a token on slot 0, sets its user PIN, and returns
// its slot.
func (cl *Client) NewToken(label string) uint64 {
	cl.T.Helper()
	before := cl.Slots()
	cl.Must(ck.CKR_OK, "C_InitToken", U(0), S(SOPIN), Label32(label))
	after := cl.Slots()
	if len(after) != len(before)+1 {
		cl.T.Fatalf("slots %v after InitToken, before %v", after, before)
	}
	var slot uint64
	for _, s := range after {
		if !slices.Contains(before, s) {
			slot = s
		}
	}
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_SO), S(SOPIN))
	cl.Must(ck.CKR_OK, "C_InitPIN", U(h), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))
	return slot
}

// Slots lists the slots with a token.
func (cl *Client) Slots() []uint64 {
	cl.T.Helper()
	out := cl.Must(ck.CKR_OK, "C_GetSlotList", wire.Value{Byte: 1}, Out(64))
	return out[1].Ulongs
}

// Open opens a session.
func (cl *Client) Open(slot uint64, rw bool) uint64 {
	cl.T.Helper()
	flags := uint64(ck.CKF_SERIAL_SESSION)
	if rw {
		flags |= ck.CKF_RW_SESSION
	}
	out := cl.Must(ck.CKR_OK, "C_OpenSession", U(slot), U(flags), None(), None(), None())
	return out[4].Ulong
}

// TokenInfo is C_GetTokenInfo's answer.
func (cl *Client) TokenInfo(slot uint64) *wire.TokenInfo {
	cl.T.Helper()
	out := cl.Must(ck.CKR_OK, "C_GetTokenInfo", U(slot), None())
	return out[1].Struct.(*wire.TokenInfo)
}

// Create creates an object and returns its handle.
func (cl *Client) Create(h uint64, attrs ...wire.Attribute) uint64 {
	cl.T.Helper()
	out := cl.Must(ck.CKR_OK, "C_CreateObject", U(h), T(attrs...), None())
	return out[2].Ulong
}

// Get reads attributes with buffers of capacity 4096.
func (cl *Client) Get(h, obj uint64, types ...uint64) (uint64, []wire.Answer) {
	cl.T.Helper()
	qs := make([]wire.Query, len(types))
	for i, t := range types {
		qs[i] = wire.Query{Type: t, Present: true, Capacity: 4096}
	}
	rv, out := cl.Call("C_GetAttributeValue", U(h), U(obj), Q(qs...))
	if out == nil {
		return rv, nil
	}
	return rv, out[2].Answers
}

// Find returns every object matching a template, in batches of 7.
func (cl *Client) Find(h uint64, attrs ...wire.Attribute) []uint64 {
	cl.T.Helper()
	cl.Must(ck.CKR_OK, "C_FindObjectsInit", U(h), T(attrs...))
	var all []uint64
	for {
		out := cl.Must(ck.CKR_OK, "C_FindObjects", U(h), U(7))
		if len(out[1].Ulongs) == 0 {
			break
		}
		all = append(all, out[1].Ulongs...)
	}
	cl.Must(ck.CKR_OK, "C_FindObjectsFinal", U(h))
	return all
}

// DataObject is the template of a data object.
func DataObject(label string, token, private bool, value string) []wire.Attribute {
	return []wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_DATA), AB(ck.CKA_TOKEN, token), AB(ck.CKA_PRIVATE, private),
		A(ck.CKA_LABEL, []byte(label)), A(ck.CKA_VALUE, []byte(value)),
	}
}

// AESKey is the template of an AES-256 token key of value 0x11...11.
func AESKey(label string, sensitive, extractable bool) []wire.Attribute {
	return []wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, true),
		A(ck.CKA_LABEL, []byte(label)), A(ck.CKA_VALUE, bytes.Repeat([]byte{0x11}, 32)),
		AB(ck.CKA_SENSITIVE, sensitive), AB(ck.CKA_EXTRACTABLE, extractable),
	}
}
