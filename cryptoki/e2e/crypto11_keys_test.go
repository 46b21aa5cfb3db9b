package e2e

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/dsa"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"hash"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// A Go program's view of the token through crypto11: every key type
// crypto11 offers, generated on the token and used as crypto11 uses it,
// each result checked with Go's standard library. What hsmemu does not
// implement is asserted as the precise refusal the caller gets, so that the
// day it is implemented the case must move to the checked ones.

// rvName names a CK_RV as miekg/pkcs11 renders it (it has no name for
// the 3.0 codes, such as CKR_CURVE_NOT_SUPPORTED: those it renders as
// "pkcs11: 0x140: ").
func rvName(rv uint) string { return pkcs11.Error(rv).Error() }

// noPanic runs f, turning a panic into a test failure: crypto11 panics
// where its interfaces have no error to return (cipher.AEAD.Seal,
// cipher.BlockMode.CryptBlocks, hash.Hash.Sum).
func noPanic(t *testing.T, what string, f func()) {
	t.Helper()
	failed := true
	defer func() {
		if failed {
			t.Fatalf("%s: crypto11 panics: %v", what, recover())
		}
	}()
	f()
	failed = false
}

// crypto11Token starts a daemon with daemonArgs, makes a token labelled
// label, and returns a function that opens crypto11 contexts on it. A
// context is closed when the test ends; a Close that blocks (a session
// never returned to crypto11's pool) fails the test instead of hanging it.
func crypto11Token(t *testing.T, label string, daemonArgs ...string) func(crypto11.Config) *crypto11.Context {
	p, _ := withModule(t, daemonArgs...)
	newToken(t, p, label)
	// crypto11 loads the module itself, in this process: finalise ours.
	p.Finalize()
	return func(cfg crypto11.Config) *crypto11.Context {
		t.Helper()
		cfg.Path, cfg.TokenLabel, cfg.Pin = need(t).module, label, userPIN
		ctx, err := crypto11.Configure(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			done := make(chan struct{})
			go func() { ctx.Close(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("crypto11's Context.Close still blocked after 30 s: a session was not returned to its pool")
			}
		})
		return ctx
	}
}

// wantRefusal fails the test unless err is the PKCS#11 error rv, as
// crypto11 passes it on (its own type, or its text where crypto11 wraps
// it with %v).
func wantRefusal(t *testing.T, what string, err error, rv uint) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted; hsmemu refused it with %s before: it is implemented now, so move it to the cases "+
			"that are checked against Go's crypto", what, rvName(rv))
	}
	if !is(err, rv) && !strings.Contains(err.Error(), rvName(rv)) {
		t.Fatalf("%s: %v, want %s", what, err, rvName(rv))
	}
}

// hashOf returns the digest of msg under h.
func hashOf(h crypto.Hash, msg []byte) []byte {
	d := h.New()
	d.Write(msg)
	return d.Sum(nil)
}

