package wire

import (
	"bufio"
	"bytes"
	"testing"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

// The hot path through the codec, without a socket: C_GenerateRandom(32)
// and C_Sign of 32 bytes. "daemon" is what the daemon does per request
// (read the frame, decode, build the results, append the reply); "round
// trip" adds the client's half (encode, frame, read the reply, decode).

type hotCall struct {
	name  string
	vals  []Value
	serve func(a *Args, r *Results) uint64
}

var signature = bytes.Repeat([]byte{0x5A}, 64)

func hotCalls(tb testing.TB) []hotCall {
	random := bytes.Repeat([]byte{0xA5}, 32)
	return []hotCall{
		{name: "C_GenerateRandom", vals: []Value{{Ulong: 1}, {Ulong: 32}}, serve: func(a *Args, r *Results) uint64 {
			r.Filled(random[:a.Filled(1)])
			return ck.CKR_OK
		}},
		{name: "C_Sign", vals: []Value{{Ulong: 1}, {Bytes: bytes.Repeat([]byte{1}, 32)}, {Out: OutSpec{Present: true, Capacity: 64}}},
			serve: func(a *Args, r *Results) uint64 {
				data, _ := a.Bytes(1)
				if len(data) != 32 {
					panic("data")
				}
				return r.OutBytes(a.Out(2), signature)
			}},
	}
}

// daemon is the daemon's per-connection state, reused across requests.
type daemon struct {
	rd   *bytes.Reader
	br   *bufio.Reader
	in   []byte
	args Args
	res  Results
	out  []byte
}

func newDaemon() *daemon {
	d := &daemon{rd: bytes.NewReader(nil), in: make([]byte, 0, 4096), out: make([]byte, 0, 4096)}
	d.br = bufio.NewReader(d.rd)
	return d
}

// handle serves a frame as the daemon's connection loop does
// (daemon/requests.go): the head, the call's bound, the body into the
// connection's buffer, the arguments, the reply's bound, the reply.
func (d *daemon) handle(tb testing.TB, frame []byte, serve func(*Args, *Results) uint64) []byte {
	d.rd.Reset(frame)
	d.br.Reset(d.rd)
	h, err := ReadRequestHead(d.br)
	if err != nil {
		tb.Fatal(err)
	}
	c, ok := calls.ByID(h.Call)
	if !ok || h.BodyLen > RequestBound(c, MaxFrame) || h.BodyLen > cap(d.in) {
		tb.Fatalf("call %d, %d bytes", h.Call, h.BodyLen)
	}
	req, err := ReadRequestBody(d.br, h, d.in)
	if err != nil {
		tb.Fatal(err)
	}
	if err := d.args.Decode(c, req.Body); err != nil {
		tb.Fatal(err)
	}
	if ResultsBound(&d.args) > cap(d.out) {
		tb.Fatalf("%s: results over the reply buffer", c.Name)
	}
	d.res.Reset(c)
	rv := serve(&d.args, &d.res)
	var results []byte
	if HasResults(c, rv) {
		results = d.res.Finish()
	}
	d.out, results = AppendReplyHead(d.out[:0], req.ID, rv, results, false)
	return append(d.out, results...)
}

func BenchmarkHotPath(b *testing.B) {
	for _, hc := range hotCalls(b) {
		c := mustCall(b, hc.name)
		body, err := EncodeArgs(c, hc.vals)
		if err != nil {
			b.Fatal(err)
		}
		frame := AppendRequest(nil, 1, c.ID, body)
		b.Run(hc.name+"/daemon", func(b *testing.B) {
			d := newDaemon()
			b.ReportAllocs()
			b.SetBytes(int64(len(frame)))
			for b.Loop() {
				d.handle(b, frame, hc.serve)
			}
		})
		b.Run(hc.name+"/round-trip", func(b *testing.B) {
			d := newDaemon()
			var req, frame, replyBuf []byte
			rd := bytes.NewReader(nil)
			br := bufio.NewReader(rd)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if req, err = AppendArgs(req[:0], c, hc.vals); err != nil {
					b.Fatal(err)
				}
				frame = AppendRequest(frame[:0], 1, c.ID, req)
				reply := d.handle(b, frame, hc.serve)
				rd.Reset(reply)
				br.Reset(rd)
				var p Reply
				if p, replyBuf, err = ReadReply(br, replyBuf); err != nil {
					b.Fatal(err)
				}
				if _, err := DecodeResults(c, p.RV, p.Results); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestHotPathAllocs holds the daemon's half of the hot path to zero
// allocations once its buffers are warm.
func TestHotPathAllocs(t *testing.T) {
	for _, hc := range hotCalls(t) {
		c := mustCall(t, hc.name)
		body, err := EncodeArgs(c, hc.vals)
		if err != nil {
			t.Fatal(err)
		}
		frame := AppendRequest(nil, 1, c.ID, body)
		d := newDaemon()
		if n := testing.AllocsPerRun(100, func() { d.handle(t, frame, hc.serve) }); n != 0 {
			t.Errorf("%s: %v allocations per request", hc.name, n)
		}
	}
}
