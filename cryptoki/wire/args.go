package wire

import (
	"fmt"
	"strings"

	"hsmemu/cryptoki/calls"
)

// LabelSize is the width of C_InitToken's label.
const LabelSize = 32

// Args are the decoded arguments of one request, by position: index i is
// the call's Args[i] in package calls, whatever its kind, so the daemon
// reads them with the table's indices. Each accessor checks the kind and
// panics on a mismatch (the table fixes kinds, so that is a programming
// error); bad input never reaches an accessor, because Decode refuses it.
//
// Slices returned by the accessors alias the request body: they are valid
// until the body's buffer is reused, and until the next Decode or Reset.
// The daemon copies what it keeps. An Args is not safe for concurrent use.
//
// String prints the arguments' shapes only: they may hold PINs and keys.
type Args struct {
	call *calls.Call
	vals []argVal
	// A call has at most one mechanism or message parameter (no call
	// of the table has two, nor one of each): kept here rather than in
	// every argVal, whose storage Decode and Reset clear for every
	// request.
	mech  Mechanism
	param Param // MsgParam, MsgParamOut
}

// argVal is one decoded argument; only the fields of its kind are set.
type argVal struct {
	kind  calls.Kind
	ulong uint64 // Ulong; OutHandles' max; OutFilled's length
	byt   byte   // Byte
	null  bool   // Bytes, Label
	bytes []byte // Bytes, Label
	tmpl  []Attribute
	out   OutSpec // OutBytes, OutUlongs, OptOutBytes (null: no length pointer)
	query []Query
}

// DecodeArgs decodes the arguments of call c from a request body. It fails
// with ErrUnsupported for a call the module does not forward, and with
// ErrMalformed for a body that does not decode exactly.
func DecodeArgs(c *calls.Call, body []byte) (*Args, error) {
	a := new(Args)
	if err := a.Decode(c, body); err != nil {
		return nil, err
	}
	return a, nil
}

// Decode is DecodeArgs into a, reusing its storage. After an error a holds
// nothing.
func (a *Args) Decode(c *calls.Call, body []byte) error {
	a.Reset()
	if c == nil {
		return fmt.Errorf("%w: no call", ErrUnsupported)
	}
	if c.Mode != calls.Forwarded {
		return fmt.Errorf("%w: %s", ErrUnsupported, c.Name)
	}
	r := reader{b: body}
	for i := range c.Args {
		arg := &c.Args[i]
		a.vals = append(a.vals, argVal{kind: arg.Kind})
		v := &a.vals[i]
		switch arg.Kind {
		case calls.Ulong:
			v.ulong = r.u64(arg.Name)
		case calls.Byte:
			v.byt = r.u8(arg.Name)
		case calls.Bytes:
			v.bytes, v.null = r.bytes(arg.Name)
		case calls.Label:
			v.bytes, v.null = r.bytes(arg.Name)
			if r.err == nil && !v.null && len(v.bytes) != LabelSize {
				r.fail("%s: %d bytes, not %d", arg.Name, len(v.bytes), LabelSize)
			}
		case calls.Template:
			v.tmpl = r.template(false)
		case calls.Mechanism:
			a.mech = r.mechanism()
		case calls.OutBytes:
			if calls.Prefetches(c) {
				v.out.Present, v.out.Prefetch = r.outPresence(arg.Name)
			} else {
				v.out.Present = r.present(arg.Name)
			}
			v.out.Capacity = r.u64(arg.Name)
		case calls.OutUlongs:
			v.out.Present = r.present(arg.Name)
			v.out.Capacity = r.u64(arg.Name)
		case calls.OutHandles:
			v.ulong = r.u64(arg.Name)
		case calls.OutFilled:
			if v.ulong = r.u64(arg.Name); v.ulong > MaxBytes {
				r.fail("%s: length %d over %d", arg.Name, v.ulong, MaxBytes)
			}
		case calls.AttrQuery:
			v.query = r.queries()
		case calls.MsgParam, calls.MsgParamOut:
			if arg.Mech {
				v.ulong = r.u64(arg.Name)
			}
			if r.err == nil {
				a.param = r.msgParam(arg)
			}
		case calls.OptOutBytes:
			if v.null = !r.present(arg.Name); !v.null {
				if calls.Prefetches(c) {
					v.out.Present, v.out.Prefetch = r.outPresence(arg.Name)
				} else {
					v.out.Present = r.present(arg.Name)
				}
				v.out.Capacity = r.u64(arg.Name)
			}
		case calls.OutUlong, calls.OutStruct, calls.Ignored, calls.Reserved:
			// Nothing travels in the request.
		default:
			panic(fmt.Sprintf("wire: internal error: %s argument %s has kind %d", c.Name, arg.Name, arg.Kind))
		}
		if r.err != nil {
			break
		}
	}
	if err := r.done(); err != nil {
		a.Reset()
		return fmt.Errorf("%s: %w", c.Name, err)
	}
	a.call = c
	return nil
}

