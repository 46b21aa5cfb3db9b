package token

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha3"
	"crypto/sha512"
	"encoding/binary"
	"hash"
	"math/big"
	"slices"
	"testing"

	"github.com/cloudflare/circl/sign/ed448"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/mech/mechtest"
)

// The algorithms every token has beyond AES, RSA and the NIST curves of
// crypto/ecdh, through the engine's calls: P-224 and secp256k1, Ed448,
// X25519 and X448, ChaCha20 and ChaCha20-Poly1305, SHA-3 HMACs with their
// key types, SHA-3 RSA and ECDSA, SHA-512/t. daemon/mech runs Wycheproof
// whole; a sample runs here.

// newMechs are mechanisms a token lists without any policy.
var newMechs = []uint64{
	ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, ck.CKM_CHACHA20_KEY_GEN, ck.CKM_CHACHA20, ck.CKM_CHACHA20_POLY1305,
	ck.CKM_SHA3_224, ck.CKM_SHA512_224, ck.CKM_SHA512_256, ck.CKM_SHA3_256_HMAC, ck.CKM_SHA512_224_HMAC,
	ck.CKM_SHA3_256_KEY_GEN, ck.CKM_SHA256_KEY_GEN, ck.CKM_SHA3_256_RSA_PKCS, ck.CKM_SHA3_512_RSA_PKCS_PSS,
	ck.CKM_ECDSA_SHA3_256,
}

