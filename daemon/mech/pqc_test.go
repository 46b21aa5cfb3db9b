package mech

import (
	"bytes"
	"crypto/mlkem"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// hexField is a Wycheproof hex string.
type hexField []byte

func (h *hexField) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// pqcVectors is a Wycheproof ML-DSA or ML-KEM file: the fields these
// tests read.
type pqcVectors struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		PublicKey   hexField `json:"publicKey"`
		PrivateSeed hexField `json:"privateSeed"`
		PrivateKey  hexField `json:"privateKey"`
		Tests       []struct {
			TcID   int       `json:"tcId"`
			Result string    `json:"result"`
			Flags  []string  `json:"flags"`
			Msg    *hexField `json:"msg"`
			Ctx    *hexField `json:"ctx"`
			Sig    hexField  `json:"sig"`
			Rnd    *hexField `json:"rnd"`
			Mu     *hexField `json:"mu"`
			Seed   hexField  `json:"seed"`
			EK     hexField  `json:"ek"`
			DK     hexField  `json:"dk"`
			C      hexField  `json:"c"`
			K      hexField  `json:"K"`
			M      hexField  `json:"m"`
		} `json:"tests"`
	} `json:"testGroups"`
}

func loadPQC(t *testing.T, name string) *pqcVectors {
	t.Helper()
	var v pqcVectors
	if err := json.Unmarshal(mechtest.WycheproofFile(t, name), &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	n := 0
	for _, g := range v.TestGroups {
		n += len(g.Tests)
	}
	if n == 0 || n != v.NumberOfTests {
		t.Fatalf("%s: %d tests, the file says %d", name, n, v.NumberOfTests)
	}
	return &v
}

// sigMech is CKM_ML_DSA (or another PQC signature) with, when ctx is
// not nil or hedge is not preferred, a CK_SIGN_ADDITIONAL_CONTEXT.
func sigMech(typ uint64, ctx []byte, hedge uint64) *wire.Mechanism {
	m := &wire.Mechanism{Type: typ}
	if ctx != nil || hedge != ck.CKH_HEDGE_PREFERRED {
		m.Present = true
		m.Param = wire.SignContext{HedgeVariant: hedge, Context: ctx}.Param()
	}
	return m
}

func pqcKey(t testing.TB, class, kt, set uint64, attrs map[uint64][]byte) *testKey {
	a := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set)}
	for k, v := range attrs {
		a[k] = v
	}
	return testKeyObject(t, class, kt, a)
}

// pqcSign and pqcVerify run one whole signature or verification.
func pqcSign(m *Mechanism, k Key, p *wire.Mechanism, msg []byte) ([]byte, error) {
	op, err := m.Sign(k, p)
	if err != nil {
		return nil, err
	}
	if err := op.Update(msg); err != nil {
		return nil, err
	}
	return op.Sign()
}

func pqcVerify(m *Mechanism, k Key, p *wire.Mechanism, msg, sig []byte) error {
	op, err := m.Verify(k, p)
	if err != nil {
		return err
	}
	if err := op.Update(msg); err != nil {
		return err
	}
	return op.Verify(sig)
}

var mldsaFileSets = map[string]uint64{"44": ck.CKP_ML_DSA_44, "65": ck.CKP_ML_DSA_65, "87": ck.CKP_ML_DSA_87}

// TestMLDSAWycheproofVerify runs Wycheproof's ML-DSA verification
// vectors through CKM_ML_DSA: every valid one verifies, every invalid
// one (a bad key, signature or context) is refused.
func TestMLDSAWycheproofVerify(t *testing.T) {
	t.Parallel()
	m := mechanisms[ck.CKM_ML_DSA]
	for size, set := range mldsaFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			v := loadPQC(t, "mldsa_"+size+"_verify_test.json")
			n := 0
			for _, g := range v.TestGroups {
				pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_VALUE: g.PublicKey})
				for _, tc := range g.Tests {
					var ctx []byte
					if tc.Ctx != nil {
						ctx = *tc.Ctx
					}
					var msg []byte
					if tc.Msg != nil {
						msg = *tc.Msg
					}
					err := pqcVerify(m, pub, sigMech(ck.CKM_ML_DSA, ctx, ck.CKH_HEDGE_PREFERRED), msg, tc.Sig)
					if (err == nil) != (tc.Result == "valid") {
						t.Errorf("tc %d %v: %s, got %v", tc.TcID, tc.Flags, tc.Result, err)
					}
					n++
				}
			}
			if n < 50 {
				t.Fatalf("ran %d vectors", n)
			}
		})
	}
}

