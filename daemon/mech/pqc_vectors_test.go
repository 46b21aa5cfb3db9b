package mech

import (
	"bytes"
	"testing"

	"hsmemu/cryptoki/ck"
)

// TestMLDSAWycheproofSignNoSeed signs Wycheproof's ML-DSA vectors with
// private keys given only in their expanded FIPS 204 encoding (CKA_VALUE,
// no seed): a key of the wrong length, or with s1 or s2 out of range, is
// refused when the key is made, as C_CreateObject refuses it; every other
// deterministic signature is the file's, byte for byte. Vectors of FIPS
// 204's internal interface (mu given, no message) and randomised ones are
// not reachable through PKCS#11.
func TestMLDSAWycheproofSignNoSeed(t *testing.T) {
	t.Parallel()
	m := mechanisms[ck.CKM_ML_DSA]
	for size, set := range mldsaFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			v := loadPQC(t, "mldsa_"+size+"_sign_noseed_test.json")
			signed, refusedKeys := 0, 0
			for _, g := range v.TestGroups {
				attrs := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: bytes.Clone(g.PrivateKey)}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, attrs); err != nil {
					for _, tc := range g.Tests {
						if tc.Result == "valid" {
							t.Errorf("tc %d: the key was refused: %v", tc.TcID, err)
						}
					}
					refusedKeys++
					continue
				}
				priv := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, attrs)
				pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_VALUE: g.PublicKey})
				for _, tc := range g.Tests {
					if tc.Msg == nil || tc.Rnd != nil {
						continue
					}
					var ctx []byte
					if tc.Ctx != nil {
						ctx = *tc.Ctx
					}
					sig, err := pqcSign(m, priv, sigMech(ck.CKM_ML_DSA, ctx, ck.CKH_DETERMINISTIC_REQUIRED), *tc.Msg)
					switch {
					case tc.Result == "valid" && err != nil:
						t.Errorf("tc %d: %v", tc.TcID, err)
					case tc.Result == "valid" && !bytes.Equal(sig, tc.Sig):
						t.Errorf("tc %d: signature differs", tc.TcID)
					case tc.Result == "valid":
						if err := pqcVerify(m, pub, sigMech(ck.CKM_ML_DSA, ctx, ck.CKH_HEDGE_PREFERRED), *tc.Msg, sig); err != nil {
							t.Errorf("tc %d: the group's public key refuses it: %v", tc.TcID, err)
						}
					case err == nil:
						t.Errorf("tc %d %v: signed", tc.TcID, tc.Flags)
					}
					signed++
				}
			}
			// Each file has a short, a long and two out-of-range keys.
			if signed < 40 || refusedKeys != 4 {
				t.Fatalf("signed %d vectors, refused %d keys", signed, refusedKeys)
			}
		})
	}
}

// TestMLKEMWycheproofKeygen makes ML-KEM private keys from Wycheproof's
// seeds: the token's expanded key (CKA_VALUE) is the file's dk, and the
// public key it computes from the private key the file's ek.
func TestMLKEMWycheproofKeygen(t *testing.T) {
	t.Parallel()
	for size, set := range mlkemFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			n := 0
			for _, g := range loadPQC(t, "mlkem_"+size+"_keygen_seed_test.json").TestGroups {
				for _, tc := range g.Tests {
					attrs := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: tc.Seed}
					if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, attrs); err != nil {
						t.Fatalf("tc %d: %v", tc.TcID, err)
					}
					if !bytes.Equal(attrs[ck.CKA_VALUE], tc.DK) {
						t.Errorf("tc %d: dk differs", tc.TcID)
					}
					ek, _, err := pqcPublicBytes(testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, attrs))
					if err != nil || !bytes.Equal(ek, tc.EK) {
						t.Errorf("tc %d: ek differs: %v", tc.TcID, err)
					}
					// From dk alone too, the same ek.
					dkOnly := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: tc.DK}
					if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, dkOnly); err != nil {
						t.Fatalf("tc %d: dk refused: %v", tc.TcID, err)
					}
					if ek, _, err := pqcPublicBytes(testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, dkOnly)); err != nil || !bytes.Equal(ek, tc.EK) {
						t.Errorf("tc %d: ek from dk differs: %v", tc.TcID, err)
					}
					n++
				}
			}
			if n != 100 {
				t.Fatalf("ran %d vectors", n)
			}
		})
	}
}
