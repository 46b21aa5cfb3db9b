package mech

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"hsmemu/daemon/mech/internal/rsaraw"
)

// Signatures made with OpenSSL's private operation and the encodings here
// verify with crypto/rsa, for every hash, PKCS#1 v1.5 and PSS with
// several salts (an empty one too), and moduli whose bit length is and is
// not one more than a multiple of 8 (where PSS's encoded message is a
// byte shorter than the modulus). PKCS#1 v1.5 is deterministic: the same
// signature as crypto/rsa's.
func TestRSASigningEncodings(t *testing.T) {
	for _, bits := range []int{2048, 2049} {
		priv, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		sk := &rsaSigningKey{priv: priv}
		raw, err := rsaraw.New(priv)
		if err != nil {
			t.Fatal(err)
		}
		sk.raw = raw
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			d := h.New()
			d.Write([]byte("message"))
			digest := d.Sum(nil)
			sig, err := sk.signPKCS1v15(h, digest)
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPKCS1v15(&priv.PublicKey, h, digest, sig); err != nil {
				t.Fatalf("%d bits, %v: PKCS#1 v1.5: %v", bits, h, err)
			}
			want, _ := rsa.SignPKCS1v15(nil, priv, h, digest)
			if !bytes.Equal(sig, want) {
				t.Fatalf("%d bits, %v: not crypto/rsa's signature", bits, h)
			}
			for _, salt := range []int{0, 20, h.Size()} {
				sig, err := sk.signPSS(h, digest, salt)
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyPSS(&priv.PublicKey, h, digest, sig, salt); err != nil {
					t.Fatalf("%d bits, %v, salt %d: PSS: %v", bits, h, salt, err)
				}
				if salt > 0 {
					if err := rsa.VerifyPSS(&priv.PublicKey, h, digest, sig, &rsa.PSSOptions{SaltLength: salt}); err != nil {
						t.Fatalf("%d bits, %v, salt %d: crypto/rsa: %v", bits, h, salt, err)
					}
				}
			}
		}
		// A DigestInfo the caller made (CKM_RSA_PKCS) is signed as given.
		di := append(bytes.Clone(digestInfoPrefix[crypto.SHA256]), make([]byte, 32)...)
		sig, err := sk.signPKCS1v15(0, di)
		if err != nil {
			t.Fatal(err)
		}
		if err := rsa.VerifyPKCS1v15(&priv.PublicKey, crypto.SHA256, make([]byte, 32), sig); err != nil {
			t.Fatalf("raw DigestInfo: %v", err)
		}
		// Wrong digest lengths are refused, not signed.
		if _, err := sk.signPKCS1v15(crypto.SHA256, make([]byte, 31)); err == nil {
			t.Fatal("a 31-byte SHA-256 digest was signed")
		}
		if _, err := sk.signPSS(crypto.SHA256, make([]byte, 20), 0); err == nil {
			t.Fatal("a 20-byte SHA-256 digest was signed with PSS")
		}
	}
}