// TestMLDSAWycheproofSign signs Wycheproof's ML-DSA vectors
// deterministically from the private seed alone (the token expands it):
// each signature is the file's, byte for byte. Vectors of FIPS 204's
// internal interface (mu given) and randomised ones (rnd given) are not
// reachable through PKCS#11.
func TestMLDSAWycheproofSign(t *testing.T) {
	t.Parallel()
	m := mechanisms[ck.CKM_ML_DSA]
	for size, set := range mldsaFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			v := loadPQC(t, "mldsa_"+size+"_sign_seed_test.json")
			n := 0
			for _, g := range v.TestGroups {
				priv := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_SEED: g.PrivateSeed})
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
					case tc.Result == "invalid" && err == nil:
						t.Errorf("tc %d %v: signed", tc.TcID, tc.Flags)
					}
					n++
				}
			}
			if n < 20 {
				t.Fatalf("ran %d vectors", n)
			}
		})
	}
}

var mlkemFileSets = map[string]uint64{"512": ck.CKP_ML_KEM_512, "768": ck.CKP_ML_KEM_768, "1024": ck.CKP_ML_KEM_1024}

// TestMLKEMWycheproof runs Wycheproof's ML-KEM vectors: from the seed
// alone the token decapsulates each ciphertext to the file's secret
// (implicit rejection included); from the expanded dk alone too; and it
// refuses the encapsulation keys FIPS 203's modulus check rejects.
func TestMLKEMWycheproof(t *testing.T) {
	t.Parallel()
	m := mechanisms[ck.CKM_ML_KEM]
	plain := &wire.Mechanism{Type: ck.CKM_ML_KEM}
	for size, set := range mlkemFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			n := 0
			for _, g := range loadPQC(t, "mlkem_"+size+"_test.json").TestGroups {
				for _, tc := range g.Tests {
					priv := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, set, map[uint64][]byte{ck.CKA_SEED: tc.Seed})
					secret, err := m.Decapsulate(priv, plain, tc.C)
					switch {
					case tc.Result == "valid" && (err != nil || !bytes.Equal(secret, tc.K)):
						t.Errorf("tc %d: %x, %v", tc.TcID, secret, err)
					case tc.Result != "valid" && err == nil:
						t.Errorf("tc %d: decapsulated", tc.TcID)
					}
					if tc.Result == "valid" {
						pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, set, map[uint64][]byte{ck.CKA_VALUE: tc.EK})
						ct, s1, err := m.Encapsulate(pub, plain)
						if err != nil {
							t.Fatalf("tc %d: encapsulate: %v", tc.TcID, err)
						}
						if s2, err := m.Decapsulate(priv, plain, ct); err != nil || !bytes.Equal(s1, s2) {
							t.Errorf("tc %d: round trip: %v", tc.TcID, err)
						}
					}
					n++
				}
			}
			for _, g := range loadPQC(t, "mlkem_"+size+"_semi_expanded_decaps_test.json").TestGroups {
				for _, tc := range g.Tests {
					priv := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, set, map[uint64][]byte{ck.CKA_VALUE: tc.DK})
					secret, err := m.Decapsulate(priv, plain, tc.C)
					if (err == nil && bytes.Equal(secret, tc.K)) != (tc.Result == "valid") {
						t.Errorf("semi-expanded tc %d: %s, got %x, %v", tc.TcID, tc.Result, secret, err)
					}
					n++
				}
			}
			for _, g := range loadPQC(t, "mlkem_"+size+"_encaps_test.json").TestGroups {
				for _, tc := range g.Tests {
					pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, set, map[uint64][]byte{ck.CKA_VALUE: tc.EK})
					_, _, err := m.Encapsulate(pub, plain)
					if (err == nil) != (tc.Result == "valid") {
						t.Errorf("encaps tc %d: %s, got %v", tc.TcID, tc.Result, err)
					}
					n++
				}
			}
			if n < 100 {
				t.Fatalf("ran %d vectors", n)
			}
		})
	}
}

