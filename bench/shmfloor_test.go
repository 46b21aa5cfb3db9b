package bench

// A measurement, not a transport: the round trip of a shared-memory
// transport (a memfd per connection passed over the Unix socket, a request
// ring and a reply ring in it, futex wake-ups after a short spin, the
// server copying each request out of the ring before it looks at it)
// beside the bare socket round trip, at the sizes of the socket floor
// (echo.go) and at several concurrencies. docs/performance.md, "A
// shared-memory transport", has the figures and the decision.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/unixfd"
)

// shmEnv makes the re-executed test binary the floor's server.
const shmEnv = "HSMEMU_BENCH_SHMFLOOR"

// The shared region: two rings, each on a page of its own. In a ring the
// producer owns tail, the consumer head and waiting; each word on a cache
// line of its own, so that the two ends do not share a line they write.
const (
	shmSize      = 8192
	ringPage     = 4096
	ringTail     = 0   // bytes ever written (uint32, wraps); the futex word
	ringWaiting  = 64  // 1 while the consumer sleeps or is about to
	ringHead     = 128 // bytes ever consumed
	ringClosed   = 192 // set by the producer's side when it goes away
	ringData     = 256
	ringCap      = 2048 // a power of two
	shmFrameMax  = 1024 // the largest frame either end accepts
	reqRingOff   = 0
	replyRingOff = ringPage

	futexWait = 0 // FUTEX_WAIT, shared (no FUTEX_PRIVATE_FLAG): two processes
	futexWake = 1

	// shmIdleCheck bounds a sleep in the server, after which it checks
	// that the client's socket is still open: a futex cannot wait on a
	// descriptor too.
	shmIdleCheck = 200 * time.Millisecond
)

// ring is one direction of a connection's region.
type ring struct {
	base unsafe.Pointer
}

func (r ring) word(off uintptr) *uint32 { return (*uint32)(unsafe.Add(r.base, off)) }
func (r ring) data() []byte             { return unsafe.Slice((*byte)(unsafe.Add(r.base, ringData)), ringCap) }

var errShmClosed = errors.New("shm: peer closed")

// put writes one frame (a 4-byte length, then p) at tail, publishes it and
// wakes the consumer if it sleeps. tail is the producer's own copy: it
// never reads back a word the other process could have changed.
func (r ring) put(tail *uint32, p []byte) error {
	need := uint32(4 + len(p))
	if *tail-atomic.LoadUint32(r.word(ringHead)) > ringCap-need {
		return errors.New("shm: ring full") // one request outstanding per connection: never here
	}
	var l [4]byte
	binary.LittleEndian.PutUint32(l[:], uint32(len(p)))
	d := r.data()
	t := *tail
	ringCopyIn(d, t, l[:])
	ringCopyIn(d, t+4, p)
	*tail = t + need
	atomic.StoreUint32(r.word(ringTail), *tail) // XCHG: a full barrier before the load below
	if atomic.LoadUint32(r.word(ringWaiting)) != 0 {
		futex(r.word(ringTail), futexWake, 1, nil)
	}
	return nil
}

// get waits for a frame at head, copies it out into dst, then frees its
// room. Every length comes from shared memory the peer can change at any
// time, so each is read once and checked before use.
func (r ring) get(head *uint32, dst []byte, spin time.Duration, alive func() bool) (int, error) {
	if err := r.wait(*head, spin, alive); err != nil {
		return 0, err
	}
	avail := atomic.LoadUint32(r.word(ringTail)) - *head
	if avail < 4 || avail > ringCap {
		return 0, fmt.Errorf("shm: bad ring state (%d bytes available)", avail)
	}
	d := r.data()
	var l [4]byte
	ringCopyOut(l[:], d, *head)
	n := binary.LittleEndian.Uint32(l[:])
	if n > avail-4 || n > uint32(len(dst)) {
		return 0, fmt.Errorf("shm: frame of %d bytes (room %d, available %d)", n, len(dst), avail-4)
	}
	ringCopyOut(dst[:n], d, *head+4)
	*head += 4 + n
	atomic.StoreUint32(r.word(ringHead), *head)
	return int(n), nil
}

