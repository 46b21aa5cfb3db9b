package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/internal/testenv"
)

// memStats are the daemon's runtime memory statistics, read from its
// profiler (--pprof) after a garbage collection.
type memStats struct {
	HeapAlloc, HeapInuse, Sys, StackInuse int64
	NextGC                                int64 // the heap size at which the next collection starts
}

// profiled adds --pprof on a socket in the state directory.
func (d *daemon) profiled() {
	d.args = append(d.args, "--pprof", filepath.Join(d.dir, "p"))
}

// mem collects the daemon's garbage (the heap profile's gc=1) and returns
// its memory statistics, with its resident set from /proc.
func (d *daemon) mem(t *testing.T) (memStats, int64) {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", filepath.Join(d.dir, "p"))
	}}, Timeout: 60 * time.Second}
	rsp, err := cl.Get("http://hsmemu/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	var m memStats
	sc := bufio.NewScanner(rsp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] != "#" || f[2] != "=" {
			continue
		}
		v, _ := strconv.ParseInt(f[3], 10, 64)
		switch f[1] {
		case "HeapAlloc":
			m.HeapAlloc = v
		case "HeapInuse":
			m.HeapInuse = v
		case "Sys":
			m.Sys = v
		case "Stack":
			m.StackInuse = v
		case "NextGC":
			m.NextGC = v
		}
	}
	io.Copy(io.Discard, rsp.Body)
	// Let the heap settle a moment after the collection.
	time.Sleep(200 * time.Millisecond)
	return m, d.rssKiB()
}

