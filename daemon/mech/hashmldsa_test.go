package mech

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"fmt"
	"maps"
	"slices"
	"testing"

	"filippo.io/mldsa"
	"filippo.io/mldsa/mldsacrypto"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// HashML-DSA signing (hashmldsa.go) against what the tests compute
// themselves: Wycheproof's μ and signatures check the external-μ path and
// the token's μ; filippo.io/mldsa's own pure signing cross-checks it; and
// each HashML-DSA signature is the one filippo.io/mldsa makes over a μ the
// test builds from FIPS 204's formula, OIDs written out.

// TestMLDSAWycheproofMu: for Wycheproof's seed-form vectors, the token's
// μ of pure ML-DSA (M' = 0 ‖ |ctx| ‖ ctx ‖ M) is the file's, and the
// deterministic external-μ signature of the file's μ is the file's
// signature, byte for byte; vectors given μ alone (FIPS 204's internal
// interface) sign too.
func TestMLDSAWycheproofMu(t *testing.T) {
	t.Parallel()
	for size, set := range mldsaFileSets {
		t.Run(size, func(t *testing.T) {
			t.Parallel()
			v := loadPQC(t, "mldsa_"+size+"_sign_seed_test.json")
			mus, sigs, refused := 0, 0, 0
			for _, g := range v.TestGroups {
				priv := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, set, map[uint64][]byte{ck.CKA_SEED: g.PrivateSeed})
				key, err := mldsaSeeded(priv)
				if err != nil {
					// A seed of the wrong length: no vector of its group
					// may sign.
					for _, tc := range g.Tests {
						if tc.Result == "valid" {
							t.Errorf("tc %d: the key was refused: %v", tc.TcID, err)
						}
					}
					refused++
					continue
				}
				if !bytes.Equal(key.sk.PublicKey().Bytes(), g.PublicKey) {
					t.Fatal("filippo.io/mldsa's public key is not the file's")
				}
				tr := mldsaTR(g.PublicKey)
				for _, tc := range g.Tests {
					if tc.Mu == nil {
						continue
					}
					if tc.Msg != nil {
						var ctx []byte
						if tc.Ctx != nil {
							ctx = *tc.Ctx
						}
						if len(ctx) > 255 {
							continue // no μ to compute: signContext refuses it
						}
						if mu := mldsaMu(tr, 0, ctx, nil, *tc.Msg); !bytes.Equal(mu, *tc.Mu) {
							t.Errorf("tc %d: μ differs", tc.TcID)
						}
						mus++
					}
					if tc.Rnd != nil || tc.Result != "valid" {
						continue // hedged with the file's rnd, which no API takes
					}
					sig, err := key.signMu(*tc.Mu, true)
					if err != nil || !bytes.Equal(sig, tc.Sig) {
						t.Errorf("tc %d: external-μ signature differs (%v)", tc.TcID, err)
					}
					sigs++
				}
			}
			// Each file has 3 groups of seeds of the wrong length (0, 31
			// and 33 bytes).
			if mus < 20 || sigs < 20 || refused != 3 {
				t.Fatalf("checked %d μ, %d signatures; refused %d keys", mus, sigs, refused)
			}
		})
	}
}

// TestMLDSAExternalMuCrossCheck: the external-μ path, fed the μ of pure
// ML-DSA's M' = 0 ‖ |ctx| ‖ ctx ‖ M, signs as filippo.io/mldsa's pure
// SignDeterministic with that context does, and as the token's
// CKM_ML_DSA (circl) does deterministically with the same seed.
func TestMLDSAExternalMuCrossCheck(t *testing.T) {
	t.Parallel()
	for _, set := range []uint64{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87} {
		t.Run(fmt.Sprint(set), func(t *testing.T) {
			t.Parallel()
			_, priv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, set)
			key, err := mldsaSeeded(priv)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ ctx, msg []byte }{
				{nil, []byte("m")},
				{[]byte("context"), []byte("the message")},
				{bytes.Repeat([]byte{7}, 255), nil},
			} {
				pure, err := key.sk.SignDeterministic(c.msg, &mldsa.Options{Context: string(c.ctx)})
				if err != nil {
					t.Fatal(err)
				}
				viaMu, err := key.signMu(mldsaMu(key.tr, 0, c.ctx, nil, c.msg), true)
				if err != nil || !bytes.Equal(viaMu, pure) {
					t.Errorf("ctx %d bytes: the external-μ signature is not the pure one (%v)", len(c.ctx), err)
				}
				circl, err := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, sigMech(ck.CKM_ML_DSA, c.ctx, ck.CKH_DETERMINISTIC_REQUIRED), c.msg)
				if err != nil || !bytes.Equal(circl, pure) {
					t.Errorf("ctx %d bytes: CKM_ML_DSA's signature is not filippo.io/mldsa's (%v)", len(c.ctx), err)
				}
			}
		})
	}
}