// wait returns once tail moves past head: first spinning for up to spin,
// then sleeping on the futex. alive, when not nil, is asked after each
// sleep that timed out.
func (r ring) wait(head uint32, spin time.Duration, alive func() bool) error {
	tail := r.word(ringTail)
	if atomic.LoadUint32(tail) != head {
		return nil
	}
	if spin > 0 {
		start := time.Now()
		for i := 1; ; i++ {
			if atomic.LoadUint32(tail) != head {
				return nil
			}
			if i&63 == 0 && time.Since(start) > spin {
				break
			}
		}
	}
	waiting := r.word(ringWaiting)
	atomic.StoreUint32(waiting, 1)
	defer atomic.StoreUint32(waiting, 0)
	ts := unix.NsecToTimespec(int64(shmIdleCheck))
	for atomic.LoadUint32(tail) == head {
		if atomic.LoadUint32(r.word(ringClosed)) != 0 {
			return errShmClosed
		}
		if err := futex(tail, futexWait, head, &ts); err == unix.ETIMEDOUT && alive != nil && !alive() {
			return errShmClosed
		}
	}
	return nil
}

func (r ring) close() {
	atomic.StoreUint32(r.word(ringClosed), 1)
	futex(r.word(ringTail), futexWake, 1, nil)
}

func ringCopyIn(d []byte, at uint32, p []byte) {
	i := int(at & (ringCap - 1))
	n := copy(d[i:], p)
	copy(d, p[n:])
}

func ringCopyOut(p, d []byte, at uint32) {
	i := int(at & (ringCap - 1))
	n := copy(p, d[i:])
	copy(p[n:], d)
}

