package e2e

import (
	"bytes"
	"crypto"
	"crypto/des"
	"crypto/dsa"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/hex"
	"hash"
	"math/big"
	"slices"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"
	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/ck"
)

// The algorithms of docs/mechanisms.md through the module, as a Go
// application sees them: the ones every token has (P-224, secp256k1,
// Ed448, X25519, X448, ChaCha20, SHA-3 signatures and HMACs, SHA-512/t),
// the strict key types of HMAC, and the legacy policy
// (`hsmemu serve --legacy-algorithms`), each checked against Go's own
// implementations.

// algoSession opens a logged-in read-write session on a new token.
func algoSession(t *testing.T, p *pkcs11.Ctx, label string) (uint, pkcs11.SessionHandle) {
	t.Helper()
	slot := newToken(t, p, label)
	h := rwSession(t, p, slot, true)
	return slot, h
}

func mechOf(typ uint64, param any) []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(uint(typ), param)}
}

func attrOf(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, o pkcs11.ObjectHandle, typ uint) []byte {
	t.Helper()
	a, err := p.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	if err != nil {
		t.Fatalf("attribute %#x: %v", typ, err)
	}
	return a[0].Value
}

// ecParamsOf is a curve's CKA_EC_PARAMS, its OID in DER.
func ecParamsOf(oid asn1.ObjectIdentifier) []byte {
	b, _ := asn1.Marshal(oid)
	return b
}

var (
	oidP224      = asn1.ObjectIdentifier{1, 3, 132, 0, 33}
	oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
	oidX25519    = asn1.ObjectIdentifier{1, 3, 101, 110}
	oidX448      = asn1.ObjectIdentifier{1, 3, 101, 111}
	oidEd448     = asn1.ObjectIdentifier{1, 3, 101, 113}
)

// pointOf unwraps CKA_EC_POINT's DER OCTET STRING.
func pointOf(t *testing.T, v []byte) []byte {
	t.Helper()
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err != nil || len(rest) != 0 {
		t.Fatalf("CKA_EC_POINT is not a DER OCTET STRING: %x", v)
	}
	return raw
}

// genPair makes a session key pair; the private key may derive.
func genPair(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, mech uint64, pub ...*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle) {
	t.Helper()
	pubT := append([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}, pub...)
	privT := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true)}
	pk, sk, err := p.GenerateKeyPair(h, mechOf(mech, nil), pubT, privT)
	if err != nil {
		t.Fatalf("C_GenerateKeyPair %#x: %v", mech, err)
	}
	return pk, sk
}

func signWith(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, msg []byte) []byte {
	t.Helper()
	if err := p.SignInit(h, m, key); err != nil {
		t.Fatalf("C_SignInit %#x: %v", m[0].Mechanism, err)
	}
	sig, err := p.Sign(h, msg)
	if err != nil {
		t.Fatalf("C_Sign %#x: %v", m[0].Mechanism, err)
	}
	return sig
}

func verifyWith(p *pkcs11.Ctx, h pkcs11.SessionHandle, m []*pkcs11.Mechanism, key pkcs11.ObjectHandle, msg, sig []byte) error {
	if err := p.VerifyInit(h, m, key); err != nil {
		return err
	}
	return p.Verify(h, msg, sig)
}

// ecdhWith derives a readable generic secret from priv and a peer's
// public key.
func ecdhWith(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, peer []byte) []byte {
	t.Helper()
	k, err := p.DeriveKey(h, mechOf(ck.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer)), priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	})
	if err != nil {
		t.Fatalf("C_DeriveKey: %v", err)
	}
	return attrOf(t, p, h, k, pkcs11.CKA_VALUE)
}

func secretKey(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, kt uint64, value []byte) pkcs11.ObjectHandle {
	t.Helper()
	k, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, uint(kt)),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	})
	if err != nil {
		t.Fatalf("C_CreateObject key type %#x: %v", kt, err)
	}
	return k
}

