package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// The post-quantum keys and the 3.2 interface through the built module
// and a real daemon: every parameter set round trips, the refusals have
// their CK_RVs, the keys interoperate with Go's crypto/mlkem and circl,
// and a sample of Wycheproof's vectors passes through the C module.

func pqcModule(t *testing.T) (*pkcs11.Ctx, *funcs32, uint) {
	t.Helper()
	p, _ := withModule(t)
	f, err := list32(need(t).module)
	if err != nil {
		t.Fatal(err)
	}
	return p, f, newToken(t, p, "post-quantum")
}

func pqPair(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, gen, set uint) (pkcs11.ObjectHandle, pkcs11.ObjectHandle) {
	t.Helper()
	pub, priv, err := p.GenerateKeyPair(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(gen, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(ck.CKA_PARAMETER_SET, set)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true)})
	if err != nil {
		t.Fatalf("generate %#x set %d: %v", gen, set, err)
	}
	return pub, priv
}

func rvOf(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	if err == nil {
		return ck.CKR_OK
	}
	return ^uint(0)
}

func TestPQCSignaturesThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	verifyWith := map[uint]func(pk, msg, ctx, sig []byte) bool{
		ck.CKP_ML_DSA_44: func(pk, msg, ctx, sig []byte) bool {
			var k mldsa44.PublicKey
			return k.UnmarshalBinary(pk) == nil && mldsa44.Verify(&k, msg, ctx, sig)
		},
		ck.CKP_ML_DSA_65: func(pk, msg, ctx, sig []byte) bool {
			var k mldsa65.PublicKey
			return k.UnmarshalBinary(pk) == nil && mldsa65.Verify(&k, msg, ctx, sig)
		},
		ck.CKP_ML_DSA_87: func(pk, msg, ctx, sig []byte) bool {
			var k mldsa87.PublicKey
			return k.UnmarshalBinary(pk) == nil && mldsa87.Verify(&k, msg, ctx, sig)
		},
	}
	type pair struct{ pub, priv pkcs11.ObjectHandle }
	var pairs []pair
	for _, set := range []uint{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87} {
		pub, priv := pqPair(t, p, h, ck.CKM_ML_DSA_KEY_PAIR_GEN, set)
		pairs = append(pairs, pair{pub, priv})
		msg, ctx := []byte("through the module"), []byte("context")
		c := &sigCtx{hedge: ck.CKH_HEDGE_REQUIRED, ctx: ctx}
		sig, err := f.sig(callSign, h, ck.CKM_ML_DSA, c, priv, msg, nil)
		if err != nil {
			t.Fatalf("set %d: sign: %v", set, err)
		}
		// circl verifies the token's signature outside the daemon.
		if !verifyWith[set](attrOf(t, p, h, pub, pkcs11.CKA_VALUE), msg, ctx, sig) {
			t.Errorf("set %d: circl refuses the signature", set)
		}
		for _, call := range []sigCall{callVerify, callVerifySignature} {
			if _, err := f.sig(call, h, ck.CKM_ML_DSA, c, pub, msg, sig); err != nil {
				t.Errorf("set %d call %d: %v", set, call, err)
			}
			if _, err := f.sig(call, h, ck.CKM_ML_DSA, &sigCtx{ctx: []byte("other")}, pub, msg, sig); rvOf(err) != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("set %d call %d, wrong context: %v", set, call, err)
			}
			flipped := bytes.Clone(sig)
			flipped[len(sig)-40] ^= 4
			if _, err := f.sig(call, h, ck.CKM_ML_DSA, c, pub, msg, flipped); rvOf(err) != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("set %d call %d, flipped bit: %v", set, call, err)
			}
			if _, err := f.sig(call, h, ck.CKM_ML_DSA, c, pub, msg, sig[:len(sig)-3]); rvOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
				t.Errorf("set %d call %d, truncated: %v", set, call, err)
			}
		}
		// Deterministic signatures repeat through the module too.
		d := &sigCtx{hedge: ck.CKH_DETERMINISTIC_REQUIRED}
		s1, err1 := f.sig(callSign, h, ck.CKM_ML_DSA, d, priv, msg, nil)
		s2, err2 := f.sig(callSign, h, ck.CKM_ML_DSA, d, priv, msg, nil)
		if err1 != nil || err2 != nil || !bytes.Equal(s1, s2) {
			t.Errorf("set %d: deterministic: %v %v", set, err1, err2)
		}
		if _, err := f.sig(callSign, h, ck.CKM_ML_DSA, &sigCtx{hedge: 7}, priv, msg, nil); rvOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("set %d: unknown hedge: %v", set, err)
		}
	}
	// A public key of another parameter set.
	sig, err := f.sig(callSign, h, ck.CKM_ML_DSA, nil, pairs[1].priv, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.sig(callVerify, h, ck.CKM_ML_DSA, nil, pairs[0].pub, []byte("m"), sig); rvOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
		t.Errorf("ML-DSA-65 signature, ML-DSA-44 key: %v", err)
	}

	// circl's signature verifies on the token.
	cp, cs, _ := mldsa87.GenerateKey(nil)
	csig := make([]byte, mldsa87.SignatureSize)
	if err := mldsa87.SignTo(cs, []byte("from circl"), []byte("c"), true, csig); err != nil {
		t.Fatal(err)
	}
	imported, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ck.CKK_ML_DSA),
		pkcs11.NewAttribute(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_87),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, cp.Bytes()),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.sig(callVerifySignature, h, ck.CKM_ML_DSA, &sigCtx{ctx: []byte("c")}, imported, []byte("from circl"), csig); err != nil {
		t.Errorf("circl's signature: %v", err)
	}

	// SLH-DSA, every parameter set: the fast ones sign pure and hashed,
	// the small ("s") ones once.
	for set := uint(ck.CKP_SLH_DSA_SHA2_128S); set <= ck.CKP_SLH_DSA_SHAKE_256F; set++ {
		pub, priv := pqPair(t, p, h, ck.CKM_SLH_DSA_KEY_PAIR_GEN, set)
		mechs := []uint{ck.CKM_SLH_DSA}
		if small := (set-1)%4 < 2; !small {
			// The "s" sets sign slowly: one signature each is enough.
			mechs = append(mechs, ck.CKM_HASH_SLH_DSA_SHA3_256)
		}
		if set == ck.CKP_SLH_DSA_SHA2_128F || set == ck.CKP_SLH_DSA_SHAKE_128F {
			mechs = append(mechs, ck.CKM_HASH_SLH_DSA_SHAKE128, ck.CKM_HASH_SLH_DSA_SHA512)
		}
		for _, m := range mechs {
			c := &sigCtx{ctx: []byte("slh")}
			sig, err := f.sig(callSign, h, m, c, priv, []byte("msg"), nil)
			if err != nil {
				t.Fatalf("SLH-DSA set %d mechanism %#x: %v", set, m, err)
			}
			if _, err := f.sig(callVerifySignature, h, m, c, pub, []byte("msg"), sig); err != nil {
				t.Errorf("SLH-DSA set %d mechanism %#x: verify: %v", set, m, err)
			}
			if _, err := f.sig(callVerify, h, m, c, pub, []byte("msh"), sig); rvOf(err) != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("SLH-DSA set %d mechanism %#x: another message: %v", set, m, err)
			}
		}
	}
	if fl, err := f.validationFlags(h); err != nil || fl != 0 {
		t.Errorf("C_GetSessionValidationFlags: %#x, %v", fl, err)
	}
	if err := f.asyncGetID(h); rvOf(err) != ck.CKR_FUNCTION_NOT_SUPPORTED {
		t.Errorf("C_AsyncGetID: %v", err)
	}
}

