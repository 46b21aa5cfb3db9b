package e2e

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"math/big"
	"testing"

	"github.com/miekg/pkcs11"
	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/ck"
)

// The message-based functions of PKCS#11 3.0 through the built module and
// a real daemon.

func msgModule(t *testing.T) (*pkcs11.Ctx, *daemonProc, *msgFuncs, uint) {
	t.Helper()
	p, d := withModule(t)
	f, err := messageFuncs(need(t).module)
	if err != nil {
		t.Fatal(err)
	}
	return p, d, f, newToken(t, p, "messages")
}

// aesTokenKey creates a token AES-256 key of a known value.
func aesTokenKey(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, label string, value []byte) pkcs11.ObjectHandle {
	t.Helper()
	k, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// findKey finds the key labelled label.
func findKey(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, label string) pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
		t.Fatal(err)
	}
	defer p.FindObjectsFinal(h)
	objs, _, err := p.FindObjects(h, 2)
	if err != nil || len(objs) != 1 {
		t.Fatalf("find %q: %v %v", label, objs, err)
	}
	return objs[0]
}

// ivMark reads a key's CKA_HSMEMU_IV_COUNTER: its high-water mark.
func ivMark(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, key pkcs11.ObjectHandle) uint64 {
	t.Helper()
	v := attrOf(t, p, h, key, ck.CKA_HSMEMU_IV_COUNTER)
	if len(v) != 16 {
		t.Fatalf("CKA_HSMEMU_IV_COUNTER of %d bytes", len(v))
	}
	return binary.BigEndian.Uint64(v)
}

var gcmMech = uint(ck.CKM_AES_GCM)

// TestMessageIVsAcrossCrashes encrypts batches of messages with IVs the
// token makes, killing the daemon (SIGKILL) between them: no IV comes
// twice, each message decrypts with crypto/cipher, and the key's stored
// high-water mark is past every counter handed out before the next is.
func TestMessageIVsAcrossCrashes(t *testing.T) {
	p, d, f, slot := msgModule(t)
	value := bytes.Repeat([]byte{0x3C}, 32)
	h := rwSession(t, p, slot, true)
	aesTokenKey(t, p, h, "gcm", value)
	b, _ := aes.NewCipher(value)
	g, _ := cipher.NewGCM(b)
	fixed := []byte{0xDE, 0xAD, 0xBE, 0xEF}

	seen := map[string]bool{}
	var max uint64
	for batch := 0; batch < 3; batch++ {
		if batch > 0 {
			d.restart() // kill -9, start again on the same state
			h = rwSession(t, p, slot, true)
		}
		key := findKey(t, p, h, "gcm")
		if batch > 0 {
			if m := ivMark(t, p, h, key); m <= max {
				t.Fatalf("batch %d: the stored mark %d is not past the last counter handed out, %d", batch, m, max)
			}
		}
		if err := f.Init(msgEncrypt, h, &gcmMech, nil, key); err != nil {
			t.Fatal(err)
		}
		first := true
		for i := 0; i < 50; i++ {
			msg := []byte(fmt.Sprintf("batch %d message %d", batch, i))
			aad := []byte{byte(batch), byte(i)}
			pm := gcmParam(append(append([]byte{}, fixed...), make([]byte, 8)...), 32, ck.CKG_GENERATE_COUNTER)
			ct, _, err := f.One(msgEncrypt, h, pm, aad, msg, want(64), nil)
			if err != nil {
				t.Fatalf("batch %d message %d: %v", batch, i, err)
			}
			if seen[string(pm.IV)] {
				t.Fatalf("batch %d message %d: IV %x again", batch, i, pm.IV)
			}
			seen[string(pm.IV)] = true
			if !bytes.Equal(pm.IV[:4], fixed) {
				t.Fatalf("IV %x lost its fixed part", pm.IV)
			}
			c := binary.BigEndian.Uint64(pm.IV[4:])
			if !first && c != max+1 || first && batch > 0 && c <= max {
				t.Fatalf("batch %d message %d: counter %d after %d", batch, i, c, max)
			}
			first, max = false, c
			if pt, err := g.Open(nil, pm.IV, append(ct, pm.Tag...), aad); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("batch %d message %d: crypto/cipher does not open it: %v", batch, i, err)
			}
		}
		if m := ivMark(t, p, h, key); m <= max {
			t.Fatalf("batch %d: mark %d, counter %d", batch, m, max)
		}
	}
	if len(seen) != 150 {
		t.Fatalf("%d distinct IVs for 150 messages", len(seen))
	}
}

