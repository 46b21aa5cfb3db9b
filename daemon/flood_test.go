package daemon

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

// liveHeap is the heap in use after a collection: what the process holds.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// signer is a well-behaved client: an application of its own that signs
// with ECDSA P-256, one signature after another, and records each one's
// latency.
type signer struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	lat        []time.Duration
	firstErr   atomic.Value
}

func (s *signer) run(t *testing.T, d *testDaemon, slot uint64, stop <-chan struct{}) {
	cl := d.dial(t)
	h := cl.Open(slot, false)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(A(ck.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}), AB(ck.CKA_VERIFY, true)),
		T(AB(ck.CKA_SIGN, true)), None(), None())
	key := out[5].Ulong
	digest := make([]byte, 32)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			rv, _, err := cl.Conn.Call("C_SignInit", U(h), M(ck.CKM_ECDSA), U(key))
			if err == nil && rv == ck.CKR_OK {
				rv, _, err = cl.Conn.Call("C_Sign", U(h), B(digest), Out(64))
			}
			if err != nil || rv != ck.CKR_OK {
				s.failed.Add(1)
				if err == nil {
					err = ck.Error(rv)
				}
				s.firstErr.CompareAndSwap(nil, fmt.Errorf("%w", err))
				continue
			}
			s.ok.Add(1)
			s.mu.Lock()
			s.lat = append(s.lat, time.Since(start))
			s.mu.Unlock()
		}
	}()
}

// waitFor waits until the signer has made n more signatures than it had,
// failing the test after a generous deadline (a hang guard, not a
// measure of speed).
func (s *signer) waitFor(t *testing.T, n int64) {
	t.Helper()
	want := s.ok.Load() + n
	deadline := time.Now().Add(2 * time.Minute)
	for s.ok.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("the well-behaved client made %d of %d signatures in 2 minutes (%d failed: %v)", s.ok.Load(), want, s.failed.Load(), s.firstErr.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// percentiles of the latencies since mark.
func (s *signer) percentiles(mark int) string {
	s.mu.Lock()
	l := slices.Clone(s.lat[mark:])
	s.mu.Unlock()
	if len(l) == 0 {
		return "no signatures"
	}
	slices.Sort(l)
	return fmt.Sprintf("%d signatures, p50 %v, p99 %v, max %v", len(l), l[len(l)/2], l[len(l)*99/100], l[len(l)-1])
}

func (s *signer) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lat)
}

// heapSampler records the largest live heap it sees while it runs.
type heapSampler struct {
	stop chan struct{}
	done chan struct{}
	peak atomic.Uint64
}

