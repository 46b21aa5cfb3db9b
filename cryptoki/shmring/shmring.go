// Package shmring is the daemon's end of the shared-memory transport
// (docs/protocol.md, "Rings"): a memfd the module made, holding a request
// ring and a reply ring, read and written as one byte stream, with shared
// futexes for wake-ups and the connection's Unix socket for liveness.
//
// The other end is not trusted. Every counter it writes is read once per
// step and checked against the ring's size; the daemon's own counters are
// kept in its memory and only ever stored to the ring, never read back;
// bytes are copied out of the ring before anyone decodes them (Read copies
// into the caller's buffer, which is private). A client that rewrites the
// ring while the daemon reads it can make the daemon read garbage, which
// the decoder refuses, or a counter out of range, which ends the
// connection (ErrCorrupt): it harms only its own connection.
package shmring

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The control page's words, each on a cache line of its own (the module's
// ring.c has the same table).
const (
	offReqHead   = 0   // written by the module
	offReqTail   = 64  // written by the daemon
	offReqSleep  = 128 // set by the daemon waiting for requests
	offReqWSleep = 192 // set by the module waiting for room
	offRepHead   = 256 // written by the daemon
	offRepTail   = 320 // written by the module
	offRepSleep  = 384 // set by the module waiting for replies
	offRepWSleep = 448 // set by the daemon waiting for room

	// Ctrl is the control page's size; the request ring follows it, then
	// the reply ring.
	Ctrl = 4096
	// MinSize and MaxSize bound a ring's size, a power of two.
	MinSize = 4 << 10
	MaxSize = 1 << 20
)

// Slice is how long a waiting end sleeps before it looks at the socket.
const Slice = 500 * time.Millisecond

// ErrCorrupt is a counter the other end set out of range.
var ErrCorrupt = errors.New("shmring: ring counter out of range")

// Ring is one end of a connection's rings: the daemon's reads requests
// and writes replies (Open), a client's the other way (NewClient, which
// the tests use to play the module).
type Ring struct {
	mem  []byte
	size uint32
	sock int // the connection's socket: liveness only
	// slice is how long a wait lasts before it looks at the socket
	// (Slice; shorter in tests).
	slice time.Duration

	in, out           side
	inTail, outHead   uint32 // ours: never read back from mem
	stopRead, stopAll atomic.Bool
}

// side names one ring's words and data as one end sees it: for the ring
// it reads, head is the other end's and sleep its own; for the ring it
// writes, the other way round.
type side struct{ head, tail, sleep, wsleep, data int }

var (
	reqRing = side{offReqHead, offReqTail, offReqSleep, offReqWSleep, Ctrl}
	repRing = side{offRepHead, offRepTail, offRepSleep, offRepWSleep, -1} // data: after the request ring
)

func newRing(mem []byte, size uint32, client bool) *Ring {
	req, rep := reqRing, repRing
	rep.data = Ctrl + int(size)
	r := &Ring{mem: mem, size: size, sock: -1, slice: Slice, in: req, out: rep}
	if client {
		r.in, r.out = rep, req
	}
	return r
}

// Len is the memfd's size for rings of size bytes each.
func Len(size uint32) int { return Ctrl + 2*int(size) }

