package ecverify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"math/big"
	"runtime"
	"syscall"
	"testing"
	"time"

	"hsmemu/daemon/mech/internal/nistcurve"
)

var curves = []struct {
	name string
	c    nistcurve.Curve
	ec   elliptic.Curve
}{{"P-256", nistcurve.P256, elliptic.P256()}, {"P-384", nistcurve.P384, elliptic.P384()}, {"P-521", nistcurve.P521, elliptic.P521()}}

// testKey makes a key pair and its OpenSSL public key.
func testKey(t testing.TB, c nistcurve.Curve, ec elliptic.Curve) (*ecdsa.PrivateKey, *Key, int) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(ec, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := priv.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	size := (ec.Params().N.BitLen() + 7) / 8
	k, err := New(c, point, size)
	if err != nil {
		t.Fatal(err)
	}
	return priv, k, size
}

// sign returns e (the digest reduced mod n, as crypto/ecdsa takes it) and
// r || s.
func sign(t testing.TB, priv *ecdsa.PrivateKey, msg []byte, size int) ([]byte, []byte) {
	t.Helper()
	d := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, priv, d[:])
	if err != nil {
		t.Fatal(err)
	}
	// SHA-256 is no longer than any of the orders: e is the digest, below n.
	return d[:], append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...)
}

// Signatures crypto/ecdsa made verify, with and without the table; any
// flipped bit, a wrong digest, r or s of zero or at the order, and a wrong
// length are refused.
func TestVerify(t *testing.T) {
	for _, cv := range curves {
		priv, k, size := testKey(t, cv.c, cv.ec)
		n := cv.ec.Params().N.FillBytes(make([]byte, size))
		for _, table := range []bool{false, true} {
			if table {
				if err := k.Precompute(); err != nil {
					t.Fatal(err)
				}
				if !k.Precomputed() {
					t.Fatal("no table after Precompute")
				}
			}
			for i := range 20 {
				e, sig := sign(t, priv, []byte{byte(i)}, size)
				if ok, err := k.Verify(e, sig); !ok || err != nil {
					t.Fatalf("%s table %v: valid signature refused: %v", cv.name, table, err)
				}
				bad := append([]byte(nil), sig...)
				bad[i%len(bad)] ^= 1 << (i % 8)
				if ok, _ := k.Verify(e, bad); ok {
					t.Fatalf("%s table %v: flipped bit accepted", cv.name, table)
				}
				e2 := append([]byte(nil), e...)
				e2[0] ^= 0x80
				if ok, _ := k.Verify(e2, sig); ok {
					t.Fatalf("%s table %v: wrong digest accepted", cv.name, table)
				}
				for _, s := range [][]byte{make([]byte, size), n} {
					if ok, _ := k.Verify(e, append(append([]byte(nil), sig[:size]...), s...)); ok {
						t.Fatalf("%s: s out of range accepted", cv.name)
					}
					if ok, _ := k.Verify(e, append(append([]byte(nil), s...), sig[size:]...)); ok {
						t.Fatalf("%s: r out of range accepted", cv.name)
					}
				}
				if ok, _ := k.Verify(e, sig[1:]); ok {
					t.Fatalf("%s: short signature accepted", cv.name)
				}
			}
		}
	}
}

// A point off the curve, the wrong size or compressed is refused.
func TestNewRefusesBadPoints(t *testing.T) {
	_, _, size := testKey(t, nistcurve.P256, elliptic.P256())
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p, _ := priv.PublicKey.Bytes()
	off := append([]byte(nil), p...)
	off[len(off)-1] ^= 1
	compressed := elliptic.MarshalCompressed(elliptic.P256(), priv.X, priv.Y)
	for name, b := range map[string][]byte{
		"off the curve": off, "short": p[:40], "empty": nil, "infinity": {0}, "compressed": compressed,
		"other curve's size": append(p, 0),
	} {
		if _, err := New(nistcurve.P256, b, size); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(nistcurve.Curve(-1), p, size); err == nil {
		t.Error("unknown curve accepted")
	}
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1, &ru) // RUSAGE_THREAD
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs f b.N times on one thread and reports its CPU time per call
// beside the wall time: on a shared machine the wall time counts the
// other processes' turns, the CPU time much less.
func loop(b *testing.B, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	for b.Loop() {
		f()
	}
	b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
}

// The verification beside crypto/ecdsa's, in the same run: "plain" is
// OpenSSL's double multiplication, "table" with the key's table.
func BenchmarkVerify(b *testing.B) {
	for _, cv := range curves {
		priv, k, size := testKey(b, cv.c, cv.ec)
		e, sig := sign(b, priv, []byte("benchmark"), size)
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		b.Run(cv.name+"/go", func(b *testing.B) {
			loop(b, func() {
				if !ecdsa.Verify(&priv.PublicKey, e, r, s) {
					b.Fatal("refused")
				}
			})
		})
		b.Run(cv.name+"/plain", func(b *testing.B) {
			loop(b, func() {
				if ok, _ := k.Verify(e, sig); !ok {
					b.Fatal("refused")
				}
			})
		})
		b.Run(cv.name+"/precompute", func(b *testing.B) {
			loop(b, func() {
				_, k2, _ := testKey(b, cv.c, cv.ec)
				if err := k2.Precompute(); err != nil {
					b.Fatal(err)
				}
			})
		})
		if err := k.Precompute(); err != nil {
			b.Fatal(err)
		}
		b.Run(cv.name+"/table", func(b *testing.B) {
			loop(b, func() {
				if ok, _ := k.Verify(e, sig); !ok {
					b.Fatal("refused")
				}
			})
		})
	}
}