func TestMessageEncryption(t *testing.T) {
	p, _, f, slot := msgModule(t)
	h := rwSession(t, p, slot, true)
	value := bytes.Repeat([]byte{0x5E}, 32)
	key := aesTokenKey(t, p, h, "aes", value)
	b, _ := aes.NewCipher(value)
	g, _ := cipher.NewGCM(b)

	if _, _, err := f.One(msgEncrypt, h, gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE), nil, []byte("x"), want(64), nil); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("not initialised: %v", err)
	}
	if err := f.Final(msgEncrypt, h); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Final without Init: %v", err)
	}
	// The specification's own example passes the message parameter at Init.
	if err := f.Init(msgEncrypt, h, &gcmMech, gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE), key); err != nil {
		t.Fatal(err)
	}
	if err := f.Init(msgEncrypt, h, &gcmMech, nil, key); !is(err, pkcs11.CKR_OPERATION_ACTIVE) {
		t.Fatalf("second Init: %v", err)
	}

	// A size query, then the call: the same message, the IV and tag only
	// with the ciphertext.
	pm := gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE)
	if out, n, err := f.One(msgEncrypt, h, pm, []byte("aad"), []byte("hello"), output{null: true}, nil); err != nil || n != 5 || out != nil {
		t.Fatalf("size query: %d %v", n, err)
	}
	if !bytes.Equal(pm.IV, make([]byte, 12)) || !bytes.Equal(pm.Tag, make([]byte, 16)) {
		t.Fatal("a size query wrote the IV or the tag")
	}
	ct, _, err := f.One(msgEncrypt, h, pm, []byte("aad"), []byte("hello"), want(64), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := g.Open(nil, pm.IV, append(ct, pm.Tag...), []byte("aad")); err != nil || string(pt) != "hello" {
		t.Fatalf("crypto/cipher: %q %v", pt, err)
	}

	// In parts.
	mp := gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE_COUNTER)
	if err := f.Begin(msgEncrypt, h, mp, []byte("hdr")); err != nil {
		t.Fatal(err)
	}
	iv := append([]byte{}, mp.IV...)
	var whole []byte
	for i, part := range []string{"one ", "two ", "three"} {
		flags := uint(0)
		if i == 2 {
			flags = ck.CKF_END_OF_MESSAGE
		}
		out, _, err := f.Next(msgEncrypt, h, mp, []byte(part), want(64), flags, nil)
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		whole = append(whole, out...)
	}
	if pt, err := g.Open(nil, iv, append(whole, mp.Tag...), []byte("hdr")); err != nil || string(pt) != "one two three" {
		t.Fatalf("parts: %q %v", pt, err)
	}

	// The parameter's faults end the message, not the process.
	for name, bad := range map[string]*msgParam{
		"no parameter":            nil,
		"a parameter of bytes":    {Raw: make([]byte, 20)},
		"the caller's IV":         gcmParam(make([]byte, 12), 0, ck.CKG_NO_GENERATE),
		"a counter in 16 bytes":   gcmParam(make([]byte, 16), 0, ck.CKG_GENERATE_COUNTER),
		"33 fixed bits":           gcmParam(make([]byte, 12), 33, ck.CKG_GENERATE_COUNTER),
		"ChaCha20-Poly1305's one": {ChaCha: true, IV: make([]byte, 12), Tag: make([]byte, 16)},
		"random bits under 96":    gcmParam(make([]byte, 12), 1, ck.CKG_GENERATE_RANDOM),
		"an unknown IV generator": gcmParam(make([]byte, 12), 0, 99),
		"a tag buffer of 64 bits": {GCM: true, IV: make([]byte, 12), Generator: ck.CKG_GENERATE, Tag: make([]byte, 8), TagBits: 64},
		"no tag buffer":           {GCM: true, IV: make([]byte, 12), Generator: ck.CKG_GENERATE, TagBits: 128},
		"a generator for no IV":   {GCM: true, Generator: ck.CKG_GENERATE, Tag: make([]byte, 16), TagBits: 128},
	} {
		if _, _, err := f.One(msgEncrypt, h, bad, nil, []byte("x"), want(64), nil); !is(err, pkcs11.CKR_MECHANISM_PARAM_INVALID) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A Next with no length pointer: the module refuses it, and the
	// message it continued is over.
	if err := f.Begin(msgEncrypt, h, gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.Next(msgEncrypt, h, gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE), []byte("x"), output{noLen: true}, 0, nil); !is(err, pkcs11.CKR_ARGUMENTS_BAD) {
		t.Fatalf("no length pointer: %v", err)
	}
	if _, _, err := f.Next(msgEncrypt, h, gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE), []byte("x"), want(64), 0, nil); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Next after the refusal: %v", err)
	}
	// Random IVs.
	rp := gcmParam(make([]byte, 12), 0, ck.CKG_GENERATE_RANDOM)
	ct, _, err = f.One(msgEncrypt, h, rp, nil, []byte("random"), want(64), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := g.Open(nil, rp.IV, append(ct, rp.Tag...), nil); err != nil || string(pt) != "random" {
		t.Fatalf("random IV: %v", err)
	}
	if err := f.Final(msgEncrypt, h); err != nil {
		t.Fatal(err)
	}

	// Decryption: whole, in parts, and a tag that does not match.
	if err := f.Init(msgDecrypt, h, &gcmMech, nil, key); err != nil {
		t.Fatal(err)
	}
	dp := &msgParam{GCM: true, IV: iv, Tag: mp.Tag, TagBits: 128}
	if pt, _, err := f.One(msgDecrypt, h, dp, []byte("hdr"), whole, want(64), nil); err != nil || string(pt) != "one two three" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	bad := &msgParam{GCM: true, IV: iv, Tag: append([]byte{^mp.Tag[0]}, mp.Tag[1:]...), TagBits: 128}
	if _, _, err := f.One(msgDecrypt, h, bad, []byte("hdr"), whole, want(64), nil); !is(err, ck.CKR_AEAD_DECRYPT_FAILED) {
		t.Fatalf("a wrong tag: %v", err)
	}
	if err := f.Begin(msgDecrypt, h, &msgParam{GCM: true, IV: iv, TagBits: 128}, []byte("hdr")); err != nil {
		t.Fatal(err)
	}
	if out, _, err := f.Next(msgDecrypt, h, &msgParam{GCM: true, IV: iv, TagBits: 128}, whole[:4], want(64), 0, nil); err != nil || len(out) != 0 {
		t.Fatalf("a part: %x %v", out, err)
	}
	if pt, _, err := f.Next(msgDecrypt, h, dp, whole[4:], want(64), ck.CKF_END_OF_MESSAGE, nil); err != nil || string(pt) != "one two three" {
		t.Fatalf("the last part: %q %v", pt, err)
	}
	if err := f.Final(msgDecrypt, h); err != nil {
		t.Fatal(err)
	}

	// ChaCha20-Poly1305: the caller's nonce, 12 or 24 bytes.
	cv := bytes.Repeat([]byte{0x77}, 32)
	ckey, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ck.CKK_CHACHA20),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE, cv),
	})
	if err != nil {
		t.Fatal(err)
	}
	chacha := uint(ck.CKM_CHACHA20_POLY1305)
	if err := f.Init(msgEncrypt, h, &chacha, nil, ckey); err != nil {
		t.Fatal(err)
	}
	if err := f.Init(msgDecrypt, h, &chacha, nil, ckey); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{12, 24} {
		nonce := bytes.Repeat([]byte{byte(n)}, n)
		cp := &msgParam{ChaCha: true, IV: nonce, Tag: make([]byte, 16)}
		ct, _, err := f.One(msgEncrypt, h, cp, []byte("aad"), []byte("chacha"), want(64), nil)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := chacha20poly1305.New(cv)
		if n == 24 {
			a, _ = chacha20poly1305.NewX(cv)
		}
		if pt, err := a.Open(nil, nonce, append(ct, cp.Tag...), []byte("aad")); err != nil || string(pt) != "chacha" {
			t.Fatalf("nonce of %d: x/crypto: %v", n, err)
		}
		if pt, _, err := f.One(msgDecrypt, h, &msgParam{ChaCha: true, IV: nonce, Tag: cp.Tag}, []byte("aad"), ct, want(64), nil); err != nil || string(pt) != "chacha" {
			t.Fatalf("nonce of %d: decrypt: %q %v", n, pt, err)
		}
	}
	if _, _, err := f.One(msgDecrypt, h, &msgParam{ChaCha: true, IV: make([]byte, 12), Tag: make([]byte, 16)}, nil, []byte("xx"), want(64), nil); !is(err, ck.CKR_AEAD_DECRYPT_FAILED) {
		t.Fatalf("ChaCha20-Poly1305 with a wrong tag: %v", err)
	}
	// An Init with no mechanism ends the process.
	if err := f.Init(msgEncrypt, h, nil, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Final(msgEncrypt, h); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Final after an Init with no mechanism: %v", err)
	}
}