// extractable is a template for a secret key whose value the test may read
// back, to check the token's results with Go's implementation.
func extractable(t *testing.T, id, label string) crypto11.AttributeSet {
	t.Helper()
	a, err := crypto11.NewAttributeSetWithIDAndLabel([]byte(id), []byte(label))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Set(crypto11.CkaSensitive, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(crypto11.CkaExtractable, true); err != nil {
		t.Fatal(err)
	}
	return a
}

// secretValue reads a secret key's CKA_VALUE through crypto11.
func secretValue(t *testing.T, ctx *crypto11.Context, k *crypto11.SecretKey) []byte {
	t.Helper()
	a, err := ctx.GetAttribute(k, crypto11.CkaValue)
	if err != nil || a == nil {
		t.Fatalf("CKA_VALUE of an extractable, non-sensitive key: %v", err)
	}
	return a.Value
}

// TestCrypto11KeyTypes: through crypto11, on one token of a daemon with
// its default policy (no legacy algorithms, docs/mechanisms.md):
//
//   - RSA-2048, 3072 and 4096 key pairs sign PKCS#1 v1.5 with SHA-1 and
//     SHA-2 (crypto11 signs a DigestInfo with raw CKM_RSA_PKCS, which
//     signs what it is given) and PSS with SHA-2 (salt as long as the
//     hash, and explicit lengths), and decrypt PKCS#1 v1.5 and OAEP (SHA-1
//     and SHA-2, with and without a label) what Go encrypted. PSS with
//     SHA-1 is CKR_MECHANISM_PARAM_INVALID, RSA-1024 CKR_KEY_SIZE_RANGE.
//   - ECDSA key pairs on P-224, P-256, P-384 and P-521 sign digests of
//     every length (shorter and longer than the curve's order); crypto11's
//     other curves (P-192, the binary K- and B- curves) are
//     CKR_CURVE_NOT_SUPPORTED.
//   - DSA key pairs and DES3 keys are CKR_MECHANISM_INVALID (legacy).
//   - AES-128, 192 and 256 keys encrypt and decrypt CBC (as a
//     cipher.BlockMode, multi-part) and GCM (crypto11's 16-byte nonces, and
//     12-byte ones), as crypto/aes does, and refuse a changed GCM
//     ciphertext or other additional data; a default (sensitive) AES key
//     keeps its value and still works; AES-64 is
//     CKR_ATTRIBUTE_VALUE_INVALID.
//   - Generic secret keys compute HMAC with SHA-1, SHA-2 and SHA-512/224
//     and /256 as crypto/hmac does, whatever the message and key lengths;
//     crypto11's other HMAC mechanisms (MD5, RIPEMD-160, and every
//     _GENERAL form) are CKR_MECHANISM_INVALID.
//   - crypto11's HMAC key types (CipherHMACSHA1 to CipherHMACSHA512) are
//     CKR_MECHANISM_INVALID: crypto11 asks first for nShield's vendor key
//     generation mechanisms, and gives up on that answer.
//   - The token's random reader, and certificates imported, found and
//     paired with their key.
//
// TestCrypto11LegacyAlgorithms runs what the legacy policy adds.
func TestCrypto11KeyTypes(t *testing.T) {
	configure := crypto11Token(t, "keytypes")
	ctx := configure(crypto11.Config{})
	msg := []byte("hsmemu: a message for crypto11")

	t.Run("RSA", func(t *testing.T) {
		for _, bits := range []int{2048, 3072, 4096} {
			t.Run(fmt.Sprint(bits), func(t *testing.T) {
				id := fmt.Sprintf("rsa%d", bits)
				key, err := ctx.GenerateRSAKeyPairWithLabel([]byte(id), []byte(id), bits)
				if err != nil {
					t.Fatalf("GenerateRSAKeyPair(%d): %v", bits, err)
				}
				pub, ok := key.Public().(*rsa.PublicKey)
				if !ok || pub.N.BitLen() != bits || pub.E != 65537 {
					t.Fatalf("the public key: %T %v", key.Public(), key.Public())
				}
				checkRSA(t, key, pub, msg, bits == 2048, false)

				// Found again by its id, the same key; gone once deleted.
				found, err := ctx.FindKeyPair([]byte(id), nil)
				if err != nil || found == nil || !pub.Equal(found.Public()) {
					t.Fatalf("FindKeyPair(%s): %v %v", id, found, err)
				}
				if bits == 2048 {
					checkCertificates(t, ctx, key, id)
				}
				if err := key.Delete(); err != nil {
					t.Fatal(err)
				}
				// crypto11 reports a key pair it does not find as an error.
				if found, err := ctx.FindKeyPair([]byte(id), nil); found != nil || err == nil || !strings.Contains(err.Error(), "not found") {
					t.Fatalf("FindKeyPair(%s) after Delete: %v %v", id, found, err)
				}
			})
		}
		t.Run("1024 refused", func(t *testing.T) {
			k, err := ctx.GenerateRSAKeyPair([]byte("rsa1024"), 1024)
			if err == nil {
				k.Delete()
			}
			wantRefusal(t, "GenerateRSAKeyPair(1024)", err, pkcs11.CKR_KEY_SIZE_RANGE)
		})
	})

	t.Run("ECDSA", func(t *testing.T) {
		for _, curve := range []elliptic.Curve{elliptic.P224(), elliptic.P256(), elliptic.P384(), elliptic.P521()} {
			name := curve.Params().Name
			t.Run(name, func(t *testing.T) {
				key, err := ctx.GenerateECDSAKeyPairWithLabel([]byte("ec"+name), []byte(name), curve)
				if err != nil {
					t.Fatalf("GenerateECDSAKeyPair(%s): %v", name, err)
				}
				pub, ok := key.Public().(*ecdsa.PublicKey)
				if !ok || pub.Curve != curve {
					t.Fatalf("the public key: %T %v", key.Public(), key.Public())
				}
				// Digests shorter and longer than the order: ECDSA takes
				// the leftmost bits of a long one, as Go does.
				for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
					d := hashOf(h, msg)
					sig, err := key.Sign(rand.Reader, d, h)
					if err != nil {
						t.Fatalf("%s sign %v: %v", name, h, err)
					}
					if !ecdsa.VerifyASN1(pub, d, sig) {
						t.Fatalf("%s: the signature of a %v digest does not verify", name, h)
					}
					if ecdsa.VerifyASN1(pub, hashOf(h, append(msg, '!')), sig) {
						t.Fatalf("%s: the signature verifies for another message", name)
					}
				}
				if err := key.Delete(); err != nil {
					t.Fatal(err)
				}
			})
		}
		// crypto11 names these curves too (by OID); crypto/elliptic has
		// none of them, and crypto11 reads only the name.
		for _, name := range []string{"P-192", "K-163", "K-233", "K-283", "K-409", "K-571",
			"B-163", "B-233", "B-283", "B-409", "B-571"} {
			t.Run(name+" refused", func(t *testing.T) {
				_, err := ctx.GenerateECDSAKeyPair([]byte("ec"+name), &elliptic.CurveParams{Name: name})
				wantRefusal(t, "GenerateECDSAKeyPair("+name+")", err, pkcs11.CKR_CURVE_NOT_SUPPORTED)
			})
		}
	})

	// The legacy algorithms, off by default.
	t.Run("DSA refused", func(t *testing.T) {
		var params dsa.Parameters
		if err := dsa.GenerateParameters(&params, rand.Reader, dsa.L1024N160); err != nil {
			t.Fatal(err)
		}
		_, err := ctx.GenerateDSAKeyPair([]byte("dsa"), &params)
		wantRefusal(t, "GenerateDSAKeyPair", err, pkcs11.CKR_MECHANISM_INVALID)
	})

	t.Run("AES", func(t *testing.T) {
		ctx12 := configure(crypto11.Config{GCMIVLength: 12})
		for _, bits := range []int{128, 192, 256} {
			t.Run(fmt.Sprint(bits), func(t *testing.T) {
				id := fmt.Sprintf("aes%d", bits)
				key, err := ctx.GenerateSecretKeyWithAttributes(extractable(t, id, id), bits, crypto11.CipherAES)
				if err != nil {
					t.Fatalf("GenerateSecretKey(AES, %d): %v", bits, err)
				}
				value := secretValue(t, ctx, key)
				if len(value) != bits/8 {
					t.Fatalf("CKA_VALUE of %d bytes, want %d", len(value), bits/8)
				}
				block, err := aes.NewCipher(value)
				if err != nil {
					t.Fatal(err)
				}
				checkCBC(t, key, block)
				checkGCM(t, key, block, 16)
				// The same key, found through a context whose GCM nonces
				// are 12 bytes long.
				key12, err := ctx12.FindKey([]byte(id), nil)
				if err != nil || key12 == nil {
					t.Fatalf("FindKey(%s): %v %v", id, key12, err)
				}
				checkGCM(t, key12, block, 12)
				if err := key.Delete(); err != nil {
					t.Fatal(err)
				}
			})
		}
		t.Run("sensitive", func(t *testing.T) {
			key, err := ctx.GenerateSecretKey([]byte("aes-sensitive"), 256, crypto11.CipherAES)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ctx.GetAttribute(key, crypto11.CkaValue)
			wantRefusal(t, "CKA_VALUE of crypto11's default (sensitive) AES key", err, pkcs11.CKR_ATTRIBUTE_SENSITIVE)
			// Its results round trip.
			iv := make([]byte, 16)
			rand.Read(iv)
			pt := bytes.Repeat([]byte("0123456789abcdef"), 4)
			enc, err := key.NewCBCEncrypterCloser(iv)
			if err != nil {
				t.Fatal(err)
			}
			ct := make([]byte, len(pt))
			noPanic(t, "CBC encryption", func() { enc.CryptBlocks(ct, pt); enc.Close() })
			dec, err := key.NewCBCDecrypterCloser(iv)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(ct))
			noPanic(t, "CBC decryption", func() { dec.CryptBlocks(got, ct); dec.Close() })
			if !bytes.Equal(got, pt) || bytes.Equal(ct, pt) {
				t.Fatalf("CBC round trip: %x -> %x -> %x", pt, ct, got)
			}
			aead, err := key.NewGCM()
			if err != nil {
				t.Fatal(err)
			}
			nonce := make([]byte, aead.NonceSize())
			rand.Read(nonce)
			var sealed []byte
			noPanic(t, "GCM Seal", func() { sealed = aead.Seal(nil, nonce, msg, []byte("aad")) })
			if opened, err := aead.Open(nil, nonce, sealed, []byte("aad")); err != nil || !bytes.Equal(opened, msg) {
				t.Fatalf("GCM round trip: %q %v", opened, err)
			}
		})
		t.Run("64 refused", func(t *testing.T) {
			_, err := ctx.GenerateSecretKey([]byte("aes64"), 64, crypto11.CipherAES)
			// Not an AES key length at all: the template's CKA_VALUE_LEN is
			// invalid (CKR_KEY_SIZE_RANGE is for a size of a valid kind the
			// token does not handle, as RSA-1024 above).
			wantRefusal(t, "GenerateSecretKey(AES, 64)", err, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID)
		})
	})

	t.Run("DES3 refused", func(t *testing.T) {
		// A DES3 key's length is fixed: no CKA_VALUE_LEN (bits 0).
		_, err := ctx.GenerateSecretKey([]byte("des3"), 0, crypto11.CipherDES3)
		wantRefusal(t, "GenerateSecretKey(DES3)", err, pkcs11.CKR_MECHANISM_INVALID)
	})

	t.Run("HMAC", func(t *testing.T) {
		hmacs := []struct {
			mech int
			h    func() hash.Hash
		}{
			{pkcs11.CKM_SHA_1_HMAC, sha1.New},
			{pkcs11.CKM_SHA224_HMAC, sha256.New224},
			{pkcs11.CKM_SHA256_HMAC, sha256.New},
			{pkcs11.CKM_SHA384_HMAC, sha512.New384},
			{pkcs11.CKM_SHA512_HMAC, sha512.New},
			{pkcs11.CKM_SHA512_224_HMAC, sha512.New512_224},
			{pkcs11.CKM_SHA512_256_HMAC, sha512.New512_256},
		}
		// Keys shorter than every block, and longer than SHA-256's (HMAC
		// hashes those first).
		for _, bits := range []int{256, 1040} {
			t.Run(fmt.Sprintf("generic secret %d", bits), func(t *testing.T) {
				id := fmt.Sprintf("mac%d", bits)
				key, err := ctx.GenerateSecretKeyWithAttributes(extractable(t, id, id), bits, crypto11.CipherGeneric)
				if err != nil {
					t.Fatalf("GenerateSecretKey(generic, %d): %v", bits, err)
				}
				value := secretValue(t, ctx, key)
				if len(value) != bits/8 {
					t.Fatalf("CKA_VALUE of %d bytes, want %d", len(value), bits/8)
				}
				for _, m := range hmacs {
					for _, parts := range [][][]byte{nil, {msg}, {msg[:7], msg[7:], bytes.Repeat([]byte{0xa5}, 300)}} {
						mac, err := key.NewHMAC(m.mech, 0)
						if err != nil {
							t.Fatalf("NewHMAC(%#x): %v", m.mech, err)
						}
						want := hmac.New(m.h, value)
						for _, p := range parts {
							if _, err := mac.Write(p); err != nil {
								t.Fatalf("HMAC %#x Write: %v", m.mech, err)
							}
							want.Write(p)
						}
						var got []byte
						noPanic(t, fmt.Sprintf("HMAC %#x Sum", m.mech), func() { got = mac.Sum(nil) })
						if !hmac.Equal(got, want.Sum(nil)) {
							t.Fatalf("HMAC %#x of %d parts: %x, want %x", m.mech, len(parts), got, want.Sum(nil))
						}
						if mac.Size() != want.Size() {
							t.Fatalf("HMAC %#x: Size %d, want %d", m.mech, mac.Size(), want.Size())
						}
					}
				}
				if err := key.Delete(); err != nil {
					t.Fatal(err)
				}
			})
		}
		t.Run("mechanisms refused", func(t *testing.T) {
			key, err := ctx.GenerateSecretKey([]byte("mac-refused"), 256, crypto11.CipherGeneric)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []struct {
				name string
				mech int
			}{
				{"CKM_MD5_HMAC", pkcs11.CKM_MD5_HMAC}, {"CKM_MD5_HMAC_GENERAL", pkcs11.CKM_MD5_HMAC_GENERAL},
				{"CKM_SHA_1_HMAC_GENERAL", pkcs11.CKM_SHA_1_HMAC_GENERAL},
				{"CKM_SHA224_HMAC_GENERAL", pkcs11.CKM_SHA224_HMAC_GENERAL},
				{"CKM_SHA256_HMAC_GENERAL", pkcs11.CKM_SHA256_HMAC_GENERAL},
				{"CKM_SHA384_HMAC_GENERAL", pkcs11.CKM_SHA384_HMAC_GENERAL},
				{"CKM_SHA512_HMAC_GENERAL", pkcs11.CKM_SHA512_HMAC_GENERAL},
				{"CKM_SHA512_224_HMAC_GENERAL", pkcs11.CKM_SHA512_224_HMAC_GENERAL},
				{"CKM_SHA512_256_HMAC_GENERAL", pkcs11.CKM_SHA512_256_HMAC_GENERAL},
				{"CKM_RIPEMD160_HMAC", pkcs11.CKM_RIPEMD160_HMAC}, {"CKM_RIPEMD160_HMAC_GENERAL", pkcs11.CKM_RIPEMD160_HMAC_GENERAL},
			} {
				mac, err := key.NewHMAC(m.mech, 16)
				if err == nil {
					// Accepted: end the operation, and give crypto11 its
					// session back, before failing.
					func() { defer func() { recover() }(); mac.Sum(nil) }()
				}
				wantRefusal(t, "NewHMAC("+m.name+")", err, pkcs11.CKR_MECHANISM_INVALID)
			}
		})
		t.Run("HMAC key types refused", func(t *testing.T) {
			for _, c := range []struct {
				name   string
				cipher *crypto11.SymmetricCipher
			}{
				{"CipherHMACSHA1", crypto11.CipherHMACSHA1}, {"CipherHMACSHA224", crypto11.CipherHMACSHA224},
				{"CipherHMACSHA256", crypto11.CipherHMACSHA256}, {"CipherHMACSHA384", crypto11.CipherHMACSHA384},
				{"CipherHMACSHA512", crypto11.CipherHMACSHA512},
			} {
				_, err := ctx.GenerateSecretKey([]byte(c.name), 256, c.cipher)
				wantRefusal(t, "GenerateSecretKey("+c.name+")", err, pkcs11.CKR_MECHANISM_INVALID)
			}
		})
	})

	t.Run("random", func(t *testing.T) {
		r, err := ctx.NewRandomReader()
		if err != nil {
			t.Fatal(err)
		}
		a, b := make([]byte, 64), make([]byte, 64)
		if n, err := r.Read(a); err != nil || n != 64 {
			t.Fatalf("Read: %d %v", n, err)
		}
		if n, err := r.Read(b); err != nil || n != 64 {
			t.Fatalf("Read: %d %v", n, err)
		}
		if bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 64)) {
			t.Fatalf("random bytes %x then %x", a, b)
		}
	})
}

