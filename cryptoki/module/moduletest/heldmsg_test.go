//go:build cgo

package moduletest

import (
	"bytes"
	"fmt"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// msgPrefetchDaemon answers C_EncryptMessage with an output that names
// its input, and an IV and a tag that number the call (a daemon makes a
// new IV for each message it makes); it records each call with its input
// and whether it was a prefetch, and each other call.
func msgPrefetchDaemon(t *testing.T) (*Module, *Peer, func() []string) {
	n := 0
	return recordingSession(t, func(q Req, note func(string)) Resp {
		switch q.Call.Name {
		case "C_SessionCancel":
			note(fmt.Sprintf("cancel %#x", q.Args.Ulong(1)))
			return Resp{RV: 0}
		case "C_MessageEncryptFinal":
			note("final")
			return Resp{RV: 0}
		case "C_EncryptMessageNext":
			par, spec, last := q.Args.MsgParam(1), q.Args.Out(3), q.Args.Ulong(4) == ck.CKF_END_OF_MESSAGE
			in, _ := q.Args.Bytes(2)
			what := "call"
			if spec.Prefetch {
				what = "prefetch"
			}
			n++
			note(fmt.Sprintf("next %s %s last=%v", what, in, last))
			outs, out := map[string][]byte{}, []byte{}
			if last {
				out = append([]byte("out:"), in...)
				if spec.Prefetch || spec.Present && spec.Capacity >= uint64(len(out)) {
					outs["pTag"] = bytes.Repeat([]byte{byte(n)}, 16)
				}
			}
			return Reply(q.Call.Name, func(r *wire.Results) uint64 {
				r.MsgOut(par, outs)
				return r.OutBytes(spec, out)
			})
		case "C_EncryptMessage":
			par, spec := q.Args.MsgParam(1), q.Args.Out(4)
			in, _ := q.Args.Bytes(3)
			n++
			note("encrypt " + asked(spec) + " " + string(in))
			out := append([]byte("out:"), in...)
			outs := map[string][]byte{}
			if spec.Prefetch || spec.Present && spec.Capacity >= uint64(len(out)) {
				outs["pIv"] = bytes.Repeat([]byte{byte(n)}, 12)
				outs["pTag"] = bytes.Repeat([]byte{byte(n)}, 16)
			}
			return Reply(q.Call.Name, func(r *wire.Results) uint64 {
				r.MsgOut(par, outs)
				return r.OutBytes(spec, out)
			})
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
}

// gcmParam is a GCM message parameter whose IV the token makes.
func gcmParam() *MsgParam {
	return &MsgParam{GCM: true, IV: make([]byte, 12), FixedBits: 0, Generator: ck.CKG_GENERATE_COUNTER,
		Tag: make([]byte, 16), TagBits: 128}
}

// A one-call message's length query asks for the whole result (protocol
// version 5): the module holds the output and what the parameter gets
// back, answers another query and a short buffer itself, writing nothing
// back, and hands both over to the follow-up with the same arguments;
// then it owes the daemon the end of that message, which goes ahead of
// the session's next frame. A follow-up with other input goes to the
// daemon, owing nothing, and gets its own message (its own IV);
// C_SessionCancel and C_MessageEncryptFinal discard what is held.
func TestPrefetchMessageHeld(t *testing.T) {
	m, _, seen := msgPrefetchDaemon(t)
	endMessage := fmt.Sprintf("cancel %#x", uint64(ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage))
	enc := func(p *MsgParam, in string, b Buf) Out { return m.EncryptMessage(1, p, []byte("aad"), []byte(in), b) }
	untouched := func(p *MsgParam) bool {
		return bytes.Equal(p.IV, make([]byte, 12)) && bytes.Equal(p.Tag, make([]byte, 16))
	}

	p := gcmParam()
	if o := enc(p, "one", Buf{Null: true}); o.RV != 0 || o.Len != 7 || !untouched(p) {
		t.Fatalf("length query: %+v, IV %x", o, p.IV)
	}
	if o := enc(p, "one", Buf{Null: true}); o.RV != 0 || o.Len != 7 || !untouched(p) {
		t.Fatalf("length query again: %+v", o)
	}
	if o := enc(p, "one", Buf{Cap: 3}); o.RV != ck.CKR_BUFFER_TOO_SMALL || o.Len != 7 || !untouched(p) {
		t.Fatalf("short buffer: %+v, IV %x", o, p.IV)
	}
	o := enc(p, "one", Buf{Cap: 64})
	if o.RV != 0 || string(o.Data) != "out:one" || !bytes.Equal(p.IV, bytes.Repeat([]byte{1}, 12)) || !bytes.Equal(p.Tag, bytes.Repeat([]byte{1}, 16)) {
		t.Fatalf("follow-up: %+v, IV %x, tag %x", o, p.IV, p.Tag)
	}
	if got := seen(); !sameCalls(got, "encrypt prefetch one") {
		t.Fatalf("the daemon saw %q, want one prefetch", got)
	}

	// The next message brings the end of the last ahead of it; its
	// follow-up with other input goes to the daemon.
	p = gcmParam()
	if o := enc(p, "two", Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("second length query: %+v", o)
	}
	o = enc(p, "TWO!", Buf{Cap: 64})
	if o.RV != 0 || string(o.Data) != "out:TWO!" || !bytes.Equal(p.IV, bytes.Repeat([]byte{3}, 12)) {
		t.Fatalf("follow-up with other input: %+v, IV %x", o, p.IV)
	}
	if got := seen(); !sameCalls(got, endMessage, "encrypt prefetch two", "encrypt call TWO!") {
		t.Fatalf("the daemon saw %q", got)
	}
	// Other associated data is other input too.
	p = gcmParam()
	enc(p, "x", Buf{Null: true})
	if o := m.EncryptMessage(1, p, []byte("AAD"), []byte("x"), Buf{Cap: 64}); o.RV != 0 || !bytes.Equal(p.IV, bytes.Repeat([]byte{5}, 12)) {
		t.Fatalf("follow-up with other associated data: %+v, IV %x", o, p.IV)
	}
	// So is another parameter (the caller's IV buffer, the fixed bits).
	p = gcmParam()
	enc(p, "x", Buf{Null: true})
	p.IV[0] = 0xEE
	if o := enc(p, "x", Buf{Cap: 64}); o.RV != 0 || !bytes.Equal(p.IV, bytes.Repeat([]byte{7}, 12)) {
		t.Fatalf("follow-up with another parameter: %+v, IV %x", o, p.IV)
	}
	if got := seen(); !sameCalls(got, "encrypt prefetch x", "encrypt call x", "encrypt prefetch x", "encrypt call x") {
		t.Fatalf("the daemon saw %q", got)
	}

	// Discarded: C_SessionCancel, C_MessageEncryptFinal; the follow-up
	// then goes to the daemon.
	p = gcmParam()
	enc(p, "three", Buf{Null: true})
	if rv := m.SessionCancel(1, ck.CKF_MESSAGE_ENCRYPT); rv != 0 {
		t.Fatalf("C_SessionCancel: %v", rv)
	}
	enc(p, "three", Buf{Cap: 64})
	enc(p, "four", Buf{Null: true})
	if rv := m.MessageEncryptFinal(1); rv != 0 {
		t.Fatalf("C_MessageEncryptFinal: %v", rv)
	}
	enc(p, "four", Buf{Cap: 64})
	if got := seen(); !sameCalls(got, "encrypt prefetch three", fmt.Sprintf("cancel %#x", ck.CKF_MESSAGE_ENCRYPT), "encrypt call three",
		"encrypt prefetch four", "final", "encrypt call four") {
		t.Fatalf("the daemon saw %q", got)
	}
}

// A daemon of protocol version 4 knows no prefetch of a message: the
// module sends the length query as a plain NULL buffer and holds nothing.
func TestVersion4DaemonNoMessagePrefetch(t *testing.T) {
	m, p, seen := msgPrefetchDaemon(t)
	p.SpeakUpTo(4)
	q := gcmParam()
	if o := m.EncryptMessage(1, q, nil, []byte("one"), Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query: %+v", o)
	}
	if o := m.EncryptMessage(1, q, nil, []byte("one"), Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:one" ||
		!bytes.Equal(q.IV, bytes.Repeat([]byte{2}, 12)) {
		t.Fatalf("follow-up: %+v, IV %x", o, q.IV)
	}
	if got := seen(); !sameCalls(got, "encrypt query one", "encrypt call one") {
		t.Fatalf("the daemon saw %q", got)
	}
	if h := p.Hellos(); len(h) != 2 || h[0].Version != wire.Version || h[1].Version != 4 {
		t.Fatalf("hellos %+v: want the current version, then version 4", h)
	}
}

// A part of a message in parts prefetches too: the module holds its
// (empty) output and, once handed over, owes the daemon the word that it
// collected it (calls.CollectUpdate with the process's flag in bits 32 to
// 61), which ends nothing; after the last part, the end of the message.
// The flags are matched: a part's result is not the last part's.
func TestPrefetchMessagePartsHeld(t *testing.T) {
	m, _, seen := msgPrefetchDaemon(t)
	collect := fmt.Sprintf("cancel %#x", uint64(calls.CollectUpdate|ck.CKF_MESSAGE_ENCRYPT<<32))
	endMessage := fmt.Sprintf("cancel %#x", uint64(ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage))
	p := gcmParam()
	next := func(in string, b Buf, flags uint64) Out { return m.EncryptMessageNext(1, p, []byte(in), b, flags) }

	if o := next("one", Buf{Null: true}, 0); o.RV != 0 || o.Len != 0 {
		t.Fatalf("a part's length: %+v", o)
	}
	if o := next("one", Buf{Cap: 16}, 0); o.RV != 0 || o.Len != 0 {
		t.Fatalf("a part: %+v", o)
	}
	if o := next("two", Buf{Null: true}, ck.CKF_END_OF_MESSAGE); o.RV != 0 || o.Len != 7 {
		t.Fatalf("the last part's length: %+v", o)
	}
	if o := next("two", Buf{Cap: 3}, ck.CKF_END_OF_MESSAGE); o.RV != ck.CKR_BUFFER_TOO_SMALL || !bytes.Equal(p.Tag, make([]byte, 16)) {
		t.Fatalf("short buffer: %+v, tag %x", o, p.Tag)
	}
	if o := next("two", Buf{Cap: 16}, ck.CKF_END_OF_MESSAGE); o.RV != 0 || string(o.Data) != "out:two" || !bytes.Equal(p.Tag, bytes.Repeat([]byte{2}, 16)) {
		t.Fatalf("the last part: %+v, tag %x", o, p.Tag)
	}
	// A part's query, then the same input with the last part's flag.
	next("three", Buf{Null: true}, 0)
	if o := next("three", Buf{Cap: 16}, ck.CKF_END_OF_MESSAGE); o.RV != 0 || string(o.Data) != "out:three" {
		t.Fatalf("the last part after a part's query: %+v", o)
	}
	if got := seen(); !sameCalls(got, "next prefetch one last=false", collect, "next prefetch two last=true", endMessage,
		"next prefetch three last=false", "next call three last=true") {
		t.Fatalf("the daemon saw %q", got)
	}
}
