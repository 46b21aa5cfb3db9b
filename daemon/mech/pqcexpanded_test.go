package mech

import (
	"bytes"
	"crypto/sha3"
	"fmt"
	mrand "math/rand/v2"
	"testing"

	"hsmemu/cryptoki/ck"
)

// TestPQCExpandedKeyConsistency: a private key given without its seed is
// refused (CKR_ATTRIBUTE_VALUE_INVALID) when a part the token reads as
// given belongs to another key: an ML-DSA key's tr, which is the hash of
// its public key, or an SLH-DSA key's PK.root, which its seeds make. Such
// keys signed signatures their own public key refuses. The same keys
// whole are taken, and sign for the public key computed from them.
func TestPQCExpandedKeyConsistency(t *testing.T) {
	t.Parallel()
	type tc struct {
		kt, gen, sig, set uint64
		at                func(n int) int // the byte to flip, in a key of n bytes
	}
	cases := []tc{}
	for set := range mldsaSets {
		// tr is bytes 64 to 127, after ρ and K.
		cases = append(cases, tc{ck.CKK_ML_DSA, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKM_ML_DSA, set, func(int) int { return 100 }})
	}
	for _, set := range []uint64{ck.CKP_SLH_DSA_SHA2_128F, ck.CKP_SLH_DSA_SHAKE_128F, ck.CKP_SLH_DSA_SHA2_192F} {
		// PK.root is the key's last quarter.
		cases = append(cases, tc{ck.CKK_SLH_DSA, ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKM_SLH_DSA, set, func(n int) int { return n - 1 }})
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s", PQCSetName(c.kt, c.set)), func(t *testing.T) {
			t.Parallel()
			_, gen := genPQC(t, c.gen, c.kt, c.set)
			good := bytes.Clone(value(gen))
			whole := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(c.set), ck.CKA_VALUE: bytes.Clone(good)}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, c.kt, whole); err != nil {
				t.Fatalf("the whole key: %v", err)
			}
			priv := testKeyObject(t, ck.CKO_PRIVATE_KEY, c.kt, whole)
			pkb, _, err := pqcPublicBytes(priv)
			if err != nil {
				t.Fatal(err)
			}
			pub := pqcKey(t, ck.CKO_PUBLIC_KEY, c.kt, c.set, map[uint64][]byte{ck.CKA_VALUE: pkb})
			sig, err := pqcSign(mechanisms[c.sig], priv, sigMech(c.sig, nil, 0), []byte("m"))
			if err != nil {
				t.Fatal(err)
			}
			if err := pqcVerify(mechanisms[c.sig], pub, sigMech(c.sig, nil, 0), []byte("m"), sig); err != nil {
				t.Fatalf("the whole key's signature: %v", err)
			}

			bad := bytes.Clone(good)
			bad[c.at(len(bad))] ^= 1
			m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(c.set), ck.CKA_VALUE: bad}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, c.kt, m); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
				t.Fatalf("a key with another's part: %v, want CKR_ATTRIBUTE_VALUE_INVALID", err)
			}
			// And through the file import, which says what is wrong.
			der, err := encodePQCPrivate(testKeyObject(t, ck.CKO_PRIVATE_KEY, c.kt, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(c.set), ck.CKA_VALUE: bad}))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok, err := ParsePQCPrivateKey(der); !ok || err == nil {
				t.Fatalf("imported from PKCS#8: ok %v, err %v", ok, err)
			}
		})
	}
}

// TestMLKEMDKWithBadEK: an ML-KEM decapsulation key given alone whose
// encapsulation key fails FIPS 203's modulus check, its H(ek) computed
// over the bad ek so that the hash check passes, is refused
// (CKR_ATTRIBUTE_VALUE_INVALID): its public half would be a key no
// encapsulator takes.
func TestMLKEMDKWithBadEK(t *testing.T) {
	t.Parallel()
	for set, p := range mlkemSets {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			_, gen := genPQC(t, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, set)
			dk := bytes.Clone(value(gen))
			whole := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bytes.Clone(dk)}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, whole); err != nil {
				t.Fatalf("the whole dk: %v", err)
			}
			n := p.circl.PublicKeySize()
			ek := dk[n-32 : 2*n-32]
			// The first coefficient, 12 bits little-endian, made 0xfff (q is 3329).
			ek[0], ek[1] = 0xff, ek[1]|0x0f
			h := sha3.Sum256(ek)
			copy(dk[2*n-32:], h[:])
			m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: dk}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, m); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
				t.Fatalf("a dk holding an ek out of range: %v, want CKR_ATTRIBUTE_VALUE_INVALID", err)
			}
		})
	}
}

// TestMLDSAExpandedKeyExtremeT0: an ML-DSA expanded key whose t0 has
// every coefficient at ±2^12 (its range's ends, so every s1, s2 and tr
// check passes) makes c·t0 so large that circl's signer refuses every
// attempt of its rejection sampling, and after 576 of them panics. The key
// is refused all the same (CKR_ATTRIBUTE_VALUE_INVALID, and from a PKCS#8
// file an error), and a signature with such a key, had one been stored, is
// CKR_FUNCTION_FAILED: never a panic.
func TestMLDSAExpandedKeyExtremeT0(t *testing.T) {
	t.Parallel()
	for set, p := range mldsaSets {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			_, gen := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, set)
			bad := bytes.Clone(value(gen))
			// t0 is the last k polynomials of 256 13-bit coefficients,
			// each packed as 2^12 - t0: 0 is 2^12, 8191 is -(2^12 - 1).
			rng := mrand.New(mrand.NewPCG(1, uint64(set)))
			t0 := bad[len(bad)-p.k*416:]
			clear(t0)
			for i := range p.k * 256 {
				if rng.IntN(2) == 1 {
					for b := i * 13; b < i*13+13; b++ {
						t0[b/8] |= 1 << (b % 8)
					}
				}
			}
			m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bytes.Clone(bad)}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, m); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
				t.Errorf("created: %v, want CKR_ATTRIBUTE_VALUE_INVALID", err)
			}
			k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bad})
			der, err := encodePQCPrivate(k)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok, err := ParsePQCPrivateKey(der); !ok || err == nil {
				t.Errorf("imported from PKCS#8: ok %v, err %v", ok, err)
			}
			for _, hedge := range []uint64{ck.CKH_DETERMINISTIC_REQUIRED, ck.CKH_HEDGE_REQUIRED} {
				if _, err := pqcSign(mechanisms[ck.CKM_ML_DSA], k, sigMech(ck.CKM_ML_DSA, nil, hedge), []byte("m")); err != nil && codeOf(err) != ck.CKR_FUNCTION_FAILED {
					t.Errorf("signed with hedge %d: %v, want a signature or CKR_FUNCTION_FAILED", hedge, err)
				}
			}
		})
	}
}
