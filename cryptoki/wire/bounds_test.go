package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// maximal returns arguments for call c with every argument of a fixed
// longest encoding at that encoding, the variable ones as in the sample
// variant, and how many bytes the variable ones take on the wire.
func maximal(t *testing.T, c *calls.Call, variant int) (vals []Value, variable int) {
	t.Helper()
	for i := range c.Args {
		arg := &c.Args[i]
		v := sampleArg(arg, variant)
		var err error
		var enc []byte
		switch arg.Kind {
		case calls.Label:
			v.Bytes, v.Null = bytes.Repeat([]byte{' '}, LabelSize), false
		case calls.Bytes:
			if arg.Short {
				v.Bytes, v.Null = bytes.Repeat([]byte{'p'}, MaxShortBytes), false
				break
			}
			enc = appendBytes(nil, v.Bytes, v.Null)
		case calls.Template:
			enc, err = appendTemplate(nil, v.Template, false)
		case calls.Mechanism:
			enc, err = appendMechanism(nil, v.Mechanism)
		case calls.MsgParam, calls.MsgParamOut:
			enc, err = appendMsgParam(nil, arg, v.Param)
		case calls.OptOutBytes:
			v.Null = false // a length pointer: its outspec travels
		case calls.AttrQuery:
			v.Query = make([]Query, MaxAttrs)
		}
		if err != nil {
			t.Fatal(err)
		}
		variable += len(enc)
		vals = append(vals, v)
	}
	return vals, variable
}

// A request's bound is exact: with every fixed argument at its longest,
// the body is its bound for the variable arguments' bytes.
func TestRequestBoundExact(t *testing.T) {
	t.Parallel()
	for _, c := range forwarded() {
		for variant := range variants {
			vals, variable := maximal(t, c, variant)
			body, err := EncodeArgs(c, vals)
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			if got := RequestBound(c, variable); len(body) != got {
				t.Errorf("%s %s: body of %d bytes, bound %d", c.Name, variantNames[variant], len(body), got)
			}
		}
	}
}

func TestRequestBoundSmallCalls(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		call string
		want int
	}{
		{call: "C_Sign", want: 8 + 9 + 64}, // session, outspec, 64 bytes of data
		{call: "C_GetSessionInfo", want: 8},
		{call: "C_Login", want: 8 + 8 + 4 + MaxShortBytes},
		{call: "C_GetAttributeValue", want: 8 + 8 + maxQuery},
		{call: "C_Initialize", want: 0},
	} {
		c, _ := calls.ByName(tc.call)
		if got := RequestBound(c, 64); got != tc.want {
			t.Errorf("%s: bound %d, want %d", tc.call, got, tc.want)
		}
	}
	c, _ := calls.ByName("C_Encrypt")
	if got := RequestBound(c, 1<<40); got != MaxFrame-requestHeader {
		t.Errorf("C_Encrypt with no data bound: %d, want the frame's", got)
	}
	if got := RequestBound(nil, 64); got != 0 {
		t.Errorf("unknown call: %d", got)
	}
}

// fillOutputs supplies every output of call c at the longest a requests'
// arguments allow.
func fillOutputs(t *testing.T, c *calls.Call, a *Args, r *Results) {
	t.Helper()
	for i := range c.Args {
		switch c.Args[i].Kind {
		case calls.OutUlong:
			r.Ulong(7)
		case calls.OutBytes:
			n := a.Out(i).Capacity
			if !a.Out(i).Present {
				n = 1000 // a size query: the length only, whatever it is
			}
			r.OutBytes(a.Out(i), make([]byte, min(n, 1<<20)))
		case calls.OutUlongs:
			n := a.Out(i).Capacity
			if !a.Out(i).Present {
				n = 1000
			}
			r.OutUlongs(a.Out(i), make([]uint64, min(n, MaxUlongs)))
		case calls.OutHandles:
			r.Handles(make([]uint64, min(a.Max(i), MaxUlongs)))
		case calls.OutFilled:
			r.Filled(make([]byte, a.Filled(i)))
		case calls.OutStruct:
			s, _ := newStruct(c.Args[i].Struct)
			r.Struct(s)
		case calls.MsgParamOut:
			p := a.MsgParam(i)
			outs := map[string][]byte{}
			switch p.Kind {
			case calls.PBytes:
				outs[""] = make([]byte, len(p.Bytes))
			case calls.PStruct:
				for _, f := range outFields(p.Struct) {
					if v := p.field(f.Name); !v.Null {
						n := uint64(len(v.Bytes))
						if f.Out == calls.FOutOnly {
							n = v.Cap
						}
						outs[f.Name] = make([]byte, min(n, 1<<20))
					}
				}
			}
			if !MsgOutFits(p, outs) {
				outs = nil // outputs past 1 MiB: none
			}
			r.MsgOut(p, outs)
		case calls.OptOutBytes:
			spec, wanted := a.OptOut(i)
			n := spec.Capacity
			if !spec.Present {
				n = 1000
			}
			r.OptOutBytes(spec, wanted, make([]byte, min(n, 1<<20)))
		case calls.AttrQuery:
			var answers []Answer
			for _, q := range a.Query(i) {
				if calls.Attrs[q.Type] == calls.AttrTemplate {
					v, err := EncodeTemplate(sampleTemplate(0))
					if err != nil {
						t.Fatal(err)
					}
					answers = append(answers, Answer{Length: 4, Value: v})
					continue
				}
				x, _ := AnswerFor(q, make([]byte, min(q.Capacity, 1<<20)))
				answers = append(answers, x)
			}
			r.Answers(answers)
		}
	}
}

