package moduletest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// A size query of a prefetching call asks for the whole result; the
// module keeps it and serves the follow-up itself, then sends the
// C_SessionCancel it owes ahead of the session's next frame
// (docs/protocol.md, "Results ahead of the follow-up call").
func TestPrefetchHeld(t *testing.T) {
	ct := []byte("sixteen byte ct.")
	var mu sync.Mutex
	var seen []string
	var badLength bool
	m, _ := session(t, func(q Req) Resp {
		mu.Lock()
		seen = append(seen, q.Call.Name)
		bad := badLength
		mu.Unlock()
		switch q.Call.Name {
		case "C_SessionCancel":
			if q.Args.Ulong(0) != 1 || q.Args.Ulong(1) != ck.CKF_ENCRYPT {
				t.Errorf("C_SessionCancel(%d, %#x), want (1, CKF_ENCRYPT)", q.Args.Ulong(0), q.Args.Ulong(1))
			}
			return Resp{RV: 0}
		case "C_Encrypt":
			spec := q.Args.Out(2)
			if bad && spec.Prefetch {
				// The length says 17, the data is 16 bytes.
				res := binary.BigEndian.AppendUint64(nil, 17)
				res = binary.BigEndian.AppendUint32(res, uint32(len(ct)))
				return Resp{RV: 0, Results: append(res, ct...)}
			}
			return Reply("C_Encrypt", func(r *wire.Results) uint64 { return r.OutBytes(spec, ct) })
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	calls := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}

	if rv, n, _ := m.Encrypt(1, []byte("data"), 0, true); rv != 0 || n != 16 {
		t.Fatalf("size query: rv %v, length %d", rv, n)
	}
	if rv, n, _ := m.Encrypt(1, []byte("data"), 0, true); rv != 0 || n != 16 {
		t.Fatalf("size query again: rv %v, length %d", rv, n)
	}
	if rv, n, _ := m.Encrypt(1, []byte("data"), 4, false); rv != ck.CKR_BUFFER_TOO_SMALL || n != 16 {
		t.Fatalf("short buffer: rv %v, length %d", rv, n)
	}
	if rv, n, out := m.Encrypt(1, []byte("data"), 64, false); rv != 0 || n != 16 || !bytes.Equal(out[:16], ct) {
		t.Fatalf("follow-up: rv %v, length %d, %q", rv, n, out[:16])
	}
	if got := calls(); len(got) != 1 || got[0] != "C_Encrypt" {
		t.Fatalf("the daemon saw %v, want one C_Encrypt", got)
	}
	// The next call on the session brings the cancel ahead of it.
	if rv, n, _ := m.Encrypt(1, []byte("data"), 64, false); rv != 0 || n != 16 {
		t.Fatalf("next call: rv %v, length %d", rv, n)
	}
	if got := calls(); len(got) != 3 || got[1] != "C_SessionCancel" || got[2] != "C_Encrypt" {
		t.Fatalf("the daemon saw %v, want C_Encrypt, then C_SessionCancel ahead of C_Encrypt", got)
	}

	// A prefetch whose data is not its length is refused, and nothing is
	// held: the follow-up goes to the daemon.
	mu.Lock()
	badLength, seen = true, nil
	mu.Unlock()
	if rv, n, _ := m.Encrypt(1, []byte("data"), 7, true); rv != ck.CKR_DEVICE_ERROR || n != 7 {
		t.Fatalf("malformed prefetch: rv %v, length %d, want CKR_DEVICE_ERROR and the length untouched", rv, n)
	}
	if rv, _, _ := m.Encrypt(1, []byte("data"), 64, false); rv != 0 {
		t.Fatalf("after a malformed prefetch: rv %v", rv)
	}
	if got := calls(); len(got) != 2 || got[1] != "C_Encrypt" {
		t.Fatalf("the daemon saw %v, want two C_Encrypt", got)
	}
}

// A held result answers only a follow-up with the same input: a size
// query returns a length, so a follow-up with other input goes to the
// daemon, which performs the operation on it, and the held result is
// dropped (PKCS#11 5.2).
func TestPrefetchHeldOtherInput(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	m, _ := session(t, func(q Req) Resp {
		mu.Lock()
		defer mu.Unlock()
		switch q.Call.Name {
		case "C_SessionCancel":
			seen = append(seen, "C_SessionCancel")
			return Resp{RV: 0}
		case "C_Encrypt":
			in, _ := q.Args.Bytes(1)
			spec := q.Args.Out(2)
			seen = append(seen, "C_Encrypt "+string(in))
			// An output of 16 bytes that names its input.
			out := append([]byte("out:"), in...)
			out = append(out, bytes.Repeat([]byte{'.'}, 16-len(out))...)
			return Reply("C_Encrypt", func(r *wire.Results) uint64 { return r.OutBytes(spec, out) })
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	calls := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}

	if rv, n, _ := m.Encrypt(1, []byte("aaaa"), 0, true); rv != 0 || n != 16 {
		t.Fatalf("size query: rv %v, length %d", rv, n)
	}
	if rv, n, out := m.Encrypt(1, []byte("bbbb"), 64, false); rv != 0 || n != 16 || string(out[:16]) != "out:bbbb........" {
		t.Fatalf("follow-up with other input: rv %v, length %d, %q", rv, n, out[:n])
	}
	if got := calls(); len(got) != 2 || got[0] != "C_Encrypt aaaa" || got[1] != "C_Encrypt bbbb" {
		t.Fatalf("the daemon saw %q, want the query's C_Encrypt and the follow-up's, no cancel", got)
	}
	// A short buffer with other input goes to the daemon too; so does a
	// size query with other input, whose own result is then held.
	if rv, _, _ := m.Encrypt(1, []byte("cccc"), 0, true); rv != 0 {
		t.Fatalf("size query: rv %v", rv)
	}
	if rv, n, _ := m.Encrypt(1, []byte("dddd"), 4, false); rv != ck.CKR_BUFFER_TOO_SMALL || n != 16 {
		t.Fatalf("short buffer with other input: rv %v, length %d", rv, n)
	}
	if rv, n, _ := m.Encrypt(1, []byte("eeee"), 0, true); rv != 0 || n != 16 {
		t.Fatalf("size query with other input: rv %v, length %d", rv, n)
	}
	if rv, n, out := m.Encrypt(1, []byte("eeee"), 64, false); rv != 0 || n != 16 || string(out[:16]) != "out:eeee........" {
		t.Fatalf("follow-up: rv %v, length %d, %q", rv, n, out[:n])
	}
	if got := calls(); len(got) != 5 || got[2] != "C_Encrypt cccc" || got[3] != "C_Encrypt dddd" || got[4] != "C_Encrypt eeee" {
		t.Fatalf("the daemon saw %q, want cccc, dddd and eeee's C_Encrypt, the last follow-up served", got)
	}
}

// TestPrefetchHeldOtherLongInput: past the size up to which the module
// keeps a follow-up's arguments as they are, it matches them by their
// SHA-256: an input that differs in its last byte still goes to the
// daemon, the same input is served from the held result.
func TestPrefetchHeldOtherLongInput(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	m, _ := session(t, func(q Req) Resp {
		mu.Lock()
		defer mu.Unlock()
		switch q.Call.Name {
		case "C_SessionCancel":
			return Resp{RV: 0}
		case "C_Encrypt":
			in, _ := q.Args.Bytes(1)
			spec := q.Args.Out(2)
			seen = append(seen, fmt.Sprintf("%d:%c", len(in), in[len(in)-1]))
			out := append([]byte("out:"), in[len(in)-1])
			out = append(out, bytes.Repeat([]byte{'.'}, 16-len(out))...)
			return Reply("C_Encrypt", func(r *wire.Results) uint64 { return r.OutBytes(spec, out) })
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	long := func(last byte) []byte { return append(bytes.Repeat([]byte{'x'}, 5000), last) }
	if rv, n, _ := m.Encrypt(1, long('a'), 0, true); rv != 0 || n != 16 {
		t.Fatalf("size query: rv %v, length %d", rv, n)
	}
	if rv, n, out := m.Encrypt(1, long('b'), 64, false); rv != 0 || n != 16 || string(out[:5]) != "out:b" {
		t.Fatalf("follow-up with other input: rv %v, length %d, %q", rv, n, out[:n])
	}
	if rv, _, _ := m.Encrypt(1, long('c'), 0, true); rv != 0 {
		t.Fatalf("size query: rv %v", rv)
	}
	if rv, n, out := m.Encrypt(1, long('c'), 64, false); rv != 0 || n != 16 || string(out[:5]) != "out:c" {
		t.Fatalf("follow-up: rv %v, length %d, %q", rv, n, out[:n])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 || seen[0] != "5001:a" || seen[1] != "5001:b" || seen[2] != "5001:c" {
		t.Fatalf("the daemon saw %q, want a, b and c's C_Encrypt, the last follow-up served", seen)
	}
}

// A daemon that holds nothing of the application any more (it
// restarted, or every connection broke) holds none of its operations:
// once a new connection's hello has said so, a result held from before
// is dropped, and the follow-up goes to the daemon, owing it nothing.
func TestPrefetchHeldDaemonLost(t *testing.T) {
	m, p, seen := updateDaemon(t)
	if o := m.OpOne(KindEncrypt, 1, In{Data: []byte("one")}, Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query: %+v", o)
	}
	p.DropAll()
	// Another session's call finds the connection broken, the next dials
	// anew: the daemon's application is a new one.
	if rv := m.SessionCancel(2, 0); rv != ck.CKR_DEVICE_REMOVED {
		t.Fatalf("C_SessionCancel on the broken connection: %v", rv)
	}
	if rv := m.SessionCancel(2, 0); rv != 0 {
		t.Fatalf("C_SessionCancel on a new connection: %v", rv)
	}
	if o := m.OpOne(KindEncrypt, 1, In{Data: []byte("one")}, Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:one" {
		t.Fatalf("follow-up: %+v", o)
	}
	if got := seen(); !sameCalls(got, "C_Encrypt prefetch one", "cancel 0x0", "C_Encrypt call one") {
		t.Fatalf("the daemon saw %q, want the follow-up to reach it", got)
	}
}

// A prefetch's reply that does not decode exactly (a byte after its
// results) is malformed, CKR_DEVICE_ERROR, and nothing of it is held:
// another length query and the follow-up go to the daemon.
func TestPrefetchMalformedNotHeld(t *testing.T) {
	trailing := true
	m, _, seen := recordingSession(t, func(q Req, note func(string)) Resp {
		if q.Call.Name != "C_Encrypt" {
			note(q.Call.Name)
			return Resp{RV: 0}
		}
		in, _ := q.Args.Bytes(1)
		spec := q.Args.Out(2)
		note("C_Encrypt " + asked(spec) + " " + string(in))
		resp := Reply(q.Call.Name, func(r *wire.Results) uint64 { return r.OutBytes(spec, append([]byte("out:"), in...)) })
		if trailing && spec.Prefetch {
			trailing = false
			resp.Results = append(resp.Results, 0)
		}
		return resp
	})
	if o := m.OpOne(KindEncrypt, 1, In{Data: []byte("one")}, Buf{Null: true}); o.RV != ck.CKR_DEVICE_ERROR {
		t.Fatalf("a prefetch with a byte after its results: %+v", o)
	}
	if o := m.OpOne(KindEncrypt, 1, In{Data: []byte("one")}, Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query: %+v", o)
	}
	if o := m.OpOne(KindEncrypt, 1, In{Data: []byte("one")}, Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "out:one" {
		t.Fatalf("follow-up: %+v", o)
	}
	if got := seen(); !sameCalls(got, "C_Encrypt prefetch one", "C_Encrypt prefetch one") {
		t.Fatalf("the daemon saw %q, want the length query after the malformed reply to reach it", got)
	}
}