// hashMLDSAVariants are the hash-specific mechanisms as the test knows
// them: the digest mechanism naming the same hash (0 for the XOFs), the
// hash itself, and the DER of its OID (NIST CSOR hashAlgs,
// 2.16.840.1.101.3.4.2.n), as FIPS 204 §5.4.1 writes them into M'.
var hashMLDSAVariants = []struct {
	mech, digest uint64
	hash         func([]byte) []byte
	oid          string
}{
	{ck.CKM_HASH_ML_DSA_SHA224, ck.CKM_SHA224, func(b []byte) []byte { h := sha256.Sum224(b); return h[:] }, "0609608648016503040204"},
	{ck.CKM_HASH_ML_DSA_SHA256, ck.CKM_SHA256, func(b []byte) []byte { h := sha256.Sum256(b); return h[:] }, "0609608648016503040201"},
	{ck.CKM_HASH_ML_DSA_SHA384, ck.CKM_SHA384, func(b []byte) []byte { h := sha512.Sum384(b); return h[:] }, "0609608648016503040202"},
	{ck.CKM_HASH_ML_DSA_SHA512, ck.CKM_SHA512, func(b []byte) []byte { h := sha512.Sum512(b); return h[:] }, "0609608648016503040203"},
	{ck.CKM_HASH_ML_DSA_SHA3_224, ck.CKM_SHA3_224, func(b []byte) []byte { h := sha3.Sum224(b); return h[:] }, "0609608648016503040207"},
	{ck.CKM_HASH_ML_DSA_SHA3_256, ck.CKM_SHA3_256, func(b []byte) []byte { h := sha3.Sum256(b); return h[:] }, "0609608648016503040208"},
	{ck.CKM_HASH_ML_DSA_SHA3_384, ck.CKM_SHA3_384, func(b []byte) []byte { h := sha3.Sum384(b); return h[:] }, "0609608648016503040209"},
	{ck.CKM_HASH_ML_DSA_SHA3_512, ck.CKM_SHA3_512, func(b []byte) []byte { h := sha3.Sum512(b); return h[:] }, "060960864801650304020a"},
	{ck.CKM_HASH_ML_DSA_SHAKE128, 0, func(b []byte) []byte { return sha3.SumSHAKE128(b, 32) }, "060960864801650304020b"},
	{ck.CKM_HASH_ML_DSA_SHAKE256, 0, func(b []byte) []byte { return sha3.SumSHAKE256(b, 64) }, "060960864801650304020c"},
	// Named only through CKM_HASH_ML_DSA's parameter.
	{0, ck.CKM_SHA512_224, func(b []byte) []byte { h := sha512.Sum512_224(b); return h[:] }, "0609608648016503040205"},
	{0, ck.CKM_SHA512_256, func(b []byte) []byte { h := sha512.Sum512_256(b); return h[:] }, "0609608648016503040206"},
}

// hashSigMech is CKM_HASH_ML_DSA with its CK_HASH_SIGN_ADDITIONAL_CONTEXT.
func hashSigMech(hash uint64, ctx []byte, hedge uint64) *wire.Mechanism {
	p := wire.HashSignContext{SignContext: wire.SignContext{HedgeVariant: hedge, Context: ctx}, Hash: hash}
	return &wire.Mechanism{Type: ck.CKM_HASH_ML_DSA, Present: true, Param: p.Param()}
}

// testHashMLDSAMu is FIPS 204 Algorithm 4's μ, computed here apart from
// the token's: tr = SHAKE256(pk, 64), M' = 1 ‖ |ctx| ‖ ctx ‖ OID ‖ PH(M),
// μ = SHAKE256(tr ‖ M', 64).
func testHashMLDSAMu(pk, ctx []byte, oid string, phm []byte) []byte {
	tr := sha3.SumSHAKE256(pk, 64)
	mp := append([]byte{1, byte(len(ctx))}, ctx...)
	mp = append(mp, mechtest.Hex(oid)...)
	mp = append(mp, phm...)
	return sha3.SumSHAKE256(append(tr, mp...), 64)
}