// checkRSA signs with the key every way crypto11 can and verifies with
// Go, and decrypts what Go encrypted; all of it with all=true, a sample
// otherwise.
//
// PSS with SHA-1 signs under the legacy policy (sha1PSS), and is
// CKR_MECHANISM_PARAM_INVALID without it.
func checkRSA(t *testing.T, key crypto11.SignerDecrypter, pub *rsa.PublicKey, msg []byte, all, sha1PSS bool) {
	t.Helper()
	hashes := []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512}
	if !all {
		hashes = []crypto.Hash{crypto.SHA1, crypto.SHA256}
	}
	for _, h := range hashes {
		d := hashOf(h, msg)
		sig, err := key.Sign(rand.Reader, d, h)
		if err != nil {
			t.Fatalf("PKCS#1 v1.5 %v: %v", h, err)
		}
		if err := rsa.VerifyPKCS1v15(pub, h, d, sig); err != nil {
			t.Fatalf("PKCS#1 v1.5 %v: the signature does not verify: %v", h, err)
		}
		// Salt lengths: the hash's, and others given explicitly (Go's
		// 0 is "auto", which crypto11 refuses itself).
		salts := []int{rsa.PSSSaltLengthEqualsHash}
		if h == crypto.SHA256 {
			salts = append(salts, 1, 20, 64)
		}
		for _, salt := range salts {
			opts := &rsa.PSSOptions{SaltLength: salt, Hash: h}
			sig, err := key.Sign(rand.Reader, d, opts)
			if h == crypto.SHA1 && !sha1PSS {
				wantRefusal(t, "PSS with SHA-1 without the legacy policy", err, pkcs11.CKR_MECHANISM_PARAM_INVALID)
				continue
			}
			if err != nil {
				t.Fatalf("PSS %v salt %d: %v", h, salt, err)
			}
			if err := rsa.VerifyPSS(pub, h, d, sig, opts); err != nil {
				t.Fatalf("PSS %v salt %d: the signature does not verify: %v", h, salt, err)
			}
		}
	}

	secret := []byte("a secret only the token can read")
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, pub, secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range []crypto.DecrypterOpts{nil, &rsa.PKCS1v15DecryptOptions{}} {
		if pt, err := key.Decrypt(rand.Reader, ct, opts); err != nil || !bytes.Equal(pt, secret) {
			t.Fatalf("PKCS#1 v1.5 decryption (%T): %q %v", opts, pt, err)
		}
	}
	for _, h := range hashes {
		if 2*h.Size()+2 > pub.Size() {
			continue // OAEP with this hash does not fit the modulus
		}
		for _, label := range [][]byte{nil, []byte("a label")} {
			ct, err := rsa.EncryptOAEP(h.New(), rand.Reader, pub, secret, label)
			if err != nil {
				t.Fatal(err)
			}
			pt, err := key.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h, Label: label})
			if err != nil || !bytes.Equal(pt, secret) {
				t.Fatalf("OAEP %v label %q: %q %v", h, label, pt, err)
			}
			// Another label: the token must refuse it.
			if pt, err := key.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: h, Label: []byte("another")}); err == nil {
				t.Fatalf("OAEP %v with the wrong label decrypts: %q", h, pt)
			}
		}
	}
}

