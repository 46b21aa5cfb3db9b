package wire

import (
	"fmt"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

// HasResults reports whether a reply to call c with return value rv carries
// results (docs/protocol.md, "Frames"): always for ck.CKR_OK and
// ck.CKR_BUFFER_TOO_SMALL, for C_GetAttributeValue also with
// ck.CKR_ATTRIBUTE_SENSITIVE and ck.CKR_ATTRIBUTE_TYPE_INVALID, never otherwise.
func HasResults(c *calls.Call, rv uint64) bool {
	switch rv {
	case ck.CKR_OK, ck.CKR_BUFFER_TOO_SMALL:
		return true
	case ck.CKR_ATTRIBUTE_SENSITIVE, ck.CKR_ATTRIBUTE_TYPE_INVALID:
		for _, a := range c.Args {
			if a.Kind == calls.AttrQuery {
				return true
			}
		}
	}
	return false
}

func isOutput(k calls.Kind) bool {
	switch k {
	case calls.OutUlong, calls.OutBytes, calls.OutUlongs, calls.OutHandles, calls.AttrQuery, calls.OutStruct,
		calls.OutFilled, calls.MsgParamOut, calls.OptOutBytes:
		return true
	}
	return false
}

// Results builds the results of one reply. The daemon supplies the call's
// outputs in argument order, one method per output kind, then calls Finish.
// Supplying an output of the wrong kind or out of order, or finishing with
// one missing, is a programming error and panics (the daemon recovers per
// request and answers ck.CKR_GENERAL_ERROR). A Results can be Reset and reused.
//
// A reply whose rv carries no results (HasResults) is sent without them;
// Results.AppendReply decides.
type Results struct {
	call *calls.Call
	next int // index in call.Args where the search for the next output starts
	buf  []byte
}

// NewResults returns a builder for the results of call c.
func NewResults(c *calls.Call) *Results {
	r := new(Results)
	r.Reset(c)
	return r
}

// Reset starts the results of call c, keeping the buffer.
func (r *Results) Reset(c *calls.Call) {
	r.call, r.next = c, 0
	if r.buf == nil {
		r.buf = make([]byte, 0, 256)
	}
	r.buf = r.buf[:0]
}

// Shrink drops the buffer if it grew past keep bytes, so that a builder
// kept between calls does not hold on to the largest results it ever made.
// The results returned before are no longer valid.
func (r *Results) Shrink(keep int) {
	if cap(r.buf) > keep {
		r.call, r.next, r.buf = nil, 0, nil
	}
}

func (r *Results) expect(k calls.Kind) *calls.Arg {
	if r.call == nil {
		panic("wire: internal error: Results used without a call")
	}
	for r.next < len(r.call.Args) {
		arg := &r.call.Args[r.next]
		r.next++
		if !isOutput(arg.Kind) {
			continue
		}
		if arg.Kind != k {
			panic(fmt.Sprintf("wire: internal error: %s output %s is %s, not %s", r.call.Name, arg.Name, kindName(arg.Kind), kindName(k)))
		}
		return arg
	}
	panic(fmt.Sprintf("wire: internal error: %s has no more outputs (%s supplied)", r.call.Name, kindName(k)))
}

// Ulong supplies an OutUlong output.
func (r *Results) Ulong(v uint64) {
	r.expect(calls.OutUlong)
	r.buf = appendU64(r.buf, v)
}

// OutBytes supplies an OutBytes output under the size-query convention:
// for a NULL buffer it writes the length and no data and returns ck.CKR_OK;
// for a buffer shorter than data, the length and no data and returns
// ck.CKR_BUFFER_TOO_SMALL; otherwise the length and the data, ck.CKR_OK. In the
// first two cases an operation in progress stays alive. A prefetch (a NULL
// buffer asking for the whole result) gets the length and the data, with
// ck.CKR_OK, when the data is at most MaxPrefetch bytes; the operation
// stays alive as for any NULL buffer, its output kept.
func (r *Results) OutBytes(spec OutSpec, data []byte) uint64 {
	r.expect(calls.OutBytes)
	if spec.Prefetch && !spec.Present && len(data) <= MaxPrefetch {
		r.buf = appendU64(r.buf, uint64(len(data)))
		r.buf = appendBytes(r.buf, data, false)
		return ck.CKR_OK
	}
	if rv, fits := r.outLength(spec, uint64(len(data))); !fits {
		return rv
	}
	r.buf = appendBytes(r.buf, data, false)
	return ck.CKR_OK
}

// MaxPrefetch is the longest result a prefetch carries. A prefetch's
// buffer is NULL, so the request declares no room for it; ResultsBound
// counts this much for it instead, which keeps a prefetch's reply within
// the 64 KiB a daemon's connection holds between calls, outside its
// replies' budget, unless the call's other results are large. Past it
// the round trip saved is small beside the copy, and the module holds
// less.
const MaxPrefetch = 32 << 10

// outLength writes an output's length and, when the caller's buffer is
// NULL or too short, the empty data that follows it with the code to
// return; fits says the data is to follow instead.
func (r *Results) outLength(spec OutSpec, n uint64) (rv uint64, fits bool) {
	r.buf = appendU64(r.buf, n)
	switch {
	case !spec.Present:
		rv = ck.CKR_OK
	case spec.Capacity < n:
		rv = ck.CKR_BUFFER_TOO_SMALL
	default:
		return ck.CKR_OK, true
	}
	r.buf = appendU32(r.buf, nullLen)
	return rv, false
}

// OutUlongs supplies an OutUlongs output under the size-query convention,
// as OutBytes does, with the capacity counted in items.
func (r *Results) OutUlongs(spec OutSpec, items []uint64) uint64 {
	r.expect(calls.OutUlongs)
	if len(items) > MaxUlongs {
		panic(fmt.Sprintf("wire: internal error: %d items over %d", len(items), MaxUlongs))
	}
	if rv, fits := r.outLength(spec, uint64(len(items))); !fits {
		return rv
	}
	r.buf = appendUlongs(r.buf, items, false)
	return ck.CKR_OK
}

// Filled supplies an OutFilled output: exactly as many bytes as the
// request's Filled asked for.
func (r *Results) Filled(data []byte) {
	r.expect(calls.OutFilled)
	r.buf = appendBytes(r.buf, data, false)
}

// Handles supplies C_FindObjects' handles: at most the request's Max, and
// at most MaxUlongs.
func (r *Results) Handles(h []uint64) {
	r.expect(calls.OutHandles)
	if len(h) > MaxUlongs {
		panic(fmt.Sprintf("wire: internal error: %d handles over %d", len(h), MaxUlongs))
	}
	r.buf = appendUlongs(r.buf, h, false)
}

// Answers supplies C_GetAttributeValue's per-attribute outcomes, one per
// query, in order (see AnswerFor).
func (r *Results) Answers(a []Answer) {
	r.expect(calls.AttrQuery)
	if err := checkAnswers(a); err != nil {
		panic("wire: internal error: " + err.Error())
	}
	r.buf = appendAnswers(r.buf, a)
}

// Struct supplies an OutStruct output; s must be the structure the call's
// table entry names.
func (r *Results) Struct(s Struct) {
	arg := r.expect(calls.OutStruct)
	if arg.Struct != s.CType() {
		panic(fmt.Sprintf("wire: internal error: %s output %s is %s, not %s", r.call.Name, arg.Name, arg.Struct, s.CType()))
	}
	r.buf = appendStruct(r.buf, s)
}

// Finish checks that every output was supplied and returns the results for
// AppendReply. The slice is never nil (has-results = 1, even when a call
// has no outputs) and is valid until the next Reset.
func (r *Results) Finish() []byte {
	if r.call == nil {
		panic("wire: internal error: Results used without a call")
	}
	for _, arg := range r.call.Args[r.next:] {
		if isOutput(arg.Kind) {
			panic(fmt.Sprintf("wire: internal error: %s output %s not supplied", r.call.Name, arg.Name))
		}
	}
	r.next = len(r.call.Args)
	return r.buf
}

// AppendReply appends the reply to request id with return value rv: with
// the results (after Finish's checks) when rv carries them (HasResults), and
// without them otherwise, whatever was supplied.
func (r *Results) AppendReply(dst []byte, id uint32, rv uint64) []byte {
	if r.call != nil && HasResults(r.call, rv) {
		return AppendReply(dst, id, rv, r.Finish())
	}
	return AppendReply(dst, id, rv, nil)
}

// DecodeResults decodes the results of a reply to call c with return value
// rv (client side). vals has one Value per entry of c.Args, with the
// outputs filled and Kind set on every entry. The results must decode
// exactly; a data length that disagrees with its bytes, data with
// ck.CKR_BUFFER_TOO_SMALL, or an rv that carries no results (HasResults) is
// ErrMalformed. Byte slices alias body.
func DecodeResults(c *calls.Call, rv uint64, body []byte) ([]Value, error) {
	if c == nil || c.Mode != calls.Forwarded {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, c)
	}
	if !HasResults(c, rv) {
		return nil, fmt.Errorf("%w: %s: rv %#x carries no results", ErrMalformed, c.Name, rv)
	}
	r := reader{b: body}
	vals := make([]Value, len(c.Args))
	for i := range c.Args {
		arg, v := &c.Args[i], &vals[i]
		v.Kind = arg.Kind
		switch arg.Kind {
		case calls.OutUlong:
			v.Ulong = r.u64(arg.Name)
		case calls.OutBytes:
			v.Length = r.u64(arg.Name)
			v.Bytes, v.Null = r.bytes(arg.Name)
			r.checkOut(v.Length, len(v.Bytes), v.Null, rv, arg.Name)
		case calls.OutUlongs:
			v.Length = r.u64(arg.Name)
			v.Ulongs, v.Null = r.ulongs(arg.Name)
			r.checkOut(v.Length, len(v.Ulongs), v.Null, rv, arg.Name)
		case calls.OutHandles:
			var null bool
			if v.Ulongs, null = r.ulongs(arg.Name); null {
				r.fail("%s: NULL handles", arg.Name)
			}
		case calls.OutFilled:
			var null bool
			if v.Bytes, null = r.bytes(arg.Name); null {
				r.fail("%s: NULL data", arg.Name)
			}
		case calls.AttrQuery:
			v.Answers = r.answers()
		case calls.OutStruct:
			s, ok := newStruct(arg.Struct)
			if !ok {
				panic("wire: internal error: no Go type for " + arg.Struct)
			}
			r.structure(s)
			v.Struct = s
		case calls.MsgParamOut:
			v.Param = r.msgOut(arg)
		case calls.OptOutBytes:
			if v.Null = !r.present(arg.Name); !v.Null {
				v.Length = r.u64(arg.Name)
				var null bool
				v.Bytes, null = r.bytes(arg.Name)
				r.checkOut(v.Length, len(v.Bytes), null, rv, arg.Name)
			}
		}
		if r.err != nil {
			break
		}
	}
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	return vals, nil
}

