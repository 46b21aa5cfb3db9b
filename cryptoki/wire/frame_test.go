package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
)

func TestFrameRoundTrip(t *testing.T) {
	t.Parallel()
	bodies := [][]byte{{}, []byte("x"), bytes.Repeat([]byte{0xAB}, 1000), bytes.Repeat([]byte{1}, 200<<10)}
	var stream []byte
	for i, b := range bodies {
		stream = AppendRequest(stream, uint32(i+1), uint32(40+i), b)
	}
	r := bufio.NewReader(bytes.NewReader(stream))
	var buf []byte
	for i, want := range bodies {
		var req Request
		var err error
		req, buf, err = ReadRequest(r, buf)
		if err != nil {
			t.Fatal(err)
		}
		if req.ID != uint32(i+1) || req.Call != uint32(40+i) || !bytes.Equal(req.Body, want) {
			t.Fatalf("request %d: %v", i, req)
		}
	}
	if _, _, err := ReadRequest(r, buf); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}

	stream = stream[:0]
	stream = AppendReply(stream, 7, ck.CKR_OK, []byte{})
	stream = AppendReply(stream, 8, ck.CKR_PIN_INCORRECT, nil)
	stream = AppendReply(stream, 9, ck.CKR_BUFFER_TOO_SMALL, []byte("results"))
	stream = AppendReplyIdle(stream, 10, ck.CKR_OK, []byte("sig"), true)
	stream = AppendReplyIdle(stream, 11, ck.CKR_KEY_HANDLE_INVALID, nil, true)
	want := []Reply{{ID: 7, RV: ck.CKR_OK, HasResults: true, Results: []byte{}, Idle: false}, {ID: 8, RV: ck.CKR_PIN_INCORRECT, HasResults: false, Results: nil, Idle: false},
		{ID: 9, RV: ck.CKR_BUFFER_TOO_SMALL, HasResults: true, Results: []byte("results"), Idle: false},
		{ID: 10, RV: ck.CKR_OK, HasResults: true, Results: []byte("sig"), Idle: true}, {ID: 11, RV: ck.CKR_KEY_HANDLE_INVALID, HasResults: false, Results: nil, Idle: true}}
	r = bufio.NewReader(bytes.NewReader(stream))
	for _, w := range want {
		var p Reply
		var err error
		p, buf, err = ReadReply(r, buf)
		if err != nil {
			t.Fatal(err)
		}
		if p.ID != w.ID || p.RV != w.RV || p.HasResults != w.HasResults || p.Idle != w.Idle || !bytes.Equal(p.Results, w.Results) ||
			(p.Results == nil) != (w.Results == nil) {
			t.Fatalf("got %v, want %v", p, w)
		}
	}
}

// The layout of docs/protocol.md, byte by byte.
func TestFrameLayout(t *testing.T) {
	t.Parallel()
	got := AppendRequest(nil, 0x01020304, 44, []byte{0xEE})
	want := []byte{0, 0, 0, 9, 1, 2, 3, 4, 0, 0, 0, 44, 0xEE}
	if !bytes.Equal(got, want) {
		t.Fatalf("request %x", got)
	}
	got = AppendReply(nil, 5, 0x150, []byte{0xEE})
	want = []byte{0, 0, 0, 14, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 0x50, 1, 0xEE}
	if !bytes.Equal(got, want) {
		t.Fatalf("reply %x", got)
	}
	got = AppendReplyIdle(nil, 5, 0x150, nil, true)
	want = []byte{0, 0, 0, 13, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 0x50, 2}
	if !bytes.Equal(got, want) {
		t.Fatalf("idle reply %x", got)
	}
}