func TestMessageSignatures(t *testing.T) {
	p, _, f, slot := msgModule(t)
	h := rwSession(t, p, slot, true)
	msgs := []string{"first", "second", ""}

	// sign signs each message and a multi-part one, checks the single
	// messages with check, and has the token verify all of them.
	sign := func(name string, mech uint, param []byte, priv, pub pkcs11.ObjectHandle, multi bool, check func(msg string, sig []byte) bool) {
		t.Helper()
		mp := &msgParam{Raw: param}
		if param == nil {
			mp = nil
		}
		if err := f.Init(msgSign, h, &mech, mp, priv); err != nil {
			t.Fatalf("%s: Init: %v", name, err)
		}
		if err := f.Init(msgVerify, h, &mech, mp, pub); err != nil {
			t.Fatalf("%s: verify Init: %v", name, err)
		}
		for _, msg := range msgs {
			sig, _, err := f.One(msgSign, h, nil, nil, []byte(msg), want(1024), nil)
			if err != nil || !check(msg, sig) {
				t.Fatalf("%s: %q: %v", name, msg, err)
			}
			if _, _, err := f.One(msgVerify, h, nil, nil, []byte(msg), output{}, sig); err != nil {
				t.Fatalf("%s: verify %q: %v", name, msg, err)
			}
			if _, _, err := f.One(msgVerify, h, nil, nil, []byte(msg+"!"), output{}, sig); !is(err, pkcs11.CKR_SIGNATURE_INVALID) {
				t.Fatalf("%s: verify another message: %v", name, err)
			}
		}
		if multi {
			if err := f.Begin(msgSign, h, nil, nil); err != nil {
				t.Fatalf("%s: Begin: %v", name, err)
			}
			if _, _, err := f.Next(msgSign, h, nil, []byte("in "), output{noLen: true}, 0, nil); err != nil {
				t.Fatalf("%s: a part: %v", name, err)
			}
			sig, _, err := f.Next(msgSign, h, nil, []byte("parts"), want(1024), 0, nil)
			if err != nil || !check("in parts", sig) {
				t.Fatalf("%s: in parts: %v", name, err)
			}
			if err := f.Begin(msgVerify, h, nil, nil); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.Next(msgVerify, h, nil, []byte("in "), output{}, 0, nil); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.Next(msgVerify, h, nil, []byte("parts"), output{}, 0, sig); err != nil {
				t.Fatalf("%s: verify in parts: %v", name, err)
			}
		} else if err := f.Begin(msgSign, h, nil, nil); !is(err, pkcs11.CKR_FUNCTION_NOT_SUPPORTED) {
			t.Fatalf("%s: single-part Begin: %v", name, err)
		}
		if _, _, err := f.One(msgSign, h, &msgParam{Raw: []byte{1, 2}}, nil, []byte("x"), want(1024), nil); !is(err, pkcs11.CKR_MECHANISM_PARAM_INVALID) {
			t.Fatalf("%s: a message parameter: %v", name, err)
		}
		if err := f.Final(msgSign, h); err != nil {
			t.Fatal(err)
		}
		if err := f.Final(msgVerify, h); err != nil {
			t.Fatal(err)
		}
	}

	// ECDSA with SHA-256, on P-256.
	pub, priv := genPair(t, p, h, pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})))
	x, y := elliptic.Unmarshal(elliptic.P256(), pointOf(t, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT)))
	ek := &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}
	sign("ECDSA_SHA256", ck.CKM_ECDSA_SHA256, nil, priv, pub, true, func(msg string, sig []byte) bool {
		d := sha256.Sum256([]byte(msg))
		return len(sig) == 64 && ecdsa.Verify(ek, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	})

	// RSA-PSS with SHA-256: the parameter at Init.
	pub, priv = genPair(t, p, h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048))
	rk := &rsa.PublicKey{N: new(big.Int).SetBytes(attrOf(t, p, h, pub, pkcs11.CKA_MODULUS)), E: 65537}
	pss := pkcs11.NewPSSParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, 32)
	sign("SHA256_RSA_PKCS_PSS", ck.CKM_SHA256_RSA_PKCS_PSS, pss, priv, pub, true, func(msg string, sig []byte) bool {
		d := sha256.Sum256([]byte(msg))
		return rsa.VerifyPSS(rk, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: 32}) == nil
	})

	// Ed25519: single-part.
	pub, priv = genPair(t, p, h, ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ecParamsOf(asn1.ObjectIdentifier{1, 3, 101, 112})))
	edk := ed25519.PublicKey(pointOf(t, attrOf(t, p, h, pub, pkcs11.CKA_EC_POINT)))
	sign("EDDSA", ck.CKM_EDDSA, nil, priv, pub, false, func(msg string, sig []byte) bool {
		return ed25519.Verify(edk, []byte(msg), sig)
	})

	// HMAC-SHA256, one key both ways.
	mac := bytes.Repeat([]byte{0x0B}, 32)
	k := hmacKey(t, p, h, "mac", mac)
	sign("SHA256_HMAC", ck.CKM_SHA256_HMAC, nil, k, k, true, func(msg string, sig []byte) bool {
		m := hmac.New(sha256.New, mac)
		m.Write([]byte(msg))
		return hmac.Equal(sig, m.Sum(nil))
	})
}
