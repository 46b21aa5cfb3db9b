package mech

import (
	"bytes"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// TestMLKEMExpandedDKPKE: an ML-KEM decapsulation key given without its
// seed whose dk_PKE (the secret vector ŝ, its first 384·k bytes) is not
// the one its ek was made with is refused (CKR_ATTRIBUTE_VALUE_INVALID),
// though its ek and H(ek) are its own and pass their checks: dk_PKE of
// another key, and one with a single coefficient changed. Taken, such a
// key decapsulates every ciphertext made to its ek to the implicit
// rejection's key, not to the encapsulator's secret, and says nothing.
// A dk_PKE with a coefficient encoded as itself plus q (the same residue,
// not the canonical encoding FIPS 203's ByteEncode12 gives) is refused
// too, as an ek's is. The PKCS#8 import refuses them; the key whole is
// taken.
func TestMLKEMExpandedDKPKE(t *testing.T) {
	t.Parallel()
	for set, p := range mlkemSets {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			_, gen := genPQC(t, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, set)
			_, other := genPQC(t, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, set)
			good := bytes.Clone(value(gen))
			n := p.circl.PublicKeySize() - 32 // dk_PKE is 384·k bytes
			ek := good[n : 2*n+32]

			otherPKE := bytes.Clone(good)
			copy(otherPKE[:n], value(other)[:n])
			oneCoeff := bytes.Clone(good)
			// The first coefficient, 12 bits little-endian: one more, mod q.
			c := (int(oneCoeff[0]) | int(oneCoeff[1]&0x0f)<<8 + 1) % 3329
			oneCoeff[0], oneCoeff[1] = byte(c), oneCoeff[1]&0xf0|byte(c>>8)
			// The first coefficient below 767 (4096 − q) of the vector,
			// written as itself plus q.
			plusQ := bytes.Clone(good)
			found := false
			for i := 0; i+3 <= n && !found; i += 3 {
				lo := int(plusQ[i]) | int(plusQ[i+1]&0x0f)<<8
				if lo < 4096-3329 {
					lo += 3329
					plusQ[i], plusQ[i+1] = byte(lo), plusQ[i+1]&0xf0|byte(lo>>8)
					found = true
				}
			}
			if !found {
				t.Fatal("no coefficient below 767")
			}

			pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, set, map[uint64][]byte{ck.CKA_VALUE: bytes.Clone(ek)})
			m, km := mechanisms[ck.CKM_ML_KEM], &wire.Mechanism{Type: ck.CKM_ML_KEM}
			for _, tc := range []struct {
				name     string
				dk       []byte
				mismatch bool // taken as it is, it decapsulates to another secret
			}{{"another key's dk_PKE", otherPKE, true}, {"a coefficient changed", oneCoeff, true}, {"a coefficient plus q", plusQ, false}} {
				priv := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: tc.dk})
				ct, secret, err := m.Encapsulate(pub, km)
				if err != nil {
					t.Fatal(err)
				}
				got, err := m.Decapsulate(priv, km, ct)
				if err != nil {
					t.Fatalf("%s: decapsulate: %v", tc.name, err)
				}
				if bytes.Equal(got, secret) == tc.mismatch {
					t.Fatalf("%s: decapsulates to the secret: %v, want %v: the case tests nothing", tc.name, !tc.mismatch, tc.mismatch)
				}

				attrs := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bytes.Clone(tc.dk)}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, attrs); codeOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
					t.Errorf("%s: %v, want CKR_ATTRIBUTE_VALUE_INVALID", tc.name, err)
				}
				der, err := encodePQCPrivate(priv)
				if err != nil {
					t.Fatal(err)
				}
				if _, ok, err := ParsePQCPrivateKey(der); !ok || err == nil {
					t.Errorf("%s imported from PKCS#8: ok %v, err %v", tc.name, ok, err)
				}
			}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: good}); err != nil {
				t.Fatalf("the whole dk: %v", err)
			}
		})
	}
}
