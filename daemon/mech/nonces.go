package mech

import (
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/bigmod"

	"hsmemu/daemon/mech/internal/ecnonce"
	"hsmemu/daemon/mech/internal/nistcurve"
)

// ECDSA signing with precomputed nonces. Of an ECDSA signature's cost,
// nearly all is the nonce's part, which does not depend on the key or the
// message: R = k·G, r = R.x mod n and k⁻¹ mod n. A background filler per
// curve keeps a pool of those, so a signature is then two modular
// multiplications and an addition: s = k⁻¹·(e + r·d) mod n. Each nonce is
// taken from the pool once and wiped after use; when the pool is empty the
// signer makes one inline, the same way. The pools belong to a Table,
// whose Close stops their fillers.
//
// On P-256 and P-521 the filler is a thread at idle priority making the
// nonces with OpenSSL (internal/ecnonce says why a goroutine would not
// do): it fills the pool only with time no other thread wants, so under
// load the pool runs dry and costs nothing. On P-384, where OpenSSL's base
// multiplication is four times slower than Go's, the filler is a
// goroutine, which stands aside as noncePoolSize describes.
//
// The nonces are random (crypto/rand; OpenSSL's private DRBG in the
// thread), not hedged with the key and the
// message as crypto/ecdsa's are: they are made before either is known. So
// a copy of a running daemon's memory (a VM snapshot restored twice, a
// cloned machine) would sign with the same pooled nonces twice, and two
// signatures by one key with one nonce give the key away. Do not run a
// daemon from a restored snapshot of a running one; restart it instead,
// which starts with an empty pool.
//
// Everything on secrets is constant-time: the base multiplication is
// crypto/ecdh's, the scalar arithmetic filippo.io/bigmod's (Go's own
// crypto/internal/fips140/bigmod, published). The one variable-time step,
// the modular inverse, works on k·b for a fresh random b, which is uniform
// and independent of k; multiplying its inverse by b gives k⁻¹.

// nonceCurve is one curve's parameters: immutable, shared by every pool.
type nonceCurve struct {
	ecdh  ecdh.Curve
	n     *bigmod.Modulus
	nBig  *big.Int
	size  int // bytes of a scalar
	coord int // bytes of a coordinate
	// idle is the curve of the idle-priority filler (internal/ecnonce),
	// 0 where a goroutine fills the pool.
	idle nistcurve.Curve
}

// noncePool is one curve's precomputed nonces and the goroutine that
// fills them, owned by a Table: Close stops it.
type noncePool struct {
	*nonceCurve
	done <-chan struct{} // closed when the Table closes

	start sync.Once
	// ext is the idle-priority filler's pool, set once by start (nil
	// where a goroutine fills ready).
	ext   *ecnonce.Pool
	mu    sync.Mutex
	ready []*nonce
	kick  chan struct{} // wakes the filler; it then fills the pool up
	// lastDry is when a signer last found the pool empty and woke the
	// filler (time.Now().UnixNano()).
	lastDry atomic.Int64
}

// nonce is one precomputed nonce: k⁻¹ mod n and r.
type nonce struct {
	kinv *bigmod.Nat
	r    *bigmod.Nat
}

// noncePoolSize bounds the precomputed nonces per curve: enough to ride
// out a burst, small enough to fill in a fraction of a second. The filler
// is woken only when the pool falls below noncePoolLow, and then fills it
// up in one go: waking it at every signature would cost a thread wake-up
// per call, about what the nonce itself costs.
//
// When the signers take nonces faster than the filler makes them, every
// core is busy signing, and the filler only competes with them for the
// runtime's Ps: a connection whose read returned then waits for a P the
// filler holds, and its thread sleeps and is woken again. So the filler
// stops when the pool has stayed empty while it filled (nonceDryRun
// nonces in a row), and a signer that finds the pool empty makes its own
// nonce and wakes the filler again only after nonceDryPause: once the
// load drops and a core is free, the pool fills again.
const (
	noncePoolSize = 512
	noncePoolLow  = noncePoolSize / 2
	nonceDryRun   = 16
	nonceDryPause = 20 * time.Millisecond
)

// The NIST curves' parameters.
var (
	curveP256 = newNonceCurve(ecdh.P256(), elliptic.P256(), nistcurve.P256)
	curveP384 = newNonceCurve(ecdh.P384(), elliptic.P384(), 0)
	curveP521 = newNonceCurve(ecdh.P521(), elliptic.P521(), nistcurve.P521)
)

func newNonceCurve(e ecdh.Curve, c elliptic.Curve, idle nistcurve.Curve) *nonceCurve {
	p := c.Params()
	n, err := bigmod.NewModulus(p.N.Bytes())
	if err != nil {
		panic(err)
	}
	return &nonceCurve{ecdh: e, n: n, nBig: p.N, size: (p.N.BitLen() + 7) / 8, coord: (p.BitSize + 7) / 8, idle: idle}
}

