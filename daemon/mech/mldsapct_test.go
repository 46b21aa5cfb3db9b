package mech

import (
	"bytes"
	"testing"

	"github.com/cloudflare/circl/sign"

	"hsmemu/cryptoki/ck"
)

// mldsaFixedKey is the expanded private key of parameter set p from the
// seed first, first+1, ..., first+31: fixed, so that which signature the
// pairwise-consistency test makes is the same on every run.
func mldsaFixedKey(t testing.TB, p *mldsaSet, first byte) []byte {
	t.Helper()
	seed := make([]byte, mldsaSeedLen)
	for i := range seed {
		seed[i] = first + byte(i)
	}
	_, sk := p.scheme.DeriveKey(seed)
	val, err := sk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return val
}

// mldsaT0At is where t0 starts in p's expanded key: after ρ, K and tr
// (128 bytes), then s1 and s2, 32·bitlen(2η) bytes a polynomial.
func mldsaT0At(p *mldsaSet) int {
	bits := 3
	if p.eta == 4 {
		bits = 4
	}
	return 128 + (p.k+p.l)*32*bits
}

// TestMLDSAExpandedT0: an ML-DSA private key given without its seed whose
// t0 is not the one its ρ, s1 and s2 make is refused
// (CKR_ATTRIBUTE_VALUE_INVALID) by the pairwise-consistency test, though
// its tr is right (t0 is not in the public key tr hashes): a key whose t0
// is another key's, and one whose first t0 coefficient is 4096 off (its
// 13th bit flipped), which for these fixed keys changes the test's
// signature (a coefficient a little off may not: docs/mechanisms.md).
// Either key, taken, signs signatures its public key refuses; the
// PKCS#8 import refuses them too.
func TestMLDSAExpandedT0(t *testing.T) {
	t.Parallel()
	for set, p := range mldsaSets {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			good := mldsaFixedKey(t, p, 0)
			at := mldsaT0At(p)
			otherT0 := bytes.Clone(good)
			copy(otherT0[at:], mldsaFixedKey(t, p, 32)[at:])
			farOff := bytes.Clone(good)
			farOff[at+1] ^= 0x10 // bit 12 of the first 13-bit coefficient
			for _, c := range []struct {
				name string
				val  []byte
			}{{"another key's t0", otherT0}, {"a t0 coefficient 4096 off", farOff}} {
				// Taken as it is, the key signs for no verifier of its
				// public key: the reason for the refusal.
				priv := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: c.val})
				pkb, _, err := pqcPublicBytes(priv)
				if err != nil {
					t.Fatal(err)
				}
				pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_VALUE: pkb})
				m := sigMech(ck.CKM_ML_DSA, nil, ck.CKH_DETERMINISTIC_REQUIRED)
				sig, err := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, m, mldsaPCTMessage)
				if err != nil {
					t.Fatal(err)
				}
				if err := pqcVerify(mechanisms[ck.CKM_ML_DSA], pub, m, mldsaPCTMessage, sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
					t.Fatalf("%s: its signature verifies (%v): the case tests nothing", c.name, err)
				}

				attrs := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bytes.Clone(c.val)}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, attrs); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
					t.Errorf("%s: %v, want CKR_ATTRIBUTE_VALUE_INVALID", c.name, err)
				}
				der, err := encodePQCPrivate(priv)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok, err := ParsePQCPrivateKey(der); !ok || err == nil {
					t.Errorf("%s imported from PKCS#8: ok %v, err %v", c.name, ok, err)
				}
			}
			// The same key whole is taken.
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: good}); err != nil {
				t.Fatalf("the whole key: %v", err)
			}
		})
	}
}

// TestMLDSAExpandedS1OutOfRange: an ML-DSA private key given without its
// seed with an s1 coefficient outside ±η is refused
// (CKR_ATTRIBUTE_VALUE_INVALID), though circl unpacks it (its
// PolyUnpackLeqEta takes any bitlen(2η)-bit field) and its tr is made to
// match: the public key such an s1 gives is hashed into the key, so only
// the range check, or the signature the key then makes, can tell.
func TestMLDSAExpandedS1OutOfRange(t *testing.T) {
	t.Parallel()
	for set, p := range mldsaSets {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			bad := mldsaFixedKey(t, p, 0)
			// The first coefficient of s1, in the low bits of its first
			// byte, is η − c: 2η+1 is c = −η−1, one past the range.
			bits := byte(3)
			if p.eta == 4 {
				bits = 4
			}
			bad[128] = bad[128]&^(1<<bits-1) | byte(2*p.eta+1)
			sk, err := p.scheme.UnmarshalBinaryPrivateKey(bad)
			if err != nil {
				t.Fatalf("circl refuses the key itself (%v): the case tests nothing", err)
			}
			pk, err := sk.Public().(sign.PublicKey).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			copy(bad[64:128], mldsaTR(pk))
			if mldsaCheckS(p, bad) || !mldsaCheckS(p, mldsaFixedKey(t, p, 0)) {
				t.Fatal("the range check reads the coefficient wrong")
			}
			m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bad}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, m); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
				t.Fatalf("s1 out of range: %v, want CKR_ATTRIBUTE_VALUE_INVALID", err)
			}
		})
	}
}
