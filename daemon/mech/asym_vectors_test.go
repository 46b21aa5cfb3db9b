package mech

import (
	"bytes"
	"crypto/elliptic"
	"math/big"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// The public-key mechanisms against outside references: Wycheproof's
// vectors, run in process through the mechanism table (the constructors
// the engine calls), and openssl on the token's signatures.
//
// The vectors come from the test-only requirement github.com/c2sp/wycheproof
// (its go.mod declares the lower-case path), read where the module cache
// holds it.

// vecOutcome checks an operation's outcome against a vector's result;
// "acceptable" may go either way.
func vecOutcome(t *testing.T, file string, tc mechtest.Test, ok bool, err error) {
	t.Helper()
	switch {
	case tc.Result == "valid" && !ok:
		t.Errorf("%s #%d: valid, refused: %v", file, tc.TcID, err)
	case tc.Result == "invalid" && ok:
		t.Errorf("%s #%d: invalid, accepted", file, tc.TcID)
	}
}

// verifyOnce runs one verification through a mechanism's constructor.
func verifyOnce(k Key, m *wire.Mechanism, msg, sig []byte) error {
	op, err := mechanisms[m.Type].verify(k, m)
	if err != nil {
		return err
	}
	if err := op.Update(msg); err != nil {
		return err
	}
	return op.Verify(sig)
}

// wpHashes name the hashes Wycheproof uses: the digest mechanism, the
// hash-and-sign ECDSA and PSS mechanisms, and MGF1 over it.
var wpHashes = map[string]struct{ digest, ecdsa, pss, mgf uint64 }{
	"SHA-1":   {digest: ck.CKM_SHA_1, ecdsa: ck.CKM_ECDSA_SHA1, pss: ck.CKM_SHA1_RSA_PKCS_PSS, mgf: ck.CKG_MGF1_SHA1},
	"SHA-224": {digest: ck.CKM_SHA224, ecdsa: ck.CKM_ECDSA_SHA224, pss: ck.CKM_SHA224_RSA_PKCS_PSS, mgf: ck.CKG_MGF1_SHA224},
	"SHA-256": {digest: ck.CKM_SHA256, ecdsa: ck.CKM_ECDSA_SHA256, pss: ck.CKM_SHA256_RSA_PKCS_PSS, mgf: ck.CKG_MGF1_SHA256},
	"SHA-384": {digest: ck.CKM_SHA384, ecdsa: ck.CKM_ECDSA_SHA384, pss: ck.CKM_SHA384_RSA_PKCS_PSS, mgf: ck.CKG_MGF1_SHA384},
	"SHA-512": {digest: ck.CKM_SHA512, ecdsa: ck.CKM_ECDSA_SHA512, pss: ck.CKM_SHA512_RSA_PKCS_PSS, mgf: ck.CKG_MGF1_SHA512},
}

func TestWycheproofECDSA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file   string
		params []byte
		curve  elliptic.Curve
	}{
		{file: "ecdsa_secp256r1_sha256_p1363_test.json", params: ECParams("P-256"), curve: elliptic.P256()},
		{file: "ecdsa_secp384r1_sha384_p1363_test.json", params: oidDER(oidP384), curve: elliptic.P384()},
		{file: "ecdsa_secp521r1_sha512_p1363_test.json", params: oidDER(oidP521), curve: elliptic.P521()},
	} {
		v := mechtest.Wycheproof(t, tc.file)
		n := 0
		for _, g := range v.TestGroups {
			hs, ok := wpHashes[g.Sha]
			if !ok {
				t.Fatalf("%s: hash %s", tc.file, g.Sha)
			}
			k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC, map[uint64][]byte{
				ck.CKA_EC_PARAMS: tc.params, ck.CKA_EC_POINT: pointDER(g.PublicKey.Uncompressed),
			})
			m := &wire.Mechanism{Type: hs.ecdsa}
			// P-256 keys verify through OpenSSL, then again with the
			// key's table (ecverify.go): each way must give every answer.
			for pass := range 2 {
				if pass == 1 {
					v, err := ecVerifyKeyOf(k, tc.curve)
					if err != nil || v == nil || !v.table {
						break
					}
					if err := v.key.Precompute(); err != nil || !v.key.Precomputed() {
						t.Fatalf("%s: no table: %v", tc.file, err)
					}
				}
				for _, vt := range g.Tests {
					err := verifyOnce(k, m, vt.Msg, vt.Sig)
					if err != nil {
						if c, _ := ck.RVOf(err); c != ck.CKR_SIGNATURE_INVALID && c != ck.CKR_SIGNATURE_LEN_RANGE {
							t.Errorf("%s #%d: %v", tc.file, vt.TcID, err)
						}
					}
					vecOutcome(t, tc.file, vt, err == nil, err)
					n++
				}
			}
		}
		t.Logf("%s: %d vectors", tc.file, n)
	}
}

