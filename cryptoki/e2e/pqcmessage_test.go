package e2e

import (
	"crypto"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/slhdsa"
	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// The message-based signature functions (C_MessageSignInit and kin, which
// the mechanism list advertises for them) with ML-DSA and SLH-DSA through
// the module: each message signed alone and in parts, with the context
// and hedging given at Init, checked with circl outside the daemon and by
// the token's C_VerifyMessage.
func TestPQCMessageSignaturesThroughModule(t *testing.T) {
	p, _, f, slot := msgModule(t)
	h := rwSession(t, p, slot, true)
	ctx := []byte("message context")
	param, free := sigCtxRaw(ck.CKH_HEDGE_REQUIRED, ctx)
	defer free()

	mlPub, mlPriv := pqPair(t, p, h, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKP_ML_DSA_44)
	var mk mldsa44.PublicKey
	if err := mk.UnmarshalBinary(attrOf(t, p, h, mlPub, pkcs11.CKA_VALUE)); err != nil {
		t.Fatal(err)
	}
	slPub, slPriv := pqPair(t, p, h, ck.CKM_SLH_DSA_KEY_PAIR_GEN, ck.CKP_SLH_DSA_SHA2_128F)
	sk := slhdsa.PublicKey{ID: slhdsa.SHA2_128f}
	if err := sk.UnmarshalBinary(attrOf(t, p, h, slPub, pkcs11.CKA_VALUE)); err != nil {
		t.Fatal(err)
	}
	slhPure := func(msg string, sig []byte) bool {
		return slhdsa.Verify(&sk, slhdsa.NewMessage([]byte(msg)), sig, ctx)
	}
	slhSHA256 := func(msg string, sig []byte) bool {
		ph, err := slhdsa.NewPreHashWithHash(crypto.SHA256)
		if err != nil {
			return false
		}
		ph.Write([]byte(msg))
		m, err := ph.BuildMessage()
		return err == nil && slhdsa.Verify(&sk, m, sig, ctx)
	}
	for _, c := range []struct {
		name      string
		mech      uint
		priv, pub pkcs11.ObjectHandle
		sigLen    uint64
		check     func(msg string, sig []byte) bool
	}{
		{"ML_DSA 44", ck.CKM_ML_DSA, mlPriv, mlPub, mldsa44.SignatureSize, func(msg string, sig []byte) bool {
			return mldsa44.Verify(&mk, []byte(msg), ctx, sig)
		}},
		{"SLH_DSA SHA2-128f", ck.CKM_SLH_DSA, slPriv, slPub, 17088, slhPure},
		{"HASH_SLH_DSA_SHA256 SHA2-128f", ck.CKM_HASH_SLH_DSA_SHA256, slPriv, slPub, 17088, slhSHA256},
	} {
		mech := c.mech
		if err := f.Init(msgSign, h, &mech, &msgParam{Raw: param}, c.priv); err != nil {
			t.Fatalf("%s: MessageSignInit: %v", c.name, err)
		}
		if err := f.Init(msgVerify, h, &mech, &msgParam{Raw: param}, c.pub); err != nil {
			t.Fatalf("%s: MessageVerifyInit: %v", c.name, err)
		}
		for _, msg := range []string{"first", "second", ""} {
			// A NULL buffer first: the length; the call that follows
			// gets the signature measured.
			if _, n, err := f.One(msgSign, h, nil, nil, []byte(msg), output{null: true}, nil); err != nil || n != c.sigLen {
				t.Fatalf("%s: %q: size query %d, %v", c.name, msg, n, err)
			}
			sig, _, err := f.One(msgSign, h, nil, nil, []byte(msg), want(int(c.sigLen)), nil)
			if err != nil || !c.check(msg, sig) {
				t.Fatalf("%s: %q: a signature circl refuses (%v)", c.name, msg, err)
			}
			if _, _, err := f.One(msgVerify, h, nil, nil, []byte(msg), output{}, sig); err != nil {
				t.Fatalf("%s: verify %q: %v", c.name, msg, err)
			}
			if _, _, err := f.One(msgVerify, h, nil, nil, []byte(msg+"!"), output{}, sig); rvOf(err) != ck.CKR_SIGNATURE_INVALID {
				t.Fatalf("%s: verify another message: %v", c.name, err)
			}
			if _, _, err := f.One(msgVerify, h, nil, nil, []byte(msg), output{}, sig[:len(sig)-1]); rvOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
				t.Fatalf("%s: a truncated signature: %v", c.name, err)
			}
		}
		// In parts.
		if err := f.Begin(msgSign, h, nil, nil); err != nil {
			t.Fatalf("%s: Begin: %v", c.name, err)
		}
		if _, _, err := f.Next(msgSign, h, nil, []byte("in "), output{noLen: true}, 0, nil); err != nil {
			t.Fatalf("%s: a part: %v", c.name, err)
		}
		sig, _, err := f.Next(msgSign, h, nil, []byte("parts"), want(int(c.sigLen)), 0, nil)
		if err != nil || !c.check("in parts", sig) {
			t.Fatalf("%s: in parts: %v", c.name, err)
		}
		if c.mech == ck.CKM_SLH_DSA {
			// Pure SLH-DSA's digest of the message starts from the
			// signature's R, which a verification in parts gets last:
			// PKCS#11 3.2 makes it single-part (C_VerifySignatureInit,
			// which takes the signature first, verifies in parts).
			if err := f.Begin(msgVerify, h, nil, nil); rvOf(err) != ck.CKR_FUNCTION_NOT_SUPPORTED {
				t.Fatalf("%s: verify Begin: %v", c.name, err)
			}
		} else {
			if err := f.Begin(msgVerify, h, nil, nil); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.Next(msgVerify, h, nil, []byte("in "), output{}, 0, nil); err != nil {
				t.Fatal(err)
			}
			if _, _, err := f.Next(msgVerify, h, nil, []byte("parts"), output{}, 0, sig); err != nil {
				t.Fatalf("%s: verify in parts: %v", c.name, err)
			}
		}
		// A message parameter: signatures take none.
		if _, _, err := f.One(msgSign, h, &msgParam{Raw: []byte{1, 2}}, nil, []byte("x"), want(int(c.sigLen)), nil); rvOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Fatalf("%s: a message parameter: %v", c.name, err)
		}
		if err := f.Final(msgSign, h); err != nil {
			t.Fatal(err)
		}
		if err := f.Final(msgVerify, h); err != nil {
			t.Fatal(err)
		}
	}
	// A context the verification was not given fails.
	mech := uint(ck.CKM_ML_DSA)
	other, freeOther := sigCtxRaw(ck.CKH_HEDGE_PREFERRED, []byte("another context"))
	defer freeOther()
	if err := f.Init(msgSign, h, &mech, &msgParam{Raw: param}, mlPriv); err != nil {
		t.Fatal(err)
	}
	sig, _, err := f.One(msgSign, h, nil, nil, []byte("m"), want(mldsa44.SignatureSize), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Init(msgVerify, h, &mech, &msgParam{Raw: other}, mlPub); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.One(msgVerify, h, nil, nil, []byte("m"), output{}, sig); rvOf(err) != ck.CKR_SIGNATURE_INVALID {
		t.Fatalf("another context: %v", err)
	}
}
