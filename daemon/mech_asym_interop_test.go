package daemon

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"maps"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The public-key mechanisms against outside references: Wycheproof's
// vectors, run in process through the mechanism table (the constructors
// the engine calls), and openssl on the token's signatures.
//
// The vectors come from the test-only requirement github.com/c2sp/wycheproof
// (its go.mod declares the lower-case path), read where the module cache
// holds it.

// vecHex is a Wycheproof hex string.
type vecHex []byte

func (h *vecHex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

type asymVectors struct {
	NumberOfTests int          `json:"numberOfTests"`
	TestGroups    []asymVGroup `json:"testGroups"`
}

type asymVGroup struct {
	Sha       string `json:"sha"`
	Mgf       string `json:"mgf"`
	MgfSha    string `json:"mgfSha"`
	SLen      uint64 `json:"sLen"`
	PublicKey struct {
		Modulus        vecHex `json:"modulus"`
		PublicExponent vecHex `json:"publicExponent"`
		Uncompressed   vecHex `json:"uncompressed"`
		Pk             vecHex `json:"pk"`
	} `json:"publicKey"`
	PrivateKey struct {
		Modulus         vecHex `json:"modulus"`
		PublicExponent  vecHex `json:"publicExponent"`
		PrivateExponent vecHex `json:"privateExponent"`
		Prime1          vecHex `json:"prime1"`
		Prime2          vecHex `json:"prime2"`
		Exponent1       vecHex `json:"exponent1"`
		Exponent2       vecHex `json:"exponent2"`
		Coefficient     vecHex `json:"coefficient"`
	} `json:"privateKey"`
	Tests []asymVTest `json:"tests"`
}

type asymVTest struct {
	TcID    int    `json:"tcId"`
	Result  string `json:"result"` // valid, invalid or acceptable
	Msg     vecHex `json:"msg"`
	Sig     vecHex `json:"sig"`
	CT      vecHex `json:"ct"`
	Label   vecHex `json:"label"`
	Public  vecHex `json:"public"`
	Private vecHex `json:"private"`
	Shared  vecHex `json:"shared"`
}

// loadAsymVectors reads a file of the Wycheproof module's testvectors_v1.
func loadAsymVectors(t testing.TB, name string) *asymVectors {
	t.Helper()
	b := wycheproofFile(t, name)
	var v asymVectors
	if err := json.Unmarshal(b, &v); err != nil {
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

// testKeyObject is a key object as the engine hands it to a mechanism.
func testKeyObject(t testing.TB, class, kt uint64, attrs map[uint64][]byte) *key {
	t.Helper()
	m := maps.Clone(attrs)
	m[ck.CKA_CLASS] = ulong(class)
	m[ck.CKA_KEY_TYPE] = ulong(kt)
	o, err := split(m, class, kt)
	if err != nil {
		t.Fatal(err)
	}
	return newKey(o)
}

// vecOutcome checks an operation's outcome against a vector's result;
// "acceptable" may go either way.
func vecOutcome(t *testing.T, file string, tc asymVTest, ok bool, err error) {
	t.Helper()
	switch {
	case tc.Result == "valid" && !ok:
		t.Errorf("%s #%d: valid, refused: %v", file, tc.TcID, err)
	case tc.Result == "invalid" && ok:
		t.Errorf("%s #%d: invalid, accepted", file, tc.TcID)
	}
}

// verifyOnce runs one verification through a mechanism's constructor.
func verifyOnce(k *key, m *wire.Mechanism, msg, sig []byte) error {
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
	"SHA-1":   {ck.CKM_SHA_1, ck.CKM_ECDSA_SHA1, ck.CKM_SHA1_RSA_PKCS_PSS, ck.CKG_MGF1_SHA1},
	"SHA-224": {ck.CKM_SHA224, ck.CKM_ECDSA_SHA224, ck.CKM_SHA224_RSA_PKCS_PSS, ck.CKG_MGF1_SHA224},
	"SHA-256": {ck.CKM_SHA256, ck.CKM_ECDSA_SHA256, ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKG_MGF1_SHA256},
	"SHA-384": {ck.CKM_SHA384, ck.CKM_ECDSA_SHA384, ck.CKM_SHA384_RSA_PKCS_PSS, ck.CKG_MGF1_SHA384},
	"SHA-512": {ck.CKM_SHA512, ck.CKM_ECDSA_SHA512, ck.CKM_SHA512_RSA_PKCS_PSS, ck.CKG_MGF1_SHA512},
}

func TestWycheproofECDSA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file   string
		params []byte
	}{
		{"ecdsa_secp256r1_sha256_p1363_test.json", oidDER(oidP256)},
		{"ecdsa_secp384r1_sha384_p1363_test.json", oidDER(oidP384)},
		{"ecdsa_secp521r1_sha512_p1363_test.json", oidDER(oidP521)},
	} {
		v := loadAsymVectors(t, tc.file)
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
			for _, vt := range g.Tests {
				err := verifyOnce(k, m, vt.Msg, vt.Sig)
				if err != nil {
					if c, _ := rvOf(err); c != ck.CKR_SIGNATURE_INVALID && c != ck.CKR_SIGNATURE_LEN_RANGE {
						t.Errorf("%s #%d: %v", tc.file, vt.TcID, err)
					}
				}
				vecOutcome(t, tc.file, vt, err == nil, err)
				n++
			}
		}
		t.Logf("%s: %d vectors", tc.file, n)
	}
}

