//go:build cgo

package moduletest

import (
	"bytes"
	"sync"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// A mutating call drops every held result when it starts, because it may
// change what a follow-up gets (a key destroyed fails the follow-up of an
// authenticated wrap, a logout ends an operation on a private key). A
// prefetch that runs while another thread's mutating call does may have
// been answered before the change, so the module keeps nothing of it:
// its follow-up, which comes after the mutating call returned, goes to
// the daemon. Once nothing mutates, prefetches are held again.
func TestPrefetchDuringMutationNotHeld(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var seen []string
	note := func(line string) {
		mu.Lock()
		seen = append(seen, line)
		mu.Unlock()
	}
	took := func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := seen
		seen = nil
		return s
	}
	m, _ := session(t, func(q Req) Resp {
		switch q.Call.Name {
		case "C_DestroyObject":
			close(started)
			<-release
			note("destroy")
			return Resp{RV: 0}
		case "C_WrapKeyAuthenticated":
			_, par := q.Args.MsgMechanism(1)
			spec := q.Args.Out(5)
			out := []byte("wrapped")
			outs := map[string][]byte{}
			if spec.Prefetch || spec.Present && spec.Capacity >= uint64(len(out)) {
				outs["pIv"] = bytes.Repeat([]byte{1}, 12)
				outs["pTag"] = bytes.Repeat([]byte{1}, 16)
			}
			note("wrap " + asked(spec))
			return Reply(q.Call.Name, func(r *wire.Results) uint64 {
				r.MsgOut(par, outs)
				return r.OutBytes(spec, out)
			})
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	wrap := func(p *MsgParam, b Buf) Out { return m.WrapKeyAuthenticated(1, ck.CKM_AES_GCM, p, 7, 9, nil, b) }

	destroyed := make(chan RV)
	go func() { destroyed <- m.DestroyObject(2, 9) }()
	<-started
	p := gcmParam()
	if o := wrap(p, Buf{Null: true}); o.RV != 0 || o.Len != 7 {
		t.Fatalf("length query during C_DestroyObject: %+v", o)
	}
	close(release)
	if rv := <-destroyed; rv != 0 {
		t.Fatalf("C_DestroyObject: %v", rv)
	}
	if o := wrap(p, Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "wrapped" {
		t.Fatalf("follow-up: %+v", o)
	}
	if got := took(); !sameCalls(got, "wrap prefetch", "destroy", "wrap call") {
		t.Fatalf("the daemon saw %q, want the follow-up after C_DestroyObject to reach it", got)
	}

	p = gcmParam()
	wrap(p, Buf{Null: true})
	if o := wrap(p, Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "wrapped" {
		t.Fatalf("follow-up with nothing mutating: %+v", o)
	}
	if got := took(); !sameCalls(got, "wrap prefetch") {
		t.Fatalf("the daemon saw %q, want the follow-up held", got)
	}
}
