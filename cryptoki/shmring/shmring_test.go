package shmring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pair returns a module's end and a daemon's end of rings of size bytes,
// each watching its end of a socket pair; gone closes the module's
// socket, which tells the daemon's end that the module is gone.
func pair(t testing.TB, size uint32) (client, daemon *Ring, gone func()) {
	t.Helper()
	client, fd, err := NewClient(size)
	if err != nil {
		t.Fatal(err)
	}
	daemon, err = Open(fd, size)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	client.Watch(sp[0])
	daemon.Watch(sp[1])
	var once sync.Once
	gone = func() { once.Do(func() { unix.Close(sp[0]) }) }
	t.Cleanup(func() {
		client.Close()
		daemon.Close()
		gone()
		unix.Close(sp[1])
	})
	return client, daemon, gone
}

// TestStream sends frames shorter and far longer than the ring both ways
// at once; the bytes come out as they went in.
func TestStream(t *testing.T) {
	client, daemon, _ := pair(t, MinSize)
	rng := rand.New(rand.NewPCG(1, 2))
	var want []byte
	for _, n := range []int{1, 13, 4095, 4096, 4097, 100_000, 1 << 20} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		want = append(want, b...)
	}
	var wg sync.WaitGroup
	var gotReq, gotRep []byte
	var errReq, errRep error
	wg.Add(3)
	go func() { // the module writes requests
		defer wg.Done()
		if _, err := client.Write(want); err != nil {
			errReq = err
		}
	}()
	go func() { // the daemon echoes them as replies
		defer wg.Done()
		buf := make([]byte, 3000)
		for len(gotReq) < len(want) {
			n, err := daemon.Read(buf)
			if err != nil {
				errReq = err
				return
			}
			gotReq = append(gotReq, buf[:n]...)
			if _, err := daemon.Write(buf[:n]); err != nil {
				errRep = err
				return
			}
		}
	}()
	go func() { // the module reads them back
		defer wg.Done()
		gotRep = make([]byte, len(want))
		if _, err := io.ReadFull(client, gotRep); err != nil {
			errRep = err
		}
	}()
	wg.Wait()
	if errReq != nil || errRep != nil {
		t.Fatal(errReq, errRep)
	}
	if !bytes.Equal(gotReq, want) || !bytes.Equal(gotRep, want) {
		t.Fatal("bytes changed on their way through the rings")
	}
}

// TestPeerGone: an end waiting for bytes, or for room, learns from the
// socket that the other is gone.
func TestPeerGone(t *testing.T) {
	_, daemon, gone := pair(t, MinSize)
	daemon.slice = time.Millisecond
	done := make(chan error, 2)
	go func() {
		_, err := daemon.Read(make([]byte, 10))
		done <- err
	}()
	go func() {
		// Twice the ring: it fills, and the module never reads.
		_, err := daemon.Write(make([]byte, 2*MinSize))
		done <- err
	}()
	gone()
	for range 2 {
		if err := <-done; !errors.Is(err, io.EOF) {
			t.Fatalf("after the module went: %v, want EOF", err)
		}
	}
}

// TestStop: StopReading ends a waiting Read; Cut ends a waiting Write.
func TestStop(t *testing.T) {
	_, daemon, _ := pair(t, MinSize)
	done := make(chan error, 1)
	go func() {
		_, err := daemon.Read(make([]byte, 10))
		done <- err
	}()
	daemon.StopReading()
	if err := <-done; !errors.Is(err, io.EOF) {
		t.Fatalf("read after StopReading: %v", err)
	}
	go func() {
		_, err := daemon.Write(make([]byte, 2*MinSize))
		done <- err
	}()
	daemon.Cut()
	if err := <-done; err == nil {
		t.Fatal("write after Cut succeeded")
	}
}