// genPQC makes a key pair with the mechanism gen for parameter set set.
func genPQC(t testing.TB, gen, kt, set uint64) (pub, priv *testKey) {
	t.Helper()
	pubAdd, privAdd, err := mechanisms[gen].GeneratePair(&wire.Mechanism{Type: gen}, map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set)}, map[uint64][]byte{})
	if err != nil {
		t.Fatal(err)
	}
	pubAdd[ck.CKA_PARAMETER_SET] = ulong(set)
	return testKeyObject(t, ck.CKO_PUBLIC_KEY, kt, pubAdd), testKeyObject(t, ck.CKO_PRIVATE_KEY, kt, privAdd)
}

// checkSignatures signs and verifies with a fresh key pair, and checks
// the refusals: another context, a flipped bit, a truncated signature, a
// public key of another parameter set.
func checkSignatures(t *testing.T, typ uint64, pub, priv, other Key) {
	m := mechanisms[typ]
	msg := []byte("the message")
	ctx := []byte("context")
	sig, err := pqcSign(m, priv, sigMech(typ, ctx, ck.CKH_HEDGE_REQUIRED), msg)
	if err != nil {
		t.Fatal(err)
	}
	// In parts.
	op, err := m.Verify(pub, sigMech(typ, ctx, ck.CKH_HEDGE_PREFERRED))
	if err != nil {
		t.Fatal(err)
	}
	op.Update(msg[:3])
	op.Update(msg[3:])
	if err := op.Verify(sig); err != nil {
		t.Fatalf("verify in parts: %v", err)
	}
	if err := pqcVerify(m, pub, sigMech(typ, []byte("other"), 0), msg, sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
		t.Errorf("another context: %v", err)
	}
	if err := pqcVerify(m, pub, sigMech(typ, nil, 0), msg, sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
		t.Errorf("no context: %v", err)
	}
	flipped := bytes.Clone(sig)
	flipped[len(flipped)/2] ^= 1
	if err := pqcVerify(m, pub, sigMech(typ, ctx, 0), msg, flipped); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
		t.Errorf("flipped bit: %v", err)
	}
	if err := pqcVerify(m, pub, sigMech(typ, ctx, 0), msg, sig[:len(sig)-1]); codeOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
		t.Errorf("truncated: %v", err)
	}
	if other != nil {
		if err := pqcVerify(m, other, sigMech(typ, ctx, 0), msg, sig); err == nil {
			t.Error("a public key of another parameter set verified")
		}
	}
	// Deterministic signatures repeat; hedged ones do not.
	d1, err1 := pqcSign(m, priv, sigMech(typ, ctx, ck.CKH_DETERMINISTIC_REQUIRED), msg)
	d2, err2 := pqcSign(m, priv, sigMech(typ, ctx, ck.CKH_DETERMINISTIC_REQUIRED), msg)
	if err1 != nil || err2 != nil || !bytes.Equal(d1, d2) {
		t.Errorf("deterministic: %v %v, equal %v", err1, err2, bytes.Equal(d1, d2))
	}
	h2, err := pqcSign(m, priv, sigMech(typ, ctx, ck.CKH_HEDGE_REQUIRED), msg)
	if err != nil || bytes.Equal(h2, sig) {
		t.Errorf("hedged signatures repeat: %v", err)
	}
	// Parameters out of range.
	if _, err := m.Sign(priv, sigMech(typ, make([]byte, 256), 0)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
		t.Errorf("256-byte context: %v", err)
	}
	if _, err := m.Sign(priv, sigMech(typ, nil, 3)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
		t.Errorf("unknown hedge: %v", err)
	}
	// Verification ignores the hedging (PKCS#11 3.2, "ML-DSA Signature",
	// "SLH-DSA Signature"), whatever its value; not the context's length.
	for _, hedge := range []uint64{ck.CKH_DETERMINISTIC_REQUIRED, ck.CKH_HEDGE_REQUIRED, 3} {
		if err := pqcVerify(m, pub, sigMech(typ, ctx, hedge), msg, sig); err != nil {
			t.Errorf("verify with hedge %d: %v", hedge, err)
		}
	}
	if _, err := m.Verify(pub, sigMech(typ, make([]byte, 256), 0)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
		t.Errorf("verify with a 256-byte context: %v", err)
	}
	if _, err := m.Sign(pub, sigMech(typ, nil, 0)); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
		t.Errorf("sign with the public key: %v", err)
	}
}