func TestWycheproofEdDSA(t *testing.T) {
	t.Parallel()
	const file = "ed25519_test.json"
	v := mechtest.Wycheproof(t, file)
	for _, g := range v.TestGroups {
		k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC_EDWARDS, map[uint64][]byte{
			ck.CKA_EC_PARAMS: oidDER(oidEd25519), ck.CKA_EC_POINT: pointDER(g.PublicKey.Pk),
		})
		for _, vt := range g.Tests {
			err := verifyOnce(k, &wire.Mechanism{Type: ck.CKM_EDDSA}, vt.Msg, vt.Sig)
			vecOutcome(t, file, vt, err == nil, err)
		}
	}
}

func TestWycheproofRSAPSS(t *testing.T) {
	t.Parallel()
	refused, run := 0, 0
	for _, file := range []string{
		"rsa_pss_2048_sha1_mgf1_20_test.json",
		"rsa_pss_2048_sha256_mgf1_0_test.json",
		"rsa_pss_2048_sha256_mgf1_32_test.json",
		"rsa_pss_2048_sha384_mgf1_48_test.json",
		"rsa_pss_2048_sha256_mgf1sha1_20_test.json",
		"rsa_pss_misc_test.json",
	} {
		v := mechtest.Wycheproof(t, file)
		for _, g := range v.TestGroups {
			hs, ok := wpHashes[g.Sha]
			mg, mok := wpHashes[g.MgfSha]
			if !ok || !mok || g.Mgf != "MGF1" {
				t.Fatalf("%s: %s with %s over %s", file, g.Sha, g.Mgf, g.MgfSha)
			}
			k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_RSA, map[uint64][]byte{
				ck.CKA_MODULUS: g.PublicKey.Modulus, ck.CKA_PUBLIC_EXPONENT: g.PublicKey.PublicExponent,
			})
			m := &wire.Mechanism{Type: hs.pss, Present: true, Param: wire.PSSParams{HashAlg: hs.digest, MGF: mg.mgf, SaltLen: g.SLen}.Param()}
			if _, err := mechanisms[m.Type].verify(k, m); hs.mgf != mg.mgf {
				// MGF1 over another hash than the signature's: crypto/rsa
				// has none, and the mechanism says so at Init.
				if c, _ := ck.RVOf(err); c != ck.CKR_MECHANISM_PARAM_INVALID {
					t.Errorf("%s: %s with MGF1-%s: %v", file, g.Sha, g.MgfSha, err)
				}
				refused += len(g.Tests)
				continue
			}
			for _, vt := range g.Tests {
				err := verifyOnce(k, m, vt.Msg, vt.Sig)
				vecOutcome(t, file, vt, err == nil, err)
				run++
			}
		}
	}
	t.Logf("%d vectors run, %d refused at Init (MGF1 over another hash)", run, refused)
}