// No results are longer than what the request declared allows.
func TestResultsBound(t *testing.T) {
	t.Parallel()
	for _, c := range forwarded() {
		for variant := range variants {
			vals := make([]Value, len(c.Args))
			for i := range c.Args {
				vals[i] = sampleArg(&c.Args[i], variant)
			}
			body, err := EncodeArgs(c, vals)
			if err != nil {
				t.Fatal(err)
			}
			a, err := DecodeArgs(c, body)
			if err != nil {
				t.Fatal(err)
			}
			r := NewResults(c)
			fillOutputs(t, c, a, r)
			// Results longer than a reply carries go as CKR_DEVICE_MEMORY.
			if got, bound := min(len(r.Finish()), MaxFrame-replyHeader), ResultsBound(a); got > bound {
				t.Errorf("%s %s: results of %d bytes over their bound %d", c.Name, variantNames[variant], got, bound)
			}
		}
	}
	// The bound never passes what one reply can carry.
	c, _ := calls.ByName("C_GenerateRandom")
	a, err := DecodeArgs(c, append(appendU64(nil, 1), appendU64(nil, MaxBytes)...))
	if err != nil {
		t.Fatal(err)
	}
	if got := ResultsBound(a); got != MaxFrame-replyHeader {
		t.Errorf("C_GenerateRandom of MaxBytes: bound %d", got)
	}
}

// ReadRequestHead, ReadRequestBody and SkipRequestBody read the frames
// ReadRequest reads, in pieces.
func TestRequestInPieces(t *testing.T) {
	t.Parallel()
	var stream []byte
	stream = AppendRequest(stream, 1, 44, []byte("first body"))
	stream = AppendRequest(stream, 2, 45, bytes.Repeat([]byte{9}, 100_000))
	stream = AppendRequest(stream, 3, 46, nil)
	r := bufio.NewReaderSize(bytes.NewReader(stream), 16)

	h, err := ReadRequestHead(r)
	if err != nil || h != (RequestHead{ID: 1, Call: 44, BodyLen: 10}) {
		t.Fatalf("head %+v %v", h, err)
	}
	q, err := ReadRequestBody(r, h, make([]byte, 0, 64))
	if err != nil || string(q.Body) != "first body" || q.ID != 1 || q.Call != 44 {
		t.Fatalf("body %v %v", q, err)
	}
	if h, err = ReadRequestHead(r); err != nil || h.BodyLen != 100_000 {
		t.Fatalf("head %+v %v", h, err)
	}
	if err := SkipRequestBody(r, h.BodyLen); err != nil {
		t.Fatal(err)
	}
	if h, err = ReadRequestHead(r); err != nil || h != (RequestHead{ID: 3, Call: 46}) {
		t.Fatalf("after a skipped body: %+v %v", h, err)
	}
	if _, err := ReadRequestHead(r); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}

	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{name: "over the cap", in: appendU32(nil, MaxFrame+1)},
		{name: "short", in: append(appendU32(nil, 7), make([]byte, 7)...)},
		{name: "truncated head", in: append(appendU32(nil, 20), 0, 0)},
		{name: "truncated length", in: []byte{0, 0}},
	} {
		if _, err := ReadRequestHead(bufio.NewReader(bytes.NewReader(tc.in))); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	short := bufio.NewReader(bytes.NewReader(AppendRequest(nil, 1, 44, []byte("abc"))[:14]))
	h, err = ReadRequestHead(short)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadRequestBody(short, h, make([]byte, 3)); !errors.Is(err, ErrFrame) {
		t.Errorf("truncated body: %v", err)
	}
}

// AppendReplyHead and its results are AppendReplyIdle's frame.
func TestAppendReplyHead(t *testing.T) {
	t.Parallel()
	for _, results := range [][]byte{nil, {}, []byte("results"), make([]byte, MaxFrame)} {
		head, rest := AppendReplyHead(nil, 5, ck.CKR_OK, results, true)
		whole := AppendReplyIdle(nil, 5, ck.CKR_OK, results, true)
		if !bytes.Equal(append(head, rest...), whole) {
			t.Errorf("results of %d bytes: head and rest differ from the whole", len(results))
		}
	}
}