func TestMLDSARoundTrip(t *testing.T) {
	t.Parallel()
	sets := []uint64{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87}
	for i, set := range sets {
		t.Run(fmt.Sprint(set), func(t *testing.T) {
			t.Parallel()
			pub, priv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, set)
			other, _ := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, sets[(i+1)%3])
			checkSignatures(t, ck.CKM_ML_DSA, pub, priv, other)
			// The value alone signs as the seed does; a value that is not
			// the seed's is refused.
			byValue := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{
				ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: priv.attrs[ck.CKA_VALUE]})
			p := sigMech(ck.CKM_ML_DSA, nil, ck.CKH_DETERMINISTIC_REQUIRED)
			s1, _ := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, p, []byte("m"))
			s2, err := pqcSign(mechanisms[ck.CKM_ML_DSA], byValue, p, []byte("m"))
			if err != nil || !bytes.Equal(s1, s2) {
				t.Errorf("by value: %v", err)
			}
			_, otherPriv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, set)
			mixed := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, map[uint64][]byte{
				ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: priv.attrs[ck.CKA_SEED], ck.CKA_VALUE: otherPriv.attrs[ck.CKA_VALUE]})
			if _, err := mechanisms[ck.CKM_ML_DSA].Sign(mixed, p); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
				t.Errorf("seed and value of different keys: %v", err)
			}
		})
	}
	if _, _, err := mechanisms[ck.CKM_ML_DSA_KEY_PAIR_GEN].GeneratePair(&wire.Mechanism{Type: ck.CKM_ML_DSA_KEY_PAIR_GEN},
		map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(9)}, map[uint64][]byte{}); codeOf(err) != ck.CKR_PARAMETER_SET_NOT_SUPPORTED {
		t.Errorf("unknown parameter set: %v", err)
	}
}

// TestMLDSAInterop: a signature of the token verifies with circl's own
// ML-DSA-65, and circl's verifies on the token.
func TestMLDSAInterop(t *testing.T) {
	t.Parallel()
	pub, priv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65)
	var cpub mldsa65.PublicKey
	if err := cpub.UnmarshalBinary(pub.attrs[ck.CKA_VALUE]); err != nil {
		t.Fatal(err)
	}
	msg, ctx := []byte("interop"), []byte("ctx")
	sig, err := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, sigMech(ck.CKM_ML_DSA, ctx, 0), msg)
	if err != nil || !mldsa65.Verify(&cpub, msg, ctx, sig) {
		t.Fatalf("circl refuses the token's signature: %v", err)
	}
	cp, cs, _ := mldsa65.GenerateKey(nil)
	csig := make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(cs, msg, ctx, true, csig); err != nil {
		t.Fatal(err)
	}
	tokenPub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65, map[uint64][]byte{ck.CKA_VALUE: cp.Bytes()})
	if err := pqcVerify(mechanisms[ck.CKM_ML_DSA], tokenPub, sigMech(ck.CKM_ML_DSA, ctx, 0), msg, csig); err != nil {
		t.Fatalf("the token refuses circl's signature: %v", err)
	}
}