// nonceCurveOf returns the parameters of a NIST curve.
func nonceCurveOf(c elliptic.Curve) (*nonceCurve, bool) {
	switch c {
	case elliptic.P256():
		return curveP256, true
	case elliptic.P384():
		return curveP384, true
	case elliptic.P521():
		return curveP521, true
	}
	return nil, false
}

// noncePools are a Table's pools, one per curve. Their fillers start on
// a curve's first signature and stop when the Table closes.
type noncePools struct {
	byCurve map[*nonceCurve]*noncePool
	done    chan struct{}
	once    sync.Once
}

func newNoncePools() *noncePools {
	ps := &noncePools{byCurve: map[*nonceCurve]*noncePool{}, done: make(chan struct{})}
	for _, c := range []*nonceCurve{curveP256, curveP384, curveP521} {
		ps.byCurve[c] = &noncePool{nonceCurve: c, done: ps.done, kick: make(chan struct{}, 1)}
	}
	return ps
}

func (ps *noncePools) of(c *nonceCurve) *noncePool { return ps.byCurve[c] }

// close stops the fillers; signatures go on, each making its own nonce.
func (ps *noncePools) close() {
	ps.once.Do(func() {
		close(ps.done)
		for _, p := range ps.byCurve {
			p.start.Do(func() {}) // none starts after this
			if p.ext != nil {
				p.ext.Stop()
			}
		}
	})
}

// startFiller starts the pool's filler, unless its Table closed: the
// idle-priority thread where the curve has one and it starts, else the
// goroutine.
func (c *noncePool) startFiller() {
	select {
	case <-c.done:
		return
	default:
	}
	if c.idle != 0 {
		if p, err := ecnonce.Start(c.idle, noncePoolSize, noncePoolLow); err == nil {
			c.ext = p
			return
		}
	}
	go c.fill()
}

// randomScalar returns a uniform scalar in [1, n-1].
func (c *nonceCurve) randomScalar() (*bigmod.Nat, []byte, error) {
	b := make([]byte, c.size)
	excess := c.size*8 - c.n.BitLen()
	for range 100 {
		if _, err := rand.Read(b); err != nil {
			return nil, nil, err
		}
		b[0] &= 0xff >> excess
		k, err := bigmod.NewNat().SetBytes(b, c.n)
		if err != nil || k.IsZero() == 1 {
			continue // at least n, or zero: draw again
		}
		return k, b, nil
	}
	return nil, nil, errors.New("ecdsa: no scalar in 100 draws")
}

// make computes one nonce. Every intermediate that, with a signature,
// would give k or k⁻¹ away is wiped before it returns, on every path; the
// one copy it cannot reach is the scalar crypto/ecdh keeps inside its
// private key value, which becomes garbage at once.
func (c *nonceCurve) make() (*nonce, error) {
	for {
		nc, retry, err := c.makeOnce()
		if err != nil || !retry {
			return nc, err
		}
	}
}

func (c *nonceCurve) makeOnce() (_ *nonce, retry bool, err error) {
	k, kb, err := c.randomScalar()
	if err != nil {
		return nil, false, err
	}
	defer wipeNat(k)
	priv, err := c.ecdh.NewPrivateKey(kb)
	clear(kb)
	if err != nil {
		return nil, false, err
	}
	point := priv.PublicKey().Bytes() // 04 || x || y
	r, err := bigmod.NewNat().SetOverflowingBytes(point[1:1+c.coord], c.n)
	if err != nil {
		return nil, false, err
	}
	if r.IsZero() == 1 {
		return nil, true, nil
	}
	blind, bb, err := c.randomScalar()
	if err != nil {
		return nil, false, err
	}
	clear(bb)
	defer wipeNat(blind)
	kb2 := bigmod.NewNat().ExpandFor(c.n).Add(k, c.n) // 0 + k
	defer wipeNat(kb2)
	kb2.Mul(blind, c.n) // k·b
	kbBytes := kb2.Bytes(c.n)
	defer clear(kbBytes)
	kbInt := new(big.Int).SetBytes(kbBytes)
	defer clear(kbInt.Bits())
	inv := new(big.Int).ModInverse(kbInt, c.nBig)
	if inv == nil {
		return nil, true, nil // k·b = 0 cannot happen for k, b in [1, n-1]; be safe
	}
	defer clear(inv.Bits())
	invBytes := inv.FillBytes(make([]byte, c.size))
	defer clear(invBytes)
	kinv, err := bigmod.NewNat().SetBytes(invBytes, c.n)
	if err != nil {
		return nil, false, err
	}
	kinv.Mul(blind, c.n) // (k·b)⁻¹·b = k⁻¹
	return &nonce{kinv: kinv, r: r}, false, nil
}

