package ecnonce

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"math/big"
	"sync"
	"testing"
	"time"

	"hsmemu/daemon/mech/internal/nistcurve"
)

// waitFor polls cond until it holds or a minute has passed: the filler
// runs at idle priority, so on a busy machine it takes its time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after a minute", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// signWith signs digest with d and one nonce from the pool, the way the
// daemon does: s = k⁻¹·(e + r·d) mod n.
func signWith(c elliptic.Curve, kinv, r []byte, d *big.Int, e *big.Int) (*big.Int, *big.Int) {
	n := c.Params().N
	rr := new(big.Int).SetBytes(r)
	s := new(big.Int).Mul(rr, d)
	s.Add(s, e)
	s.Mul(s, new(big.Int).SetBytes(kinv))
	s.Mod(s, n)
	return rr, s
}

// Every nonce the filler makes is a consistent pair: a signature made
// with it verifies with Go's ECDSA, which recomputes r from k⁻¹'s inverse
// and the key; no r comes twice; and the filler runs at idle priority.
func TestNoncesSign(t *testing.T) {
	for _, tc := range []struct {
		curve nistcurve.Curve
		ec    elliptic.Curve
		n     int
	}{{nistcurve.P256, elliptic.P256(), 64}, {nistcurve.P384, elliptic.P384(), 6}, {nistcurve.P521, elliptic.P521(), 12}} {
		t.Run(tc.ec.Params().Name, func(t *testing.T) {
			priv, err := ecdsa.GenerateKey(tc.ec, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Start(tc.curve, 16, 8)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
			if want := (tc.ec.Params().N.BitLen() + 7) / 8; p.Size() != want {
				t.Fatalf("size %d, want %d", p.Size(), want)
			}
			seen := map[string]bool{}
			kinv, r := make([]byte, p.Size()), make([]byte, p.Size())
			digest := make([]byte, 32) // shorter than every order: e is the digest
			for i := 0; i < tc.n; i++ {
				waitFor(t, "nonce", func() bool { return p.Take(kinv, r) })
				if seen[string(r)] {
					t.Fatal("an r came twice")
				}
				seen[string(r)] = true
				rand.Read(digest)
				e := new(big.Int).SetBytes(digest)
				rr, s := signWith(tc.ec, kinv, r, priv.D, e)
				if !ecdsa.Verify(&priv.PublicKey, digest, rr, s) {
					t.Fatalf("nonce %d: the signature made with it does not verify", i)
				}
				clear(kinv)
			}
			if got := p.Policy(); got != "idle" {
				t.Fatalf("filler policy %q, want idle", got)
			}
		})
	}
}

// The filler stops at the capacity, sleeps, and refills only when the
// pool falls below its low mark.
func TestNoncesRefill(t *testing.T) {
	p, err := Start(nistcurve.P256, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	waitFor(t, "full pool", func() bool { return p.Len() == 4 })
	time.Sleep(50 * time.Millisecond)
	if p.Made() != 4 || p.Len() != 4 {
		t.Fatalf("made %d, holds %d, after filling 4", p.Made(), p.Len())
	}
	kinv, r := make([]byte, 32), make([]byte, 32)
	if !p.Take(kinv, r) { // 3 left: not below the low mark
		t.Fatal("take from a full pool failed")
	}
	time.Sleep(50 * time.Millisecond)
	if p.Made() != 4 {
		t.Fatalf("made %d after one take above the low mark, want 4", p.Made())
	}
	p.Take(kinv, r)
	p.Take(kinv, r) // 1 left: below 2, the filler wakes
	waitFor(t, "refill", func() bool { return p.Len() == 4 })
	if p.Made() != 7 {
		t.Fatalf("made %d, want 7", p.Made())
	}
	if p.Take(kinv[:31], r) {
		t.Fatal("a take into a short buffer succeeded")
	}
}

// Stop ends the thread without waiting for it; takes after it fail; the
// thread goes away.
func TestNoncesStop(t *testing.T) {
	// The other tests' pools are stopped; their threads end in their time.
	waitFor(t, "end of the other tests' fillers", func() bool { return Fillers() == 0 })
	before := 0
	p, err := Start(nistcurve.P256, 8, 4)
	if err != nil {
		t.Fatal(err)
	}
	if Fillers() != before+1 {
		t.Fatalf("%d fillers, want %d", Fillers(), before+1)
	}
	waitFor(t, "nonce", func() bool { return p.Len() > 0 })
	p.Stop()
	p.Stop()
	kinv, r := make([]byte, 32), make([]byte, 32)
	if p.Take(kinv, r) || p.Len() != 0 {
		t.Fatal("a stopped pool handed out a nonce")
	}
	waitFor(t, "filler's end", func() bool { return Fillers() == before })
	if _, err := Start(nistcurve.P256, 0, 0); err == nil {
		t.Fatal("a pool of capacity 0 started")
	}
	if _, err := Start(nistcurve.Curve(1), 4, 2); err == nil {
		t.Fatal("a pool on no curve started")
	}
}

// Eight takers at once never get the same nonce.
func TestNoncesConcurrentTakers(t *testing.T) {
	p, err := Start(nistcurve.P256, 64, 32)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	const takers, each = 8, 40
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range takers {
		wg.Go(func() {
			kinv, r := make([]byte, 32), make([]byte, 32)
			for got := 0; got < each; {
				if !p.Take(kinv, r) {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				got++
				mu.Lock()
				if seen[string(r)] {
					t.Error("two takers got the same nonce")
				}
				seen[string(r)] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != takers*each {
		t.Fatalf("%d nonces, want %d", len(seen), takers*each)
	}
}

// BenchmarkFill is the filler's time per nonce on a core of its own: a
// pool of b.N nonces filled from empty.
func BenchmarkFill(b *testing.B) {
	for _, c := range []struct {
		name  string
		curve nistcurve.Curve
	}{{"P256", nistcurve.P256}, {"P384", nistcurve.P384}, {"P521", nistcurve.P521}} {
		b.Run(c.name, func(b *testing.B) {
			p, err := Start(c.curve, b.N, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Stop()
			for p.Len() < b.N {
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
}