// checkCBC encrypts and decrypts with the token's AES key in CBC mode, in
// several parts, and compares with Go's AES under the key's value.
func checkCBC(t *testing.T, key *crypto11.SecretKey, block cipher.Block) {
	t.Helper()
	bs := block.BlockSize()
	iv := make([]byte, bs)
	rand.Read(iv)
	pt := make([]byte, 5*bs)
	rand.Read(pt)
	want := make([]byte, len(pt))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(want, pt)

	enc, err := key.NewCBCEncrypterCloser(iv)
	if err != nil {
		t.Fatalf("NewCBCEncrypterCloser: %v", err)
	}
	got := make([]byte, len(pt))
	noPanic(t, "CBC encryption", func() {
		enc.CryptBlocks(got[:2*bs], pt[:2*bs])
		enc.CryptBlocks(got[2*bs:], pt[2*bs:])
		enc.Close()
	})
	if !bytes.Equal(got, want) {
		t.Fatalf("CBC encryption: %x, want %x", got, want)
	}
	// The BlockMode that is not a Closer (crypto11 ends it when it is
	// collected; here, Close at once).
	dec, err := key.NewCBCDecrypter(iv)
	if err != nil {
		t.Fatalf("NewCBCDecrypter: %v", err)
	}
	back := make([]byte, len(want))
	noPanic(t, "CBC decryption", func() {
		dec.CryptBlocks(back, want)
		if c, ok := dec.(interface{ Close() }); ok {
			c.Close()
		}
	})
	if !bytes.Equal(back, pt) {
		t.Fatalf("CBC decryption: %x, want %x", back, pt)
	}
}

