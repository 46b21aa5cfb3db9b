package mech

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"math/big"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Signatures made with pooled and inline nonces verify with Go's ECDSA,
// for every curve and digest length (shorter, equal and longer than the
// order, which exercises the truncation of P-521's digests), and no two
// share an r (a reused nonce would give away the key).
func TestECDSANonceSignatures(t *testing.T) {
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		t.Run(c.Params().Name, func(t *testing.T) {
			priv, err := ecdsa.GenerateKey(c, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			d, _ := priv.Bytes()
			sc, err := newECScalar(c, d)
			if err != nil {
				t.Fatal(err)
			}
			pool := newNoncePools()
			defer pool.close()
			p := pool.of(sc.curve)
			size := sc.curve.size
			seen := map[string]bool{}
			for i := range 120 {
				if i == 2 && p.ext != nil {
					// The idle-priority filler started with the first
					// signature: let it make some, so that signatures
					// below take them (asserted after the loop).
					deadline := time.Now().Add(time.Minute)
					for p.ext.Len() < 8 && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
				}
				digest := make([]byte, []int{20, 32, 48, 64, 66, 1}[i%6])
				rand.Read(digest)
				var sig []byte
				if i%2 == 0 {
					sig, err = p.sign(sc.d, digest) // from the pool once it fills
				} else {
					nc, err2 := sc.curve.make() // inline, as when the pool is empty
					if err2 != nil {
						t.Fatal(err2)
					}
					p.put(nc) // the next take may get this one
					sig, err = p.sign(sc.d, digest)
				}
				if err != nil {
					t.Fatal(err)
				}
				if len(sig) != 2*size {
					t.Fatalf("signature of %d bytes, want %d", len(sig), 2*size)
				}
				r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
				if !ecdsa.Verify(&priv.PublicKey, digest, r, s) {
					t.Fatalf("signature %d over a %d-byte digest does not verify", i, len(digest))
				}
				if seen[string(sig[:size])] {
					t.Fatal("two signatures share r: a nonce was used twice")
				}
				seen[string(sig[:size])] = true
			}
			if p.ext != nil {
				if p.ext.Taken() == 0 {
					t.Fatal("no signature took a nonce of the idle-priority filler")
				}
			}
		})
	}
}

// A signature by a wrong scalar does not verify: the test above could not
// pass with a signer that ignored the key.
func TestECDSANonceWrongKey(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d, _ := other.Bytes()
	sc, err := newECScalar(elliptic.P256(), d)
	if err != nil {
		t.Fatal(err)
	}
	pool := newNoncePools()
	defer pool.close()
	digest := make([]byte, 32)
	sig, err := pool.of(sc.curve).sign(sc.d, digest)
	if err != nil {
		t.Fatal(err)
	}
	if ecdsa.Verify(&priv.PublicKey, digest, new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("a signature by another key verified")
	}
}

func TestECDSANonceBadScalar(t *testing.T) {
	n := elliptic.P256().Params().N
	for _, d := range [][]byte{make([]byte, 32), n.Bytes(), new(big.Int).Add(n, big.NewInt(1)).Bytes()} {
		if _, err := newECScalar(elliptic.P256(), d); err == nil {
			t.Fatalf("scalar %x accepted", d)
		}
	}
}

// BenchmarkMechECDSANonceSign is a P-256 signature with the pool kept
// full, beside BenchmarkMechECDSAP256Sign's engine path.
func BenchmarkMechECDSANonceSign(b *testing.B) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d, _ := priv.Bytes()
	sc, _ := newECScalar(elliptic.P256(), d)
	pool := newNoncePools()
	defer pool.close()
	p := pool.of(sc.curve)
	digest := make([]byte, 32)
	for b.Loop() {
		if _, err := p.sign(sc.d, digest); err != nil {
			b.Fatal(err)
		}
	}
}

// TestNoncePoolsClose: closing a table's pools ends their fillers (the
// idle-priority thread of P-256, the goroutine of P-384), and signing
// goes on with inline nonces.
func TestNoncePoolsClose(t *testing.T) {
	pool := newNoncePools()
	type signer struct {
		priv *ecdsa.PrivateKey
		sc   *ecScalar
		p    *noncePool
	}
	var signers []signer
	for _, c := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		priv, _ := ecdsa.GenerateKey(c, rand.Reader)
		d, _ := priv.Bytes()
		sc, err := newECScalar(c, d)
		if err != nil {
			t.Fatal(err)
		}
		signers = append(signers, signer{priv, sc, pool.of(sc.curve)})
	}
	digest := make([]byte, 32)
	for _, s := range signers {
		if _, err := s.p.sign(s.sc.d, digest); err != nil { // starts the filler
			t.Fatal(err)
		}
	}
	p384 := signers[1].p
	// fillers counts the goroutines running P-384's filler.
	fillers := func() int {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		return strings.Count(string(buf[:n]), fmt.Sprintf("(*noncePool).fill(%p", p384))
	}
	// waitFor polls until cond holds.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d goroutines", what, fillers())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if signers[0].p.ext == nil || p384.ext != nil {
		t.Fatal("P-256 should fill from its thread, P-384 from its goroutine")
	}
	waitFor("after the first signatures", func() bool { return fillers() == 1 })
	pool.close()
	pool.close() // twice is fine
	waitFor("after close", func() bool { return fillers() == 0 })
	// The thread's pool hands out nothing more (ecnonce's tests see the
	// thread end).
	if ext := signers[0].p.ext; ext.Len() != 0 || ext.Take(make([]byte, 32), make([]byte, 32)) {
		t.Fatal("P-256's pool hands out nonces after close")
	}
	for _, s := range signers {
		sig, err := s.p.sign(s.sc.d, digest)
		if err != nil {
			t.Fatal(err)
		}
		size := s.sc.curve.size
		if !ecdsa.Verify(&s.priv.PublicKey, digest, new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])) {
			t.Fatal("a signature after close does not verify")
		}
	}
	// A pool whose table closed before its first signature starts none.
	late := newNoncePools()
	late.close()
	if _, err := late.of(curveP256).sign(signers[0].sc.d, digest); err != nil {
		t.Fatal(err)
	}
	if late.of(curveP256).ext != nil {
		t.Fatal("a closed table's pool started a filler")
	}
}

// Eight signers at once on one pool, its filler running, hand out no
// nonce twice: every signature verifies and no two share an r.
func TestNoncePoolConcurrentSigners(t *testing.T) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d, _ := priv.Bytes()
	sc, err := newECScalar(elliptic.P256(), d)
	if err != nil {
		t.Fatal(err)
	}
	pools := newNoncePools()
	defer pools.close()
	p := pools.of(sc.curve)
	const signers, each = 8, 150
	sigs := make([][][]byte, signers)
	errs := make(chan error, signers)
	for i := range signers {
		go func() {
			digest := make([]byte, 32)
			for range each {
				rand.Read(digest)
				sig, err := p.sign(sc.d, digest)
				if err != nil {
					errs <- err
					return
				}
				r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
				if !ecdsa.Verify(&priv.PublicKey, digest, r, s) {
					errs <- fmt.Errorf("signer %d: a signature does not verify", i)
					return
				}
				sigs[i] = append(sigs[i], sig)
			}
			errs <- nil
		}()
	}
	for range signers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for _, own := range sigs {
		for _, sig := range own {
			if seen[string(sig[:32])] {
				t.Fatal("two signatures share r: a nonce was used twice")
			}
			seen[string(sig[:32])] = true
		}
	}
	if len(seen) != signers*each {
		t.Fatalf("%d signatures, want %d", len(seen), signers*each)
	}
}
