package mech

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"math/big"
	"strings"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"
	"golang.org/x/crypto/chacha20"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// The algorithms of the modern table beyond AES, RSA and the NIST curves
// of crypto/ecdh: P-224 and secp256k1, Ed448, X25519 and X448, ChaCha20
// and ChaCha20-Poly1305, SHA-3 in RSA and ECDSA signatures, SHA-512/t;
// against Wycheproof, RFC 7539 and round trips of their generated keys.

var wpECDSA = map[string]uint64{
	"SHA-224": ck.CKM_ECDSA_SHA224, "SHA-256": ck.CKM_ECDSA_SHA256, "SHA-384": ck.CKM_ECDSA_SHA384,
	"SHA-512": ck.CKM_ECDSA_SHA512, "SHA3-224": ck.CKM_ECDSA_SHA3_224, "SHA3-256": ck.CKM_ECDSA_SHA3_256,
	"SHA3-384": ck.CKM_ECDSA_SHA3_384, "SHA3-512": ck.CKM_ECDSA_SHA3_512,
}

// TestWycheproofECDSACurves runs P-224's and secp256k1's files, and the
// SHA-3 files of every curve (DER only: through a strict DER parse).
func TestWycheproofECDSACurves(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		file  string
		curve string
	}{
		{"ecdsa_secp224r1_sha224_p1363_test.json", "P-224"},
		{"ecdsa_secp224r1_sha256_p1363_test.json", "P-224"},
		{"ecdsa_secp224r1_sha512_p1363_test.json", "P-224"},
		{"ecdsa_secp256k1_sha256_p1363_test.json", "secp256k1"},
		{"ecdsa_secp256k1_sha512_p1363_test.json", "secp256k1"},
		{"ecdsa_secp224r1_sha3_224_test.json", "P-224"},
		{"ecdsa_secp224r1_sha3_256_test.json", "P-224"},
		{"ecdsa_secp224r1_sha3_512_test.json", "P-224"},
		{"ecdsa_secp256k1_sha3_256_test.json", "secp256k1"},
		{"ecdsa_secp256k1_sha3_512_test.json", "secp256k1"},
		{"ecdsa_secp256r1_sha3_256_test.json", "P-256"},
		{"ecdsa_secp256r1_sha3_512_test.json", "P-256"},
		{"ecdsa_secp384r1_sha3_384_test.json", "P-384"},
		{"ecdsa_secp384r1_sha3_512_test.json", "P-384"},
		{"ecdsa_secp521r1_sha3_512_test.json", "P-521"},
	} {
		p1363 := strings.Contains(c.file, "p1363")
		run, notDER := 0, 0
		for _, g := range mechtest.Wycheproof(t, c.file).TestGroups {
			typ, ok := wpECDSA[g.Sha]
			if !ok {
				t.Fatalf("%s: %s", c.file, g.Sha)
			}
			k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC, map[uint64][]byte{
				ck.CKA_EC_PARAMS: ECParams(c.curve), ck.CKA_EC_POINT: pointDER(g.PublicKey.Uncompressed),
			})
			size := (len(g.PublicKey.Uncompressed) - 1) / 2
			if c.curve == "P-521" {
				size = 66
			}
			m := &wire.Mechanism{Type: typ}
			for _, vt := range g.Tests {
				sig := []byte(vt.Sig)
				if !p1363 {
					var ok bool
					if sig, ok = derToP1363(vt.Sig, size); !ok {
						if vt.Result == "valid" {
							t.Errorf("%s #%d: a valid signature that is not DER", c.file, vt.TcID)
						}
						notDER++
						continue
					}
				}
				err := verifyOnce(k, m, vt.Msg, sig)
				if c := codeOf(err); err != nil && c != ck.CKR_SIGNATURE_INVALID && c != ck.CKR_SIGNATURE_LEN_RANGE {
					t.Errorf("%#x: %v", typ, err)
				}
				vecOutcome(t, c.file, vt, err == nil, err)
				run++
			}
		}
		if run < 100 {
			t.Errorf("%s: only %d vectors", c.file, run)
		}
		t.Logf("%s: %d vectors run, %d not DER", c.file, run, notDER)
	}
}