func TestModuleNewAlgorithms(t *testing.T) {
	p, _ := withModule(t)
	slot, h := algoSession(t, p, "algorithms")
	msg := []byte("hsmemu: the algorithms every token has")

	list, err := p.GetMechanismList(slot)
	if err != nil {
		t.Fatal(err)
	}
	var types []uint64
	for _, m := range list {
		types = append(types, uint64(m.Mechanism))
	}
	for _, m := range []uint64{ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKM_CHACHA20, ck.CKM_CHACHA20_POLY1305, ck.CKM_SHA3_256_HMAC,
		ck.CKM_SHA3_256_RSA_PKCS, ck.CKM_ECDSA_SHA3_256, ck.CKM_SHA512_224, ck.CKM_SHA3_256_KEY_GEN} {
		if !slices.Contains(types, m) {
			t.Errorf("%#x not listed", m)
		}
	}
	if info, err := p.GetMechanismInfo(slot, mechOf(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, nil)); err != nil || info.MinKeySize != 255 || info.MaxKeySize != 448 {
		t.Errorf("CKM_EC_EDWARDS_KEY_PAIR_GEN: %+v %v", info, err)
	}

	t.Run("P-224", func(t *testing.T) {
		pub, priv := genPair(t, p, h, ck.CKM_EC_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidP224)))
		gp, err := ecdsa.ParseUncompressedPublicKey(elliptic.P224(), pointOf(t, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT)))
		if err != nil {
			t.Fatal(err)
		}
		sig := signWith(t, p, h, mechOf(ck.CKM_ECDSA_SHA256, nil), priv, msg)
		d := sha256.Sum256(msg)
		if len(sig) != 56 || !ecdsa.Verify(gp, d[:], new(big.Int).SetBytes(sig[:28]), new(big.Int).SetBytes(sig[28:])) {
			t.Fatalf("crypto/ecdsa refuses the P-224 signature %x", sig)
		}
		// ECDH with a Go key: both sides agree.
		gk, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
		gpt, _ := gk.PublicKey.Bytes()
		z := ecdhWith(t, p, h, priv, gpt)
		x, _ := elliptic.P224().ScalarMult(gp.X, gp.Y, gk.D.FillBytes(make([]byte, 28)))
		if !bytes.Equal(z, x.FillBytes(make([]byte, 28))) {
			t.Fatalf("P-224 ECDH: %x", z)
		}
	})

	t.Run("secp256k1", func(t *testing.T) {
		pub, priv := genPair(t, p, h, ck.CKM_EC_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidSecp256k1)))
		for _, m := range []uint64{ck.CKM_ECDSA_SHA256, ck.CKM_ECDSA_SHA3_256} {
			sig := signWith(t, p, h, mechOf(m, nil), priv, msg)
			if len(sig) != 64 {
				t.Fatalf("%#x: %d-byte signature", m, len(sig))
			}
			if err := verifyWith(p, h, mechOf(m, nil), pub, msg, sig); err != nil {
				t.Fatalf("%#x: %v", m, err)
			}
			sig[10] ^= 1
			if err := verifyWith(p, h, mechOf(m, nil), pub, msg, sig); !is(err, pkcs11.CKR_SIGNATURE_INVALID) {
				t.Fatalf("%#x, changed: %v", m, err)
			}
		}
		pub2, priv2 := genPair(t, p, h, ck.CKM_EC_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidSecp256k1)))
		a := ecdhWith(t, p, h, priv, attrOf(t, p, h, pub2, pkcs11.CKA_EC_POINT))
		b := ecdhWith(t, p, h, priv2, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT))
		if !bytes.Equal(a, b) || len(a) != 32 {
			t.Fatalf("secp256k1 ECDH: %x and %x", a, b)
		}
	})

	t.Run("Ed448", func(t *testing.T) {
		pub, priv := genPair(t, p, h, ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidEd448)))
		pk := ed448.PublicKey(pointOf(t, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT)))
		sig := signWith(t, p, h, mechOf(ck.CKM_EDDSA, nil), priv, msg)
		if !ed448.Verify(pk, msg, sig, "") {
			t.Fatal("circl refuses the Ed448 signature")
		}
		if err := verifyWith(p, h, mechOf(ck.CKM_EDDSA, nil), pub, msg, sig); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("X25519 and X448", func(t *testing.T) {
		// X25519 against crypto/ecdh.
		pub, priv := genPair(t, p, h, ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidX25519)))
		gk, _ := ecdh.X25519().GenerateKey(rand.Reader)
		z := ecdhWith(t, p, h, priv, gk.PublicKey().Bytes())
		tp, err := ecdh.X25519().NewPublicKey(pointOf(t, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT)))
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := gk.ECDH(tp); !bytes.Equal(z, want) {
			t.Fatalf("X25519: %x, want %x", z, want)
		}
		// X448 between two token keys.
		pa, sa := genPair(t, p, h, ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidX448)))
		pb, sb := genPair(t, p, h, ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(oidX448)))
		a := ecdhWith(t, p, h, sa, attrOf(t, p, h, pb, pkcs11.CKA_EC_POINT))
		b := ecdhWith(t, p, h, sb, attrOf(t, p, h, pa, pkcs11.CKA_EC_POINT))
		if !bytes.Equal(a, b) || len(a) != 56 {
			t.Fatalf("X448: %x and %x", a, b)
		}
	})

	t.Run("ChaCha20", func(t *testing.T) {
		if !lp64 {
			t.Skip("the parameter structures are laid out for LP64")
		}
		var c cParams
		defer c.free()
		key, err := p.GenerateKey(h, mechOf(ck.CKM_CHACHA20_KEY_GEN, nil), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			t.Fatal(err)
		}
		value := attrOf(t, p, h, key, pkcs11.CKA_VALUE)
		nonce, aad := []byte("twelve bytes"), []byte("associated")
		if err := p.EncryptInit(h, mechOf(ck.CKM_CHACHA20_POLY1305, c.chachaPolyParams(nonce, aad)), key); err != nil {
			t.Fatal(err)
		}
		sealed, err := p.Encrypt(h, msg)
		if err != nil {
			t.Fatal(err)
		}
		aead, _ := chacha20poly1305.New(value)
		if plain, err := aead.Open(nil, nonce, sealed, aad); err != nil || !bytes.Equal(plain, msg) {
			t.Fatalf("x/crypto does not open the token's ChaCha20-Poly1305: %v", err)
		}
		if err := p.DecryptInit(h, mechOf(ck.CKM_CHACHA20_POLY1305, c.chachaPolyParams(nonce, aad)), key); err != nil {
			t.Fatal(err)
		}
		sealed[0] ^= 1
		if _, err := p.Decrypt(h, sealed); !is(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) {
			t.Fatalf("a changed ciphertext: %v", err)
		}
		// CKM_CHACHA20: RFC 8439, 2.4.2's example.
		k := secretKey(t, p, h, ck.CKK_CHACHA20, hexBytes("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
		plain := []byte("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.")
		m := mechOf(ck.CKM_CHACHA20, c.chachaParams([]byte{1, 0, 0, 0}, 32, hexBytes("000000000000004a00000000"), 96))
		if err := p.EncryptInit(h, m, k); err != nil {
			t.Fatal(err)
		}
		ct, err := p.Encrypt(h, plain)
		want := hexBytes("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab77937365af90bbf74a35be6b40b8eedf2785e42874d")
		if err != nil || !bytes.Equal(ct, want) {
			t.Fatalf("RFC 8439 2.4.2: %x, %v", ct, err)
		}
		// A counter of 12 bits: the module refuses it, as a length that is
		// not whole bytes.
		if err := p.EncryptInit(h, mechOf(ck.CKM_CHACHA20, c.chachaParams([]byte{1, 0}, 12, make([]byte, 12), 96)), k); !is(err, pkcs11.CKR_MECHANISM_PARAM_INVALID) {
			t.Fatalf("a 12-bit counter: %v", err)
		}
	})

	t.Run("HMAC key types", func(t *testing.T) {
		// HMAC takes generic secrets and its own key type: an AES key is
		// refused.
		aesKey := secretKey(t, p, h, ck.CKK_AES, make([]byte, 32))
		if err := p.SignInit(h, mechOf(ck.CKM_SHA256_HMAC, nil), aesKey); !is(err, pkcs11.CKR_KEY_TYPE_INCONSISTENT) {
			t.Fatalf("HMAC-SHA256 with an AES key: %v", err)
		}
		k, err := p.GenerateKey(h, mechOf(ck.CKM_SHA3_256_KEY_GEN, nil), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			t.Fatal(err)
		}
		if kt := bytesToUlong(attrOf(t, p, h, k, pkcs11.CKA_KEY_TYPE)); kt != ck.CKK_SHA3_256_HMAC {
			t.Fatalf("key type %#x", kt)
		}
		mac := signWith(t, p, h, mechOf(ck.CKM_SHA3_256_HMAC, nil), k, msg)
		w := hmac.New(func() hash.Hash { return sha3.New256() }, attrOf(t, p, h, k, pkcs11.CKA_VALUE))
		w.Write(msg)
		if !bytes.Equal(mac, w.Sum(nil)) {
			t.Fatalf("HMAC-SHA3-256: %x", mac)
		}
		// Another HMAC's key type is refused.
		if err := p.SignInit(h, mechOf(ck.CKM_SHA256_HMAC, nil), k); !is(err, pkcs11.CKR_KEY_TYPE_INCONSISTENT) {
			t.Fatalf("HMAC-SHA256 with a CKK_SHA3_256_HMAC key: %v", err)
		}
		generic := secretKey(t, p, h, ck.CKK_GENERIC_SECRET, []byte("generic"))
		mac = signWith(t, p, h, mechOf(ck.CKM_SHA512_256_HMAC, nil), generic, msg)
		w = hmac.New(sha512.New512_256, []byte("generic"))
		w.Write(msg)
		if !bytes.Equal(mac, w.Sum(nil)) {
			t.Fatalf("HMAC-SHA512/256: %x", mac)
		}
	})

	t.Run("SHA-3 and SHA-512/t", func(t *testing.T) {
		if err := p.DigestInit(h, mechOf(ck.CKM_SHA512_224, nil)); err != nil {
			t.Fatal(err)
		}
		d, err := p.Digest(h, msg)
		if want := sha512.Sum512_224(msg); err != nil || !bytes.Equal(d, want[:]) {
			t.Fatalf("SHA-512/224: %x, %v", d, err)
		}
		pub, priv := genPair(t, p, h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048))
		gp := &rsa.PublicKey{N: new(big.Int).SetBytes(attrOf(t, p, h, pub, pkcs11.CKA_MODULUS)), E: 65537}
		sig := signWith(t, p, h, mechOf(ck.CKM_SHA3_256_RSA_PKCS, nil), priv, msg)
		d3 := sha3.Sum256(msg)
		if err := rsa.VerifyPKCS1v15(gp, crypto.SHA3_256, d3[:], sig); err != nil {
			t.Fatalf("SHA3-256 PKCS#1 v1.5: %v", err)
		}
		pss := pkcs11.NewPSSParams(uint(ck.CKM_SHA3_256), uint(ck.CKG_MGF1_SHA3_256), 32)
		sig = signWith(t, p, h, mechOf(ck.CKM_SHA3_256_RSA_PKCS_PSS, pss), priv, msg)
		if err := rsa.VerifyPSS(gp, crypto.SHA3_256, d3[:], sig, &rsa.PSSOptions{SaltLength: 32}); err != nil {
			t.Fatalf("SHA3-256 PSS: %v", err)
		}
	})
}

