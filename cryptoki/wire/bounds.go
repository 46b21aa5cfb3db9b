package wire

import (
	"hsmemu/cryptoki/calls"
)

// Bounds on what one call can need, so that the daemon can refuse a frame
// longer than its call could ever be before reading it, and know how long
// the reply can be before serving the call (docs/protocol.md, "What a
// request may carry").

const (
	// MaxShortBytes bounds a short bytes argument (calls.Arg.Short: a PIN,
	// a user name). Tokens take PINs of at most 255 bytes; the bound
	// leaves room for any token's.
	MaxShortBytes = 4096

	// MaxOutBytes is the longest output one reply can carry: a frame of
	// MaxFrame holding the reply's header and one outbytes value.
	MaxOutBytes = MaxFrame - replyHeader - 8 - 4

	// maxQuery is the longest query value: MaxAttrs queries.
	maxQuery = 4 + MaxAttrs*(8+1+8)
)

// RequestBound returns the longest request body (the arguments, after the
// frame's id and call) that call c can need when its variable-length
// arguments (data byte strings, templates, mechanisms with their
// parameters) take at most maxData bytes on the wire together. Every
// other argument has a fixed longest encoding: a call with none of those
// has a small, exact bound. The result is at most MaxFrame-8; a call that
// is not forwarded takes no arguments, so its bound is 0.
func RequestBound(c *calls.Call, maxData int) int {
	if c == nil || c.Mode != calls.Forwarded {
		return 0
	}
	n, variable := 0, false
	for _, a := range c.Args {
		switch a.Kind {
		case calls.Ulong, calls.OutHandles, calls.OutFilled:
			n += 8
		case calls.Byte:
			n++
		case calls.Label:
			n += 4 + LabelSize
		case calls.OutBytes, calls.OutUlongs:
			n += 1 + 8
		case calls.OptOutBytes:
			n += 1 + 1 + 8
		case calls.AttrQuery:
			n += maxQuery
		case calls.Bytes:
			if a.Short {
				n += 4 + MaxShortBytes
			} else {
				variable = true
			}
		case calls.Template, calls.Mechanism, calls.MsgParam, calls.MsgParamOut:
			if a.Mech {
				n += 8 // the mechanism type before its parameter
			}
			variable = true
		}
	}
	if variable {
		n += max(maxData, 0)
	}
	return min(n, MaxFrame-requestHeader)
}

// outBound is the longest data an output buffer's spec lets its reply
// carry: its capacity, nothing for a size query, MaxPrefetch for a
// prefetch.
func outBound(out OutSpec) int {
	switch {
	case out.Present:
		return capped(out.Capacity, MaxBytes)
	case out.Prefetch:
		return MaxPrefetch
	}
	return 0
}

// ResultsBound returns the longest results the reply to the call a was
// decoded for can carry, from what the request declared: the capacity of
// each output buffer (none for a size query, MaxPrefetch for a
// prefetch), the length C_GenerateRandom
// asked for, the most handles C_FindObjects may return, each queried
// attribute's capacity. The daemon's results are never longer, or, when
// longer than one reply can carry, are not sent (AppendReplyHead). The
// result is at most what one reply can carry.
func ResultsBound(a *Args) int {
	c := a.Call()
	if c == nil {
		return 0
	}
	n := 0
	for i, arg := range c.Args {
		switch arg.Kind {
		case calls.OutUlong:
			n += 8
		case calls.OutBytes:
			n += 8 + 4 + outBound(a.vals[i].out)
		case calls.OutUlongs:
			n += 8 + 4
			if out := a.vals[i].out; out.Present {
				n += 8 * capped(out.Capacity, MaxUlongs)
			}
		case calls.OutHandles:
			n += 4 + 8*capped(a.vals[i].ulong, MaxUlongs)
		case calls.OutFilled:
			n += 4 + capped(a.vals[i].ulong, MaxBytes)
		case calls.OutStruct:
			n += structSize(arg.Struct)
		case calls.MsgParamOut:
			n += msgOutBound(&a.param)
		case calls.OptOutBytes:
			n++
			if v := &a.vals[i]; !v.null {
				n += 8 + 4 + outBound(v.out)
			}
		case calls.AttrQuery:
			n += 4
			for _, q := range a.vals[i].query {
				n += 8 + 4
				switch {
				case !q.Present:
				case calls.Attrs[q.Type] == calls.AttrTemplate:
					// A nested template's values are not bounded by the
					// count the caller gave: at worst, a whole reply.
					n += MaxFrame
				default:
					n += capped(q.Capacity, MaxBytes)
				}
			}
		}
		if n >= MaxFrame-replyHeader {
			return MaxFrame - replyHeader
		}
	}
	return n
}

// msgOutBound is the longest msgout for a request's message parameter:
// each output as long as the caller's buffer for it.
func msgOutBound(p *Param) int {
	n := 1
	switch p.Kind {
	case calls.PBytes:
		n += 4 + len(p.Bytes)
	case calls.PStruct:
		for _, f := range outFields(p.Struct) {
			v := p.field(f.Name)
			n += 4 + len(v.Bytes)
			if f.Out == calls.FOutOnly {
				n += capped(v.Cap, MaxBytes)
			}
		}
	}
	return n
}

// capped returns v, or limit when v is larger.
func capped(v uint64, limit int) int {
	if v > uint64(limit) {
		return limit
	}
	return int(v)
}

// structSize is the encoded size of a fixed structure of calls.Structs.
func structSize(name string) int {
	n := 0
	for _, f := range calls.Structs[name] {
		switch f.Kind {
		case calls.FUlong:
			n += 8
		case calls.FByte:
			n++
		case calls.FVersion:
			n += 2
		case calls.FChars:
			n += f.Size
		default:
			panic("wire: internal error: structure " + name + " has a field of variable length")
		}
	}
	return n
}