// Open checks that fd is a memfd sealed against shrinking, of exactly
// Len(size) bytes, and maps it. fd stays the caller's to close. The ring
// is used once Watch has named the connection's socket.
func Open(fd int, size uint32) (*Ring, error) {
	if size < MinSize || size > MaxSize || size&(size-1) != 0 {
		return nil, fmt.Errorf("shmring: ring size %d not a power of two in [%d, %d]", size, MinSize, MaxSize)
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("shmring: not a sealable memory file: %w", err)
	}
	// Without F_SEAL_SHRINK the module could cut pages off under the
	// daemon, whose next touch would be a SIGBUS.
	if seals&unix.F_SEAL_SHRINK == 0 {
		return nil, errors.New("shmring: memory file not sealed against shrinking")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shmring: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != int64(Len(size)) {
		return nil, fmt.Errorf("shmring: memory file of %d bytes, want %d", st.Size, Len(size))
	}
	mem, err := unix.Mmap(fd, 0, Len(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shmring: map: %w", err)
	}
	return newRing(mem, size, false), nil
}

// NewClient makes a memfd for rings of size bytes, sealed as the module
// seals it, and maps it as the module's end; the caller passes fd to the
// daemon's end and closes it.
func NewClient(size uint32) (r *Ring, fd int, err error) {
	fd, err = unix.MemfdCreate("hsmemu-ring", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, -1, err
	}
	fail := func(err error) (*Ring, int, error) {
		unix.Close(fd)
		return nil, -1, err
	}
	if err := unix.Ftruncate(fd, int64(Len(size))); err != nil {
		return fail(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return fail(err)
	}
	mem, err := unix.Mmap(fd, 0, Len(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	return newRing(mem, size, true), fd, nil
}

// Shared is the mapping itself, for tests that play a hostile module.
func (r *Ring) Shared() []byte { return r.mem }

// Watch names the connection's socket, which a waiting end looks at to
// learn that the module is gone.
func (r *Ring) Watch(sock int) { r.sock = sock }

// Close unmaps the rings; nothing may use r after.
func (r *Ring) Close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}

func (r *Ring) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.mem[off])) }
func (r *Ring) load(off int) uint32  { return atomic.LoadUint32(r.word(off)) }
func (r *Ring) store(off int, v uint32) {
	atomic.StoreUint32(r.word(off), v)
}

// StopReading ends a Read waiting for a request with io.EOF; replies
// still go out.
func (r *Ring) StopReading() {
	r.stopRead.Store(true)
	wake(r.word(r.in.head))
}

// Cut ends both directions: a Write waiting for room fails too.
func (r *Ring) Cut() {
	r.stopAll.Store(true)
	r.StopReading()
	wake(r.word(r.out.tail))
}

// Read copies what the request ring holds, at most len(p), waiting for
// one byte at least.
func (r *Ring) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	mask := r.size - 1
	in := r.in
	data := r.mem[in.data : in.data+int(r.size)]
	for {
		if r.stopRead.Load() {
			return 0, io.EOF
		}
		head := r.load(in.head)
		avail := head - r.inTail
		if avail > r.size {
			return 0, ErrCorrupt
		}
		if avail == 0 {
			if err := r.wait(in.sleep, in.head, head); err != nil {
				return 0, err
			}
			continue
		}
		k := min(avail, uint32(min(len(p), MaxSize)))
		at := r.inTail & mask
		n := copy(p[:k], data[at:])
		copy(p[n:k], data)
		r.inTail += k
		r.store(in.tail, r.inTail)
		if r.load(in.wsleep) != 0 {
			wake(r.word(in.tail))
		}
		return int(k), nil
	}
}

// Write copies all of p into the reply ring, waiting for room.
func (r *Ring) Write(p []byte) (int, error) {
	mask := r.size - 1
	out := r.out
	data := r.mem[out.data : out.data+int(r.size)]
	done := 0
	for done < len(p) {
		if r.stopAll.Load() {
			return done, syscall.EPIPE
		}
		tail := r.load(out.tail)
		used := r.outHead - tail
		if used > r.size {
			return done, ErrCorrupt
		}
		if used == r.size {
			if err := r.wait(out.wsleep, out.tail, tail); err != nil {
				return done, err
			}
			continue
		}
		k := min(r.size-used, uint32(len(p)-done))
		at := r.outHead & mask
		n := copy(data[at:], p[done:done+int(k)])
		copy(data, p[done+n:done+int(k)])
		r.outHead += k
		done += int(k)
		r.store(out.head, r.outHead)
		if r.load(out.sleep) != 0 {
			wake(r.word(out.head))
		}
	}
	return done, nil
}

// wait sleeps on the word at off while it holds val, for one slice at
// most, then checks that the connection's socket is quiet: neither end
// writes on it once the rings carry the frames, so anything there (its
// end, a reset) means the other end is gone, and its rings with it.
func (r *Ring) wait(flag, off int, val uint32) error {
	r.store(flag, 1)
	if r.load(off) == val {
		futexWait(r.word(off), val, r.slice)
	}
	r.store(flag, 0)
	if r.load(off) != val {
		return nil
	}
	fds := []unix.PollFd{{Fd: int32(r.sock), Events: unix.POLLIN | unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n > 0 {
			return io.EOF
		}
		return nil
	}
}

// futexWait and wake use shared futexes: the ring is mapped by two
// processes. A blocking system call, so the runtime hands the thread's P
// on while it sleeps.
const (
	futexWaitOp = 0 // FUTEX_WAIT, without FUTEX_PRIVATE_FLAG
	futexWakeOp = 1 // FUTEX_WAKE
)

func futexWait(addr *uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	syscall.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWaitOp, uintptr(val),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
}

func wake(addr *uint32) {
	syscall.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWakeOp, 1, 0, 0, 0)
}