// spkiPoint reads the point of a DER SubjectPublicKeyInfo for an EC key
// on the curve oid.
func spkiPoint(der []byte, oid asn1.ObjectIdentifier) ([]byte, bool) {
	var spki struct {
		Algo struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.RawValue
		}
		Key asn1.BitString
	}
	if rest, err := asn1.Unmarshal(der, &spki); err != nil || len(rest) != 0 {
		return nil, false
	}
	var curve asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(spki.Algo.Parameters.FullBytes, &curve); err != nil || len(rest) != 0 || !curve.Equal(oid) {
		return nil, false
	}
	return spki.Key.RightAlign(), true
}

func TestWycheproofECDHCurves(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		file  string
		curve string
		spki  bool
	}{
		{"ecdh_secp224r1_ecpoint_test.json", "P-224", false},
		{"ecdh_secp256k1_test.json", "secp256k1", true},
	} {
		run, refused := 0, 0
		for _, g := range mechtest.Wycheproof(t, c.file).TestGroups {
			for _, vt := range g.Tests {
				d := bytes.TrimLeft(vt.Private, "\x00")
				k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_EC, map[uint64][]byte{ck.CKA_EC_PARAMS: ECParams(c.curve), ck.CKA_VALUE: d})
				public := []byte(vt.Public)
				if c.spki {
					var ok bool
					if public, ok = spkiPoint(vt.Public, curveParams[c.curve]); !ok || len(public) == 0 || public[0] != 4 {
						// Another curve, a compressed point, or no
						// SubjectPublicKeyInfo: nothing a PKCS#11 peer
						// point is.
						if vt.Result == "valid" && !slicesContain(vt.Flags, "CompressedPublic") {
							t.Errorf("%s #%d: valid, and no uncompressed point", c.file, vt.TcID)
						}
						refused++
						continue
					}
				}
				p := wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: public}
				z, err := mechanisms[ck.CKM_ECDH1_DERIVE].derive(k, &wire.Mechanism{Type: ck.CKM_ECDH1_DERIVE, Present: true, Param: p.Param()}, 0)
				if err == nil && !bytes.Equal(z, vt.Shared) {
					t.Errorf("%s #%d: %x, want %x", c.file, vt.TcID, z, vt.Shared)
				}
				vecOutcome(t, c.file, vt, err == nil, err)
				run++
			}
		}
		t.Logf("%s: %d vectors run, %d with no uncompressed point", c.file, run, refused)
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestWycheproofEd448(t *testing.T) {
	t.Parallel()
	const file = "ed448_test.json"
	run := 0
	for _, g := range mechtest.Wycheproof(t, file).TestGroups {
		k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC_EDWARDS, map[uint64][]byte{
			ck.CKA_EC_PARAMS: ECParams("Ed448"), ck.CKA_EC_POINT: pointDER(g.PublicKey.Pk),
		})
		for _, vt := range g.Tests {
			err := verifyOnce(k, &wire.Mechanism{Type: ck.CKM_EDDSA}, vt.Msg, vt.Sig)
			vecOutcome(t, file, vt, err == nil, err)
			run++
		}
	}
	t.Logf("%d vectors", run)
}