func TestNewAlgorithms(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	list := s.mechList(freeSlot)
	for _, m := range newMechs {
		if !slices.Contains(list, m) {
			t.Errorf("%#x not listed", m)
		}
	}
	if info := s.mechInfo(freeSlot, ck.CKM_CHACHA20_KEY_GEN); info.MinKeySize != 32 || info.MaxKeySize != 32 || info.Flags != ck.CKF_GENERATE {
		t.Errorf("CKM_CHACHA20_KEY_GEN: %+v", info)
	}
	if info := s.mechInfo(freeSlot, ck.CKM_CHACHA20_POLY1305); info.MinKeySize != 256 || info.Flags != ck.CKF_ENCRYPT|ck.CKF_DECRYPT|ck.CKF_MESSAGE_ENCRYPT|ck.CKF_MESSAGE_DECRYPT|ck.CKF_MULTI_MESSAGE {
		t.Errorf("CKM_CHACHA20_POLY1305: %+v", info)
	}
	noToken := []wire.Attribute{AB(ck.CKA_TOKEN, false)}

	s.run(t, "ECDSA on P-224 and secp256k1", func(t *testing.T) {
		for _, c := range []struct {
			curve string
			size  int
			std   elliptic.Curve
		}{{"P-224", 28, elliptic.P224()}, {"secp256k1", 32, nil}} {
			pub, priv := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN), append(noToken, A(ck.CKA_EC_PARAMS, mech.ECParams(c.curve))), append(noToken, AB(ck.CKA_DERIVE, true)))
			for _, m := range []uint64{ck.CKM_ECDSA_SHA256, ck.CKM_ECDSA_SHA3_384, ck.CKM_ECDSA_SHA512} {
				sig := s.sign(priv, M(m), asymMsg)
				if len(sig) != 2*c.size {
					t.Fatalf("%s %#x: a %d-byte signature", c.curve, m, len(sig))
				}
				if rv := s.verify(pub, M(m), asymMsg, sig); rv != ck.CKR_OK {
					t.Errorf("%s %#x: %#x", c.curve, m, rv)
				}
				if rv := s.verify(pub, M(m), asymMsg, flipBit(sig)); rv != ck.CKR_SIGNATURE_INVALID {
					t.Errorf("%s %#x, changed: %#x", c.curve, m, rv)
				}
			}
			if c.std != nil {
				// crypto/ecdsa agrees.
				sig := s.sign(priv, M(ck.CKM_ECDSA_SHA3_256), asymMsg)
				d := sha3.Sum256(asymMsg)
				gp := s.ecPublicOf(pub, c.std)
				if !ecdsa.Verify(gp, d[:], new(big.Int).SetBytes(sig[:c.size]), new(big.Int).SetBytes(sig[c.size:])) {
					t.Errorf("%s: crypto/ecdsa refuses the signature", c.curve)
				}
			}
			// ECDH between two pairs of the curve.
			pub2, priv2 := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN), append(noToken, A(ck.CKA_EC_PARAMS, mech.ECParams(c.curve))), append(noToken, AB(ck.CKA_DERIVE, true)))
			if a, b := s.ecdh(priv, pub2), s.ecdh(priv2, pub); !bytes.Equal(a, b) || len(a) != c.size {
				t.Errorf("%s ECDH: %x and %x", c.curve, a, b)
			}
		}
	})

	s.run(t, "X25519 and X448", func(t *testing.T) {
		for _, c := range []struct {
			curve string
			size  int
		}{{"X25519", 32}, {"X448", 56}} {
			pub, priv := s.genPair(M(ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN), append(noToken, A(ck.CKA_EC_PARAMS, mech.ECParams(c.curve))), append(noToken, AB(ck.CKA_DERIVE, true)))
			pub2, priv2 := s.genPair(M(ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN), append(noToken, A(ck.CKA_EC_PARAMS, mech.ECParams(c.curve))), append(noToken, AB(ck.CKA_DERIVE, true)))
			s.checkGenerated(priv, ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN)
			if kt := ulongOf(s.attr(pub, ck.CKA_KEY_TYPE)); kt != ck.CKK_EC_MONTGOMERY {
				t.Errorf("%s: key type %#x", c.curve, kt)
			}
			if a, b := s.ecdh(priv, pub2), s.ecdh(priv2, pub); !bytes.Equal(a, b) || len(a) != c.size {
				t.Errorf("%s: %x and %x", c.curve, a, b)
			}
			// Not a signature key.
			s.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		}
		// Wycheproof X25519, a sample, through C_CreateObject and
		// C_DeriveKey.
		ran := 0
		for _, g := range mechtest.Wycheproof(t, "x25519_test.json").TestGroups {
			for _, v := range g.Tests {
				if v.TcID%17 != 0 {
					continue
				}
				k := s.Create(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC_MONTGOMERY), AB(ck.CKA_TOKEN, false),
					AB(ck.CKA_DERIVE, true), A(ck.CKA_EC_PARAMS, mech.ECParams("X25519")), A(ck.CKA_VALUE, v.Private))
				rv, out := s.Call("C_DeriveKey", U(h), MP(ck.CKM_ECDH1_DERIVE, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: v.Public}.Param()), U(k), T(readable(ck.CKK_GENERIC_SECRET)...), None())
				switch {
				case rv == ck.CKR_OK && !bytes.Equal(s.attr(out[4].Ulong, ck.CKA_VALUE), v.Shared):
					t.Errorf("X25519 %d: wrong secret", v.TcID)
				case (rv == ck.CKR_OK) != (v.Result == "valid") && v.Result != "acceptable":
					t.Errorf("X25519 %d (%s): %#x", v.TcID, v.Result, rv)
				}
				ran++
			}
		}
		if ran < 20 {
			t.Fatalf("only %d X25519 vectors", ran)
		}
	})

	s.run(t, "Ed448", func(t *testing.T) {
		pub, priv := s.genPair(M(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN), append(noToken, A(ck.CKA_EC_PARAMS, mech.ECParams("Ed448"))), noToken)
		pk := ed448.PublicKey(ecPoint(s.attr(pub, ck.CKA_EC_POINT)))
		sig := s.sign(priv, M(ck.CKM_EDDSA), asymMsg)
		if !ed448.Verify(pk, asymMsg, sig, "") {
			t.Fatal("circl refuses the token's Ed448 signature")
		}
		if rv := s.verify(pub, M(ck.CKM_EDDSA), asymMsg, sig); rv != ck.CKR_OK {
			t.Fatalf("verify: %#x", rv)
		}
		ph := MP(ck.CKM_EDDSA, wire.EdDSAParams{PHFlag: true, ContextData: []byte("ctx")}.Param())
		sig = s.sign(priv, ph, asymMsg)
		if !ed448.VerifyPh(pk, asymMsg, sig, "ctx") {
			t.Fatal("circl refuses the token's Ed448ph signature")
		}
		// Wycheproof's Ed448 vectors, through C_Verify.
		for _, g := range mechtest.Wycheproof(t, "ed448_test.json").TestGroups {
			k := s.Create(h, AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC_EDWARDS), AB(ck.CKA_TOKEN, false),
				A(ck.CKA_EC_PARAMS, mech.ECParams("Ed448")), A(ck.CKA_EC_POINT, pointOctets(g.PublicKey.Pk)))
			for _, v := range g.Tests {
				if rv := s.verify(k, M(ck.CKM_EDDSA), v.Msg, v.Sig); (rv == ck.CKR_OK) != (v.Result == "valid") {
					t.Errorf("Ed448 %d (%s): %#x", v.TcID, v.Result, rv)
				}
			}
		}
	})

	s.run(t, "ChaCha20", func(t *testing.T) {
		k := s.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_CHACHA20_KEY_GEN), T(readable(ck.CKK_CHACHA20)...), None())[3].Ulong
		if n := ulongOf(s.attr(k, ck.CKA_VALUE_LEN)); n != 32 {
			t.Fatalf("CKA_VALUE_LEN %d", n)
		}
		s.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_GenerateKey", U(h), M(ck.CKM_CHACHA20_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16)), None())
		s.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(secretTmpl(ck.CKK_CHACHA20, make([]byte, 16))...), None())
		// RFC 7539's known answers with created keys.
		for _, r := range mechtest.LoadChaCha20(t) {
			ck20 := s.secret(h, ck.CKK_CHACHA20, r.Key)
			m := MP(ck.CKM_CHACHA20, wire.ChaCha20Params{BlockCounter: binary.LittleEndian.AppendUint32(nil, r.Counter), Nonce: r.Nonce}.Param())
			if got := s.crypt(false, h, m, ck20, r.Plain); !bytes.Equal(got, r.Ciphertext) {
				t.Errorf("RFC 7539 %s: %x", r.Count, got)
			}
			if got := s.cryptParts(true, h, m, ck20, r.Ciphertext, []int{5, 64}); !bytes.Equal(got, r.Plain) {
				t.Errorf("RFC 7539 %s, in parts: %x", r.Count, got)
			}
		}
		// ChaCha20-Poly1305: Wycheproof, a sample, and the key's type.
		ran := 0
		for _, g := range mechtest.Wycheproof(t, "chacha20_poly1305_test.json").TestGroups {
			for _, v := range g.Tests {
				if v.TcID%9 != 0 || len(v.IV) != 12 {
					continue
				}
				kk := s.secret(h, ck.CKK_CHACHA20, v.Key)
				m := MP(ck.CKM_CHACHA20_POLY1305, wire.ChaCha20Poly1305Params{Nonce: v.IV, AAD: v.AAD}.Param())
				sealed := slices.Concat(v.CT, v.Tag)
				s.Must(ck.CKR_OK, "C_DecryptInit", U(h), m, U(kk))
				rv, out := s.Call("C_Decrypt", U(h), B(sealed), Out(uint64(len(sealed))))
				switch {
				case v.Result == "invalid" && rv == ck.CKR_OK:
					t.Errorf("ChaCha20-Poly1305 %d: an invalid vector decrypts", v.TcID)
				case v.Result == "valid" && (rv != ck.CKR_OK || !bytes.Equal(out[2].Bytes, v.Msg)):
					t.Errorf("ChaCha20-Poly1305 %d: %#x", v.TcID, rv)
				}
				if v.Result == "valid" {
					if got := s.crypt(false, h, m, kk, v.Msg); !bytes.Equal(got, sealed) {
						t.Errorf("ChaCha20-Poly1305 %d: encrypt %x", v.TcID, got)
					}
				}
				ran++
			}
		}
		if ran < 25 {
			t.Fatalf("only %d vectors", ran)
		}
		aes := s.secret(h, ck.CKK_AES, make([]byte, 32))
		s.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_EncryptInit", U(h), MP(ck.CKM_CHACHA20_POLY1305, wire.ChaCha20Poly1305Params{Nonce: make([]byte, 12)}.Param()), U(aes))
		s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_EncryptInit", U(h), MP(ck.CKM_CHACHA20_POLY1305, wire.ChaCha20Poly1305Params{Nonce: make([]byte, 8)}.Param()), U(k))
	})

	s.run(t, "HMAC key types", func(t *testing.T) {
		k := s.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_SHA3_256_KEY_GEN), T(append(readable(ck.CKK_SHA3_256_HMAC), AU(ck.CKA_VALUE_LEN, 32))...), None())[3].Ulong
		if kt := ulongOf(s.attr(k, ck.CKA_KEY_TYPE)); kt != ck.CKK_SHA3_256_HMAC {
			t.Fatalf("key type %#x", kt)
		}
		value := s.attr(k, ck.CKA_VALUE)
		mac := s.sign(k, M(ck.CKM_SHA3_256_HMAC), asymMsg)
		want := hmac.New(func() hash.Hash { return sha3.New256() }, value)
		want.Write(asymMsg)
		if !bytes.Equal(mac, want.Sum(nil)) {
			t.Fatalf("HMAC-SHA3-256: %x", mac)
		}
		// Only its own HMAC, and generic secret generation refuses the type.
		s.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_SHA256_HMAC), U(k))
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKey", U(h), M(ck.CKM_GENERIC_SECRET_KEY_GEN), T(AU(ck.CKA_KEY_TYPE, ck.CKK_SHA256_HMAC), AU(ck.CKA_VALUE_LEN, 32)), None())
		// So is a key type a secret key never has: the template disagrees
		// with the mechanism (PKCS#11 v3.0, C_GenerateKey), not a bad value.
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_KEY_TYPE, ck.CKK_RSA), AU(ck.CKA_VALUE_LEN, 32)), None())
		s.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(A(ck.CKA_KEY_TYPE, []byte{1}), AU(ck.CKA_VALUE_LEN, 32)), None())
		s.Must(ck.CKR_TEMPLATE_INCOMPLETE, "C_GenerateKey", U(h), M(ck.CKM_SHA256_KEY_GEN), T(), None())
		// Created HMAC keys of every type.
		k512 := s.secret(h, ck.CKK_SHA512_224_HMAC, []byte("key"))
		mac = s.sign(k512, M(ck.CKM_SHA512_224_HMAC), asymMsg)
		w := hmac.New(sha512.New512_224, []byte("key"))
		w.Write(asymMsg)
		if !bytes.Equal(mac, w.Sum(nil)) {
			t.Fatalf("HMAC-SHA512/224: %x", mac)
		}
	})

	s.run(t, "SHA-3 and SHA-512/t digests and RSA", func(t *testing.T) {
		s.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA512_256))
		d := s.Must(ck.CKR_OK, "C_Digest", U(h), B(asymMsg), Out(64))[2].Bytes
		if want := sha512.Sum512_256(asymMsg); !bytes.Equal(d, want[:]) {
			t.Fatalf("SHA-512/256: %x", d)
		}
		pub, priv := s.genPair(M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), append(noToken, AU(ck.CKA_MODULUS_BITS, 2048)), noToken)
		sig := s.sign(priv, M(ck.CKM_SHA3_512_RSA_PKCS), asymMsg)
		if rv := s.verify(pub, M(ck.CKM_SHA3_512_RSA_PKCS), asymMsg, sig); rv != ck.CKR_OK {
			t.Fatalf("SHA3-512 PKCS#1: %#x", rv)
		}
		pss := pssMech(ck.CKM_SHA3_256_RSA_PKCS_PSS, ck.CKM_SHA3_256, ck.CKG_MGF1_SHA3_256, 32)
		sig = s.signParts(priv, pss, asymMsg)
		if rv := s.verify(pub, pss, asymMsg, sig); rv != ck.CKR_OK {
			t.Fatalf("SHA3-256 PSS: %#x", rv)
		}
		s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignInit", U(h), pssMech(ck.CKM_SHA3_256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 32), U(priv))
	})
}

// ecdh derives a readable generic secret from priv and peer's public key,
// with CKD_NULL, and returns its value.
func (s *asymSession) ecdh(priv, peer uint64) []byte {
	s.T.Helper()
	point := s.attr(peer, ck.CKA_EC_POINT)
	k := s.Must(ck.CKR_OK, "C_DeriveKey", U(s.h), MP(ck.CKM_ECDH1_DERIVE, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: point}.Param()),
		U(priv), T(readable(ck.CKK_GENERIC_SECRET)...), None())[4].Ulong
	return s.attr(k, ck.CKA_VALUE)
}

// pointOctets is a public key in the DER OCTET STRING CKA_EC_POINT holds.
func pointOctets(p []byte) []byte {
	return append([]byte{4, byte(len(p))}, p...)
}