func TestWycheproofRSAOAEP(t *testing.T) {
	t.Parallel()
	skipped, big8k, run := 0, 0, 0
	for _, file := range []string{
		"rsa_oaep_2048_sha1_mgf1sha1_test.json",
		"rsa_oaep_2048_sha256_mgf1sha256_test.json",
		"rsa_oaep_2048_sha256_mgf1sha1_test.json",
		"rsa_oaep_2048_sha384_mgf1sha1_test.json",
		"rsa_oaep_2048_sha512_mgf1sha512_test.json",
		"rsa_oaep_misc_test.json",
	} {
		v := mechtest.Wycheproof(t, file)
		for _, g := range v.TestGroups {
			hs, ok := wpHashes[g.Sha]
			mg, mok := wpHashes[g.MgfSha]
			pk := g.PrivateKey
			if !ok || !mok {
				skipped += len(g.Tests)
				continue
			}
			if n := new(big.Int).SetBytes(pk.Modulus).BitLen(); n > 4096 {
				// 8192-bit keys cost a quarter second a vector (half of it
				// parsing the key), more under the race detector.
				big8k += len(g.Tests)
				continue
			}
			k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_RSA, map[uint64][]byte{
				ck.CKA_MODULUS: pk.Modulus, ck.CKA_PUBLIC_EXPONENT: pk.PublicExponent, ck.CKA_PRIVATE_EXPONENT: pk.PrivateExponent,
				ck.CKA_PRIME_1: pk.Prime1, ck.CKA_PRIME_2: pk.Prime2, ck.CKA_EXPONENT_1: pk.Exponent1, ck.CKA_EXPONENT_2: pk.Exponent2,
				ck.CKA_COEFFICIENT: pk.Coefficient,
			})
			for _, vt := range g.Tests {
				p := wire.OAEPParams{HashAlg: hs.digest, MGF: mg.mgf, Source: ck.CKZ_DATA_SPECIFIED, SourceData: vt.Label}
				m := &wire.Mechanism{Type: ck.CKM_RSA_PKCS_OAEP, Present: true, Param: p.Param()}
				table := mechanisms
				if new(big.Int).SetBytes(pk.Modulus).BitLen() < rsaMinBits {
					table = legacyMechanisms // 1024-bit keys
				}
				op, err := table[m.Type].decrypt(k, m)
				if err != nil {
					t.Fatalf("%s #%d: %v", file, vt.TcID, err)
				}
				out, err := op.(OneShot).One(vt.CT)
				if err != nil {
					if c, _ := ck.RVOf(err); c != ck.CKR_ENCRYPTED_DATA_INVALID && c != ck.CKR_ENCRYPTED_DATA_LEN_RANGE {
						t.Errorf("%s #%d: %v", file, vt.TcID, err)
					}
				}
				if err == nil && !bytes.Equal(out, vt.Msg) {
					t.Errorf("%s #%d: decrypts to %x, want %x", file, vt.TcID, out, vt.Msg)
				}
				vecOutcome(t, file, vt, err == nil, err)
				run++
			}
		}
	}
	t.Logf("%d vectors run; skipped: %d of SHA-512/224 or SHA-512/256, %d of 8192-bit keys", run, skipped, big8k)
}

func TestWycheproofECDH(t *testing.T) {
	t.Parallel()
	const file = "ecdh_secp256r1_ecpoint_test.json"
	v := mechtest.Wycheproof(t, file)
	for _, g := range v.TestGroups {
		for _, vt := range g.Tests {
			d := bytes.TrimLeft(vt.Private, "\x00")
			k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_EC, map[uint64][]byte{ck.CKA_EC_PARAMS: ECParams("P-256"), ck.CKA_VALUE: d})
			derive := func(public []byte) ([]byte, error) {
				p := wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: public}
				return mechanisms[ck.CKM_ECDH1_DERIVE].derive(k, &wire.Mechanism{Type: ck.CKM_ECDH1_DERIVE, Present: true, Param: p.Param()}, 0)
			}
			z, err := derive(vt.Public)
			if err == nil && !bytes.Equal(z, vt.Shared) {
				t.Errorf("%s #%d: %x, want %x", file, vt.TcID, z, vt.Shared)
			}
			vecOutcome(t, file, vt, err == nil, err)
			// The same point in its DER OCTET STRING.
			if vt.Result == "valid" {
				if z2, err := derive(pointDER(vt.Public)); err != nil || !bytes.Equal(z2, z) {
					t.Errorf("%s #%d: DER point: %x, %v", file, vt.TcID, z2, err)
				}
			}
		}
	}
}