// checkGCM seals and opens with the token's AES key in GCM mode with
// nonces of nonceSize bytes, and compares with Go's AES-GCM.
func checkGCM(t *testing.T, key *crypto11.SecretKey, block cipher.Block, nonceSize int) {
	t.Helper()
	aead, err := key.NewGCM()
	if err != nil {
		t.Fatalf("NewGCM: %v", err)
	}
	if aead.NonceSize() != nonceSize || aead.Overhead() != 16 {
		t.Fatalf("crypto11's GCM: nonce %d bytes, overhead %d", aead.NonceSize(), aead.Overhead())
	}
	goGCM, err := cipher.NewGCMWithNonceSize(block, nonceSize)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, nonceSize)
	rand.Read(nonce)
	for _, tc := range []struct{ pt, aad []byte }{
		{pt: []byte("hsmemu: sealed by crypto11"), aad: []byte("header")},
		{pt: []byte{}, aad: []byte("only authenticated")},
		{pt: bytes.Repeat([]byte{7}, 1000), aad: nil},
	} {
		var sealed []byte
		noPanic(t, "GCM Seal", func() { sealed = aead.Seal(nil, nonce, tc.pt, tc.aad) })
		if want := goGCM.Seal(nil, nonce, tc.pt, tc.aad); !bytes.Equal(sealed, want) {
			t.Fatalf("GCM (nonce %d) Seal of %d bytes: %x, want %x", nonceSize, len(tc.pt), sealed, want)
		}
		opened, err := aead.Open(nil, nonce, sealed, tc.aad)
		if err != nil || !bytes.Equal(opened, tc.pt) {
			t.Fatalf("GCM (nonce %d) Open: %x %v", nonceSize, opened, err)
		}
		// A changed ciphertext, or other additional data, is refused.
		bad := bytes.Clone(sealed)
		bad[0] ^= 1
		if _, err := aead.Open(nil, nonce, bad, tc.aad); err == nil {
			t.Fatalf("GCM (nonce %d) opens a changed ciphertext", nonceSize)
		}
		if _, err := aead.Open(nil, nonce, sealed, append(tc.aad, 'x')); err == nil {
			t.Fatalf("GCM (nonce %d) opens with other additional data", nonceSize)
		}
	}
}