func TestWycheproofXDH(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ file, curve string }{{"x25519_test.json", "X25519"}, {"x448_test.json", "X448"}} {
		run := 0
		for _, g := range mechtest.Wycheproof(t, c.file).TestGroups {
			for _, vt := range g.Tests {
				k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_EC_MONTGOMERY, map[uint64][]byte{ck.CKA_EC_PARAMS: ECParams(c.curve), ck.CKA_VALUE: vt.Private})
				for _, public := range [][]byte{vt.Public, pointDER(vt.Public)} {
					p := wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: public}
					z, err := mechanisms[ck.CKM_ECDH1_DERIVE].derive(k, &wire.Mechanism{Type: ck.CKM_ECDH1_DERIVE, Present: true, Param: p.Param()}, 0)
					if err == nil && !bytes.Equal(z, vt.Shared) {
						t.Errorf("%s #%d: %x, want %x", c.file, vt.TcID, z, vt.Shared)
					}
					if err != nil && codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
						t.Errorf("%s #%d: %v", c.file, vt.TcID, err)
					}
					// A zero secret (a low-order peer) is refused, which
					// Wycheproof's "acceptable" allows.
					vecOutcome(t, c.file, vt, err == nil, err)
				}
				run++
			}
		}
		t.Logf("%s: %d vectors", c.file, run)
	}
}

func TestWycheproofChaCha20Poly1305(t *testing.T) {
	t.Parallel()
	entry := mechanisms[ck.CKM_CHACHA20_POLY1305]
	for _, file := range []string{"chacha20_poly1305_test.json", "xchacha20_poly1305_test.json"} {
		run, refused := 0, 0
		for _, g := range mechtest.Wycheproof(t, file).TestGroups {
			for _, v := range g.Tests {
				k := testSecret(t, ck.CKK_CHACHA20, v.Key)
				m := &wire.Mechanism{Type: ck.CKM_CHACHA20_POLY1305, Present: true, Param: wire.ChaCha20Poly1305Params{Nonce: v.IV, AAD: v.AAD}.Param()}
				enc, err := entry.encrypt(k, m)
				if err != nil {
					// Nonces of other sizes.
					if v.Result == "valid" || codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
						t.Errorf("%s %d: %v", file, v.TcID, err)
					}
					refused++
					continue
				}
				run++
				sealed := append(append([]byte(nil), v.CT...), v.Tag...)
				if v.Result == "valid" {
					if got, err := runCipher(enc, v.Msg, 0); err != nil || !bytes.Equal(got, sealed) {
						t.Errorf("%s %d: encrypt %x, %v", file, v.TcID, got, err)
					}
				}
				for _, part := range []int{0, 7} {
					dec, _ := entry.decrypt(k, m)
					got, err := runCipher(dec, sealed, part)
					switch {
					case v.Result == "invalid" && err == nil:
						t.Errorf("%s %d (parts %d): an invalid vector decrypts", file, v.TcID, part)
					case v.Result == "invalid" && codeOf(err) != ck.CKR_ENCRYPTED_DATA_INVALID && codeOf(err) != ck.CKR_ENCRYPTED_DATA_LEN_RANGE:
						t.Errorf("%s %d (parts %d): %v", file, v.TcID, part, err)
					case v.Result != "invalid" && (err != nil || !bytes.Equal(got, v.Msg)):
						t.Errorf("%s %d (parts %d): decrypt %x, %v", file, v.TcID, part, got, err)
					}
				}
			}
		}
		if run < 250 {
			t.Errorf("%s: only %d vectors", file, run)
		}
		t.Logf("%s: %d vectors run, %d refused (nonce size)", file, run, refused)
	}
}

func chachaMech(counter, nonce []byte) *wire.Mechanism {
	return &wire.Mechanism{Type: ck.CKM_CHACHA20, Present: true, Param: wire.ChaCha20Params{BlockCounter: counter, Nonce: nonce}.Param()}
}

