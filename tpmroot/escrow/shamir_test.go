package escrow

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
)

// slowMul is the textbook definition: multiply as polynomials over GF(2),
// then reduce modulo x^8 + x^4 + x^3 + x + 1.
func slowMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b&(1<<i) != 0 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p&(1<<i) != 0 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

func TestGFMul(t *testing.T) {
	t.Parallel()
	for a := range 256 {
		for b := range 256 {
			if got, want := gfMul(byte(a), byte(b)), slowMul(byte(a), byte(b)); got != want {
				t.Fatalf("gfMul(%#x, %#x) = %#x, want %#x", a, b, got, want)
			}
		}
	}
	// A known value from FIPS 197, section 4.2: {57} • {83} = {c1}.
	if got := gfMul(0x57, 0x83); got != 0xc1 {
		t.Errorf("gfMul(0x57, 0x83) = %#x, want 0xc1", got)
	}
}

func TestGFInv(t *testing.T) {
	t.Parallel()
	if got := gfInv(0); got != 0 {
		t.Errorf("gfInv(0) = %#x, want 0", got)
	}
	for a := 1; a < 256; a++ {
		// The inverse by exhaustive search, through the reference multiply.
		want := -1
		for b := 1; b < 256; b++ {
			if slowMul(byte(a), byte(b)) == 1 {
				if want != -1 {
					t.Fatalf("%#x has two inverses", a)
				}
				want = b
			}
		}
		if got := gfInv(byte(a)); int(got) != want {
			t.Fatalf("gfInv(%#x) = %#x, want %#x", a, got, want)
		}
	}
}

// subsets calls f with every subset of {0, ..., n-1} of size k.
func subsets(n, k int, f func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == k {
			f(cur)
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, make([]int, 0, k))
}

func TestShamirSubsets(t *testing.T) {
	t.Parallel()
	for n := 1; n <= 5; n++ {
		for m := 1; m <= n; m++ {
			t.Run(fmt.Sprintf("%d-of-%d", m, n), func(t *testing.T) {
				t.Parallel()
				secret := testSecret(t)
				ys, err := shamirSplit(secret, m, n, rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				id := DomainID(secret)
				shares := make([]*Share, n)
				for i, y := range ys {
					shares[i] = &Share{DomainID: id, Threshold: m, Index: byte(i + 1), Value: y}
				}
				pick := func(idx []int) []*Share {
					out := make([]*Share, len(idx))
					for i, j := range idx {
						out[i] = shares[j]
					}
					return out
				}
				// Every subset of m or more shares recreates the secret.
				for k := m; k <= n; k++ {
					subsets(n, k, func(idx []int) {
						got, err := Combine(pick(idx))
						if err != nil {
							t.Fatalf("Combine%v: %v", idx, err)
						}
						if !bytes.Equal(got, secret) {
							t.Fatalf("Combine%v recreated the wrong secret", idx)
						}
					})
				}
				// Every subset of m-1 is not enough.
				subsets(n, m-1, func(idx []int) {
					if _, err := Combine(pick(idx)); !errors.Is(err, ErrNotEnoughShares) {
						t.Fatalf("Combine%v: %v, want ErrNotEnoughShares", idx, err)
					}
				})
				// Without the domain check, m-1 shares and a guessed one
				// would interpolate to some value; with it, Combine refuses.
				if m >= 2 {
					guess := &Share{DomainID: id, Threshold: m, Index: byte(n + 1), Value: make([]byte, secretLen)}
					var got []*Share
					subsets(n, m-1, func(idx []int) {
						if got == nil {
							got = append(pick(idx), guess)
						}
					})
					if _, err := Combine(got); !errors.Is(err, ErrShareMismatch) {
						t.Fatalf("Combine with a guessed share: %v, want ErrShareMismatch", err)
					}
				}
			})
		}
	}
}

func TestShamirPolynomial(t *testing.T) {
	t.Parallel()
	// With all-zero coefficients the polynomial is the constant secret: it
	// is the randomness, nothing else, that hides the secret in a share.
	secret := testSecret(t)
	ys, err := shamirSplit(secret, 3, 4, bytes.NewReader(make([]byte, 2*secretLen)))
	if err != nil {
		t.Fatal(err)
	}
	for i, y := range ys {
		if !bytes.Equal(y, secret) {
			t.Errorf("share %d with zero coefficients is not the secret", i+1)
		}
	}
	// A known polynomial, 0x01 + 0x02·x + 0x03·x², at x = 1, 2, 3:
	// f(1) = 1^2^3 = 0, f(2) = 1 ^ 4 ^ 3·4, f(3) = 1 ^ 2·3 ^ 3·5.
	coeffs := append(bytes.Repeat([]byte{2}, secretLen), bytes.Repeat([]byte{3}, secretLen)...)
	ys, err = shamirSplit(bytes.Repeat([]byte{1}, secretLen), 3, 3, bytes.NewReader(coeffs))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0, 1 ^ 4 ^ slowMul(3, 4), 1 ^ slowMul(2, 3) ^ slowMul(3, slowMul(3, 3))}
	for i, y := range ys {
		if y[0] != want[i] || y[31] != want[i] {
			t.Errorf("f(%d) = %#x, want %#x", i+1, y[0], want[i])
		}
	}
	if _, err := shamirSplit(secret, 2, 2, bytes.NewReader(make([]byte, 31))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short randomness: %v, want io.ErrUnexpectedEOF", err)
	}
}
