package e2e

import (
	"bytes"
	"crypto/sha3"
	"testing"

	"filippo.io/mldsa"
	"filippo.io/mldsa/mldsacrypto"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// TestHashMLDSAThroughModule: HashML-DSA through the built module and a
// real daemon. A deterministic signature, whole, in parts and over a
// digest given to CKM_HASH_ML_DSA, is the one filippo.io/mldsa makes over
// the μ this test computes from FIPS 204's Algorithm 4; hedged ones
// differ; the mechanisms sign only, so C_VerifyInit and
// C_VerifySignatureInit refuse them; a key without its seed cannot sign
// them.
func TestHashMLDSAThroughModule(t *testing.T) {
	if !lp64 {
		t.Skip("the parameter structures are laid out for LP64")
	}
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	var c cParams
	defer c.free()

	seed := sha3.SumSHAKE256([]byte("HashML-DSA through the module"), 32)
	ref, err := mldsa.NewPrivateKey(mldsa.MLDSA65(), seed)
	if err != nil {
		t.Fatal(err)
	}
	pk := ref.PublicKey().Bytes()
	create := func(class uint, attrs ...*pkcs11.Attribute) pkcs11.ObjectHandle {
		t.Helper()
		o, err := p.CreateObject(h, append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ck.CKK_ML_DSA),
			pkcs11.NewAttribute(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65),
		}, attrs...))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	priv := create(pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(ck.CKA_SEED, seed), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true))
	pub := create(pkcs11.CKO_PUBLIC_KEY, pkcs11.NewAttribute(pkcs11.CKA_VALUE, pk), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true))

	// μ = SHAKE256(tr ‖ M', 64), tr = SHAKE256(pk, 64), M' = 1 ‖ |ctx| ‖
	// ctx ‖ OID(SHA3-256) ‖ SHA3-256(M).
	msg, ctx := []byte("signed through the module"), []byte("e2e")
	digest := sha3.Sum256(msg)
	mp := append([]byte{1, byte(len(ctx))}, ctx...)
	mp = append(mp, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x08)
	mp = append(mp, digest[:]...)
	mu := sha3.SumSHAKE256(append(sha3.SumSHAKE256(pk, 64), mp...), 64)
	want, err := ref.SignDeterministic(mu, mldsacrypto.MLDSAMu)
	if err != nil {
		t.Fatal(err)
	}

	const mech = ck.CKM_HASH_ML_DSA_SHA3_256
	det := &sigCtx{hedge: ck.CKH_DETERMINISTIC_REQUIRED, ctx: ctx}
	if sig, err := f.sig(callSign, h, mech, det, priv, msg, nil); err != nil || !bytes.Equal(sig, want) {
		t.Fatalf("C_Sign: the signature differs: %v", err)
	}
	// In parts.
	if err := p.SignInit(h, mechOf(mech, c.signContext(ck.CKH_DETERMINISTIC_REQUIRED, ctx)), priv); err != nil {
		t.Fatal(err)
	}
	for _, part := range [][]byte{msg[:4], msg[4:]} {
		if err := p.SignUpdate(h, part); err != nil {
			t.Fatal(err)
		}
	}
	if sig, err := p.SignFinal(h); err != nil || !bytes.Equal(sig, want) {
		t.Errorf("C_SignFinal: the signature differs: %v", err)
	}
	// The digest, computed here, through CKM_HASH_ML_DSA.
	generic := func(hedge uint64) []*pkcs11.Mechanism {
		return mechOf(ck.CKM_HASH_ML_DSA, c.hashSignContext(hedge, ctx, ck.CKM_SHA3_256))
	}
	if err := p.SignInit(h, generic(ck.CKH_DETERMINISTIC_REQUIRED), priv); err != nil {
		t.Fatal(err)
	}
	if sig, err := p.Sign(h, digest[:]); err != nil || !bytes.Equal(sig, want) {
		t.Errorf("CKM_HASH_ML_DSA: the signature differs: %v", err)
	}
	if err := p.SignInit(h, generic(ck.CKH_DETERMINISTIC_REQUIRED), priv); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sign(h, digest[:31]); !is(err, pkcs11.CKR_DATA_LEN_RANGE) {
		t.Errorf("CKM_HASH_ML_DSA, a 31-byte SHA3-256 digest: %v", err)
	}
	// Hedged signatures differ.
	hedged := &sigCtx{hedge: ck.CKH_HEDGE_REQUIRED, ctx: ctx}
	h1, err1 := f.sig(callSign, h, mech, hedged, priv, msg, nil)
	h2, err2 := f.sig(callSign, h, mech, hedged, priv, msg, nil)
	if err1 != nil || err2 != nil || bytes.Equal(h1, h2) || bytes.Equal(h1, want) || len(h1) != len(want) {
		t.Errorf("hedged: %v %v", err1, err2)
	}

	// Sign only.
	for _, call := range []sigCall{callVerify, callVerifySignature} {
		if _, err := f.sig(call, h, mech, &sigCtx{ctx: ctx}, pub, msg, want); rvOf(err) != ck.CKR_MECHANISM_INVALID {
			t.Errorf("verify call %d: %v", call, err)
		}
	}
	if err := p.VerifyInit(h, generic(ck.CKH_HEDGE_PREFERRED), pub); !is(err, pkcs11.CKR_MECHANISM_INVALID) {
		t.Errorf("C_VerifyInit, CKM_HASH_ML_DSA: %v", err)
	}
	for _, m := range []uint{ck.CKM_HASH_ML_DSA, mech, ck.CKM_HASH_ML_DSA_SHAKE256} {
		info, err := p.GetMechanismInfo(slot, mechOf(uint64(m), nil))
		if err != nil || info.Flags&pkcs11.CKF_SIGN == 0 || info.Flags&pkcs11.CKF_VERIFY != 0 {
			t.Errorf("mechanism %#x: flags %#x, %v", m, info.Flags, err)
		}
	}

	// The same key without its seed (its FIPS 204 encoding alone) signs
	// pure ML-DSA, not HashML-DSA.
	_, csk := mldsa65.NewKeyFromSeed((*[32]byte)(seed))
	byValue := create(pkcs11.CKO_PRIVATE_KEY, pkcs11.NewAttribute(pkcs11.CKA_VALUE, csk.Bytes()), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true))
	if _, err := f.sig(callSign, h, mech, det, byValue, msg, nil); rvOf(err) != ck.CKR_KEY_FUNCTION_NOT_PERMITTED {
		t.Errorf("a key without its seed: %v", err)
	}
	if _, err := f.sig(callSign, h, ck.CKM_ML_DSA, det, byValue, msg, nil); err != nil {
		t.Errorf("CKM_ML_DSA, a key without its seed: %v", err)
	}
}
