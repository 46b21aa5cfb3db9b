package mech

import (
	"encoding/binary"

	"hsmemu/cryptoki/ck"
)

// wipe clears a buffer that held key material or plaintext.
func wipe(b []byte) { clear(b) }

// ulongOf reads a CK_ULONG attribute value (8 bytes, big-endian, as the
// wire and the keystore hold it); anything else reads as all ones, which
// no size or type is.
func ulongOf(v []byte) uint64 {
	if len(v) != 8 {
		return ^uint64(0)
	}
	return binary.BigEndian.Uint64(v)
}

// ulong encodes a CK_ULONG attribute value.
func ulong(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// asRV keeps an error that is a CK_RV and makes any other fallback: a
// library's error text says nothing a client can use.
func asRV(err error, fallback uint64) error {
	if _, ok := ck.RVOf(err); ok {
		return err
	}
	return ck.Error(fallback)
}
