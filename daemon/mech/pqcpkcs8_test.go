package mech

import (
	"bytes"
	"encoding/json"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// TestPQCPKCS8: a seed-only ML-DSA key encodes to Wycheproof's
// privateKeyPkcs8 byte for byte, and decodes back to its seed; every
// type's wrapped encoding (EncodeKey) comes back (DecodeKey) as the same
// key; foreign and broken encodings are refused.
func TestPQCPKCS8(t *testing.T) {
	t.Parallel()
	for size, set := range mldsaFileSets {
		// A fresh value per file: a group without privateKeyPkcs8 must
		// not keep the last file's.
		var v struct {
			TestGroups []struct {
				PrivateSeed     hexField `json:"privateSeed"`
				PrivateKeyPkcs8 hexField `json:"privateKeyPkcs8"`
			} `json:"testGroups"`
		}
		if err := json.Unmarshal(mechtest.WycheproofFile(t, "mldsa_"+size+"_sign_seed_test.json"), &v); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range v.TestGroups {
			if len(g.PrivateSeed) != 32 || len(g.PrivateKeyPkcs8) == 0 {
				continue
			}
			k := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_SEED: g.PrivateSeed})
			der, err := EncodeKey(k)
			if err != nil || !bytes.Equal(der, g.PrivateKeyPkcs8) {
				t.Errorf("ML-DSA-%s: %x, %v", size, der, err)
			}
			add, err := DecodeKey(g.PrivateKeyPkcs8, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{})
			if err != nil || !bytes.Equal(add[ck.CKA_SEED], g.PrivateSeed) || ulongOf(add[ck.CKA_PARAMETER_SET]) != set {
				t.Errorf("ML-DSA-%s: decoded %v", size, err)
			}
			n++
		}
		if n == 0 {
			t.Fatalf("ML-DSA-%s: no key", size)
		}
	}
	msg := []byte("wrapped and back")
	for _, tc := range []struct{ gen, kt, set uint64 }{
		{ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65},
		{ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, ck.CKP_ML_KEM_512},
		{ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128F},
	} {
		pub, priv := genPQC(t, tc.gen, tc.kt, tc.set)
		// Each form: seed and value, seed alone, value alone.
		forms := []map[uint64][]byte{{ck.CKA_VALUE: priv.attrs[ck.CKA_VALUE]}}
		if tc.kt != ck.CKK_SLH_DSA {
			forms = append(forms, map[uint64][]byte{ck.CKA_SEED: priv.attrs[ck.CKA_SEED], ck.CKA_VALUE: priv.attrs[ck.CKA_VALUE]},
				map[uint64][]byte{ck.CKA_SEED: priv.attrs[ck.CKA_SEED]})
		}
		for i, form := range forms {
			der, err := EncodeKey(pqcKey(t, ck.CKO_PRIVATE_KEY, tc.kt, tc.set, form))
			if err != nil {
				t.Fatalf("%#x form %d: %v", tc.kt, i, err)
			}
			add, err := DecodeKey(der, ck.CKO_PRIVATE_KEY, tc.kt, map[uint64][]byte{})
			if err != nil {
				t.Fatalf("%#x form %d: %v", tc.kt, i, err)
			}
			if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, tc.kt, add); err != nil || !bytes.Equal(add[ck.CKA_VALUE], priv.attrs[ck.CKA_VALUE]) {
				t.Fatalf("%#x form %d: not the same key: %v", tc.kt, i, err)
			}
			back := testKeyObject(t, ck.CKO_PRIVATE_KEY, tc.kt, add)
			switch tc.kt {
			case ck.CKK_ML_KEM:
				ct, s1, _ := mechanisms[ck.CKM_ML_KEM].Encapsulate(pub, &wire.Mechanism{Type: ck.CKM_ML_KEM})
				if s2, err := mechanisms[ck.CKM_ML_KEM].Decapsulate(back, &wire.Mechanism{Type: ck.CKM_ML_KEM}, ct); err != nil || !bytes.Equal(s1, s2) {
					t.Errorf("ML-KEM form %d: %v", i, err)
				}
			case ck.CKK_ML_DSA:
				sig, err := pqcSign(mechanisms[ck.CKM_ML_DSA], back, sigMech(ck.CKM_ML_DSA, nil, 0), msg)
				if err != nil || pqcVerify(mechanisms[ck.CKM_ML_DSA], pub, sigMech(ck.CKM_ML_DSA, nil, 0), msg, sig) != nil {
					t.Errorf("ML-DSA form %d: %v", i, err)
				}
			}
		}
		der, _ := EncodeKey(priv)
		other := map[uint64]uint64{ck.CKK_ML_DSA: ck.CKK_ML_KEM, ck.CKK_ML_KEM: ck.CKK_SLH_DSA, ck.CKK_SLH_DSA: ck.CKK_ML_DSA}[tc.kt]
		if _, err := DecodeKey(der, ck.CKO_PRIVATE_KEY, other, map[uint64][]byte{}); codeOf(err) != ck.CKR_TEMPLATE_INCONSISTENT {
			t.Errorf("%#x unwrapped as %#x: %v", tc.kt, other, err)
		}
	}
	// An ML-DSA algorithm with a privateKey of no CHOICE's form.
	broken := []byte{0x30, 0x14, 0x02, 0x01, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12,
		0x04, 0x02, 0x02, 0x00}
	if _, err := DecodeKey(broken, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{}); codeOf(err) != ck.CKR_WRAPPED_KEY_INVALID {
		t.Errorf("broken privateKey: %v", err)
	}
}
