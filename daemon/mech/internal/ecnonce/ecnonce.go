// Package ecnonce keeps a pool of ECDSA nonces (k⁻¹ mod n and r, the
// x-coordinate of k·G mod n) made ahead by a thread of its own at idle
// priority, with OpenSSL's libcrypto.
//
// Why a C thread and not a goroutine: a nonce made ahead is worth having
// only when it is made on a core that would otherwise idle. A goroutine
// competes with the daemon's connections for the cores like any thread:
// when every core is busy, the scheduler gives it slices of milliseconds
// while a connection's thread, woken by a request, waits (a signature's
// p99 at 8 workers on 2 cores went to milliseconds). Under SCHED_IDLE the
// kernel runs the filler only on an idle core and takes the core away at
// the next wake-up of any other thread. A Go thread cannot run at that
// priority: the runtime stops every thread for its garbage collector, and
// would wait for one the kernel keeps off the cores. The C thread is
// unknown to the runtime, so nothing waits for it, and it shares no lock
// with the signers, nor with the daemon's other users of OpenSSL: each
// pool has an OpenSSL library context, and so a random generator, of its
// own (ecnonce.c says why).
package ecnonce

/*
#cgo pkg-config: libcrypto
#include "ecnonce.h"
*/
import "C"

import (
	"errors"
	"sync"
	"unsafe"

	"hsmemu/daemon/mech/internal/nistcurve"
)

// Pool is one curve's nonces and the thread that makes them.
type Pool struct {
	mu    sync.Mutex // one taker at a time: the ring has one consumer
	p     *C.en_pool
	size  int
	taken uint64 // nonces handed out
}

// Start makes a pool of capacity nonces on curve c (nistcurve), which its filler
// refills whenever it holds fewer than low.
func Start(c nistcurve.Curve, capacity, low int) (*Pool, error) {
	if capacity <= 0 || low < 0 || low > capacity {
		return nil, errors.New("ecnonce: bad capacity")
	}
	var size C.int
	p := C.en_start(C.int(c), C.uint(capacity), C.uint(low), &size)
	if p == nil {
		return nil, errors.New("ecnonce: no pool (curve unknown to OpenSSL, or no thread)")
	}
	return &Pool{p: p, size: int(size)}, nil
}

// Size is the byte length of the curve's order: of k⁻¹ and of r.
func (p *Pool) Size() int { return p.size }

// Take copies a nonce into kinv and r (each at least Size bytes) and
// wipes it from the pool. False when the pool is empty or stopped: the
// caller then makes its own.
func (p *Pool) Take(kinv, r []byte) bool {
	if len(kinv) < p.size || len(r) < p.size {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return false
	}
	if C.en_take(p.p, (*C.uchar)(unsafe.Pointer(&kinv[0])), (*C.uchar)(unsafe.Pointer(&r[0]))) != 1 {
		return false
	}
	p.taken++
	return true
}

// Taken counts the nonces Take handed out.
func (p *Pool) Taken() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.taken
}

// Len is how many nonces the pool holds (0 once stopped).
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return 0
	}
	return int(C.en_len(p.p))
}

// Made counts the nonces the filler made.
func (p *Pool) Made() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return 0
	}
	return uint64(C.en_made(p.p))
}

// Policy is the scheduling the filler runs under: "idle" (SCHED_IDLE),
// "nice" (nice 19, where SCHED_IDLE was refused), "" before the thread
// set it, or "failed" once OpenSSL failed it and it ended (signers then
// make every nonce).
func (p *Pool) Policy() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return ""
	}
	switch C.en_policy(p.p) {
	case 1:
		return "idle"
	case 2:
		return "nice"
	case -1:
		return "failed"
	}
	return ""
}

// Stop ends the filler without waiting for it; the pool's memory is
// wiped and freed once the thread has let go of it. Twice is fine.
func (p *Pool) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p != nil {
		C.en_stop(p.p)
		p.p = nil
	}
}

// Fillers counts the filler threads alive, every pool together.
func Fillers() int { return int(C.en_fillers()) }
