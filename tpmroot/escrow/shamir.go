package escrow

import (
	"fmt"
	"io"
)

// Arithmetic in GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1.
// The choice of polynomial does not matter for Shamir's scheme as long as
// splitting and combining agree; the AES one is the most widely checked.
//
// The usual implementation multiplies through log and exp tables. Those
// tables are indexed by secret bytes, which leaks through the cache, so here
// multiplication is bit-serial and branch-free: eight rounds of shift and
// conditional XOR, with the conditions turned into masks.

// gfMul returns a*b in GF(2^8) in time independent of a and b.
func gfMul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & -(b & 1)       // add a if the low bit of b is set
		a = a<<1 ^ 0x1b&-(a>>7) // multiply a by x, reducing if it overflowed
		b >>= 1
	}
	return p
}

// gfInv returns the multiplicative inverse of a, or 0 for a == 0.
// It computes a^254 (the group of units has order 255) with a fixed chain of
// squarings and multiplications, so it too takes the same time for every a.
func gfInv(a byte) byte {
	// 254 = 0b11111110: square-and-multiply over its bits, most significant
	// first, with every multiplication performed.
	r := byte(1)
	for i := 7; i >= 0; i-- {
		r = gfMul(r, r)
		bit := byte(254>>i) & 1
		m := gfMul(r, a)
		// Select m when bit is set, r otherwise, without a branch.
		r ^= (r ^ m) & -bit
	}
	return r
}

// shamirSplit splits secret into n shares, any threshold of which recreate
// it. Share i (0-based) is the evaluation at x = i+1 of one random polynomial
// of degree threshold-1 per secret byte, whose constant term is that byte.
// It returns the y-values; the caller owns them and must wipe them.
func shamirSplit(secret []byte, threshold, n int, rnd io.Reader) ([][]byte, error) {
	if threshold < 1 || threshold > n || n > maxShares {
		return nil, fmt.Errorf("escrow: invalid %d-of-%d split", threshold, n)
	}
	// coeffs[k][j] is the coefficient of x^(k+1) in the polynomial of byte j.
	coeffs := make([][]byte, threshold-1)
	defer func() {
		for _, c := range coeffs {
			clear(c)
		}
	}()
	for k := range coeffs {
		coeffs[k] = make([]byte, len(secret))
		if _, err := io.ReadFull(rnd, coeffs[k]); err != nil {
			return nil, fmt.Errorf("escrow: reading random coefficients: %w", err)
		}
	}
	ys := make([][]byte, n)
	for i := range ys {
		x := byte(i + 1)
		y := make([]byte, len(secret))
		for j := range secret {
			// Horner's rule from the highest coefficient down.
			var acc byte
			for k := len(coeffs) - 1; k >= 0; k-- {
				acc = gfMul(acc, x) ^ coeffs[k][j]
			}
			y[j] = gfMul(acc, x) ^ secret[j]
		}
		ys[i] = y
	}
	return ys, nil
}

// shamirCombine interpolates the polynomials through the points (xs[i],
// ys[i]) and returns their values at zero. The xs must be distinct and
// non-zero and every ys[i] as long as ys[0]; the caller checks both.
//
// All the points are used, not just the first threshold of them. When they
// all lie on one polynomial of degree threshold-1 the result is the same; when
// one does not, the result changes and the domain check in Combine catches
// it, rather than a bad extra share going unnoticed.
func shamirCombine(xs []byte, ys [][]byte) []byte {
	out := make([]byte, len(ys[0]))
	for i, xi := range xs {
		// Lagrange basis polynomial for point i, evaluated at zero:
		// the product over j != i of xj / (xj - xi). Subtraction is XOR.
		// The xs are public, but gfMul and gfInv are constant-time anyway.
		num, den := byte(1), byte(1)
		for j, xj := range xs {
			if j == i {
				continue
			}
			num = gfMul(num, xj)
			den = gfMul(den, xj^xi)
		}
		basis := gfMul(num, gfInv(den))
		for b, y := range ys[i] {
			out[b] ^= gfMul(basis, y)
		}
	}
	return out
}