func TestMLKEMRoundTrip(t *testing.T) {
	t.Parallel()
	m := mechanisms[ck.CKM_ML_KEM]
	plain := &wire.Mechanism{Type: ck.CKM_ML_KEM}
	for _, set := range []uint64{ck.CKP_ML_KEM_512, ck.CKP_ML_KEM_768, ck.CKP_ML_KEM_1024} {
		pub, priv := genPQC(t, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, set)
		ct, s1, err := m.Encapsulate(pub, plain)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := m.CiphertextLen(pub); err != nil || n != len(ct) {
			t.Errorf("set %d: ciphertext length %d, said %d (%v)", set, len(ct), n, err)
		}
		s2, err := m.Decapsulate(priv, plain, ct)
		if err != nil || !bytes.Equal(s1, s2) || len(s1) != 32 {
			t.Fatalf("set %d: %v", set, err)
		}
		if _, err := m.Decapsulate(priv, plain, ct[1:]); codeOf(err) != ck.CKR_WRAPPED_KEY_LEN_RANGE {
			t.Errorf("short ciphertext: %v", err)
		}
		if _, _, err := m.Encapsulate(priv, plain); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
			t.Errorf("encapsulate with the private key: %v", err)
		}
		if _, err := m.Decapsulate(pub, plain, ct); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
			t.Errorf("decapsulate with the public key: %v", err)
		}
	}
	// Interop: crypto/mlkem encapsulates to the token's ML-KEM-768 key.
	pub, priv := genPQC(t, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768)
	ek, err := mlkem.NewEncapsulationKey768(pub.attrs[ck.CKA_VALUE])
	if err != nil {
		t.Fatal(err)
	}
	secret, ct := ek.Encapsulate()
	got, err := m.Decapsulate(priv, plain, ct)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("crypto/mlkem's ciphertext: %v", err)
	}
}

// TestSLHDSA signs and verifies with every parameter set, pure and (on
// one set) each pre-hash.
func TestSLHDSA(t *testing.T) {
	t.Parallel()
	for set := uint64(ck.CKP_SLH_DSA_SHA2_128S); set <= ck.CKP_SLH_DSA_SHAKE_256F; set++ {
		t.Run(fmt.Sprint(set), func(t *testing.T) {
			if raceEnabled && set > ck.CKP_SLH_DSA_SHAKE_128F {
				t.Skip("the 192- and 256-bit sets are too slow under the race detector; they run without it")
			}
			t.Parallel()
			pub, priv := genPQC(t, ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKK_SLH_DSA, set)
			other := uint64(ck.CKP_SLH_DSA_SHAKE_128F)
			if set == other {
				other = ck.CKP_SLH_DSA_SHA2_128F
			}
			otherPub, _ := genPQC(t, ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKK_SLH_DSA, uint64(other))
			if set%2 == 1 && set != ck.CKP_SLH_DSA_SHA2_128F {
				// The slow sets: one signature and its checks.
				m := mechanisms[ck.CKM_SLH_DSA]
				sig, err := pqcSign(m, priv, sigMech(ck.CKM_SLH_DSA, []byte("c"), 0), []byte("msg"))
				if err != nil {
					t.Fatal(err)
				}
				if err := pqcVerify(m, pub, sigMech(ck.CKM_SLH_DSA, []byte("c"), 0), []byte("msg"), sig); err != nil {
					t.Fatal(err)
				}
				if err := pqcVerify(m, pub, sigMech(ck.CKM_SLH_DSA, []byte("d"), 0), []byte("msg"), sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
					t.Fatalf("another context: %v", err)
				}
				return
			}
			checkSignatures(t, ck.CKM_SLH_DSA, pub, priv, otherPub)
			if set == ck.CKP_SLH_DSA_SHA2_128F {
				for typ := range slhdsaPreHash {
					checkSignatures(t, typ, pub, priv, otherPub)
					// A pre-hash signature is not a pure one.
					sig, _ := pqcSign(mechanisms[typ], priv, sigMech(typ, nil, 0), []byte("m"))
					if err := pqcVerify(mechanisms[ck.CKM_SLH_DSA], pub, sigMech(ck.CKM_SLH_DSA, nil, 0), []byte("m"), sig); err == nil {
						t.Errorf("%#x: verifies as pure SLH-DSA", typ)
					}
				}
			}
		})
	}
}