// The message-based flags (PKCS#11 3.0) of a hash-and-sign mechanism that
// verifies, or signs too.
const (
	verifyMessages = uint(ck.CKF_MESSAGE_VERIFY | ck.CKF_MULTI_MESSAGE)
	signMessages   = uint(ck.CKF_MESSAGE_SIGN)
)

func TestModuleLegacyAlgorithms(t *testing.T) {
	msg := []byte("hsmemu: an old fixture")

	t.Run("off", func(t *testing.T) {
		p, _ := withModule(t)
		slot, h := algoSession(t, p, "modern")
		list, _ := p.GetMechanismList(slot)
		for _, m := range list {
			if m.Mechanism == uint(ck.CKM_DES3_CBC) || m.Mechanism == uint(ck.CKM_DSA) {
				t.Errorf("%#x listed", m.Mechanism)
			}
		}
		if _, err := p.GetMechanismInfo(slot, mechOf(ck.CKM_DES3_KEY_GEN, nil)); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
			t.Errorf("C_GetMechanismInfo(CKM_DES3_KEY_GEN): %v", err)
		}
		if info, err := p.GetMechanismInfo(slot, mechOf(ck.CKM_SHA1_RSA_PKCS, nil)); err != nil || info.Flags != pkcs11.CKF_VERIFY|verifyMessages || info.MinKeySize != 2048 {
			t.Errorf("CKM_SHA1_RSA_PKCS: %+v %v", info, err)
		}
		if _, err := p.GenerateKey(h, mechOf(ck.CKM_DES3_KEY_GEN, nil), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
			t.Errorf("DES3 key generation: %v", err)
		}
		if _, _, err := p.GenerateKeyPair(h, mechOf(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil),
			[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 1024)}, nil); !is(err, pkcs11.CKR_KEY_SIZE_RANGE) {
			t.Errorf("RSA-1024 generation: %v", err)
		}
		_, priv := genPair(t, p, h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048))
		if err := p.SignInit(h, mechOf(ck.CKM_SHA1_RSA_PKCS, nil), priv); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
			t.Errorf("SHA-1 RSA signing: %v", err)
		}
		if err := p.SignInit(h, mechOf(ck.CKM_RSA_PKCS_PSS, pkcs11.NewPSSParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, 20)), priv); !is(err, pkcs11.CKR_MECHANISM_PARAM_INVALID) {
			t.Errorf("PSS over SHA-1: %v", err)
		}
		if _, err := p.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_DES3),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE, bytes.Repeat([]byte{0x01}, 24)),
		}); !is(err, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID) {
			t.Errorf("a created DES3 key: %v", err)
		}
	})

	t.Run("on", func(t *testing.T) {
		p, _ := withModule(t, "--legacy-algorithms")
		slot, h := algoSession(t, p, "legacy")
		if info, err := p.GetMechanismInfo(slot, mechOf(ck.CKM_SHA1_RSA_PKCS, nil)); err != nil || info.Flags != pkcs11.CKF_SIGN|pkcs11.CKF_VERIFY|signMessages|verifyMessages || info.MinKeySize != 1024 {
			t.Errorf("CKM_SHA1_RSA_PKCS: %+v %v", info, err)
		}

		// Triple DES: generation, CBC against crypto/des.
		k, err := p.GenerateKey(h, mechOf(ck.CKM_DES3_KEY_GEN, nil), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			t.Fatal(err)
		}
		value := attrOf(t, p, h, k, pkcs11.CKA_VALUE)
		b, err := des.NewTripleDESCipher(value)
		if err != nil {
			t.Fatal(err)
		}
		iv := []byte("an 8B IV")
		plain := []byte("sixteen bytes!!!")
		if err := p.EncryptInit(h, mechOf(ck.CKM_DES3_CBC, iv), k); err != nil {
			t.Fatal(err)
		}
		ct, err := p.Encrypt(h, plain)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, 16)
		x := make([]byte, 8)
		for i := 0; i < 16; i += 8 {
			prev := iv
			if i > 0 {
				prev = want[i-8 : i]
			}
			for j := range x {
				x[j] = plain[i+j] ^ prev[j]
			}
			b.Encrypt(want[i:i+8], x)
		}
		if !bytes.Equal(ct, want) {
			t.Fatalf("DES3-CBC: %x, want %x", ct, want)
		}
		if err := p.DecryptInit(h, mechOf(ck.CKM_DES3_CBC, iv), k); err != nil {
			t.Fatal(err)
		}
		if got, err := p.Decrypt(h, ct); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("DES3-CBC decrypt: %q %v", got, err)
		}

		// RSA-1024, signing with SHA-1.
		pub, priv := genPair(t, p, h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 1024))
		gp := &rsa.PublicKey{N: new(big.Int).SetBytes(attrOf(t, p, h, pub, pkcs11.CKA_MODULUS)), E: 65537}
		if gp.N.BitLen() != 1024 {
			t.Fatalf("a %d-bit key", gp.N.BitLen())
		}
		sig := signWith(t, p, h, mechOf(ck.CKM_SHA1_RSA_PKCS, nil), priv, msg)
		d := sha1.Sum(msg)
		if err := rsa.VerifyPKCS1v15(gp, crypto.SHA1, d[:], sig); err != nil {
			t.Fatalf("SHA-1 RSA-1024: %v", err)
		}

		// DSA: domain parameters, a key pair, a signature crypto/dsa checks.
		params, err := p.GenerateKey(h, mechOf(ck.CKM_DSA_PARAMETER_GEN, nil), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(uint(ck.CKA_PRIME_BITS), 1024),
		})
		if err != nil {
			t.Fatal(err)
		}
		pr, q, g := attrOf(t, p, h, params, uint(ck.CKA_PRIME)), attrOf(t, p, h, params, uint(ck.CKA_SUBPRIME)), attrOf(t, p, h, params, uint(ck.CKA_BASE))
		dpub, dpriv := genPair(t, p, h, ck.CKM_DSA_KEY_PAIR_GEN, pkcs11.NewAttribute(uint(ck.CKA_PRIME), pr),
			pkcs11.NewAttribute(uint(ck.CKA_SUBPRIME), q), pkcs11.NewAttribute(uint(ck.CKA_BASE), g))
		dsig := signWith(t, p, h, mechOf(ck.CKM_DSA_SHA256, nil), dpriv, msg)
		dk := &dsa.PublicKey{Parameters: dsa.Parameters{P: new(big.Int).SetBytes(pr), Q: new(big.Int).SetBytes(q), G: new(big.Int).SetBytes(g)},
			Y: new(big.Int).SetBytes(attrOf(t, p, h, dpub, pkcs11.CKA_VALUE))}
		d256 := sha256.Sum256(msg)
		if len(dsig) != 40 || !dsa.Verify(dk, d256[:20], new(big.Int).SetBytes(dsig[:20]), new(big.Int).SetBytes(dsig[20:])) {
			t.Fatalf("crypto/dsa refuses the DSA signature %x", dsig)
		}
		if err := verifyWith(p, h, mechOf(ck.CKM_DSA_SHA256, nil), dpub, msg, dsig); err != nil {
			t.Fatal(err)
		}

		// ECDSA with SHA-1 signs too.
		epub, epriv := genPair(t, p, h, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})))
		esig := signWith(t, p, h, mechOf(ck.CKM_ECDSA_SHA1, nil), epriv, msg)
		if err := verifyWith(p, h, mechOf(ck.CKM_ECDSA_SHA1, nil), epub, msg, esig); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("premium", func(t *testing.T) {
		p, _ := withModule(t, "--legacy-algorithms", "--default-tier", "premium")
		slot, h := algoSession(t, p, "premium")
		for _, s := range []uint{0, slot} {
			if _, err := p.GetMechanismInfo(s, mechOf(ck.CKM_DES3_CBC, nil)); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
				t.Errorf("slot %d: C_GetMechanismInfo(CKM_DES3_CBC): %v", s, err)
			}
			if info, err := p.GetMechanismInfo(s, mechOf(ck.CKM_SHA1_RSA_PKCS, nil)); err != nil || info.Flags != pkcs11.CKF_VERIFY|verifyMessages {
				t.Errorf("slot %d: CKM_SHA1_RSA_PKCS %+v %v", s, info, err)
			}
		}
		if _, err := p.GenerateKey(h, mechOf(ck.CKM_DES3_KEY_GEN, nil), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
			t.Errorf("DES3 on a premium token: %v", err)
		}
		if _, _, err := p.GenerateKeyPair(h, mechOf(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil),
			[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 1024)}, nil); !is(err, pkcs11.CKR_KEY_SIZE_RANGE) {
			t.Errorf("RSA-1024 on a premium token: %v", err)
		}
		_, priv := genPair(t, p, h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048))
		if err := p.SignInit(h, mechOf(ck.CKM_SHA1_RSA_PKCS, nil), priv); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
			t.Errorf("SHA-1 signing on a premium token: %v", err)
		}
	})
}

func hexBytes(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
