package moduletest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// updateDaemon answers C_EncryptUpdate with an output that names its
// input, and records what it saw: each call with its input and whether
// it was a prefetch, each C_SessionCancel with its flags.
func updateDaemon(t *testing.T) (*Module, *Peer, func() []string) {
	return recordingSession(t, func(q Req, note func(string)) Resp {
		switch q.Call.Name {
		case "C_SessionCancel":
			note(fmt.Sprintf("cancel %#x", q.Args.Ulong(1)))
			return Resp{RV: 0}
		case "C_EncryptUpdate", "C_Encrypt":
			in, _ := q.Args.Bytes(1)
			spec := q.Args.Out(2)
			note(q.Call.Name + " " + asked(spec) + " " + string(in))
			out := append([]byte("out:"), in...)
			return Reply(q.Call.Name, func(r *wire.Results) uint64 { return r.OutBytes(spec, out) })
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
}

// recordingSession is session with a daemon that notes what it saw:
// answer runs under the recorder's lock and records a line with note;
// the function returned hands over the lines noted since its last call.
func recordingSession(t *testing.T, answer func(q Req, note func(string)) Resp) (*Module, *Peer, func() []string) {
	var mu sync.Mutex
	var seen []string
	m, p := session(t, func(q Req) Resp {
		mu.Lock()
		defer mu.Unlock()
		return answer(q, func(line string) { seen = append(seen, line) })
	})
	return m, p, func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := seen
		seen = nil
		return s
	}
}

// asked says how a call asked for its output: "prefetch" (the whole
// result with the length), "query" (the length only) or "call".
func asked(spec wire.OutSpec) string {
	switch {
	case spec.Prefetch:
		return "prefetch"
	case !spec.Present:
		return "query"
	}
	return "call"
}

func update(t *testing.T, m *Module, in string, b Buf) Out {
	t.Helper()
	return m.OpUpdate(KindEncrypt, 1, In{Data: []byte(in)}, b)
}

func sameCalls(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// An Update's length query asks for the whole output (protocol version
// 4); the module holds it and serves the follow-up with the same input,
// then says so to the daemon ahead of the session's next frame: a
// C_SessionCancel with calls.CollectUpdate, which leaves the operation
// going. A follow-up with other input goes to the daemon, with no such
// word, for the daemon to rewind the update it measured.
func TestPrefetchUpdateHeld(t *testing.T) {
	m, _, seen := updateDaemon(t)
	collect := fmt.Sprintf("cancel %#x", uint64(calls.CollectUpdate|ck.CKF_ENCRYPT<<32))

	if o := update(t, m, "one", Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query: %+v", o)
	}
	if o := update(t, m, "one", Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query again: %+v", o)
	}
	if o := update(t, m, "one", Buf{Cap: 3}); o.RV != ck.CKR_BUFFER_TOO_SMALL || o.Len != 7 {
		t.Fatalf("short buffer: %+v", o)
	}
	if o := update(t, m, "one", Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:one" {
		t.Fatalf("follow-up: %+v", o)
	}
	if got := seen(); !sameCalls(got, "C_EncryptUpdate prefetch one") {
		t.Fatalf("the daemon saw %q, want one prefetch", got)
	}
	// The next Update brings the collect word ahead of it; its follow-up
	// with other input goes to the daemon.
	if o := update(t, m, "two", Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("second length query: %+v", o)
	}
	if o := update(t, m, "TWO!", Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:TWO!" {
		t.Fatalf("follow-up with other input: %+v", o)
	}
	if got := seen(); !sameCalls(got, collect, "C_EncryptUpdate prefetch two", "C_EncryptUpdate call TWO!") {
		t.Fatalf("the daemon saw %q", got)
	}
	// Nothing is owed after a follow-up the daemon answered; a held
	// output that C_SessionCancel discards is not collected.
	if o := update(t, m, "three", Buf{Null: true}); o.RV != 0 {
		t.Fatalf("third length query: %+v", o)
	}
	if rv := m.SessionCancel(1, ck.CKF_ENCRYPT); rv != 0 {
		t.Fatalf("C_SessionCancel: %v", rv)
	}
	if got := seen(); !sameCalls(got, "C_EncryptUpdate prefetch three", fmt.Sprintf("cancel %#x", ck.CKF_ENCRYPT)) {
		t.Fatalf("the daemon saw %q", got)
	}
	// An application cannot pass the module's own flag.
	if rv := m.SessionCancel(1, ck.CKF_ENCRYPT|calls.CollectUpdate); rv != 0 {
		t.Fatalf("C_SessionCancel: %v", rv)
	}
	if got := seen(); !sameCalls(got, fmt.Sprintf("cancel %#x", ck.CKF_ENCRYPT)) {
		t.Fatalf("the daemon saw %q, want the flag cleared", got)
	}
	// A long input is matched by its SHA-256.
	long := string(bytes.Repeat([]byte{'x'}, 5000))
	if o := update(t, m, long+"a", Buf{Null: true}); o.RV != 0 {
		t.Fatalf("long length query: %+v", o)
	}
	if o := update(t, m, long+"a", Buf{Cap: 6000}); o.RV != 0 || !bytes.Equal(o.Data, []byte("out:"+long+"a")) {
		t.Fatalf("long follow-up: %v, %d bytes", o.RV, len(o.Data))
	}
	if got := seen(); len(got) != 1 {
		t.Fatalf("the daemon saw %d calls, want the prefetch alone", len(got))
	}
}

// A daemon of protocol version 3 knows the prefetch of a single-part
// call's output, not an Update's: the module sends the Update's length
// query as a plain NULL buffer, holds nothing, and the follow-up goes to
// the daemon.
func TestVersion3DaemonNoUpdatePrefetch(t *testing.T) {
	m, p, seen := updateDaemon(t)
	p.SpeakUpTo(3)
	if o := update(t, m, "one", Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query: %+v", o)
	}
	if o := update(t, m, "one", Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:one" {
		t.Fatalf("follow-up: %+v", o)
	}
	if rv, n, _ := m.Encrypt(1, []byte("x"), 0, true); rv != 0 || n != 5 {
		t.Fatalf("C_Encrypt length query: %v %d", rv, n)
	}
	if got := seen(); !sameCalls(got, "C_EncryptUpdate query one", "C_EncryptUpdate call one", "C_Encrypt prefetch x") {
		t.Fatalf("the daemon saw %q", got)
	}
	if h := p.Hellos(); len(h) != 2 || h[0].Version != wire.Version || h[1].Version != 3 {
		t.Fatalf("hellos %+v: want the current version, then version 3", h)
	}
}
