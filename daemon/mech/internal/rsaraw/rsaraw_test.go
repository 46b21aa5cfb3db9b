package rsaraw

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"math/big"
	"runtime"
	"testing"
)

// The raw private operation inverts the public one, for random inputs
// below the modulus, and refuses a wrong length.
func TestPrivateInvertsPublic(t *testing.T) {
	for _, bits := range []int{2048, 3072} {
		priv, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		k, err := New(priv)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			m, _ := rand.Int(rand.Reader, priv.N)
			in := m.FillBytes(make([]byte, k.Size()))
			s, err := k.Private(in)
			if err != nil {
				t.Fatal(err)
			}
			back := new(big.Int).Exp(new(big.Int).SetBytes(s), big.NewInt(int64(priv.E)), priv.N)
			if !bytes.Equal(back.FillBytes(make([]byte, k.Size())), in) {
				t.Fatalf("%d bits: s^e != m", bits)
			}
			// And it is m^d: the same as the plain big-number result.
			want := new(big.Int).Exp(m, priv.D, priv.N)
			if new(big.Int).SetBytes(s).Cmp(want) != 0 {
				t.Fatalf("%d bits: s != m^d", bits)
			}
		}
		if _, err := k.Private(make([]byte, k.Size()-1)); err == nil {
			t.Fatal("a short input was accepted")
		}
		// An input not below n is refused by OpenSSL.
		if _, err := k.Private(bytes.Repeat([]byte{0xff}, k.Size())); err == nil {
			t.Fatal("an input above n was accepted")
		}
	}
}

func TestNewNeedsCRT(t *testing.T) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	priv.Precomputed.Dp = nil
	if _, err := New(priv); err == nil {
		t.Fatal("a key without CRT values was accepted")
	}
}

// Keys are freed when dropped: making many does not grow without bound
// (a leak of EVP_PKEYs would show as an ever-growing C heap, which this
// cannot see; it checks the cleanup path runs without crashing).
func TestKeysAreReleased(t *testing.T) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	for range 200 {
		if _, err := New(priv); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
}

func BenchmarkPrivate2048(b *testing.B) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	k, _ := New(priv)
	in := make([]byte, k.Size())
	in[5] = 1
	for b.Loop() {
		if _, err := k.Private(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGoSignPKCS1v15_2048(b *testing.B) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	d := make([]byte, 32)
	for b.Loop() {
		rsa.SignPKCS1v15(nil, priv, 5, d) // crypto.SHA256
	}
}

func BenchmarkPrivate2048Parallel(b *testing.B) {
	priv, _ := rsa.GenerateKey(rand.Reader, 2048)
	k, _ := New(priv)
	b.RunParallel(func(pb *testing.PB) {
		in := make([]byte, k.Size())
		in[5] = 1
		for pb.Next() {
			if _, err := k.Private(in); err != nil {
				b.Fatal(err)
			}
		}
	})
}