// take returns a nonce from the pool, or a fresh one if it is empty, and
// starts the curve's filler on first use.
func (c *noncePool) take() (*nonce, error) {
	c.start.Do(c.startFiller)
	if c.ext != nil {
		if nc := c.takeIdle(); nc != nil {
			return nc, nil
		}
	}
	c.mu.Lock()
	var nc *nonce
	if n := len(c.ready); n > 0 {
		nc = c.ready[n-1]
		c.ready[n-1] = nil
		c.ready = c.ready[:n-1]
	}
	low := len(c.ready) < noncePoolLow && c.ext == nil
	c.mu.Unlock()
	if nc == nil && c.ext == nil {
		// Dry: the signers outpace the filler. Wake it now and then.
		now := time.Now().UnixNano()
		if last := c.lastDry.Load(); now-last < int64(nonceDryPause) || !c.lastDry.CompareAndSwap(last, now) {
			low = false
		}
	}
	if low {
		select {
		case c.kick <- struct{}{}:
		default: // already kicked
		}
	}
	if nc != nil {
		return nc, nil
	}
	return c.make()
}

// takeIdle takes a nonce from the idle-priority filler's pool, or nil.
func (c *noncePool) takeIdle() *nonce {
	buf := make([]byte, 2*c.size)
	defer clear(buf)
	kb, rb := buf[:c.size], buf[c.size:]
	if !c.ext.Take(kb, rb) {
		return nil
	}
	kinv, err := bigmod.NewNat().SetBytes(kb, c.n)
	if err != nil {
		return nil
	}
	r, err := bigmod.NewNat().SetBytes(rb, c.n)
	if err != nil || r.IsZero() == 1 {
		wipeNat(kinv)
		return nil
	}
	return &nonce{kinv: kinv, r: r}
}

// put adds a nonce to the pool unless it is full, and says how many
// nonces the pool held before.
func (c *noncePool) put(nc *nonce) (had int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	had = len(c.ready)
	if had >= noncePoolSize {
		return had, false
	}
	c.ready = append(c.ready, nc)
	return had, true
}

// fill fills the pool up each time it is kicked, and otherwise sleeps. It
// yields every few nonces (about every 100 us): filling the pool takes
// milliseconds, and a goroutine that computes holds its P until the
// runtime preempts it, 10 ms on, while a connection whose read returned
// with every P busy waits for one. It gives up when the pool stays empty
// while it fills: the signers outpace it (noncePoolSize says why).
func (c *noncePool) fill() {
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		}
		dry := 0
		for i := 1; ; i++ {
			if i%8 == 0 {
				select {
				case <-c.done:
					return
				default:
				}
				runtime.Gosched()
			}
			nc, err := c.make()
			if err != nil {
				break
			}
			had, ok := c.put(nc)
			if !ok {
				wipeNat(nc.kinv)
				break
			}
			if dry = dry + 1; had > 0 {
				dry = 0
			}
			if dry >= nonceDryRun {
				break
			}
		}
	}
}

// hashToNat converts a digest to an integer mod n as SEC 1 says: its
// leftmost bits, as many as n has, then reduced.
func (c *nonceCurve) hashToNat(hash []byte) (*bigmod.Nat, error) {
	if len(hash) > c.size {
		hash = hash[:c.size]
	}
	// Shifting drops the bits beyond n's length: only P-521 has any.
	if excess := len(hash)*8 - c.n.BitLen(); excess > 0 {
		hash = new(big.Int).Rsh(new(big.Int).SetBytes(hash), uint(excess)).FillBytes(make([]byte, len(hash)))
	}
	return bigmod.NewNat().SetOverflowingBytes(hash, c.n)
}

// sign makes r || s with private scalar d over digest hash.
func (c *noncePool) sign(d *bigmod.Nat, hash []byte) ([]byte, error) {
	e, err := c.hashToNat(hash)
	if err != nil {
		return nil, err
	}
	for {
		nc, err := c.take()
		if err != nil {
			return nil, err
		}
		s := bigmod.NewNat().ExpandFor(c.n).Add(nc.r, c.n) // 0 + r
		s.Mul(d, c.n)                                      // r·d
		s.Add(e, c.n)                                      // e + r·d
		s.Mul(nc.kinv, c.n)                                // k⁻¹·(e + r·d)
		r := nc.r.Bytes(c.n)
		wipeNat(nc.kinv)
		if s.IsZero() == 1 {
			continue
		}
		return append(r, s.Bytes(c.n)...), nil
	}
}

// wipeNat zeroes a scalar in place.
func wipeNat(x *bigmod.Nat) { clear(x.Bits()) }

// ecScalar is an EC private key ready for sign: its curve and its scalar.
type ecScalar struct {
	curve *nonceCurve
	d     *bigmod.Nat
}

func newECScalar(c elliptic.Curve, d []byte) (*ecScalar, error) {
	nc, ok := nonceCurveOf(c)
	if !ok {
		return nil, errors.New("ecdsa: not a NIST curve")
	}
	x, err := bigmod.NewNat().SetBytes(d, nc.n)
	if err != nil || x.IsZero() == 1 {
		return nil, errors.New("ecdsa: private scalar out of range")
	}
	return &ecScalar{curve: nc, d: x}, nil
}
