package daemon

import (
	"os"
	"runtime"
	"sync"
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
// connection (up to procsPerCore per core); the threads are there anyway,
// blocked, and the scheduler of the operating system shares the cores
// among those that run.
type procs struct {
	mu    sync.Mutex
	base  int  // the Ps the runtime chose for the cores
	conns int  // connections being served
	set   int  // the last GOMAXPROCS asked for
	fixed bool // GOMAXPROCS was set in the environment: left alone
	apply func(n int)
}

// procsPerCore bounds the Ps asked for beyond the cores': four per core.
// The runtime runs a quarter of its Ps as garbage collection workers
// while it marks, so Ps far beyond the cores would crowd the connections
// out during a collection; and past a few connections per core, the
// operating system's scheduler is the limit anyway.
const procsPerCore = 4

// connProcs counts the connections of every server in the process: the
// Ps are the process's.
var connProcs = newProcs()

func newProcs() *procs {
	_, fixed := os.LookupEnv("GOMAXPROCS")
	n := runtime.GOMAXPROCS(0)
	return &procs{base: n, set: n, fixed: fixed, apply: func(n int) { runtime.GOMAXPROCS(n) }}
}

// add counts a connection in (+1) or out (-1) and asks the runtime for
// the Ps that makes. A change stops the world briefly; connections come
// and go far less often than calls.
func (p *procs) add(delta int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns += delta
	if p.fixed {
		return
	}
	want := p.base + min(p.conns, procsPerCore*p.base)
	if want != p.set {
		p.apply(want)
		p.set = want
	}
}