// checkCertificates imports a certificate the key signed for itself,
// finds it by id and label, pairs it with the key, and deletes it.
func checkCertificates(t *testing.T, ctx *crypto11.Context, key crypto11.Signer, id string) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "hsmemu crypto11 " + id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("self-signing with the token's key: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatal(err)
	}
	if err := ctx.ImportCertificateWithLabel([]byte(id), []byte("cert "+id), cert); err != nil {
		t.Fatalf("ImportCertificate: %v", err)
	}
	for _, by := range []struct {
		what      string
		id, label []byte
	}{{"id", []byte(id), nil}, {"label", nil, []byte("cert " + id)}} {
		got, err := ctx.FindCertificate(by.id, by.label, nil)
		if err != nil || got == nil || !bytes.Equal(got.Raw, der) {
			t.Fatalf("FindCertificate by %s: %v %v", by.what, got, err)
		}
	}
	pairs, err := ctx.FindAllPairedCertificates()
	if err != nil {
		t.Fatal(err)
	}
	paired := false
	for _, p := range pairs {
		if len(p.Certificate) == 1 && bytes.Equal(p.Certificate[0], der) {
			s, ok := p.PrivateKey.(crypto.Signer)
			paired = ok && key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public())
		}
	}
	if !paired {
		t.Fatalf("FindAllPairedCertificates: the certificate is not paired with its key (%d pairs)", len(pairs))
	}
	if err := ctx.DeleteCertificate([]byte(id), nil, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := ctx.FindCertificate([]byte(id), nil, nil); err != nil || got != nil {
		t.Fatalf("FindCertificate after DeleteCertificate: %v %v", got, err)
	}
}