// Reset empties a, keeping its storage for the next Decode.
func (a *Args) Reset() {
	clear(a.vals) // drop references to the old body
	a.vals = a.vals[:0]
	a.call = nil
	a.mech, a.param = Mechanism{}, Param{}
}

// Call returns the call a was decoded for (nil before a successful Decode).
func (a *Args) Call() *calls.Call { return a.call }

// Len returns the number of arguments, the length of the call's Args.
func (a *Args) Len() int { return len(a.vals) }

func (a *Args) at(i int, kinds ...calls.Kind) *argVal {
	if i >= 0 && i < len(a.vals) {
		for _, k := range kinds {
			if a.vals[i].kind == k {
				return &a.vals[i]
			}
		}
	}
	panic(a.misuse(i, kinds))
}

func (a *Args) misuse(i int, kinds []calls.Kind) string {
	name := "no call"
	if a.call != nil {
		name = a.call.Name
	}
	if i < 0 || i >= len(a.vals) {
		return fmt.Sprintf("wire: internal error: %s has no argument %d", name, i)
	}
	return fmt.Sprintf("wire: internal error: %s argument %d is %s, not %s", name, i, kindName(a.vals[i].kind), kindName(kinds[0]))
}

// Ulong returns Ulong argument i.
func (a *Args) Ulong(i int) uint64 { return a.at(i, calls.Ulong).ulong }

// Byte returns Byte argument i.
func (a *Args) Byte(i int) byte { return a.at(i, calls.Byte).byt }

// Bytes returns Bytes argument i, and whether its pointer was NULL.
func (a *Args) Bytes(i int) (b []byte, null bool) {
	v := a.at(i, calls.Bytes)
	return v.bytes, v.null
}

// Label returns Label argument i (LabelSize bytes), or null.
func (a *Args) Label(i int) (b []byte, null bool) {
	v := a.at(i, calls.Label)
	return v.bytes, v.null
}

// Template returns Template argument i.
func (a *Args) Template(i int) []Attribute { return a.at(i, calls.Template).tmpl }

// Mechanism returns Mechanism argument i. The pointer is into a.
func (a *Args) Mechanism(i int) *Mechanism {
	a.at(i, calls.Mechanism)
	return &a.mech
}

// Out returns the output specification of OutBytes or OutUlongs argument i.
func (a *Args) Out(i int) OutSpec { return a.at(i, calls.OutBytes, calls.OutUlongs).out }

// Max returns OutHandles argument i: the caller's ulMaxObjectCount, as it
// came. A reply carries at most MaxUlongs handles, so the daemon returns at
// most min(Max, MaxUlongs).
func (a *Args) Max(i int) uint64 { return a.at(i, calls.OutHandles).ulong }

// Filled returns OutFilled argument i: how many bytes the caller's buffer
// holds, all of which the daemon fills (at most MaxBytes).
func (a *Args) Filled(i int) uint64 { return a.at(i, calls.OutFilled).ulong }

// Query returns AttrQuery argument i.
func (a *Args) Query(i int) []Query { return a.at(i, calls.AttrQuery).query }

// Values returns the arguments in the client's form, for EncodeArgs.
func (a *Args) Values() []Value {
	vals := make([]Value, len(a.vals))
	for i := range a.vals {
		v := &a.vals[i]
		x := Value{Kind: v.kind, Ulong: v.ulong, Byte: v.byt, Bytes: v.bytes, Null: v.null,
			Template: v.tmpl, Out: v.out, Query: v.query}
		switch v.kind {
		case calls.Mechanism:
			m := a.mech
			x.Mechanism = &m
		case calls.MsgParam, calls.MsgParamOut:
			p := a.param
			x.Param = &p
		}
		vals[i] = x
	}
	return vals
}

