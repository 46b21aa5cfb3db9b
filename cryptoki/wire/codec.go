package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"hsmemu/cryptoki/ck"
)

// Caps on what the peer may declare (docs/protocol.md, "Values").
const (
	MaxFrame  = 16 << 20 // bytes after a frame's length field
	MaxBytes  = 16 << 20 // length of one bytes value
	MaxUlongs = 1 << 20  // items in one ulongs value
	MaxAttrs  = 4096     // attributes in one template, query or answers
)

// nullLen is the u32 length (or count) that stands for a NULL pointer.
const nullLen = 0xFFFFFFFF

var (
	// ErrMalformed means the arguments (or, on the client, the results) do
	// not decode exactly: short, trailing bytes, a count or length over its
	// cap, a presence byte other than 0 or 1, a template nested too deep.
	// The daemon answers ck.CKR_ARGUMENTS_BAD and keeps the connection.
	ErrMalformed = errors.New("wire: malformed")

	// ErrFrame means the framing itself is broken (a length of zero, short,
	// or over MaxFrame; a bad hello): the stream can no longer be trusted,
	// and the caller must close the connection.
	ErrFrame = errors.New("wire: broken framing")

	// ErrUnsupported means the call is not one the module forwards (local,
	// unsupported, or unknown). The daemon answers
	// ck.CKR_FUNCTION_NOT_SUPPORTED.
	ErrUnsupported = errors.New("wire: call not forwarded")

	// ErrParam means a mechanism's parameter is absent or is not the
	// structure asked for. The daemon answers ck.CKR_MECHANISM_PARAM_INVALID.
	ErrParam = errors.New("wire: mechanism parameter of another type")
)

// RV maps an error of this package to the CK_RV the daemon answers with:
// ck.CKR_ARGUMENTS_BAD for ErrMalformed, ck.CKR_FUNCTION_NOT_SUPPORTED for
// ErrUnsupported, ck.CKR_MECHANISM_PARAM_INVALID for ErrParam, ck.CKR_OK for nil,
// and ck.CKR_GENERAL_ERROR for anything else.
func RV(err error) uint64 {
	switch {
	case err == nil:
		return ck.CKR_OK
	case errors.Is(err, ErrMalformed):
		return ck.CKR_ARGUMENTS_BAD
	case errors.Is(err, ErrUnsupported):
		return ck.CKR_FUNCTION_NOT_SUPPORTED
	case errors.Is(err, ErrParam):
		return ck.CKR_MECHANISM_PARAM_INVALID
	}
	return ck.CKR_GENERAL_ERROR
}

// reader decodes big-endian values from b. The first failure is sticky: it
// records an ErrMalformed error, empties b, and every later read returns
// zero values, so decoders check r.err once per loop rather than per read.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
	}
	r.b = nil
}

func (r *reader) short(what string) { r.fail("%s: truncated", what) }

// done fails unless every byte was consumed.
func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	return r.err
}

func (r *reader) u8(what string) byte {
	if len(r.b) < 1 {
		r.short(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u32(what string) uint32 {
	if len(r.b) < 4 {
		r.short(what)
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64(what string) uint64 {
	if len(r.b) < 8 {
		r.short(what)
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// present reads a presence byte, which must be 0 or 1.
func (r *reader) present(what string) bool {
	v := r.u8(what)
	if v > 1 {
		r.fail("%s: presence byte %d", what, v)
	}
	return v == 1
}

// outPresence reads an outspec's presence byte where a prefetch may be
// asked for: 0 NULL, 1 a buffer, 2 NULL asking for the whole result.
func (r *reader) outPresence(what string) (present, prefetch bool) {
	v := r.u8(what)
	if v > 2 {
		r.fail("%s: presence byte %d", what, v)
	}
	return v == 1, v == 2
}

// take returns the next n bytes, aliasing the input.
func (r *reader) take(n int, what string) []byte {
	if len(r.b) < n {
		r.short(what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// bytes reads a bytes value: u32 length (nullLen for NULL), then the bytes.
// A non-NULL result is never nil, even when empty.
func (r *reader) bytes(what string) (b []byte, null bool) {
	n := r.u32(what)
	switch {
	case r.err != nil:
		return nil, false
	case n == nullLen:
		return nil, true
	case n > MaxBytes:
		r.fail("%s: length %d over %d", what, n, MaxBytes)
		return nil, false
	}
	return r.take(int(n), what), false
}

// count reads a u32 count of items of at least minSize bytes each, checking
// it against max and against the bytes left, so that a caller can allocate
// count items without trusting the peer. allowNull accepts nullLen.
func (r *reader) count(what string, max, minSize int, allowNull bool) (n int, null bool) {
	c := r.u32(what)
	switch {
	case r.err != nil:
		return 0, false
	case c == nullLen && allowNull:
		return 0, true
	case c > uint32(max):
		r.fail("%s: count %d over %d", what, c, max)
		return 0, false
	case int(c)*minSize > len(r.b):
		r.short(what)
		return 0, false
	}
	return int(c), false
}

// ulongs reads a ulongs value: u32 count (nullLen for NULL), then u64s.
func (r *reader) ulongs(what string) (v []uint64, null bool) {
	n, null := r.count(what, MaxUlongs, 8, true)
	if r.err != nil || null {
		return nil, null
	}
	v = make([]uint64, n)
	for i := range v {
		v[i] = binary.BigEndian.Uint64(r.b[8*i:])
	}
	r.b = r.b[8*n:]
	return v, false
}

func appendU8(b []byte, v byte) []byte    { return append(b, v) }
func appendU32(b []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(b, v) }
func appendU64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// appendOutPresence writes an outspec's presence byte (reader.outPresence).
func appendOutPresence(b []byte, o OutSpec) []byte {
	if o.Prefetch && !o.Present {
		return append(b, 2)
	}
	return appendBool(b, o.Present)
}

// appendBytes writes a bytes value; null writes the NULL marker.
func appendBytes(b, p []byte, null bool) []byte {
	if null {
		return appendU32(b, nullLen)
	}
	b = appendU32(b, uint32(len(p)))
	return append(b, p...)
}

// appendUlongs writes a ulongs value; null writes the NULL marker.
func appendUlongs(b []byte, v []uint64, null bool) []byte {
	if null {
		return appendU32(b, nullLen)
	}
	b = appendU32(b, uint32(len(v)))
	for _, x := range v {
		b = appendU64(b, x)
	}
	return b
}

// checkBytes is the client-side (encoding) check of a bytes value.
func checkBytes(p []byte, null bool, what string) error {
	if !null && len(p) > MaxBytes {
		return fmt.Errorf("wire: %s: %d bytes over %d", what, len(p), MaxBytes)
	}
	return nil
}