// TestHashMLDSA signs HashML-DSA with every hash and parameter set:
// deterministic signatures are filippo.io/mldsa's over the test's own μ,
// whole and in parts; CKM_HASH_ML_DSA over a digest signs as the
// hash-specific mechanism over the message; and the refusals have their
// CK_RVs.
func TestHashMLDSA(t *testing.T) {
	t.Parallel()
	for _, set := range []uint64{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87} {
		t.Run(fmt.Sprint(set), func(t *testing.T) {
			t.Parallel()
			pub, priv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, set)
			pk := pub.attrs[ck.CKA_VALUE] // circl's encoding, from the token
			ref, err := mldsa.NewPrivateKey(mldsaParams[set], priv.attrs[ck.CKA_SEED])
			if err != nil {
				t.Fatal(err)
			}
			msg, ctx := []byte("a message to pre-hash"), []byte("hash context")
			for _, v := range hashMLDSAVariants {
				phm := v.hash(msg)
				want, err := ref.SignDeterministic(testHashMLDSAMu(pk, ctx, v.oid, phm), mldsacrypto.MLDSAMu)
				if err != nil {
					t.Fatal(err)
				}
				if v.mech != 0 {
					m := mechanisms[v.mech]
					p := sigMech(v.mech, ctx, ck.CKH_DETERMINISTIC_REQUIRED)
					sig, err := pqcSign(m, priv, p, msg)
					if err != nil || !bytes.Equal(sig, want) {
						t.Errorf("%#x: signature differs (%v)", v.mech, err)
					}
					// In parts, the hash streaming.
					op, err := m.Sign(priv, p)
					if err != nil {
						t.Fatal(err)
					}
					for _, part := range [][]byte{msg[:1], nil, msg[1:9], msg[9:]} {
						if err := op.Update(part); err != nil {
							t.Fatal(err)
						}
					}
					if sig, err := op.Sign(); err != nil || !bytes.Equal(sig, want) {
						t.Errorf("%#x in parts: signature differs (%v)", v.mech, err)
					}
					// No context: M' has |ctx| = 0.
					want0, _ := ref.SignDeterministic(testHashMLDSAMu(pk, nil, v.oid, phm), mldsacrypto.MLDSAMu)
					if sig, err := pqcSign(m, priv, sigMech(v.mech, nil, ck.CKH_DETERMINISTIC_REQUIRED), msg); err != nil || !bytes.Equal(sig, want0) {
						t.Errorf("%#x, no context: signature differs (%v)", v.mech, err)
					}
				}
				if v.digest == 0 {
					continue // SHAKE has no digest mechanism to name it by
				}
				// The digest computed elsewhere signs the same.
				g := mechanisms[ck.CKM_HASH_ML_DSA]
				sig, err := pqcSign(g, priv, hashSigMech(v.digest, ctx, ck.CKH_DETERMINISTIC_REQUIRED), phm)
				if err != nil || !bytes.Equal(sig, want) {
					t.Errorf("CKM_HASH_ML_DSA hash %#x: signature differs (%v)", v.digest, err)
				}
				for _, bad := range [][]byte{phm[1:], append(bytes.Clone(phm), 0), nil} {
					if _, err := pqcSign(g, priv, hashSigMech(v.digest, ctx, 0), bad); codeOf(err) != ck.CKR_DATA_LEN_RANGE {
						t.Errorf("CKM_HASH_ML_DSA hash %#x, a %d-byte digest: %v", v.digest, len(bad), err)
					}
				}
			}
		})
	}
}