func TestReadFrameRefuses(t *testing.T) {
	t.Parallel()
	u32 := func(v uint32) []byte { return appendU32(nil, v) }
	tests := []struct {
		name  string
		reply bool
		in    []byte
		want  error
	}{
		{name: "empty stream", reply: false, in: nil, want: io.EOF},
		{name: "truncated length", reply: false, in: []byte{0, 0}, want: ErrFrame},
		{name: "zero length", reply: false, in: u32(0), want: ErrFrame},
		{name: "short length", reply: false, in: append(u32(7), make([]byte, 7)...), want: ErrFrame},
		{name: "over the cap", reply: false, in: u32(MaxFrame + 1), want: ErrFrame},
		{name: "huge", reply: false, in: u32(0xFFFFFFFF), want: ErrFrame},
		{name: "truncated body", reply: false, in: append(u32(20), make([]byte, 10)...), want: ErrFrame},
		{name: "header only", reply: false, in: u32(100), want: ErrFrame},
		{name: "reply short", reply: true, in: append(u32(12), make([]byte, 12)...), want: ErrFrame},
		{name: "reply flags 4", reply: true, in: append(u32(13), append(make([]byte, 12), 4)...), want: ErrFrame},
		{name: "reply idle with results but no has-results", reply: true, in: append(u32(14), append(make([]byte, 12), 2, 0)...), want: ErrFrame},
		{name: "reply results without has-results", reply: true, in: append(u32(14), make([]byte, 14)...), want: ErrFrame},
		{name: "reply over the cap", reply: true, in: u32(MaxFrame + 1), want: ErrFrame},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := bufio.NewReader(bytes.NewReader(tt.in))
			var err error
			if tt.reply {
				_, _, err = ReadReply(r, nil)
			} else {
				_, _, err = ReadRequest(r, nil)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// A peer that declares a large frame and sends little costs little memory;
// one that declares more than the cap costs nothing. Not parallel: it reads
// the process's allocation counter, and averages over many reads so that
// what the runtime and the race detector allocate meanwhile does not count.
func TestReadFrameMemory(t *testing.T) {
	const reads = 200
	for _, tt := range []struct {
		name  string
		n     uint32
		limit uint64
	}{
		{name: "over the cap", n: 0xFFFFFFFF, limit: 4 << 10},
		{name: "at the cap, 100 bytes sent", n: MaxFrame, limit: growStep + 8<<10},
	} {
		in := append(appendU32(nil, tt.n), make([]byte, 100)...)
		readers, bufs := make([]*bufio.Reader, reads), make([][]byte, reads)
		for i := range readers {
			readers[i], bufs[i] = bufio.NewReader(bytes.NewReader(in)), make([]byte, 0, 16)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i, r := range readers {
			_, _, err := ReadRequest(r, bufs[i])
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("%s: %v", tt.name, err)
			}
		}
		runtime.ReadMemStats(&after)
		if got := (after.TotalAlloc - before.TotalAlloc) / reads; got > tt.limit {
			t.Errorf("%s: allocated %d bytes a read, limit %d", tt.name, got, tt.limit)
		}
	}
}

func TestReadRequestReusesBuffer(t *testing.T) {
	frame := AppendRequest(nil, 1, 44, make([]byte, 100))
	rd := bytes.NewReader(frame)
	r := bufio.NewReader(rd)
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		rd.Reset(frame)
		r.Reset(rd)
		var err error
		if _, buf, err = ReadRequest(r, buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per request", allocs)
	}
}

func TestAppendReplyOverTheCap(t *testing.T) {
	t.Parallel()
	b := AppendReply(nil, 3, ck.CKR_OK, make([]byte, MaxFrame))
	p, _, err := ReadReply(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.RV != ck.CKR_DEVICE_MEMORY || p.HasResults || p.ID != 3 {
		t.Fatalf("got %v", p)
	}
	// The largest reply that fits is sent as it is.
	b = AppendReply(nil, 4, ck.CKR_OK, make([]byte, MaxFrame-replyHeader))
	if p, _, err = ReadReply(bufio.NewReader(bytes.NewReader(b)), nil); err != nil || p.RV != ck.CKR_OK {
		t.Fatalf("got %v %v", p, err)
	}
}

func TestFrameStringRedacts(t *testing.T) {
	t.Parallel()
	q := Request{ID: 1, Call: 19, Body: []byte("PIN-1234")}
	p := Reply{ID: 1, HasResults: true, Results: []byte("KEY-5678")}
	for _, s := range []string{q.String(), q.GoString(), p.String(), p.GoString()} {
		if strings.Contains(s, "1234") || strings.Contains(s, "5678") {
			t.Fatalf("leaks: %s", s)
		}
	}
	if _, err := q.MarshalJSON(); err == nil {
		t.Fatal("Request marshalled to JSON")
	}
}

func TestHello(t *testing.T) {
	t.Parallel()
	h := Hello{Version: Version, Flags: 0, PID: 0x01020304}
	copy(h.AppID[:], "0123456789abcdef")
	b := h.Marshal()
	want := append([]byte("HSMU\x00\x06\x00\x000123456789abcdef"), 1, 2, 3, 4, 0, 0, 0, 0)
	if !bytes.Equal(b, want) || len(b) != HelloSize {
		t.Fatalf("hello %q", b)
	}
	got, err := ReadHello(bytes.NewReader(b))
	if err != nil || got != h {
		t.Fatalf("got %+v %v", got, err)
	}
	bad := bytes.Clone(b)
	bad[0] = 'X'
	if _, err := ReadHello(bytes.NewReader(bad)); !errors.Is(err, ErrFrame) {
		t.Fatalf("bad magic: %v", err)
	}
	if _, err := ReadHello(bytes.NewReader(b[:31])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short: %v", err)
	}

	hr := HelloReply{Version: Version, Status: StatusVersion}
	b = hr.Marshal()
	if !bytes.Equal(b, []byte("HSMU\x00\x06\x00\x01")) || len(b) != HelloReplySize {
		t.Fatalf("reply %q", b)
	}
	if got, err := ReadHelloReply(bytes.NewReader(b)); err != nil || got != hr {
		t.Fatalf("got %+v %v", got, err)
	}
	if _, err := ReadHelloReply(bytes.NewReader([]byte("HSMX\x00\x01\x00\x00"))); !errors.Is(err, ErrFrame) {
		t.Fatalf("bad magic: %v", err)
	}
	if _, err := ReadHelloReply(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty: %v", err)
	}
}