func TestWycheproofEdDSA(t *testing.T) {
	t.Parallel()
	const file = "ed25519_test.json"
	v := loadAsymVectors(t, file)
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
		v := loadAsymVectors(t, file)
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
				if c, _ := rvOf(err); c != ck.CKR_MECHANISM_PARAM_INVALID {
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
		v := loadAsymVectors(t, file)
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
				op, err := mechanisms[m.Type].decrypt(k, m)
				if err != nil {
					t.Fatalf("%s #%d: %v", file, vt.TcID, err)
				}
				out, err := op.(oneShot).One(vt.CT)
				if err != nil {
					if c, _ := rvOf(err); c != ck.CKR_ENCRYPTED_DATA_INVALID && c != ck.CKR_ENCRYPTED_DATA_LEN_RANGE {
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
	v := loadAsymVectors(t, file)
	for _, g := range v.TestGroups {
		for _, vt := range g.Tests {
			d := bytes.TrimLeft(vt.Private, "\x00")
			k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_EC, map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oidP256), ck.CKA_VALUE: d})
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

// testKWPUnwrap is RFC 5649's unwrap, written again from the RFC for the
// test, apart from the token's.
func testKWPUnwrap(t *testing.T, kek, c []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(kek)
	if err != nil || len(c) < 24 || len(c)%8 != 0 {
		t.Fatalf("KWP: %d bytes, %v", len(c), err)
	}
	n := len(c)/8 - 1
	a := bytes.Clone(c[:8])
	r := bytes.Clone(c[8:])
	blk := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			binary.BigEndian.PutUint64(blk, binary.BigEndian.Uint64(a)^uint64(n*j+i))
			copy(blk[8:], r[8*(i-1):8*i])
			b.Decrypt(blk, blk)
			copy(a, blk[:8])
			copy(r[8*(i-1):8*i], blk[8:])
		}
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if !bytes.Equal(a[:4], []byte{0xA6, 0x59, 0x59, 0xA6}) || mli > len(r) || mli <= len(r)-8 {
		t.Fatalf("KWP: integrity check failed (%x)", a)
	}
	return r[:mli]
}

// opensslVerify checks a SHA-256 signature with openssl: the public key
// as PEM, the signature as openssl takes it (DER for ECDSA).
func opensslVerify(t *testing.T, pub crypto.PublicKey, sig, msg []byte) {
	t.Helper()
	bin, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is not installed")
		}
		t.Skip("openssl is not installed")
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"pub.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"sig":     sig,
		"bad":     flipBit(sig),
		"msg":     msg,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(sigFile string) (string, error) {
		cmd := exec.Command(bin, "dgst", "-sha256", "-verify", "pub.pem", "-signature", sigFile, "msg")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify("sig"); err != nil || !strings.Contains(out, "Verified OK") {
		t.Fatalf("openssl does not verify the token's signature: %v\n%s", err, out)
	}
	if out, err := verify("bad"); err == nil {
		t.Fatalf("openssl verifies a tampered signature:\n%s", out)
	}
}