func sampleHeap() *heapSampler {
	s := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			runtime.GC()
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > s.peak.Load() {
				s.peak.Store(m.HeapAlloc)
			}
			select {
			case <-s.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *heapSampler) end() uint64 {
	close(s.stop)
	<-s.done
	return s.peak.Load()
}

// The flood of issue 14: 24 connections each send one 16 MiB frame and go
// idle; 24 more send all but the last byte of one and stall; 20
// multipart GCM encryptions are fed until the daemon refuses. Meanwhile a
// well-behaved client keeps signing. The daemon's live heap stays within
// its budgets (with a margin for the test's own memory and a call's
// transient work), idle connections hold next to nothing, and every
// signature succeeds. Latencies are logged, not asserted.
func TestMemoryFlood(t *testing.T) {
	const (
		budget   = 64 << 20 // requests and replies, half each
		opBudget = 64 << 20
		conns    = 24
		margin   = 24 << 20
	)
	d := startDaemonLimits(t, token.Config{OpBudget: opBudget}, Limits{Budget: budget, BudgetWait: time.Hour})
	reqs := d.srv.lim.requests
	f := newFloodApp(t, d)
	var good signer
	stop := make(chan struct{})
	defer close(stop)
	good.run(t, d, f.slot, stop)
	good.waitFor(t, 50)

	payload := make([]byte, wire.MaxFrame-64)
	flood := make([]*rawClient, conns)
	sessions := make([]uint64, conns)
	for i := range flood {
		flood[i], sessions[i] = f.conn()
	}
	base := liveHeap()
	over := func(n uint64) int64 { return (int64(n) - int64(base)) >> 20 }

	// 1. One 16 MiB C_Encrypt each (a 16 MiB reply each), then idle. At
	// most the requests' half and the replies' half are held at once,
	// and a call's transient output for each request being served.
	for i, rc := range flood {
		if rv := rc.call("C_EncryptInit", U(sessions[i]), gcmMech(), U(f.key)); rv != ck.CKR_OK {
			t.Fatalf("C_EncryptInit: %v", ck.Error(rv))
		}
	}
	mark := good.mark()
	sampler := sampleHeap()
	var wg sync.WaitGroup
	for i, rc := range flood {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rc.dataCall("C_Encrypt", sessions[i], payload, wire.MaxFrame); err != nil {
				t.Errorf("flood: %v", err)
				return
			}
			if rv, _, err := rc.reply(); err != nil || rv != ck.CKR_OK {
				t.Errorf("flood C_Encrypt: %v %v", ck.Error(rv), err)
			}
		}()
	}
	good.waitFor(t, 100)
	wg.Wait()
	peak := sampler.end()
	idle := liveHeap()
	t.Logf("24 x C_Encrypt of 16 MiB: peak heap %d MiB over the baseline, %d MiB once idle; good client: %s",
		over(peak), over(idle), good.percentiles(mark))
	// What the budget holds, and buffers given back during a collection,
	// which survive it: as much again, or twice that on a machine slow
	// enough to serve a few calls during one.
	if limit := int64(3*budget + margin); over(peak) > limit>>20 {
		t.Errorf("peak heap %d MiB over the baseline, over %d MiB", over(peak), limit>>20)
	}
	if limit := int64(conns*(256<<10) + margin); over(idle) > limit>>20 {
		t.Errorf("24 idle connections hold %d MiB, over %d MiB", over(idle), limit>>20)
	}

	// 2. All but the last byte of a 16 MiB C_DigestUpdate each: the
	// daemon reads two (the requests' half), the others wait their turn
	// without memory. Then the last bytes come, and each is served.
	mark = good.mark()
	release := make(chan struct{})
	for i, rc := range flood {
		if rv := rc.call("C_DigestInit", U(sessions[i]), M(ck.CKM_SHA256)); rv != ck.CKR_OK {
			t.Fatalf("C_DigestInit: %v", ck.Error(rv))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rest, err := rc.stallData("C_DigestUpdate", sessions[i], payload, len(payload)-1)
			if err != nil {
				t.Errorf("flood: %v", err)
				return
			}
			<-release
			if _, err := rc.c.Write(rest); err != nil {
				t.Errorf("flood: %v", err)
				return
			}
			if rv, _, err := rc.reply(); err != nil || rv != ck.CKR_OK {
				t.Errorf("flood C_DigestUpdate: %v %v", ck.Error(rv), err)
			}
		}()
	}
	waitUntil(t, "the requests' half held, the others waiting", func() bool {
		return reqs.Used() > budget/2-(wire.MaxFrame) && reqs.Waiting() == conns-2
	})
	good.waitFor(t, 100)
	stalled := liveHeap()
	t.Logf("24 x 16 MiB C_DigestUpdate stalled before their last byte: heap %d MiB over the baseline; good client: %s",
		over(stalled), good.percentiles(mark))
	if limit := int64(budget/2 + margin); over(stalled) > limit>>20 {
		t.Errorf("stalled requests hold %d MiB, over %d MiB", over(stalled), limit>>20)
	}
	close(release)
	wg.Wait()

	// 3. Multipart GCM: 20 encryptions fed 15 MiB each in 1 MiB parts and
	// left open. The operations' budget refuses what it cannot hold.
	mark = good.mark()
	var accepted, refused int
	for i := range 20 {
		rc, h := flood[i], sessions[i]
		if rv := rc.call("C_EncryptInit", U(h), gcmMech(), U(f.key)); rv != ck.CKR_OK {
			t.Fatalf("C_EncryptInit: %v", ck.Error(rv))
		}
		for range 15 {
			if err := rc.dataCall("C_EncryptUpdate", h, payload[:1<<20], wire.MaxFrame); err != nil {
				t.Fatal(err)
			}
			rv, _, err := rc.reply()
			if err != nil {
				t.Fatal(err)
			}
			if rv == ck.CKR_DEVICE_MEMORY {
				refused++
				break
			}
			if rv != ck.CKR_OK {
				t.Fatalf("C_EncryptUpdate: %v", ck.Error(rv))
			}
			accepted += 1 << 20
		}
	}
	good.waitFor(t, 100)
	ops := liveHeap()
	used, _ := d.eng.OpMemory()
	t.Logf("20 multipart GCM encryptions of 15 MiB: %d MiB taken in, %d refused; operations hold %d MiB; heap %d MiB over the baseline; good client: %s",
		accepted>>20, refused, used>>20, over(ops), good.percentiles(mark))
	if used > opBudget || refused == 0 {
		t.Errorf("operations hold %d bytes of a budget of %d, %d refused", used, opBudget, refused)
	}
	if limit := int64(opBudget + margin); over(ops) > limit>>20 {
		t.Errorf("open operations hold %d MiB, over %d MiB", over(ops), limit>>20)
	}
	for i := range 20 {
		if rv := flood[i].call("C_SessionCancel", U(sessions[i]), U(ck.CKF_ENCRYPT)); rv != ck.CKR_OK {
			t.Fatalf("C_SessionCancel: %v", ck.Error(rv))
		}
	}
	if used, _ := d.eng.OpMemory(); used != 0 {
		t.Errorf("operations hold %d bytes once cancelled", used)
	}
	if n := good.failed.Load(); n != 0 {
		t.Errorf("the well-behaved client saw %d failures, the first: %v", n, good.firstErr.Load())
	}
	t.Logf("good client over the whole flood: %s", good.percentiles(0))
}