// String prints the call and the shape of each argument, never the bytes.
func (a *Args) String() string {
	if a.call == nil {
		return "no arguments"
	}
	var sb strings.Builder
	sb.WriteString(a.call.Name)
	sb.WriteByte('(')
	n := 0
	for i, v := range a.Values() {
		switch v.Kind {
		case calls.Ignored, calls.Reserved, calls.OutUlong, calls.OutStruct:
			continue
		}
		if n > 0 {
			sb.WriteString(", ")
		}
		n++
		fmt.Fprintf(&sb, "%s=%v", a.call.Args[i].Name, v)
	}
	sb.WriteByte(')')
	return sb.String()
}

// GoString is String.
func (a *Args) GoString() string { return a.String() }

// EncodeArgs encodes the arguments of call c as the module does: vals holds
// one Value per entry of c.Args (those of kinds that do not travel are
// ignored). It fails for a call that is not forwarded, and for values that
// the protocol cannot carry or the module would refuse to send.
func EncodeArgs(c *calls.Call, vals []Value) ([]byte, error) {
	return AppendArgs(nil, c, vals)
}

// AppendArgs is EncodeArgs appending to dst.
func AppendArgs(dst []byte, c *calls.Call, vals []Value) ([]byte, error) {
	if c == nil || c.Mode != calls.Forwarded {
		return dst, fmt.Errorf("%w: %v", ErrUnsupported, c)
	}
	if len(vals) != len(c.Args) {
		return dst, fmt.Errorf("wire: %s takes %d values, not %d", c.Name, len(c.Args), len(vals))
	}
	start := len(dst)
	b := dst
	for i := range c.Args {
		arg, v := &c.Args[i], &vals[i]
		if v.Kind != 0 && v.Kind != arg.Kind {
			return dst, fmt.Errorf("wire: %s argument %s is %s, not %s", c.Name, arg.Name, kindName(arg.Kind), kindName(v.Kind))
		}
		var err error
		switch arg.Kind {
		case calls.Ulong, calls.OutHandles:
			b = appendU64(b, v.Ulong)
		case calls.OutFilled:
			if v.Ulong > MaxBytes {
				err = fmt.Errorf("wire: length %d over %d", v.Ulong, MaxBytes)
			}
			b = appendU64(b, v.Ulong)
		case calls.Byte:
			b = appendU8(b, v.Byte)
		case calls.Bytes, calls.Label:
			if arg.Kind == calls.Label && !v.Null && len(v.Bytes) != LabelSize {
				err = fmt.Errorf("wire: label of %d bytes, not %d", len(v.Bytes), LabelSize)
				break
			}
			if err = checkBytes(v.Bytes, v.Null, arg.Name); err == nil {
				b = appendBytes(b, v.Bytes, v.Null)
			}
		case calls.Template:
			b, err = appendTemplate(b, v.Template, false)
		case calls.Mechanism:
			b, err = appendMechanism(b, v.Mechanism)
		case calls.OutBytes, calls.OutUlongs:
			b = appendOutPresence(b, v.Out)
			b = appendU64(b, v.Out.Capacity)
		case calls.AttrQuery:
			b, err = appendQueries(b, v.Query)
		case calls.MsgParam, calls.MsgParamOut:
			if arg.Mech {
				b = appendU64(b, v.Ulong)
			}
			b, err = appendMsgParam(b, arg, v.Param)
		case calls.OptOutBytes:
			b = appendBool(b, !v.Null)
			if !v.Null {
				b = appendOutPresence(b, v.Out)
				b = appendU64(b, v.Out.Capacity)
			}
		}
		if err != nil {
			return dst, fmt.Errorf("%s argument %s: %w", c.Name, arg.Name, err)
		}
	}
	if n := len(b) - start; n > MaxFrame-8 {
		return dst, fmt.Errorf("wire: %s: arguments of %d bytes over a frame's %d", c.Name, n, MaxFrame-8)
	}
	return b, nil
}

// kindName returns the name of an argument kind, for messages.
func kindName(k calls.Kind) string {
	names := [...]string{"invalid", "Ulong", "Byte", "Bytes", "Label", "Template", "Mechanism",
		"OutUlong", "OutBytes", "OutUlongs", "OutHandles", "AttrQuery", "OutStruct", "Ignored", "Reserved",
		"OutFilled", "MsgParam", "MsgParamOut", "OptOutBytes"}
	if k < 0 || int(k) >= len(names) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return names[k]
}