// checkOut checks an outbytes or outulongs result: data, when present, is as
// long as the length says and does not come with ck.CKR_BUFFER_TOO_SMALL.
func (r *reader) checkOut(length uint64, n int, null bool, rv uint64, what string) {
	if r.err != nil || null {
		return
	}
	if rv == ck.CKR_BUFFER_TOO_SMALL {
		r.fail("%s: data with CKR_BUFFER_TOO_SMALL", what)
	} else if length != uint64(n) {
		r.fail("%s: length %d with %d items", what, length, n)
	}
}

// EncodeResults encodes the outputs in vals (one Value per entry of c.Args)
// as results, as a daemon would: for tests and fake daemons. Unlike the
// Results builder it writes the lengths it is given.
func EncodeResults(c *calls.Call, vals []Value) ([]byte, error) {
	if c == nil || c.Mode != calls.Forwarded {
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, c)
	}
	if len(vals) != len(c.Args) {
		return nil, fmt.Errorf("wire: %s takes %d values, not %d", c.Name, len(c.Args), len(vals))
	}
	b := []byte{}
	for i := range c.Args {
		arg, v := &c.Args[i], &vals[i]
		if !isOutput(arg.Kind) {
			continue
		}
		if v.Kind != 0 && v.Kind != arg.Kind {
			return nil, fmt.Errorf("wire: %s output %s is %s, not %s", c.Name, arg.Name, kindName(arg.Kind), kindName(v.Kind))
		}
		var err error
		switch arg.Kind {
		case calls.OutUlong:
			b = appendU64(b, v.Ulong)
		case calls.OutBytes:
			if err = checkBytes(v.Bytes, v.Null, arg.Name); err == nil {
				b = appendU64(b, v.Length)
				b = appendBytes(b, v.Bytes, v.Null)
			}
		case calls.OutUlongs, calls.OutHandles:
			switch {
			case arg.Kind == calls.OutHandles && v.Null:
				err = fmt.Errorf("wire: NULL handles")
			case len(v.Ulongs) > MaxUlongs:
				err = fmt.Errorf("wire: %d items over %d", len(v.Ulongs), MaxUlongs)
			case arg.Kind == calls.OutUlongs:
				b = appendU64(b, v.Length)
				fallthrough
			default:
				b = appendUlongs(b, v.Ulongs, v.Null)
			}
		case calls.OutFilled:
			if v.Null {
				err = fmt.Errorf("wire: NULL data")
			} else if err = checkBytes(v.Bytes, false, arg.Name); err == nil {
				b = appendBytes(b, v.Bytes, false)
			}
		case calls.AttrQuery:
			if err = checkAnswers(v.Answers); err == nil {
				b = appendAnswers(b, v.Answers)
			}
		case calls.OutStruct:
			if v.Struct == nil || v.Struct.CType() != arg.Struct {
				err = fmt.Errorf("wire: want a %s", arg.Struct)
			} else {
				b = appendStruct(b, v.Struct)
			}
		case calls.MsgParamOut:
			b, err = appendMsgOut(b, arg, v.Param)
		case calls.OptOutBytes:
			b = appendBool(b, !v.Null)
			if !v.Null {
				if err = checkBytes(v.Bytes, v.Bytes == nil, arg.Name); err == nil {
					b = appendU64(b, v.Length)
					b = appendBytes(b, v.Bytes, v.Bytes == nil)
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s output %s: %w", c.Name, arg.Name, err)
		}
	}
	return b, nil
}