// TestChaCha20 runs RFC 7539's known answers, and checks the 64-bit
// variants against x/crypto's own XChaCha20 and the original
// construction's state layout.
func TestChaCha20(t *testing.T) {
	t.Parallel()
	entry := mechanisms[ck.CKM_CHACHA20]
	for _, r := range mechtest.LoadChaCha20(t) {
		k := testSecret(t, ck.CKK_CHACHA20, r.Key)
		m := chachaMech(binary.LittleEndian.AppendUint32(nil, r.Counter), r.Nonce)
		for _, part := range []int{0, 1, 63, 100} {
			op, err := entry.encrypt(k, m)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := runCipher(op, r.Plain, part); err != nil || !bytes.Equal(got, r.Ciphertext) {
				t.Errorf("RFC 7539 %s (parts %d): %x, %v", r.Count, part, got, err)
			}
			op, _ = entry.decrypt(k, m)
			if got, err := runCipher(op, r.Ciphertext, part); err != nil || !bytes.Equal(got, r.Plain) {
				t.Errorf("RFC 7539 %s (parts %d): decrypt %x, %v", r.Count, part, got, err)
			}
		}
	}
	key := bytes.Repeat([]byte{7}, 32)
	k := testSecret(t, ck.CKK_CHACHA20, key)
	msg := bytes.Repeat([]byte("chacha"), 50)
	crypt := func(m *wire.Mechanism) []byte {
		t.Helper()
		op, err := entry.encrypt(k, m)
		if err != nil {
			t.Fatal(err)
		}
		out, err := runCipher(op, msg, 0)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// XChaCha20 with counter 0 is x/crypto's.
	xnonce := bytes.Repeat([]byte{9}, 24)
	ref, _ := chacha20.NewUnauthenticatedCipher(key, xnonce)
	want := make([]byte, len(msg))
	ref.XORKeyStream(want, msg)
	if got := crypt(chachaMech(make([]byte, 8), xnonce)); !bytes.Equal(got, want) {
		t.Errorf("XChaCha20, 64-bit counter: %x", got)
	}
	if got := crypt(chachaMech(make([]byte, 4), xnonce)); !bytes.Equal(got, want) {
		t.Errorf("XChaCha20, 32-bit counter: %x", got)
	}
	// The original: a 64-bit counter whose high word sits where RFC
	// 8439's nonce starts.
	nonce8 := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	ref, _ = chacha20.NewUnauthenticatedCipher(key, append([]byte{2, 0, 0, 0}, nonce8...))
	ref.SetCounter(5)
	ref.XORKeyStream(want, msg)
	if got := crypt(chachaMech([]byte{5, 0, 0, 0, 2, 0, 0, 0}, nonce8)); !bytes.Equal(got, want) {
		t.Errorf("original ChaCha20: %x", got)
	}
	// Refusals: sizes, and data past the counter's last block.
	for _, c := range []struct {
		name string
		m    *wire.Mechanism
	}{
		{"96-bit nonce, 64-bit counter", chachaMech(make([]byte, 8), make([]byte, 12))},
		{"16-bit counter", chachaMech(make([]byte, 2), make([]byte, 12))},
		{"128-bit nonce", chachaMech(make([]byte, 4), make([]byte, 16))},
		{"no parameter", &wire.Mechanism{Type: ck.CKM_CHACHA20}},
	} {
		if _, err := entry.encrypt(k, c.m); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	op, _ := entry.encrypt(k, chachaMech([]byte{0xfe, 0xff, 0xff, 0xff}, make([]byte, 12)))
	if _, err := op.Update(make([]byte, 128)); err != nil {
		t.Fatalf("the last two blocks: %v", err)
	}
	if _, err := op.Update(make([]byte, 1)); codeOf(err) != ck.CKR_DATA_LEN_RANGE {
		t.Fatalf("past the counter: %v", err)
	}
	if _, err := entry.encrypt(testSecret(t, ck.CKK_AES, key), chachaMech(make([]byte, 4), make([]byte, 12))); codeOf(err) != ck.CKR_KEY_TYPE_INCONSISTENT {
		t.Errorf("an AES key: %v", err)
	}
}

func TestWycheproofRSASHA3(t *testing.T) {
	t.Parallel()
	byHash := map[string]uint64{
		"SHA3-224": ck.CKM_SHA3_224_RSA_PKCS, "SHA3-256": ck.CKM_SHA3_256_RSA_PKCS,
		"SHA3-384": ck.CKM_SHA3_384_RSA_PKCS, "SHA3-512": ck.CKM_SHA3_512_RSA_PKCS,
	}
	for _, file := range []string{
		"rsa_signature_2048_sha3_224_test.json", "rsa_signature_2048_sha3_256_test.json",
		"rsa_signature_2048_sha3_384_test.json", "rsa_signature_2048_sha3_512_test.json",
		"rsa_signature_3072_sha3_256_test.json", "rsa_signature_3072_sha3_384_test.json",
		"rsa_signature_3072_sha3_512_test.json",
	} {
		run := 0
		for _, g := range mechtest.Wycheproof(t, file).TestGroups {
			typ, ok := byHash[g.Sha]
			if !ok {
				t.Fatalf("%s: %s", file, g.Sha)
			}
			k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_RSA, map[uint64][]byte{
				ck.CKA_MODULUS: g.PublicKey.Modulus, ck.CKA_PUBLIC_EXPONENT: g.PublicKey.PublicExponent,
			})
			for _, vt := range g.Tests {
				err := verifyOnce(k, &wire.Mechanism{Type: typ}, vt.Msg, vt.Sig)
				vecOutcome(t, file, vt, err == nil, err)
				run++
			}
		}
		t.Logf("%s: %d vectors", file, run)
	}
}

// TestSHA3PSS signs with each SHA-3 PSS mechanism and checks with
// crypto/rsa.
func TestSHA3PSS(t *testing.T) {
	t.Parallel()
	k, pub := testRSAKey(t, 2048)
	rp, _ := rsaPublic(pub)
	for typ, c := range map[uint64]struct {
		hash, mgf uint64
		h         crypto.Hash
	}{
		ck.CKM_SHA3_224_RSA_PKCS_PSS: {ck.CKM_SHA3_224, ck.CKG_MGF1_SHA3_224, crypto.SHA3_224},
		ck.CKM_SHA3_256_RSA_PKCS_PSS: {ck.CKM_SHA3_256, ck.CKG_MGF1_SHA3_256, crypto.SHA3_256},
		ck.CKM_SHA3_384_RSA_PKCS_PSS: {ck.CKM_SHA3_384, ck.CKG_MGF1_SHA3_384, crypto.SHA3_384},
		ck.CKM_SHA3_512_RSA_PKCS_PSS: {ck.CKM_SHA3_512, ck.CKG_MGF1_SHA3_512, crypto.SHA3_512},
	} {
		m := &wire.Mechanism{Type: typ, Present: true, Param: wire.PSSParams{HashAlg: c.hash, MGF: c.mgf, SaltLen: uint64(c.h.Size())}.Param()}
		op, err := mechanisms[typ].Sign(k, m)
		if err != nil {
			t.Fatal(err)
		}
		op.Update([]byte("message"))
		sig, err := op.Sign()
		if err != nil {
			t.Fatal(err)
		}
		d := c.h.New()
		d.Write([]byte("message"))
		if err := rsa.VerifyPSS(rp, c.h, d.Sum(nil), sig, &rsa.PSSOptions{SaltLength: c.h.Size()}); err != nil {
			t.Errorf("%#x: %v", typ, err)
		}
		if err := verifyOnce(pub, m, []byte("message"), sig); err != nil {
			t.Errorf("%#x verify: %v", typ, err)
		}
	}
}

// TestNewDigests checks the digests against the standard library.
func TestNewDigests(t *testing.T) {
	t.Parallel()
	msg := []byte("abc")
	s224, s512_224, s512_256 := sha3.Sum224(msg), sha512.Sum512_224(msg), sha512.Sum512_256(msg)
	for typ, want := range map[uint64][]byte{
		ck.CKM_SHA3_224:   s224[:],
		ck.CKM_SHA512_224: s512_224[:],
		ck.CKM_SHA512_256: s512_256[:],
	} {
		d, err := mechanisms[typ].Digest(&wire.Mechanism{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		d.Update(msg)
		if got := d.Sum(); !bytes.Equal(got, want) {
			t.Errorf("%#x: %x", typ, got)
		}
	}
	// FIPS 180-4's examples for "abc".
	if hex.EncodeToString(s512_224[:]) != "4634270f707b6a54daae7530460842e20e37ed265ceee9a43e8924aa" {
		t.Error("SHA-512/224 of abc")
	}
}

// TestHMACKeyTypes: an HMAC takes generic secrets and its own key type,
// nothing else; its key generation makes its own key type.
func TestHMACKeyTypes(t *testing.T) {
	t.Parallel()
	for typ, hm := range hmacs {
		m := mechanisms[typ]
		if !m.Takes(ck.CKK_GENERIC_SECRET) || !m.Takes(hm.keyType) {
			t.Errorf("%#x refuses its key types", typ)
		}
		for _, kt := range []uint64{ck.CKK_AES, ck.CKK_CHACHA20, ck.CKK_DES3} {
			if m.Takes(kt) {
				t.Errorf("%#x takes key type %#x", typ, kt)
			}
		}
		for other, o := range hmacs {
			if other != typ && m.Takes(o.keyType) {
				t.Errorf("%#x takes %#x's key type", typ, other)
			}
		}
		g := mechanisms[hm.keyGen]
		if g.GenKeyType() != hm.keyType || g.GenClass() != ck.CKO_SECRET_KEY || g.Info().MaxKeySize != maxGenericBytes {
			t.Errorf("%#x: makes %#x, info %+v", hm.keyGen, g.GenKeyType(), g.Info())
		}
		add, err := g.Generate(&wire.Mechanism{Type: hm.keyGen}, map[uint64][]byte{ck.CKA_VALUE_LEN: ulong(24)})
		if err != nil || len(add[ck.CKA_VALUE]) != 24 {
			t.Errorf("%#x: %v", hm.keyGen, err)
		}
	}
}

// TestCurveRoundTrips generates a key pair on each new curve and uses it:
// ECDSA both ways, ECDH between two pairs, EdDSA with its variants.
func TestCurveRoundTrips(t *testing.T) {
	t.Parallel()
	pair := func(mech uint64, kt uint64, curve string) (priv, pub *testKey) {
		t.Helper()
		params := ECParams(curve)
		pa, va, err := mechanisms[mech].GeneratePair(&wire.Mechanism{Type: mech}, map[uint64][]byte{ck.CKA_EC_PARAMS: params}, nil)
		if err != nil {
			t.Fatalf("%s: %v", curve, err)
		}
		pa[ck.CKA_EC_PARAMS] = params
		return testKeyObject(t, ck.CKO_PRIVATE_KEY, kt, va), testKeyObject(t, ck.CKO_PUBLIC_KEY, kt, pa)
	}
	for _, curve := range []string{"P-224", "secp256k1"} {
		priv, pub := pair(ck.CKM_EC_KEY_PAIR_GEN, ck.CKK_EC, curve)
		for typ := range ecdsaHashes {
			if typ == ck.CKM_ECDSA_SHA1 {
				continue
			}
			in := []byte("message")
			if typ == ck.CKM_ECDSA {
				d := sha512.Sum512(in)
				in = d[:]
			}
			m := &wire.Mechanism{Type: typ}
			op, err := mechanisms[typ].Sign(priv, m)
			if err != nil {
				t.Fatal(err)
			}
			op.Update(in)
			sig, err := op.Sign()
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyOnce(pub, m, in, sig); err != nil {
				t.Errorf("%s %#x: %v", curve, typ, err)
			}
			sig[len(sig)-1] ^= 1
			if err := verifyOnce(pub, m, in, sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("%s %#x, changed: %v", curve, typ, err)
			}
		}
		if bits := KeyBits(pub); bits != map[string]int{"P-224": 224, "secp256k1": 256}[curve] {
			t.Errorf("%s: KeyBits %d", curve, bits)
		}
		if _, err := PublicKey(priv); err != nil {
			t.Errorf("%s: PublicKey %v", curve, err)
		}
	}
	// P-224 signatures verify with crypto/ecdsa.
	priv, _ := pair(ck.CKM_EC_KEY_PAIR_GEN, ck.CKK_EC, "P-224")
	op, _ := mechanisms[ck.CKM_ECDSA_SHA256].Sign(priv, &wire.Mechanism{Type: ck.CKM_ECDSA_SHA256})
	op.Update([]byte("m"))
	sig, _ := op.Sign()
	ep, _ := ecdsaPrivate(priv)
	d := crypto.SHA256.New()
	d.Write([]byte("m"))
	if !ecdsa.VerifyASN1(&ep.PublicKey, d.Sum(nil), p1363ToDER(sig)) {
		t.Error("P-224 signature does not verify with crypto/ecdsa")
	}
	if ep.Curve != elliptic.P224() {
		t.Error("not P-224")
	}

	// ECDH: both sides agree.
	for _, c := range []struct {
		mech, kt uint64
		curve    string
		size     int
	}{
		{ck.CKM_EC_KEY_PAIR_GEN, ck.CKK_EC, "P-224", 28},
		{ck.CKM_EC_KEY_PAIR_GEN, ck.CKK_EC, "secp256k1", 32},
		{ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKK_EC_MONTGOMERY, "X25519", 32},
		{ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKK_EC_MONTGOMERY, "X448", 56},
	} {
		a, ap := pair(c.mech, c.kt, c.curve)
		b, bp := pair(c.mech, c.kt, c.curve)
		derive := func(k *testKey, peer *testKey) []byte {
			t.Helper()
			point, _ := peer.Attr(ck.CKA_EC_POINT)
			p := wire.ECDH1DeriveParams{KDF: ck.CKD_SHA256_KDF, PublicData: point}
			z, err := mechanisms[ck.CKM_ECDH1_DERIVE].derive(k, &wire.Mechanism{Type: ck.CKM_ECDH1_DERIVE, Present: true, Param: p.Param()}, 32)
			if err != nil {
				t.Fatalf("%s: %v", c.curve, err)
			}
			return z
		}
		if x, y := derive(a, bp), derive(b, ap); !bytes.Equal(x, y) {
			t.Errorf("%s: %x and %x", c.curve, x, y)
		}
		point, _ := bp.Attr(ck.CKA_EC_POINT)
		if len(ecPoint(point)) != 1+2*c.size && len(ecPoint(point)) != c.size {
			t.Errorf("%s: a point of %d bytes", c.curve, len(ecPoint(point)))
		}
		if _, err := PublicKey(a); err != nil {
			t.Errorf("%s: PublicKey %v", c.curve, err)
		}
	}
	// An X25519 key wraps (PKCS#8) and comes back; X448's does not.
	x, _ := pair(ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKK_EC_MONTGOMERY, "X25519")
	enc, err := EncodeKey(x)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeKey(enc, ck.CKO_PRIVATE_KEY, ck.CKK_EC_MONTGOMERY, nil)
	if v, _ := x.Attr(ck.CKA_VALUE); err != nil || !bytes.Equal(back[ck.CKA_VALUE], v) {
		t.Errorf("X25519 through PKCS#8: %v", err)
	}
	x4, _ := pair(ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKK_EC_MONTGOMERY, "X448")
	if _, err := EncodeKey(x4); codeOf(err) != ck.CKR_KEY_NOT_WRAPPABLE {
		t.Errorf("X448 EncodeKey: %v", err)
	}

	// Ed448: pure, with a context, prehashed; checked with circl.
	ed, edp := pair(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, ck.CKK_EC_EDWARDS, "Ed448")
	raw, _ := edp.Attr(ck.CKA_EC_POINT)
	epk := ed448.PublicKey(ecPoint(raw))
	for _, p := range []*wire.EdDSAParams{nil, {ContextData: []byte("ctx")}, {PHFlag: true}, {PHFlag: true, ContextData: []byte("c")}} {
		m := &wire.Mechanism{Type: ck.CKM_EDDSA}
		ctx := ""
		if p != nil {
			m.Present, m.Param, ctx = true, p.Param(), string(p.ContextData)
		}
		op, err := mechanisms[ck.CKM_EDDSA].Sign(ed, m)
		if err != nil {
			t.Fatal(err)
		}
		op.Update([]byte("message"))
		sig, err := op.Sign()
		if err != nil || len(sig) != ed448.SignatureSize {
			t.Fatalf("Ed448 %+v: %x %v", p, sig, err)
		}
		ok := ed448.Verify(epk, []byte("message"), sig, ctx)
		if p != nil && p.PHFlag {
			ok = ed448.VerifyPh(epk, []byte("message"), sig, ctx)
		}
		if !ok {
			t.Errorf("Ed448 %+v: circl refuses", p)
		}
		if err := verifyOnce(edp, m, []byte("message"), sig); err != nil {
			t.Errorf("Ed448 %+v: %v", p, err)
		}
	}
	if KeyBits(edp) != 448 {
		t.Errorf("Ed448 KeyBits %d", KeyBits(edp))
	}
	// An Ed25519 signature length under an Ed448 key.
	if err := verifyOnce(edp, &wire.Mechanism{Type: ck.CKM_EDDSA}, []byte("m"), make([]byte, 64)); codeOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
		t.Errorf("64-byte signature, Ed448 key: %v", err)
	}
	// Keys on curves a mechanism does not have.
	for _, c := range []struct {
		mech  uint64
		curve string
	}{
		{ck.CKM_EC_KEY_PAIR_GEN, "Ed448"}, {ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, "X25519"}, {ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, "P-256"},
	} {
		_, _, err := mechanisms[c.mech].GeneratePair(&wire.Mechanism{Type: c.mech}, map[uint64][]byte{ck.CKA_EC_PARAMS: ECParams(c.curve)}, nil)
		if codeOf(err) != ck.CKR_CURVE_NOT_SUPPORTED {
			t.Errorf("%#x on %s: %v", c.mech, c.curve, err)
		}
	}
}

// p1363ToDER is r || s as DER, for crypto/ecdsa.
func p1363ToDER(sig []byte) []byte {
	n := len(sig) / 2
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
	if err != nil {
		panic(err)
	}
	return der
}

func TestChaChaKeyGeneration(t *testing.T) {
	t.Parallel()
	g := mechanisms[ck.CKM_CHACHA20_KEY_GEN]
	if g.GenKeyType() != ck.CKK_CHACHA20 || g.Info().MinKeySize != 32 || g.Info().MaxKeySize != 32 {
		t.Fatalf("%+v", g.Info())
	}
	for _, c := range []struct {
		tmpl map[uint64][]byte
		want uint64
	}{
		{tmpl: map[uint64][]byte{}},
		{tmpl: map[uint64][]byte{ck.CKA_VALUE_LEN: ulong(32)}},
		{tmpl: map[uint64][]byte{ck.CKA_VALUE_LEN: ulong(16)}, want: ck.CKR_ATTRIBUTE_VALUE_INVALID},
	} {
		add, err := g.Generate(&wire.Mechanism{}, c.tmpl)
		if codeOf(err) != c.want || (err == nil && len(add[ck.CKA_VALUE]) != 32) {
			t.Errorf("%v: %v", c.tmpl, err)
		}
	}
}
