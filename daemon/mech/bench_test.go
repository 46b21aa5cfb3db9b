package mech

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The signature mechanisms in process beside the bare standard library,
// in the same run. "mech" is what C_SignInit then C_Sign cost inside the
// daemon: the constructor (which parses the key from its attributes),
// the input, the signature. "parse" is the key parsing alone, and "bare"
// the standard library's call on a key parsed once.

// benchSign runs a mechanism's sign constructor, input and signature.
func benchSign(b *testing.B, k Key, m *wire.Mechanism, in []byte) {
	b.Helper()
	sign := mechanisms[m.Type].sign
	for b.Loop() {
		op, err := sign(k, m)
		if err != nil {
			b.Fatal(err)
		}
		if err := op.Update(in); err != nil {
			b.Fatal(err)
		}
		if _, err := op.Sign(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMechECDSAP256Sign(b *testing.B) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	attrs, kt, err := PrivateKeyAttrs(priv)
	if err != nil {
		b.Fatal(err)
	}
	k := testKeyObject(b, ck.CKO_PRIVATE_KEY, kt, attrs)
	digest := sha256.Sum256([]byte("benchmark"))
	b.Run("mech", func(b *testing.B) {
		benchSign(b, k, &wire.Mechanism{Type: ck.CKM_ECDSA}, digest[:])
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdsaPrivate(k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare-SignASN1", func(b *testing.B) {
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, priv, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare-Sign", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := ecdsa.Sign(rand.Reader, priv, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMechRSA2048SignSHA256PKCS(b *testing.B) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	attrs, kt, err := PrivateKeyAttrs(priv)
	if err != nil {
		b.Fatal(err)
	}
	k := testKeyObject(b, ck.CKO_PRIVATE_KEY, kt, attrs)
	msg := []byte("benchmark message, hashed by the mechanism")
	b.Run("mech", func(b *testing.B) {
		benchSign(b, k, &wire.Mechanism{Type: ck.CKM_SHA256_RSA_PKCS}, msg)
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := rsaPrivate(k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			d := sha256.Sum256(msg)
			if _, err := rsa.SignPKCS1v15(nil, priv, crypto.SHA256, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMechEd25519Sign(b *testing.B) {
	_, priv, _ := ed25519.GenerateKey(nil)
	attrs, kt, err := PrivateKeyAttrs(priv)
	if err != nil {
		b.Fatal(err)
	}
	k := testKeyObject(b, ck.CKO_PRIVATE_KEY, kt, attrs)
	msg := []byte("benchmark message, signed whole")
	b.Run("mech", func(b *testing.B) {
		benchSign(b, k, &wire.Mechanism{Type: ck.CKM_EDDSA}, msg)
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := ed25519Private(k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare", func(b *testing.B) {
		for b.Loop() {
			ed25519.Sign(priv, msg)
		}
	})
}