// TestOpenRefuses: the daemon maps only a memfd sealed against shrinking,
// of the size the offer says, with a size it allows.
func TestOpenRefuses(t *testing.T) {
	memfd := func(size int, seals int) int {
		fd, err := unix.MemfdCreate("t", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	p := make([]int, 2)
	if err := unix.Pipe2(p, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	for _, tc := range []struct {
		name string
		fd   int
		size uint32
	}{
		{"not sealed", memfd(Len(MinSize), 0), MinSize},
		{"sealed against growing only", memfd(Len(MinSize), unix.F_SEAL_GROW), MinSize},
		{"larger than said", memfd(Len(2*MinSize), unix.F_SEAL_SHRINK), MinSize},
		{"smaller than said", memfd(Len(MinSize), unix.F_SEAL_SHRINK), 2 * MinSize},
		{"size not a power of two", memfd(Len(MinSize+8), unix.F_SEAL_SHRINK), MinSize + 8},
		{"size too small", memfd(Len(1024), unix.F_SEAL_SHRINK), 1024},
		{"size too large", memfd(Len(2*MaxSize), unix.F_SEAL_SHRINK), 2 * MaxSize},
		{"a pipe", p[0], MinSize},
	} {
		if r, err := Open(tc.fd, tc.size); err == nil {
			r.Close()
			t.Errorf("%s: mapped", tc.name)
		}
	}
	if r, err := Open(memfd(Len(MinSize), unix.F_SEAL_SHRINK), MinSize); err != nil {
		t.Fatalf("a good one: %v", err)
	} else {
		r.Close()
	}
}

// FuzzHostileModule plays a module that rewrites the rings while the
// daemon's end reads and writes them: the fuzzer's bytes say which word
// or data byte to set to what. The daemon's end must never fault, never
// return more than it was asked for or a count out of range, and must end
// (with an error, or EOF when the module goes) rather than hang.
//
// Only the daemon's end may wait: every step of the played module is one
// that returns at once, so the one wait in an input is the daemon's end
// noticing that the module went, within a slice.
func FuzzHostileModule(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 16})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 5, 1, 2, 3, 4})
	f.Add([]byte{2, 0x10, 0, 0, 0, 3, 0x40, 0, 0, 0, 0, 1, 0x10})
	f.Fuzz(fuzzBody)
}

// maxSteps bounds a script. The fuzzing engine minimizes every input that
// finds new coverage by trying to remove each byte and each run of bytes
// (quadratic in the input's length), and this target's coverage varies
// with how the two ends interleave, so a long input's candidates seldom
// keep it: minimizing one took the engine's whole minimizing time, during
// which the run counted no inputs, and the engine then killed the worker
// and dropped the count. Steps past these few add nothing a shorter
// script cannot reach.
const maxSteps = 32

func fuzzBody(t *testing.T, script []byte) {
	if len(script) > 5*maxSteps {
		script = script[:5*maxSteps]
	}
	client, daemon, gone := pair(t, MinSize)
	// Short: the daemon's end notices that the module went only when a
	// slice ends, which is most of an input's time.
	daemon.slice = 100 * time.Microsecond
	mem := client.Shared()
	words := []int{offReqHead, offReqTail, offReqSleep, offReqWSleep, offRepHead, offRepTail, offRepSleep, offRepWSleep}
	done := make(chan struct{})
	var bad error
	go func() { // the daemon's end: read frames, answer each
		defer close(done)
		buf := make([]byte, 1000)
		for {
			n, err := daemon.Read(buf)
			if err != nil {
				return
			}
			if n <= 0 || n > len(buf) {
				bad = errors.New("read returned a count out of range")
				return
			}
			if _, err := daemon.Write(buf[:n]); err != nil {
				return
			}
		}
	}()
	for len(script) >= 5 {
		op, v := script[0], binary.LittleEndian.Uint32(script[1:5])
		script = script[5:]
		switch op % 4 {
		case 0: // a few bytes into the request ring, room or not (a
			// module that waited for room could wait for a daemon
			// that waits for it to read: its own hang)
			for range 1 + v%64 {
				mem[Ctrl+int(client.outHead%MinSize)] = byte(v >> 8)
				client.outHead++
			}
			client.store(offReqHead, client.outHead)
			wake(client.word(offReqHead))
		case 1: // a control word set to anything
			off := words[int(v>>24)%len(words)]
			binary.NativeEndian.PutUint32(mem[off:], v)
			wake(client.word(off))
		case 2: // a data byte set to anything
			mem[Ctrl+int(v%(2*MinSize))] = byte(v >> 16)
		case 3:
			takeReplies(client)
		}
	}
	// The module goes: the daemon's end must end.
	gone()
	select {
	case <-done:
	case <-time.After(hangAfter):
		buf := make([]byte, 1<<20)
		t.Fatalf("the daemon's end still runs %v after the module went:\n%s", hangAfter, buf[:runtime.Stack(buf, true)])
	}
	if bad != nil {
		t.Fatal(bad)
	}
}

// hangAfter is far past the slice in which the daemon's end notices that
// the module went, and short of the fuzzing engine's own limit for an
// input (10 s), which kills the worker without a word.
const hangAfter = 5 * time.Second

// takeReplies is the module taking what its reply ring holds, when the
// counters make sense, without waiting: the head is read once. The daemon's
// end may store its own head over one the script set, so a module that
// read with Read could wait for replies that head had promised while the
// daemon's end, alive, waited for its next request.
func takeReplies(c *Ring) {
	avail := c.load(c.in.head) - c.inTail
	if avail == 0 || avail > c.size {
		return
	}
	c.inTail += avail
	c.store(c.in.tail, c.inTail)
	if c.load(c.in.wsleep) != 0 {
		wake(c.word(c.in.tail))
	}
}