func futex(addr *uint32, op int, val uint32, ts *unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), uintptr(op), uintptr(val), uintptr(unsafe.Pointer(ts)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// The hello, the first byte a client sends: 's' for the socket echo, 'm'
// for the shared-memory one (with the memfd and the server's spin in
// nanoseconds, 8 bytes).
const (
	helloSocket = 's'
	helloShm    = 'm'
)

// maybeServeShmFloor makes this process the floor's server when shmEnv is
// set; it never returns then.
func maybeServeShmFloor() {
	sock, ok := os.LookupEnv(shmEnv)
	if !ok {
		return
	}
	if err := serveShmFloor(sock); err != nil {
		fmt.Fprintf(os.Stderr, "shm floor server: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveShmFloor accepts connections until stdin closes (the parent went
// away), each served by a goroutine of its own, as the daemon serves the
// module's; Ps follow the daemon's rule (daemon/procs.go): the cores' plus
// one per connection, at most two per core.
func serveShmFloor(sock string) error {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return err
	}
	go func() {
		var b [1]byte
		os.Stdin.Read(b[:]) // EOF when the parent exits
		ln.Close()
		os.Exit(0)
	}()
	cores := runtime.NumCPU()
	var mu sync.Mutex
	conns := 0
	setProcs := func(d int) {
		mu.Lock()
		defer mu.Unlock()
		conns += d
		runtime.GOMAXPROCS(min(cores+conns, 2*cores))
	}
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return nil
		}
		fd, err := unixfd.DupBlocking(c)
		c.Close()
		if err != nil {
			return err
		}
		setProcs(1)
		go func() {
			defer setProcs(-1)
			defer syscall.Close(fd)
			if err := serveShmConn(fd); err != nil && !errors.Is(err, errShmClosed) {
				fmt.Fprintf(os.Stderr, "shm floor server: connection: %v\n", err)
			}
		}()
	}
}

func serveShmConn(fd int) error {
	// The hello is 9 bytes whichever the transport: a stream socket
	// would run a shorter one into the first request.
	buf := make([]byte, 9)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil || n == 0 {
		return errShmClosed
	}
	if m, err := readFullFD(fd, buf[n:]); err != nil {
		return errShmClosed
	} else {
		n += m
	}
	req, rep := make([]byte, shmFrameMax), make([]byte, echoReply)
	if buf[0] == helloSocket {
		for i := 1; ; i++ {
			if i%echoYieldEvery == 0 {
				runtime.Gosched()
			}
			if _, err := readFullFD(fd, req[:echoRequest]); err != nil {
				return errShmClosed
			}
			copy(rep[4:8], req[4:8]) // the request's id, so the client can check
			if _, err := unixfd.FD(fd).Write(rep); err != nil {
				return errShmClosed
			}
		}
	}
	if buf[0] != helloShm {
		return fmt.Errorf("bad hello %q", buf[:n])
	}
	spin := time.Duration(binary.LittleEndian.Uint64(buf[1:9]))
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("no memfd in the hello: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fmt.Errorf("no memfd in the hello: %v", err)
	}
	mfd := fds[0]
	defer unix.Close(mfd)
	// The client could shrink the file under the mapping (a SIGBUS in the
	// server at the next access): it must come sealed against that.
	seals, err := unix.FcntlInt(uintptr(mfd), unix.F_GET_SEALS, 0)
	if err != nil || seals&(unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL) != unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL {
		return fmt.Errorf("memfd not sealed against shrinking (seals %#x, %v)", seals, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(mfd, &st); err != nil || st.Size < shmSize {
		return fmt.Errorf("memfd of %d bytes, want %d", st.Size, shmSize)
	}
	mem, err := unix.Mmap(mfd, 0, shmSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(mem)
	in := ring{unsafe.Pointer(&mem[reqRingOff])}
	out := ring{unsafe.Pointer(&mem[replyRingOff])}
	defer out.close()
	alive := func() bool {
		var b [1]byte
		n, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !(n == 0 && err == nil)
	}
	var head, tail uint32
	for i := 1; ; i++ {
		if i%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		// The request is copied out of the ring before anything reads
		// it: the client can rewrite the ring at any moment.
		n, err := in.get(&head, req, spin, alive)
		if err != nil {
			return err
		}
		if n != echoRequest {
			return fmt.Errorf("request of %d bytes", n)
		}
		copy(rep[4:8], req[4:8])
		if err := out.put(&tail, rep); err != nil {
			return err
		}
	}
}

func readFullFD(fd int, p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unixfd.FD(fd).Read(p[done:])
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// shmServer is the floor's server process.
type shmServer struct {
	sock  string
	cmd   *exec.Cmd
	stdin *os.File
}

func startShmServer(tb testing.TB) *shmServer {
	tb.Helper()
	dir, err := os.MkdirTemp("", "hsf")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	s := &shmServer{sock: filepath.Join(dir, "s")}
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	s.cmd = exec.Command(exe, "-test.run=^$", "-test.bench=^$")
	s.cmd.Env = append(os.Environ(), shmEnv+"="+s.sock)
	s.cmd.Stderr = os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	s.cmd.Stdin, s.stdin = r, w
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	r.Close()
	tb.Cleanup(func() {
		s.stdin.Close()
		s.cmd.Wait()
	})
	for deadline := time.Now().Add(echoStartTimeout); ; {
		if _, err := os.Stat(s.sock); err == nil {
			return s
		}
		if time.Now().After(deadline) {
			tb.Fatal("shm floor server did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cpu returns the server's CPU time so far, the sum over its threads.
func (s *shmServer) cpu() time.Duration { return taskCPU(s.cmd.Process.Pid) }

func taskCPU(pid int) time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, _ := os.ReadDir(dir)
	var sum time.Duration
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

func selfCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// floorConn is one client connection of either transport.
type floorConn struct {
	fd   int
	mfd  int
	mem  []byte
	out  ring // requests
	in   ring // replies
	spin time.Duration
	tail uint32
	head uint32
}

func dialFloor(sock string, shm bool, spin time.Duration) (*floorConn, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	fd, err := unixfd.DupBlocking(c)
	c.Close()
	if err != nil {
		return nil, err
	}
	fc := &floorConn{fd: fd, mfd: -1, spin: spin}
	if !shm {
		if _, err := unixfd.FD(fd).Write([]byte{helloSocket, 0, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			fc.close()
			return nil, err
		}
		return fc, nil
	}
	if err := fc.mapShm(); err != nil {
		fc.close()
		return nil, err
	}
	hello := make([]byte, 9)
	hello[0] = helloShm
	binary.LittleEndian.PutUint64(hello[1:], uint64(spin))
	if err := unix.Sendmsg(fd, hello, unix.UnixRights(fc.mfd), nil, 0); err != nil {
		fc.close()
		return nil, err
	}
	return fc, nil
}

func (fc *floorConn) mapShm() error {
	var err error
	if fc.mfd, err = unix.MemfdCreate("hsmemu-floor", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING); err != nil {
		return err
	}
	if err := unix.Ftruncate(fc.mfd, shmSize); err != nil {
		return err
	}
	if _, err := unix.FcntlInt(uintptr(fc.mfd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return err
	}
	if fc.mem, err = unix.Mmap(fc.mfd, 0, shmSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return err
	}
	fc.out = ring{unsafe.Pointer(&fc.mem[reqRingOff])}
	fc.in = ring{unsafe.Pointer(&fc.mem[replyRingOff])}
	return nil
}

// roundTrip sends req and reads the reply into rep.
func (fc *floorConn) roundTrip(req, rep []byte) error {
	if fc.mem == nil {
		if _, err := unixfd.FD(fc.fd).Write(req); err != nil {
			return err
		}
		_, err := readFullFD(fc.fd, rep)
		return err
	}
	if err := fc.out.put(&fc.tail, req); err != nil {
		return err
	}
	n, err := fc.in.get(&fc.head, rep, fc.spin, nil)
	if err == nil && n != len(rep) {
		err = fmt.Errorf("reply of %d bytes", n)
	}
	return err
}

func (fc *floorConn) close() {
	if fc.mem != nil {
		fc.out.close()
		unix.Munmap(fc.mem)
		fc.mem = nil
	}
	if fc.mfd >= 0 {
		unix.Close(fc.mfd)
	}
	syscall.Close(fc.fd)
}

// floorTransport is one way of making the round trip.
type floorTransport struct {
	name string
	shm  bool
	spin time.Duration // each end's spin before it sleeps
}

var floorTransports = []floorTransport{
	{name: "socket"},
	{name: "shm-futex", shm: true},
	{name: "shm-spin5us", shm: true, spin: 5 * time.Microsecond},
	{name: "shm-spin50us", shm: true, spin: 50 * time.Microsecond},
}

// runFloor makes n round trips over c connections of tr, one worker per
// connection (as the module's threads each take a connection of the
// pool), checking every reply's id, and returns the merged latencies.
func runFloor(sock string, tr floorTransport, c, n int) (*Histogram, error) {
	conns := make([]*floorConn, c)
	defer func() {
		for _, fc := range conns {
			if fc != nil {
				fc.close()
			}
		}
	}()
	for i := range conns {
		fc, err := dialFloor(sock, tr.shm, tr.spin)
		if err != nil {
			return nil, err
		}
		conns[i] = fc
	}
	hs := make([]*Histogram, c)
	errs := make([]error, c)
	var wg sync.WaitGroup
	for w := range c {
		hs[w] = NewHistogram()
		todo := n / c
		if w < n%c {
			todo++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, rep := make([]byte, echoRequest), make([]byte, echoReply)
			now := time.Now()
			for i := 1; i <= todo; i++ {
				if i%echoYieldEvery == 0 {
					runtime.Gosched()
					now = time.Now()
				}
				binary.LittleEndian.PutUint32(req[4:8], uint32(i))
				if err := conns[w].roundTrip(req, rep); err != nil {
					errs[w] = err
					return
				}
				after := time.Now()
				hs[w].Record(after.Sub(now))
				now = after
				if got := binary.LittleEndian.Uint32(rep[4:8]); got != uint32(i) {
					errs[w] = fmt.Errorf("reply to request %d answers %d", i, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	h := NewHistogram()
	for _, x := range hs {
		h.Merge(x)
	}
	return h, errors.Join(errs...)
}

// TestShmFloorRoundTrip checks the floor's transports: every reply
// answers its own request, on one connection and on several at once.
func TestShmFloorRoundTrip(t *testing.T) {
	s := startShmServer(t)
	for _, tr := range floorTransports {
		for _, c := range []int{1, 3} {
			h, err := runFloor(s.sock, tr, c, 3000)
			if err != nil {
				t.Fatalf("%s c=%d: %v", tr.name, c, err)
			}
			if h.Count() != 3000 {
				t.Fatalf("%s c=%d: %d round trips, want 3000", tr.name, c, h.Count())
			}
		}
	}
}

// TestShmFloorBadFrame: a frame longer than the server takes ends the
// connection, which the client sees as closed, not as a hang.
func TestShmFloorBadFrame(t *testing.T) {
	s := startShmServer(t)
	fc, err := dialFloor(s.sock, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.close()
	if err := fc.out.put(&fc.tail, make([]byte, shmFrameMax+1)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := fc.in.get(&fc.head, make([]byte, echoReply), 0, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errShmClosed) {
			t.Fatalf("got %v, want the connection closed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to a bad frame")
	}
}

// BenchmarkShmFloor measures each transport at concurrency 1, 2 and 8:
// ns/op is the wall time per round trip at full rate (1/throughput), with
// the p50 and p99 of single round trips, and the CPU both processes spent
// per round trip.
func BenchmarkShmFloor(b *testing.B) {
	s := startShmServer(b)
	for _, c := range []int{1, 2, 8} {
		for _, tr := range floorTransports {
			b.Run(fmt.Sprintf("c=%d/%s", c, tr.name), func(b *testing.B) {
				cpu0, scpu0 := selfCPU(), s.cpu()
				b.ResetTimer()
				h, err := runFloor(s.sock, tr, c, b.N)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				cpu, scpu := selfCPU()-cpu0, s.cpu()-scpu0
				b.ReportMetric(float64(h.Quantile(0.5).Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(h.Quantile(0.99).Nanoseconds()), "p99-ns")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "client-cpu-ns/op")
				b.ReportMetric(float64(scpu.Nanoseconds())/float64(b.N), "server-cpu-ns/op")
			})
		}
	}
}
