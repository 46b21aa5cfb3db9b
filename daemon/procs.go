package daemon

import (
	"os"
	"runtime"
	"sync"
	"time"
)

// procs keeps one of the runtime's Ps for each connection of the module.
//
// A connection's goroutine reads and writes with blocking system calls on
// its own descriptor (fdConn), and spends most of its life blocked in a
// read. A goroutine blocked in a system call keeps its P until the
// runtime's monitor takes it back, which it does late (after up to 10 ms)
// when nothing else is queued. With as many Ps as cores and as many busy
// connections, a connection whose read returns finds every P held by
// another one blocked in its read, and its thread sleeps until a P comes
// free: measured on 2 cores, ECDSA signatures at concurrency 2 went from
// 36-39k/s with 2 Ps to 52-54k/s with 4 or more, and RSA-2048 from 4.6-4.8k
// to 5.1-5.5k/s. So the server asks for the cores' Ps plus one per
// connection, up to procsPerCore per core; the threads are there anyway,
// blocked, and the operating system's scheduler shares the cores among
// those that run.
//
// runtime.GOMAXPROCS stops the world, and waits for a garbage collection's
// mark phase to end first, so it is never called on a connection's path:
// one goroutine applies the latest count, at once when it grows and after
// procsShrinkAfter when it shrinks, so that short-lived clients do not
// stop the world twice each. Setting GOMAXPROCS also ends the runtime's
// own tracking of the process's CPU limit: the cores' count is the one
// seen at start.
type procs struct {
	mu      sync.Mutex
	base    int  // the Ps the runtime chose for the cores, at start
	conns   int  // connections being served
	set     int  // the last GOMAXPROCS applied
	fixed   bool // GOMAXPROCS was set in the environment: left alone
	started bool
	wake    chan struct{}
	shrink  time.Duration
	apply   func(n int)
}

// procsPerCore bounds the Ps asked for beyond the cores': two per core.
// The runtime runs a quarter of its Ps as dedicated workers while a
// collection marks; with at most three Ps per core they stay fewer than
// the cores, and past a couple of busy connections per core the operating
// system's scheduler is the limit anyway.
const procsPerCore = 2

// procsShrinkAfter is how long the count must stay lower before the Ps
// are given back.
const procsShrinkAfter = time.Second

// connProcs counts the connections of every server in the process: the
// Ps are the process's.
var connProcs = newProcs()

func newProcs() *procs {
	_, fixed := os.LookupEnv("GOMAXPROCS")
	n := runtime.GOMAXPROCS(0)
	return &procs{base: n, set: n, fixed: fixed, wake: make(chan struct{}, 1), shrink: procsShrinkAfter,
		apply: func(n int) { runtime.GOMAXPROCS(n) }}
}

// add counts a connection in (+1) or out (-1). It does not wait.
func (p *procs) add(delta int) {
	p.mu.Lock()
	p.conns += delta
	if p.fixed {
		p.mu.Unlock()
		return
	}
	if !p.started {
		p.started = true
		go p.run()
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default: // already woken
	}
}

func (p *procs) want() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.base + max(0, min(p.conns, procsPerCore*p.base))
}

// run applies the count: more Ps at once, fewer once the count has stayed
// lower for p.shrink.
func (p *procs) run() {
	for range p.wake {
		want := p.want()
		if want < p.set && p.shrink > 0 {
			time.Sleep(p.shrink)
			if want = p.want(); want > p.set {
				want = p.set // grew again meanwhile: the next wake applies it
			}
		}
		if want != p.set {
			p.apply(want)
			p.set = want
		}
		// Every change of the count wakes the loop, so one that came
		// meanwhile is applied on the next turn.
	}
}