// TestMemory measures what sessions and connections cost the daemon: its
// resident set (VmRSS) and its live heap after a collection, with 10,000
// sessions of one application on one connection, then 1,000 connections
// of 1,000 applications, then 10 sessions on each of them: 10,000
// sessions and 1,000 connections at once, every one of which answers.
// The figures are logged (docs/reliability.md keeps them); the bounds
// below are generous guards against a regression by an order of
// magnitude, not measures.
func TestMemory(t *testing.T) {
	chaosOnly(t)
	// A thousand sockets on each side, and the daemon's own files.
	var nofile unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile); err != nil {
		t.Fatal(err)
	}
	if nofile.Max < 2048 {
		testenv.Missing(t, "1,000 connections need RLIMIT_NOFILE of 2048 or more (its hard limit is %d): raise it (ulimit -Hn)", nofile.Max)
	}
	d := newDaemon(t, "")
	d.profiled()
	d.start()
	slot := newToken(t, d.sock, "memory")
	flags := wiretest.U(ck.CKF_SERIAL_SESSION | ck.CKF_RW_SESSION)
	open := func(c *conn) uint64 {
		out, err := c.do("C_OpenSession", wiretest.U(slot), flags, wiretest.None(), wiretest.None(), wiretest.None())
		if err != nil {
			t.Fatal(err)
		}
		return out[4].Ulong
	}
	per := func(a, b int64, n int) string { return fmt.Sprintf("%.0f B", float64(b-a)/float64(n)) }

	m0, rss0 := d.mem(t)
	t.Logf("idle: VmRSS %d KiB, live heap %d KiB, Go Sys %d KiB, threads %d", rss0, m0.HeapAlloc>>10, m0.Sys>>10, d.threads(t))

	// 1. 10,000 sessions of one application.
	c, err := dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	for range 10000 {
		open(c)
	}
	m1, rss1 := d.mem(t)
	t.Logf("10,000 sessions, one connection: VmRSS %d KiB (+%s a session), live heap %d KiB (+%s a session)",
		rss1, per(rss0<<10, rss1<<10, 10000), m1.HeapAlloc>>10, per(m0.HeapAlloc, m1.HeapAlloc, 10000))
	if (m1.HeapAlloc-m0.HeapAlloc)/10000 > 16<<10 {
		t.Errorf("more than 16 KiB of live heap a session")
	}
	if _, err := c.do("C_CloseAllSessions", wiretest.U(slot)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	m2, rss2 := d.mem(t)
	t.Logf("sessions closed: VmRSS %d KiB, live heap %d KiB", rss2, m2.HeapAlloc>>10)

	// 2. 1,000 connections, each an application of its own.
	conns := make([]*conn, 1000)
	for i := range conns {
		if conns[i], err = dial(d.sock); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer conns[i].Close()
	}
	m3, rss3 := d.mem(t)
	threads := d.threads(t)
	t.Logf("1,000 connections, past their hello: VmRSS %d KiB (+%s a connection), live heap %d KiB (+%s a connection), goroutine stacks %d KiB, threads %d",
		rss3, per(rss2<<10, rss3<<10, 1000), m3.HeapAlloc>>10, per(m2.HeapAlloc, m3.HeapAlloc, 1000), m3.StackInuse>>10, threads)
	if (m3.HeapAlloc-m2.HeapAlloc)/1000 > 1<<20 {
		t.Errorf("more than 1 MiB of live heap a connection")
	}
	// A call on each: a connection's buffers and its thread's stack are
	// touched by its first call, not by the hello.
	for i, c := range conns {
		if _, err := c.do("C_GetSlotList", wiretest.U(0), wiretest.Out(64)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	m3, rss3b := d.mem(t)
	t.Logf("1,000 connections, after a call each: VmRSS %d KiB (+%s a connection since the hello, +%s since idle)",
		rss3b, per(rss3<<10, rss3b<<10, 1000), per(rss2<<10, rss3b<<10, 1000))
	rss3 = rss3b

	// 3. And 10 sessions on each: 10,000 sessions, 1,000 connections.
	first := make([]uint64, len(conns))
	for i, c := range conns {
		for range 10 {
			first[i] = open(c)
		}
	}
	m4, rss4 := d.mem(t)
	t.Logf("1,000 connections with 10 sessions each: VmRSS %d KiB (+%s a session), live heap %d KiB (+%s a session); the next collection at a heap of %d KiB",
		rss4, per(rss3<<10, rss4<<10, 10000), m4.HeapAlloc>>10, per(m3.HeapAlloc, m4.HeapAlloc, 10000), m4.NextGC>>10)
	st := d.status(t)
	if st.Apps < 1000 || st.Sessions != 10000 {
		t.Errorf("status counts %d applications, %d sessions; want 1,000 (and the status's own) and 10,000", st.Apps, st.Sessions)
	}
	// Load on eight of them for 10 s, the resident set read twice a
	// second: between collections the heap grows to GOGC's multiple of
	// the live heap (the daemon runs at 800 unless GOGC says otherwise).
	var peak int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range conns[:8] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.do("C_GenerateRandom", wiretest.U(first[i]), wire.Value{Ulong: 1024}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 20 {
		time.Sleep(500 * time.Millisecond)
		peak = max(peak, d.rssKiB())
	}
	close(stop)
	wg.Wait()
	t.Logf("1,000 connections, 10,000 sessions, 8 of them busy for 10 s: VmRSS up to %d KiB", peak)

	// Every connection answers.
	for i, c := range conns {
		if _, err := c.do("C_GetSessionInfo", wiretest.U(1), wiretest.None()); err != nil && !isRV(err, ck.CKR_SESSION_HANDLE_INVALID) {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	// The daemon lets go of them: wait for the applications to detach.
	for deadline := time.Now().Add(60 * time.Second); d.status(t).Apps > 1; {
		if time.Now().After(deadline) {
			t.Fatal("the applications of closed connections are still attached after 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	m5, rss5 := d.mem(t)
	t.Logf("all closed: VmRSS %d KiB, live heap %d KiB, threads %d", rss5, m5.HeapAlloc>>10, d.threads(t))
}

// threads is the daemon's thread count.
func (d *daemon) threads(t *testing.T) int64 {
	t.Helper()
	n, err := procStatus(d.pid(), "Threads")
	if err != nil {
		t.Fatal(err)
	}
	return n
}