// TestHashMLDSAHedgedAndRefused: hedged signatures differ from run to
// run, the deterministic one repeats, and what cannot be signed is
// refused with its CK_RV; no HashML-DSA mechanism verifies.
func TestHashMLDSAHedgedAndRefused(t *testing.T) {
	t.Parallel()
	pub, priv := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_44)
	msg := []byte("m")
	digest := sha256.Sum256(msg)
	for _, typ := range append([]uint64{ck.CKM_HASH_ML_DSA}, slices.Collect(maps.Keys(mldsaPHByMech))...) {
		m := mechanisms[typ]
		params := func(ctx []byte, hedge uint64) *wire.Mechanism {
			if typ == ck.CKM_HASH_ML_DSA {
				return hashSigMech(ck.CKM_SHA256, ctx, hedge)
			}
			return sigMech(typ, ctx, hedge)
		}
		input := msg
		if typ == ck.CKM_HASH_ML_DSA {
			input = digest[:]
		}
		var hedged [][]byte
		for _, p := range []*wire.Mechanism{params(nil, ck.CKH_HEDGE_REQUIRED), params(nil, ck.CKH_HEDGE_REQUIRED), params(nil, ck.CKH_HEDGE_PREFERRED)} {
			sig, err := pqcSign(m, priv, p, input)
			if err != nil {
				t.Fatalf("%#x: %v", typ, err)
			}
			for _, other := range hedged {
				if bytes.Equal(sig, other) {
					t.Errorf("%#x: hedged signatures repeat", typ)
				}
			}
			hedged = append(hedged, sig)
		}
		d1, err1 := pqcSign(m, priv, params(nil, ck.CKH_DETERMINISTIC_REQUIRED), input)
		d2, err2 := pqcSign(m, priv, params(nil, ck.CKH_DETERMINISTIC_REQUIRED), input)
		if err1 != nil || err2 != nil || !bytes.Equal(d1, d2) || len(d1) != mldsaSets[ck.CKP_ML_DSA_44].sigLen {
			t.Errorf("%#x: deterministic: %v %v", typ, err1, err2)
		}
		// A HashML-DSA signature is not a pure ML-DSA one.
		if err := pqcVerify(mechanisms[ck.CKM_ML_DSA], pub, sigMech(ck.CKM_ML_DSA, nil, 0), input, d1); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("%#x: verifies as pure ML-DSA: %v", typ, err)
		}

		// Sign only.
		if i := m.Info(); i.Flags&ck.CKF_SIGN == 0 || i.Flags&(ck.CKF_VERIFY|ck.CKF_MESSAGE_VERIFY) != 0 {
			t.Errorf("%#x: flags %#x", typ, i.Flags)
		}
		if _, err := m.Verify(pub, params(nil, 0)); codeOf(err) != ck.CKR_MECHANISM_INVALID {
			t.Errorf("%#x: verify: %v", typ, err)
		}
		_, single := any(mustSign(t, m, priv, params(nil, 0))).(SinglePartOnly)
		if single != (typ == ck.CKM_HASH_ML_DSA) || (m.Info().Flags&ck.CKF_MULTI_MESSAGE != 0) == single {
			t.Errorf("%#x: single-part %v, flags %#x", typ, single, m.Info().Flags)
		}

		// Parameters and keys refused.
		if _, err := m.Sign(priv, params(make([]byte, 256), 0)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%#x: 256-byte context: %v", typ, err)
		}
		if _, err := m.Sign(priv, params(nil, 3)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%#x: unknown hedge: %v", typ, err)
		}
		if _, err := m.Sign(pub, params(nil, 0)); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
			t.Errorf("%#x: the public key: %v", typ, err)
		}
		// A key without its seed: filippo.io/mldsa cannot make it, though
		// CKM_ML_DSA (circl) signs with it.
		byValue := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, ck.CKP_ML_DSA_44, map[uint64][]byte{ck.CKA_VALUE: priv.attrs[ck.CKA_VALUE]})
		if _, err := m.Sign(byValue, params(nil, 0)); codeOf(err) != ck.CKR_KEY_FUNCTION_NOT_PERMITTED {
			t.Errorf("%#x: a key without its seed: %v", typ, err)
		}
		if _, err := pqcSign(mechanisms[ck.CKM_ML_DSA], byValue, &wire.Mechanism{Type: ck.CKM_ML_DSA}, msg); err != nil {
			t.Errorf("CKM_ML_DSA, a key without its seed: %v", err)
		}
		// Seed and value of different keys.
		_, other := genPQC(t, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_44)
		mixed := pqcKey(t, ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, ck.CKP_ML_DSA_44, map[uint64][]byte{
			ck.CKA_SEED: priv.attrs[ck.CKA_SEED], ck.CKA_VALUE: other.attrs[ck.CKA_VALUE]})
		if _, err := m.Sign(mixed, params(nil, 0)); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
			t.Errorf("%#x: seed and value of different keys: %v", typ, err)
		}
	}

	// CKM_HASH_ML_DSA needs its parameter, of its type, naming a hash it
	// takes.
	g := mechanisms[ck.CKM_HASH_ML_DSA]
	for name, p := range map[string]*wire.Mechanism{
		"no parameter":               {Type: ck.CKM_HASH_ML_DSA},
		"CK_SIGN_ADDITIONAL_CONTEXT": sigMech(ck.CKM_HASH_ML_DSA, []byte("c"), ck.CKH_HEDGE_REQUIRED),
		"SHA-1":                      hashSigMech(ck.CKM_SHA_1, nil, 0),
		"MD5":                        hashSigMech(ck.CKM_MD5, nil, 0),
		"a HashML-DSA mechanism":     hashSigMech(ck.CKM_HASH_ML_DSA_SHAKE128, nil, 0),
	} {
		if _, err := g.Sign(priv, p); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("CKM_HASH_ML_DSA, %s: %v", name, err)
		}
	}
}

func mustSign(t *testing.T, m *Mechanism, k Key, p *wire.Mechanism) SignOp {
	t.Helper()
	op, err := m.Sign(k, p)
	if err != nil {
		t.Fatal(err)
	}
	return op
}