// TestCrypto11LegacyAlgorithms: with `hsmemu serve --legacy-algorithms`,
// what the default policy refuses (TestCrypto11KeyTypes) works through
// crypto11, each result checked with Go: RSA-1024 key pairs (PKCS#1 v1.5,
// PSS with SHA-1 and SHA-256, OAEP), PSS with SHA-1 on RSA-2048,
// three-key triple-DES keys in CBC as crypto/des does, and DSA key pairs
// whose signatures crypto/dsa verifies, a digest longer than the subgroup
// order taken by its leftmost bits (FIPS 186-4, 4.6).
func TestCrypto11LegacyAlgorithms(t *testing.T) {
	configure := crypto11Token(t, "legacy", "--legacy-algorithms")
	ctx := configure(crypto11.Config{})
	msg := []byte("hsmemu: a message for crypto11, legacy")

	for _, bits := range []int{1024, 2048} {
		t.Run(fmt.Sprintf("RSA-%d", bits), func(t *testing.T) {
			id := fmt.Sprintf("legacy-rsa%d", bits)
			key, err := ctx.GenerateRSAKeyPair([]byte(id), bits)
			if err != nil {
				t.Fatalf("GenerateRSAKeyPair(%d): %v", bits, err)
			}
			pub, ok := key.Public().(*rsa.PublicKey)
			if !ok || pub.N.BitLen() != bits {
				t.Fatalf("the public key: %T %v", key.Public(), key.Public())
			}
			checkRSA(t, key, pub, msg, bits == 2048, true)
			if err := key.Delete(); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("DES3", func(t *testing.T) {
		// A DES3 key's length is fixed: no CKA_VALUE_LEN (bits 0).
		key, err := ctx.GenerateSecretKeyWithAttributes(extractable(t, "des3", "des3"), 0, crypto11.CipherDES3)
		if err != nil {
			t.Fatalf("GenerateSecretKey(DES3): %v", err)
		}
		value := secretValue(t, ctx, key)
		if len(value) != 24 {
			t.Fatalf("CKA_VALUE of %d bytes, want 24", len(value))
		}
		block, err := des.NewTripleDESCipher(value)
		if err != nil {
			t.Fatal(err)
		}
		checkCBC(t, key, block)
		if _, err := key.NewGCM(); err == nil {
			t.Fatal("crypto11 offers GCM with a DES3 key")
		}
		if err := key.Delete(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("DSA", func(t *testing.T) {
		var params dsa.Parameters
		if err := dsa.GenerateParameters(&params, rand.Reader, dsa.L1024N160); err != nil {
			t.Fatal(err)
		}
		key, err := ctx.GenerateDSAKeyPairWithLabel([]byte("dsa"), []byte("dsa"), &params)
		if err != nil {
			t.Fatalf("GenerateDSAKeyPair(L1024N160): %v", err)
		}
		pub, ok := key.Public().(*dsa.PublicKey)
		if !ok || pub.P.Cmp(params.P) != 0 || pub.Q.Cmp(params.Q) != 0 || pub.G.Cmp(params.G) != 0 || pub.Y.Sign() <= 0 {
			t.Fatalf("the public key: %T %v", key.Public(), key.Public())
		}
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
			d := hashOf(h, msg)
			der, err := key.Sign(rand.Reader, d, h)
			if err != nil {
				t.Fatalf("DSA sign a %v digest: %v", h, err)
			}
			var sig struct{ R, S *big.Int }
			if rest, err := asn1.Unmarshal(der, &sig); err != nil || len(rest) != 0 {
				t.Fatalf("crypto11's DSA signature %x: %v", der, err)
			}
			// A digest longer than Q: its leftmost 160 bits.
			n := min(len(d), (params.Q.BitLen()+7)/8)
			if !dsa.Verify(pub, d[:n], sig.R, sig.S) {
				t.Fatalf("DSA: the signature of a %v digest does not verify", h)
			}
			if dsa.Verify(pub, hashOf(h, append(msg, '!'))[:n], sig.R, sig.S) {
				t.Fatalf("DSA: the signature verifies for another message")
			}
		}
		if err := key.Delete(); err != nil {
			t.Fatal(err)
		}
	})
}
