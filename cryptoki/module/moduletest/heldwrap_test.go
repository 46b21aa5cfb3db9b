//go:build cgo

package moduletest

import (
	"bytes"
	"fmt"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// wrapAuthDaemon answers C_WrapKeyAuthenticated with a wrapped key that
// names the key and the associated data, and an IV and a tag that number
// the call (a daemon seals each call under a new IV); it records each
// call with whether it was a prefetch, a plain query or a call.
func wrapAuthDaemon(t *testing.T) (*Module, *Peer, func() []string) {
	n := 0
	return recordingSession(t, func(q Req, note func(string)) Resp {
		if q.Call.Name != "C_WrapKeyAuthenticated" {
			note(q.Call.Name)
			return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		}
		typ, par := q.Args.MsgMechanism(1)
		spec := q.Args.Out(5)
		aad, _ := q.Args.Bytes(4)
		if typ != ck.CKM_AES_GCM {
			return Resp{RV: ck.CKR_MECHANISM_INVALID}
		}
		out := []byte(fmt.Sprintf("key%d:%s", q.Args.Ulong(3), aad))
		outs := map[string][]byte{}
		if spec.Prefetch || spec.Present && spec.Capacity >= uint64(len(out)) {
			n++
			outs["pIv"] = bytes.Repeat([]byte{byte(n)}, 12)
			outs["pTag"] = bytes.Repeat([]byte{byte(n)}, 16)
		}
		note(fmt.Sprintf("wrap %s %s", asked(spec), out))
		return Reply(q.Call.Name, func(r *wire.Results) uint64 {
			r.MsgOut(par, outs)
			return r.OutBytes(spec, out)
		})
	})
}

// C_WrapKeyAuthenticated's length query asks for the whole result
// (protocol version 6): the module holds the wrapped key with the IV and
// the tag the parameter gets back, answers another query and a short
// buffer itself, writing nothing into the parameter, and hands all of it
// over to the follow-up with the same arguments. There is no operation,
// so nothing is owed to the daemon after. A follow-up with other
// associated data, another key or another parameter goes to the daemon
// and gets its own wrap, under its own IV.
func TestPrefetchWrapKeyAuthenticatedHeld(t *testing.T) {
	m, _, seen := wrapAuthDaemon(t)
	wrap := func(p *MsgParam, key uint64, aad string, b Buf) Out {
		return m.WrapKeyAuthenticated(1, ck.CKM_AES_GCM, p, 7, key, []byte(aad), b)
	}
	untouched := func(p *MsgParam) bool {
		return bytes.Equal(p.IV, make([]byte, 12)) && bytes.Equal(p.Tag, make([]byte, 16))
	}
	numbered := func(p *MsgParam, n byte) bool {
		return bytes.Equal(p.IV, bytes.Repeat([]byte{n}, 12)) && bytes.Equal(p.Tag, bytes.Repeat([]byte{n}, 16))
	}

	p := gcmParam()
	if o := wrap(p, 9, "aad", Buf{Null: true}); o.RV != 0 || o.Len != 8 || !untouched(p) {
		t.Fatalf("length query: %+v, IV %x", o, p.IV)
	}
	if o := wrap(p, 9, "aad", Buf{Null: true}); o.RV != 0 || o.Len != 8 || !untouched(p) {
		t.Fatalf("length query again: %+v", o)
	}
	if o := wrap(p, 9, "aad", Buf{Cap: 7}); o.RV != ck.CKR_BUFFER_TOO_SMALL || o.Len != 8 || !untouched(p) {
		t.Fatalf("short buffer: %+v, IV %x, tag %x", o, p.IV, p.Tag)
	}
	if o := wrap(p, 9, "aad", Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "key9:aad" || !numbered(p, 1) {
		t.Fatalf("follow-up: %+v, IV %x, tag %x", o, p.IV, p.Tag)
	}
	// Handed over: the next length query owes the daemon nothing.
	p = gcmParam()
	wrap(p, 9, "aad", Buf{Null: true})
	if o := wrap(p, 9, "aad", Buf{Cap: 64}); o.RV != 0 || !numbered(p, 2) {
		t.Fatalf("second follow-up: %+v, IV %x", o, p.IV)
	}
	if got := seen(); !sameCalls(got, "wrap prefetch key9:aad", "wrap prefetch key9:aad") {
		t.Fatalf("the daemon saw %q, want two prefetches", got)
	}

	// Other associated data, another key, another parameter (the
	// caller's IV buffer): the daemon's own wrap, under a new IV.
	for i, c := range []struct {
		name string
		key  uint64
		aad  string
		iv0  byte
		want string
	}{
		{"other associated data", 9, "AAD", 0, "key9:AAD"},
		{"another key", 10, "aad", 0, "key10:aad"},
		{"another parameter", 9, "aad", 0xEE, "key9:aad"},
	} {
		p = gcmParam()
		if o := wrap(p, 9, "aad", Buf{Null: true}); o.RV != 0 || o.Len != 8 {
			t.Fatalf("%s: length query: %+v", c.name, o)
		}
		p.IV[0] = c.iv0
		o := wrap(p, c.key, c.aad, Buf{Cap: 64})
		// The prefetch sealed under IV 2i+3, the call under the next.
		if o.RV != 0 || string(o.Data) != c.want || !numbered(p, byte(2*i+4)) {
			t.Fatalf("%s: %+v, IV %x, tag %x", c.name, o, p.IV, p.Tag)
		}
		if got := seen(); !sameCalls(got, "wrap prefetch key9:aad", "wrap call "+c.want) {
			t.Fatalf("%s: the daemon saw %q", c.name, got)
		}
	}
}

// A daemon of protocol version 5 knows no prefetch of
// C_WrapKeyAuthenticated (its decoder refuses the presence byte): the
// module sends the length query as a plain NULL buffer and holds nothing.
func TestVersion5DaemonNoWrapKeyAuthenticatedPrefetch(t *testing.T) {
	m, p, seen := wrapAuthDaemon(t)
	p.SpeakUpTo(5)
	q := gcmParam()
	if o := m.WrapKeyAuthenticated(1, ck.CKM_AES_GCM, q, 7, 9, []byte("aad"), Buf{Null: true}); o.RV != 0 || o.Len != 8 ||
		!bytes.Equal(q.IV, make([]byte, 12)) {
		t.Fatalf("length query: %+v, IV %x", o, q.IV)
	}
	if o := m.WrapKeyAuthenticated(1, ck.CKM_AES_GCM, q, 7, 9, []byte("aad"), Buf{Cap: 64}); o.RV != 0 ||
		string(o.Data) != "key9:aad" || !bytes.Equal(q.IV, bytes.Repeat([]byte{1}, 12)) {
		t.Fatalf("follow-up: %+v, IV %x", o, q.IV)
	}
	if got := seen(); !sameCalls(got, "wrap query key9:aad", "wrap call key9:aad") {
		t.Fatalf("the daemon saw %q", got)
	}
	if h := p.Hellos(); len(h) != 2 || h[0].Version != wire.Version || h[1].Version != 5 {
		t.Fatalf("hellos %+v: want the current version, then version 5", h)
	}
}