// TestPQCSizes: the sizes docs/mechanisms.md gives are the libraries'.
func TestPQCSizes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		kt, set            uint64
		name               string
		pub, priv, sigOrCT int
	}{
		{ck.CKK_ML_KEM, ck.CKP_ML_KEM_512, "ML-KEM-512", 800, 1632, 768},
		{ck.CKK_ML_KEM, ck.CKP_ML_KEM_1024, "ML-KEM-1024", 1568, 3168, 1568},
		{ck.CKK_ML_DSA, ck.CKP_ML_DSA_44, "ML-DSA-44", 1312, 2560, 2420},
		{ck.CKK_ML_DSA, ck.CKP_ML_DSA_87, "ML-DSA-87", 2592, 4896, 4627},
		{ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128S, "SLH-DSA-SHA2-128s", 32, 64, 7856},
		{ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHAKE_256F, "SLH-DSA-SHAKE-256f", 64, 128, 49856},
	} {
		name, pub, priv, out, ok := PQCSizes(pqcKey(t, ck.CKO_PUBLIC_KEY, tc.kt, tc.set, nil))
		if !ok || name != tc.name || pub != tc.pub || priv != tc.priv || out != tc.sigOrCT {
			t.Errorf("%s: %q %d %d %d %v", tc.name, name, pub, priv, out, ok)
		}
	}
	if _, _, _, _, ok := PQCSizes(pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, 9, nil)); ok {
		t.Error("an unknown set has sizes")
	}
}

// TestPQCPublicKeyInfo: the SubjectPublicKeyInfo of an ML-DSA key is
// Wycheproof's publicKeyDer byte for byte; a private key's is its public
// key's; an ML-KEM one carries a key crypto/mlkem takes.
func TestPQCPublicKeyInfo(t *testing.T) {
	t.Parallel()
	for size, set := range mldsaFileSets {
		var v struct {
			TestGroups []struct {
				PublicKey    hexField `json:"publicKey"`
				PublicKeyDer hexField `json:"publicKeyDer"`
			} `json:"testGroups"`
		}
		if err := json.Unmarshal(mechtest.WycheproofFile(t, "mldsa_"+size+"_verify_test.json"), &v); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range v.TestGroups {
			pub := pqcKey(t, ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_VALUE: g.PublicKey})
			if len(g.PublicKeyDer) == 0 || CompletePQCKey(ck.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, pub.attrs) != nil {
				continue
			}
			der, err := PublicKeyInfo(pub)
			if err != nil || !bytes.Equal(der, g.PublicKeyDer) {
				t.Errorf("ML-DSA-%s: %x, %v", size, der, err)
			}
			n++
		}
		if n == 0 {
			t.Fatalf("ML-DSA-%s: no key", size)
		}
	}
	for _, tc := range []struct{ gen, kt, set uint64 }{
		{ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_87},
		{ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768},
		{ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHAKE_128F},
	} {
		pub, priv := genPQC(t, tc.gen, tc.kt, tc.set)
		d1, err1 := PublicKeyInfo(pub)
		d2, err2 := PublicKeyInfo(priv)
		if err1 != nil || err2 != nil || !bytes.Equal(d1, d2) {
			t.Errorf("%#x: the private key's public key differs: %v %v", tc.kt, err1, err2)
		}
		var spki struct {
			Algorithm struct{ OID asn1.ObjectIdentifier }
			PublicKey asn1.BitString
		}
		if rest, err := asn1.Unmarshal(d1, &spki); err != nil || len(rest) > 0 {
			t.Fatal(err)
		}
		if tc.kt == ck.CKK_ML_KEM {
			if !spki.Algorithm.OID.Equal(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 2}) {
				t.Errorf("ML-KEM-768 OID %v", spki.Algorithm.OID)
			}
			if _, err := mlkem.NewEncapsulationKey768(spki.PublicKey.Bytes); err != nil {
				t.Errorf("crypto/mlkem refuses the key: %v", err)
			}
		}
		if tc.kt == ck.CKK_SLH_DSA && !spki.Algorithm.OID.Equal(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 27}) {
			t.Errorf("SLH-DSA-SHAKE-128f OID %v", spki.Algorithm.OID)
		}
	}
}