// TestVerifySignatureEndsThroughModule: the verification
// C_VerifySignatureInit begins ends, as PKCS#11 3.2 says, on
// C_VerifySignatureInit with a NULL mechanism (CKR_OK) and on a
// C_VerifySignatureUpdate or C_VerifySignature the module refuses
// (CKR_ARGUMENTS_BAD), so that C_VerifySignatureFinal then finds none;
// a C_VerifyInit verification beside it goes on. And the other way: a
// C_VerifyInit with a NULL mechanism, or a C_VerifyUpdate refused, ends
// the C_VerifyInit verification alone.
func TestVerifySignatureEndsThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	pub, priv := pqPair(t, p, h, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKP_ML_DSA_44)
	msg := []byte("ended")
	sig, err := f.sig(callSign, h, ck.CKM_ML_DSA, nil, priv, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for how, want := range [][3]uint{
		{ck.CKR_OK, ck.CKR_OPERATION_NOT_INITIALIZED, ck.CKR_OK},
		{ck.CKR_ARGUMENTS_BAD, ck.CKR_OPERATION_NOT_INITIALIZED, ck.CKR_OK},
		{ck.CKR_ARGUMENTS_BAD, ck.CKR_OPERATION_NOT_INITIALIZED, ck.CKR_OK},
		{ck.CKR_OK, ck.CKR_OK, ck.CKR_OPERATION_NOT_INITIALIZED},
		{ck.CKR_ARGUMENTS_BAD, ck.CKR_OK, ck.CKR_OPERATION_NOT_INITIALIZED},
	} {
		rv, err := f.verifySignatureEnd(h, how, pub, msg, sig)
		if err != nil {
			t.Fatalf("way %d: %v", how, err)
		}
		if rv != want {
			t.Errorf("way %d: the ending call %#x, then the C_VerifySignatureInit verification %#x, C_Verify %#x; want %#x", how, rv[0], rv[1], rv[2], want)
		}
	}
}

func TestMLKEMThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h1 := rwSession(t, p, slot, true)
	h2 := rwSession(t, p, slot, false)
	iv := bytes.Repeat([]byte{0x24}, 16)
	cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
	for _, tc := range []struct{ set, ctLen uint }{{ck.CKP_ML_KEM_512, 768}, {ck.CKP_ML_KEM_768, 1088}, {ck.CKP_ML_KEM_1024, 1568}} {
		pub, priv := pqPair(t, p, h1, ck.CKM_ML_KEM_KEY_PAIR_GEN, tc.set)
		_, n, k0, err := f.encapsulate(h1, pub, 0)
		if err != nil || n != uint64(tc.ctLen) || k0 != 0 {
			t.Fatalf("set %d: length query %d, key %d, %v", tc.set, n, k0, err)
		}
		ct, _, k1, err := f.encapsulate(h1, pub, 4096)
		if err != nil || len(ct) != int(tc.ctLen) {
			t.Fatalf("set %d: encapsulate: %v", tc.set, err)
		}
		// Decapsulated in another session: the AES key made from it
		// decrypts what the first encrypted.
		k2, err := f.decapsulate(h2, priv, ct)
		if err != nil {
			t.Fatalf("set %d: decapsulate: %v", tc.set, err)
		}
		if err := p.EncryptInit(h1, cbc, k1); err != nil {
			t.Fatal(err)
		}
		enc, err := p.Encrypt(h1, []byte("sealed with ML-KEM"))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.DecryptInit(h2, cbc, k2); err != nil {
			t.Fatal(err)
		}
		if dec, err := p.Decrypt(h2, enc); err != nil || string(dec) != "sealed with ML-KEM" {
			t.Fatalf("set %d: decrypted %q, %v", tc.set, dec, err)
		}
		if _, err := f.decapsulate(h2, priv, ct[:len(ct)-1]); rvOf(err) != ck.CKR_WRAPPED_KEY_LEN_RANGE {
			t.Errorf("set %d: short ciphertext: %v", tc.set, err)
		}
	}
	// Interop: Go's crypto/mlkem encapsulates to the public key the
	// token exports, and the token decapsulates to the same secret.
	pub, priv := pqPair(t, p, h1, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKP_ML_KEM_768)
	ek, err := mlkem.NewEncapsulationKey768(attrOf(t, p, h1, pub, pkcs11.CKA_VALUE))
	if err != nil {
		t.Fatal(err)
	}
	secret, ct := ek.Encapsulate()
	k, err := f.decapsulate(h1, priv, ct)
	if err != nil || !bytes.Equal(attrOf(t, p, h1, k, pkcs11.CKA_VALUE), secret) {
		t.Fatalf("crypto/mlkem's secret: %v", err)
	}
}

// TestKEMTemplatesThroughModule: CKA_ENCAPSULATE_TEMPLATE and
// CKA_DECAPSULATE_TEMPLATE travel through the module as templates, are
// read back as one, and hold what C_EncapsulateKey and C_DecapsulateKey
// make.
func TestKEMTemplatesThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	pub, priv, err := f.kemPair(h)
	if err != nil {
		t.Fatal(err)
	}
	n, types, values, err := f.encTemplate(h, pub)
	if err != nil || n != 2 || types != [2]uint64{pkcs11.CKA_KEY_TYPE, pkcs11.CKA_EXTRACTABLE} || values != [2]uint64{pkcs11.CKK_AES, 1} {
		t.Fatalf("CKA_ENCAPSULATE_TEMPLATE read back: %d %#x %#x, %v", n, types, values, err)
	}
	// A generic secret does not match the public key's template.
	if _, _, err := f.encapsulatePlain(h, pub); rvOf(err) != ck.CKR_KEY_HANDLE_INVALID {
		t.Errorf("encapsulating a generic secret: %v", err)
	}
	// An extractable AES key does.
	ct, _, k1, err := f.encapsulate(h, pub, 4096)
	if err != nil {
		t.Fatal(err)
	}
	// The private key's template makes the decapsulated key sensitive,
	// and refuses a template that says otherwise.
	if _, err := f.decapsulate(h, priv, ct); rvOf(err) != ck.CKR_TEMPLATE_INCONSISTENT {
		t.Errorf("decapsulating to a non-sensitive key: %v", err)
	}
	k2, err := f.decapsulatePlain(h, priv, ct)
	if err != nil {
		t.Fatal(err)
	}
	if v := attrOf(t, p, h, k2, pkcs11.CKA_SENSITIVE); len(v) != 1 || v[0] != 1 {
		t.Errorf("the decapsulated key's CKA_SENSITIVE: %x", v)
	}
	if _, err := p.GetAttributeValue(h, k2, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); rvOf(err) != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Errorf("the decapsulated key's CKA_VALUE: %v", err)
	}
	// Still the same secret: an HMAC with the sensitive generic secret is
	// the HMAC with the encapsulated key's value.
	if err := p.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, k2); err != nil {
		t.Fatal(err)
	}
	mac, err := p.Sign(h, []byte("kem templates"))
	if err != nil {
		t.Fatal(err)
	}
	want := hmac.New(sha256.New, attrOf(t, p, h, k1, pkcs11.CKA_VALUE))
	want.Write([]byte("kem templates"))
	if !hmac.Equal(mac, want.Sum(nil)) {
		t.Error("the two keys hold different secrets")
	}
}
