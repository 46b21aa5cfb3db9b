package token

import (
	"bytes"
	"crypto/mlkem"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// The post-quantum keys through the engine's calls: generation, the 3.2
// calls, creation from seeds and values, and the tier rules.

// pqSign and pqSignParts sign with room for SLH-DSA's signatures.
func (s *asymSession) pqSign(key uint64, m wire.Value, data []byte) []byte {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_SignInit", U(s.h), m, U(key))
	return bytes.Clone(s.Must(ck.CKR_OK, "C_Sign", U(s.h), B(data), Out(1<<16))[2].Bytes)
}

func (s *asymSession) pqSignParts(key uint64, m wire.Value, data []byte) []byte {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_SignInit", U(s.h), m, U(key))
	s.Must(ck.CKR_OK, "C_SignUpdate", U(s.h), B(data[:len(data)/2]))
	s.Must(ck.CKR_OK, "C_SignUpdate", U(s.h), B(data[len(data)/2:]))
	return bytes.Clone(s.Must(ck.CKR_OK, "C_SignFinal", U(s.h), Out(1<<16))[1].Bytes)
}

func ctxMech(typ uint64, ctx []byte, hedge uint64) wire.Value {
	return MP(typ, wire.SignContext{HedgeVariant: hedge, Context: ctx}.Param())
}

func TestMLDSAKeys(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	for _, set := range []uint64{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87} {
		pub, priv := s.genPair(M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
			[]wire.Attribute{AU(ck.CKA_PARAMETER_SET, set)},
			[]wire.Attribute{AB(ck.CKA_SENSITIVE, true)})
		s.checkGenerated(pub, ck.CKM_ML_DSA_KEY_PAIR_GEN)
		s.checkGenerated(priv, ck.CKM_ML_DSA_KEY_PAIR_GEN)
		if got := UlongOf(s.attr(priv, ck.CKA_PARAMETER_SET)); got != set {
			t.Errorf("private key's parameter set %d, want %d", got, set)
		}
		for _, a := range []uint64{ck.CKA_VALUE, ck.CKA_SEED} {
			if rv, _ := s.Get(h, priv, a); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
				t.Errorf("sensitive %#x: %#x", a, rv)
			}
		}
		msg, ctx := []byte("a message to sign"), []byte("ctx")
		sig := s.pqSign(priv, ctxMech(ck.CKM_ML_DSA, ctx, ck.CKH_HEDGE_REQUIRED), msg)
		if rv := s.verify(pub, ctxMech(ck.CKM_ML_DSA, ctx, 0), msg, sig); rv != ck.CKR_OK {
			t.Fatalf("set %d: verify %#x", set, rv)
		}
		if rv := s.verifyParts(pub, ctxMech(ck.CKM_ML_DSA, ctx, 0), msg, sig); rv != ck.CKR_OK {
			t.Fatalf("set %d: verify in parts %#x", set, rv)
		}
		if rv := s.verify(pub, ctxMech(ck.CKM_ML_DSA, []byte("ctx2"), 0), msg, sig); rv != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("wrong context: %#x", rv)
		}
		if rv := s.verify(pub, M(ck.CKM_ML_DSA), msg, sig); rv != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("no context: %#x", rv)
		}
		flipped := bytes.Clone(sig)
		flipped[10] ^= 0x80
		if rv := s.verify(pub, ctxMech(ck.CKM_ML_DSA, ctx, 0), msg, flipped); rv != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("flipped bit: %#x", rv)
		}
		if rv := s.verify(pub, ctxMech(ck.CKM_ML_DSA, ctx, 0), msg, sig[:len(sig)-1]); rv != ck.CKR_SIGNATURE_LEN_RANGE {
			t.Errorf("truncated: %#x", rv)
		}

		// C_VerifySignatureInit takes the signature first (3.2).
		s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), ctxMech(ck.CKM_ML_DSA, ctx, 0), U(pub), B(sig))
		s.Must(ck.CKR_OK, "C_VerifySignature", U(h), B(msg))
		s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_VerifySignature", U(h), B(msg))
		s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), ctxMech(ck.CKM_ML_DSA, ctx, 0), U(pub), B(sig))
		s.Must(ck.CKR_OK, "C_VerifySignatureUpdate", U(h), B(msg[:5]))
		s.Must(ck.CKR_OK, "C_VerifySignatureUpdate", U(h), B(msg[5:]))
		s.Must(ck.CKR_OK, "C_VerifySignatureFinal", U(h))
		s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), ctxMech(ck.CKM_ML_DSA, ctx, 0), U(pub), B(flipped))
		s.Must(ck.CKR_SIGNATURE_INVALID, "C_VerifySignature", U(h), B(msg))
		// A C_VerifyInit operation runs beside it.
		s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), ctxMech(ck.CKM_ML_DSA, ctx, 0), U(pub), B(sig))
		s.Must(ck.CKR_OK, "C_VerifyInit", U(h), ctxMech(ck.CKM_ML_DSA, ctx, 0), U(pub))
		s.Must(ck.CKR_OK, "C_Verify", U(h), B(msg), B(sig))
		s.Must(ck.CKR_OK, "C_VerifySignature", U(h), B(msg))

		// The private key does not verify, nor the public sign: neither
		// has the attribute.
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_VerifyInit", U(h), M(ck.CKM_ML_DSA), U(priv))
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_SignInit", U(h), M(ck.CKM_ML_DSA), U(pub))
	}
	// A public key of another parameter set does not verify.
	pub44, _ := s.genPair(M(ck.CKM_ML_DSA_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44)}, nil)
	_, priv65 := s.genPair(M(ck.CKM_ML_DSA_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65)}, nil)
	sig := s.pqSign(priv65, M(ck.CKM_ML_DSA), []byte("m"))
	if rv := s.verify(pub44, M(ck.CKM_ML_DSA), []byte("m"), sig); rv != ck.CKR_SIGNATURE_LEN_RANGE {
		t.Errorf("ML-DSA-65 signature on an ML-DSA-44 key: %#x", rv)
	}

	// Generation's refusals.
	s.Must(ck.CKR_TEMPLATE_INCOMPLETE, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN), T(), T(), None(), None())
	s.Must(ck.CKR_PARAMETER_SET_NOT_SUPPORTED, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, 7)), T(), None(), None())
	s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44)), T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65)), None(), None())
	s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44)), T(A(ck.CKA_SEED, make([]byte, 32))), None(), None())

	// Import: a private key from its seed alone gets its value; a public
	// key made elsewhere verifies; bad material is refused.
	seed := bytes.Repeat([]byte{7}, 32)
	cp, cs := mldsa65.NewKeyFromSeed((*[32]byte)(seed))
	imported := s.Create(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_ML_DSA),
		AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_SEED, seed), AB(ck.CKA_SENSITIVE, false))
	if !bytes.Equal(s.attr(imported, ck.CKA_VALUE), cs.Bytes()) {
		t.Error("the value derived from the seed is not FIPS 204's")
	}
	extPub := s.Create(h, AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_ML_DSA),
		AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_VALUE, cp.Bytes()))
	isig := s.pqSign(imported, ctxMech(ck.CKM_ML_DSA, nil, ck.CKH_DETERMINISTIC_REQUIRED), []byte("x"))
	if !mldsa65.Verify(cp, []byte("x"), nil, isig) || s.verify(extPub, M(ck.CKM_ML_DSA), []byte("x"), isig) != ck.CKR_OK {
		t.Error("imported keys do not sign and verify")
	}
	for _, tc := range []struct {
		name  string
		attrs []wire.Attribute
		want  uint64
	}{
		{"short public key", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_VALUE, cp.Bytes()[1:])}, ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{"public key of another set", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44), A(ck.CKA_VALUE, cp.Bytes())}, ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{"no parameter set", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), A(ck.CKA_VALUE, cp.Bytes())}, ck.CKR_TEMPLATE_INCOMPLETE},
		{"unknown set", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_PARAMETER_SET, 9), A(ck.CKA_VALUE, cp.Bytes())}, ck.CKR_PARAMETER_SET_NOT_SUPPORTED},
		{"seed on a public key", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_VALUE, cp.Bytes()), A(ck.CKA_SEED, seed)}, ck.CKR_ATTRIBUTE_TYPE_INVALID},
		{"no seed nor value", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65)}, ck.CKR_TEMPLATE_INCOMPLETE},
		{"short seed", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_SEED, seed[1:])}, ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{"seed and another key's value", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), A(ck.CKA_SEED, bytes.Repeat([]byte{8}, 32)), A(ck.CKA_VALUE, cs.Bytes())}, ck.CKR_ATTRIBUTE_VALUE_INVALID},
	} {
		attrs := append([]wire.Attribute{AU(ck.CKA_KEY_TYPE, ck.CKK_ML_DSA)}, tc.attrs...)
		if rv, _ := s.Call("C_CreateObject", U(h), T(attrs...), None()); rv != tc.want {
			t.Errorf("%s: %#x, want %#x", tc.name, rv, tc.want)
		}
	}
}

func TestMLKEMKeys(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	h2 := s.Open(s.Slots()[0], true)
	aes := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
		AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_DECRYPT, true), AB(ck.CKA_SENSITIVE, false)}
	for _, tc := range []struct {
		set    uint64
		ctLen  int
		pubLen int
	}{{ck.CKP_ML_KEM_512, 768, 800}, {ck.CKP_ML_KEM_768, 1088, 1184}, {ck.CKP_ML_KEM_1024, 1568, 1568}} {
		pub, priv := s.genPair(M(ck.CKM_ML_KEM_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, tc.set)}, nil)
		if n := len(s.attr(pub, ck.CKA_VALUE)); n != tc.pubLen {
			t.Errorf("set %d: public key of %d bytes", tc.set, n)
		}
		if !isTrue(s.attr(pub, ck.CKA_ENCAPSULATE)) || !isTrue(s.attr(priv, ck.CKA_DECAPSULATE)) {
			t.Error("CKA_ENCAPSULATE / CKA_DECAPSULATE default false")
		}
		// A length query makes no key.
		before := len(s.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY)))
		out := s.Must(ck.CKR_OK, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(aes...), SizeQuery(), None())
		if out[4].Length != uint64(tc.ctLen) || out[5].Ulong != 0 {
			t.Errorf("set %d: length query says %d, key %d", tc.set, out[4].Length, out[5].Ulong)
		}
		s.Must(ck.CKR_BUFFER_TOO_SMALL, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(aes...), Out(uint64(tc.ctLen-1)), None())
		if after := len(s.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))); after != before {
			t.Fatalf("a length query made %d keys", after-before)
		}
		out = s.Must(ck.CKR_OK, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(aes...), Out(4096), None())
		ct, k1 := bytes.Clone(out[4].Bytes), out[5].Ulong
		if len(ct) != tc.ctLen {
			t.Fatalf("ciphertext of %d bytes", len(ct))
		}
		// Decapsulated in another session: the same key.
		k2 := s.Must(ck.CKR_OK, "C_DecapsulateKey", U(h2), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(ct), None())[5].Ulong
		v1, v2 := s.attr(k1, ck.CKA_VALUE), s.attr(k2, ck.CKA_VALUE)
		if !bytes.Equal(v1, v2) || len(v1) != 32 {
			t.Fatalf("set %d: the secrets differ", tc.set)
		}
		for _, k := range []uint64{k1, k2} {
			if isTrue(s.attr(k, ck.CKA_LOCAL)) || isTrue(s.attr(k, ck.CKA_ALWAYS_SENSITIVE)) || isTrue(s.attr(k, ck.CKA_NEVER_EXTRACTABLE)) {
				t.Error("a KEM key is local, always sensitive or never extractable")
			}
		}
		// Tampered and short ciphertexts.
		bad := bytes.Clone(ct)
		bad[0] ^= 1
		k3 := s.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(bad), None())[5].Ulong
		if bytes.Equal(s.attr(k3, ck.CKA_VALUE), v1) {
			t.Error("a tampered ciphertext gave the same secret")
		}
		s.Must(ck.CKR_WRAPPED_KEY_LEN_RANGE, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(ct[1:]), None())
		// Each key only its own way (a private key has no CKA_ENCAPSULATE).
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), Out(4096), None())
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(aes...), B(ct), None())
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv),
			T(append(aes, AU(ck.CKA_VALUE_LEN, 16))...), B(ct), None())
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv),
			T(append(aes, A(ck.CKA_VALUE, make([]byte, 32)))...), B(ct), None())
		s.Must(ck.CKR_MECHANISM_INVALID, "C_EncapsulateKey", U(h), M(ck.CKM_ML_DSA), U(pub), T(aes...), Out(4096), None())
	}
	// No template class or key type: a generic secret.
	pub, priv := s.genPair(M(ck.CKM_ML_KEM_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_768)}, nil)
	out := s.Must(ck.CKR_OK, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(), Out(4096), None())
	if kt := UlongOf(s.attr(out[5].Ulong, ck.CKA_KEY_TYPE)); kt != ck.CKK_GENERIC_SECRET {
		t.Errorf("default key type %#x", kt)
	}
	// CKA_DECAPSULATE false: refused.
	s.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(priv), T(AB(ck.CKA_DECAPSULATE, false)))
	s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(out[4].Bytes), None())

	// Interop: crypto/mlkem encapsulates to the token's public key.
	pub, priv = s.genPair(M(ck.CKM_ML_KEM_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_1024)}, nil)
	ek, err := mlkem.NewEncapsulationKey1024(s.attr(pub, ck.CKA_VALUE))
	if err != nil {
		t.Fatal(err)
	}
	secret, ct := ek.Encapsulate()
	k := s.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(ct), None())[5].Ulong
	if !bytes.Equal(s.attr(k, ck.CKA_VALUE), secret) {
		t.Error("crypto/mlkem's secret differs")
	}
	// A private key from its seed alone decapsulates as the generated one.
	seed := bytes.Repeat([]byte{9}, 64)
	dk, _ := mlkem.NewDecapsulationKey768(seed)
	secret, ct = dk.EncapsulationKey().Encapsulate()
	fromSeed := s.Create(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_ML_KEM),
		AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_768), A(ck.CKA_SEED, seed))
	k = s.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(fromSeed), T(aes...), B(ct), None())[5].Ulong
	if !bytes.Equal(s.attr(k, ck.CKA_VALUE), secret) {
		t.Error("the seeded key's secret differs")
	}
}

func TestSLHDSAKeys(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	for _, set := range []uint64{ck.CKP_SLH_DSA_SHA2_128F, ck.CKP_SLH_DSA_SHAKE_128F} {
		pub, priv := s.genPair(M(ck.CKM_SLH_DSA_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, set)}, nil)
		if rv, _ := s.Get(s.h, priv, ck.CKA_SEED); rv != ck.CKR_ATTRIBUTE_TYPE_INVALID {
			t.Errorf("an SLH-DSA key has a seed: %#x", rv)
		}
		for _, typ := range []uint64{ck.CKM_SLH_DSA, ck.CKM_HASH_SLH_DSA_SHA256, ck.CKM_HASH_SLH_DSA_SHAKE256} {
			sig := s.pqSignParts(priv, ctxMech(typ, []byte("c"), 0), []byte("slh-dsa message"))
			if rv := s.verify(pub, ctxMech(typ, []byte("c"), 0), []byte("slh-dsa message"), sig); rv != ck.CKR_OK {
				t.Errorf("set %d mechanism %#x: %#x", set, typ, rv)
			}
			if rv := s.verify(pub, ctxMech(typ, []byte("d"), 0), []byte("slh-dsa message"), sig); rv != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("set %d mechanism %#x, other context: %#x", set, typ, rv)
			}
			slhVerifyInParts(s, pub, typ, sig)
		}
	}
}

// slhVerifyInParts: pure SLH-DSA verifies in parts only with the signature
// first (PKCS#11 3.2, "SLH-DSA Signature": C_Verify single-part; its
// message digest starts from the signature's R); the pre-hash mechanisms
// hash the parts as they come, and verify in parts either way.
func slhVerifyInParts(s *asymSession, pub, typ uint64, sig []byte) {
	s.T.Helper()
	msg := []byte("slh-dsa message")
	m := ctxMech(typ, []byte("c"), 0)
	h := s.h
	if typ != ck.CKM_SLH_DSA {
		if rv := s.verifyParts(pub, m, msg, sig); rv != ck.CKR_OK {
			s.T.Errorf("mechanism %#x: verify in parts %#x", typ, rv)
		}
	} else {
		// C_VerifyUpdate refuses, and ends the operation.
		s.Must(ck.CKR_OK, "C_VerifyInit", U(h), m, U(pub))
		s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_VerifyUpdate", U(h), B(msg))
		s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Verify", U(h), B(msg), B(sig))
		s.Must(ck.CKR_OK, "C_VerifyInit", U(h), m, U(pub))
		s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_VerifyFinal", U(h), B(sig))
		s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Verify", U(h), B(msg), B(sig))
	}
	s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), m, U(pub), B(sig))
	s.Must(ck.CKR_OK, "C_VerifySignatureUpdate", U(h), B(msg[:4]))
	s.Must(ck.CKR_OK, "C_VerifySignatureUpdate", U(h), B(msg[4:]))
	s.Must(ck.CKR_OK, "C_VerifySignatureFinal", U(h))
	bad := bytes.Clone(sig)
	bad[len(bad)/2] ^= 1
	s.Must(ck.CKR_OK, "C_VerifySignatureInit", U(h), m, U(pub), B(bad))
	s.Must(ck.CKR_OK, "C_VerifySignatureUpdate", U(h), B(msg))
	s.Must(ck.CKR_SIGNATURE_INVALID, "C_VerifySignatureFinal", U(h))
}

// TestPQCPremium: on a premium token an ML-DSA private key is
// HSM-protected and refuses every export route; on a standard token an
// extractable one wraps under AES-KWP.
func TestPQCPremium(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{DefaultTier: keystore.TierPremium})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("pq-vault"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65)), T(AB(ck.CKA_TOKEN, true)), None(), None())
	priv := out[5].Ulong
	if p := protection(t, cl, h, priv); p != ck.CKP_HSMEMU_HSM {
		t.Fatalf("protection %d", p)
	}
	for _, a := range []uint64{ck.CKA_VALUE, ck.CKA_SEED} {
		if rv, _ := cl.Get(h, priv, a); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%#x: %#x", a, rv)
		}
	}
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(priv), T(AB(ck.CKA_EXTRACTABLE, true)))
	kek := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
		A(ck.CKA_VALUE, bytes.Repeat([]byte{0x33}, 32)), AU(ck.CKA_HSMEMU_PROTECTION, ck.CKP_HSMEMU_SOFTWARE), AB(ck.CKA_WRAP, true))
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), U(priv), SizeQuery())
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(make([]byte, 12), 0, ck.CKG_GENERATE, 16), U(kek), U(priv), S("aad"), SizeQuery())
	// It signs all the same.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ML_DSA), U(priv))
	if sig := cl.Must(ck.CKR_OK, "C_Sign", U(h), S("m"), Out(8192))[2].Bytes; len(sig) != mldsa65.SignatureSize {
		t.Errorf("signature of %d bytes", len(sig))
	}
	// HashML-DSA too, from the sealed seed, in parts; it only signs.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_HASH_ML_DSA_SHA512), U(priv))
	cl.Must(ck.CKR_OK, "C_SignUpdate", U(h), S("m"))
	if sig := cl.Must(ck.CKR_OK, "C_SignFinal", U(h), Out(8192))[1].Bytes; len(sig) != mldsa65.SignatureSize {
		t.Errorf("HashML-DSA signature of %d bytes", len(sig))
	}
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_VerifyInit", U(h), M(ck.CKM_HASH_ML_DSA_SHA512), U(out[4].Ulong))
}

// TestPQCWrap: on a standard token an extractable ML-DSA private key
// wraps under AES-KWP and unwraps into a key that signs for the same
// public key; unwrapped as another key type it is refused.
func TestPQCWrap(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	pub, priv := s.genPair(M(ck.CKM_ML_DSA_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44)},
		[]wire.Attribute{AB(ck.CKA_EXTRACTABLE, true), AB(ck.CKA_SENSITIVE, true)})
	kek := s.Create(h, secretTmpl(ck.CKK_AES, bytes.Repeat([]byte{5}, 32), AB(ck.CKA_WRAP, true), AB(ck.CKA_UNWRAP, true))...)
	wrapped := s.wrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP_KWP), kek, priv)
	tmpl := func(kt uint64) wire.Value {
		return T(AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, kt), AB(ck.CKA_SIGN, true))
	}
	back := s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrapped), tmpl(ck.CKK_ML_DSA), None())[5].Ulong
	if set := UlongOf(s.attr(back, ck.CKA_PARAMETER_SET)); set != ck.CKP_ML_DSA_44 {
		t.Errorf("unwrapped parameter set %d", set)
	}
	sig := s.pqSign(back, M(ck.CKM_ML_DSA), []byte("m"))
	if rv := s.verify(pub, M(ck.CKM_ML_DSA), []byte("m"), sig); rv != ck.CKR_OK {
		t.Fatalf("the unwrapped key signs for another public key: %#x", rv)
	}
	s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrapped), tmpl(ck.CKK_SLH_DSA), None())

	// The same under AES-GCM, authenticated with associated data.
	out := s.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(make([]byte, 12), 0, ck.CKG_GENERATE, 16), U(kek), U(priv), S("ml-dsa-44"), Out(8192))
	iv, tag := written(out[1], "pIv"), written(out[1], "pTag")
	back = s.Must(ck.CKR_OK, "C_UnwrapKeyAuthenticated", U(h), gcmUnwrapMech(iv, tag), U(kek), B(out[5].Bytes), tmpl(ck.CKK_ML_DSA), S("ml-dsa-44"), None())[6].Ulong
	sig = s.pqSign(back, M(ck.CKM_ML_DSA), []byte("m"))
	if rv := s.verify(pub, M(ck.CKM_ML_DSA), []byte("m"), sig); rv != ck.CKR_OK {
		t.Fatalf("the key unwrapped from GCM signs for another public key: %#x", rv)
	}
}

// TestKEMTemplates: a public key's CKA_ENCAPSULATE_TEMPLATE is what every
// key it encapsulates must match (CKR_KEY_HANDLE_INVALID otherwise, and
// no key made), a private key's CKA_DECAPSULATE_TEMPLATE is imposed on
// every key it decapsulates (CKR_TEMPLATE_INCONSISTENT when the caller's
// template says otherwise), both read back as templates.
func TestKEMTemplates(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	encT := wire.Attribute{Type: ck.CKA_ENCAPSULATE_TEMPLATE, Nested: []wire.Attribute{AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_EXTRACTABLE, false)}}
	decT := wire.Attribute{Type: ck.CKA_DECAPSULATE_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_WRAP, false)}}
	pub, priv := s.genPair(M(ck.CKM_ML_KEM_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_768), encT}, []wire.Attribute{decT})
	// Read back: its length is its number of attributes.
	out := s.Must(ck.CKR_OK, "C_GetAttributeValue", U(h), U(pub), Q(wire.Query{Type: ck.CKA_ENCAPSULATE_TEMPLATE}))
	if n := out[2].Answers[0].Length; n != 2 {
		t.Errorf("CKA_ENCAPSULATE_TEMPLATE has %d attributes", n)
	}
	// Not on the other half, nor on another key type.
	s.Must(ck.CKR_ATTRIBUTE_TYPE_INVALID, "C_GetAttributeValue", U(h), U(priv), Q(wire.Query{Type: ck.CKA_ENCAPSULATE_TEMPLATE}))
	s.Must(ck.CKR_ATTRIBUTE_TYPE_INVALID, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_DSA_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_44), encT), T(), None(), None())

	secrets := func() int { return len(s.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))) }
	before := secrets()
	// A generic secret, or an extractable AES key, does not match.
	s.Must(ck.CKR_KEY_HANDLE_INVALID, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(), Out(4096), None())
	s.Must(ck.CKR_KEY_HANDLE_INVALID, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub),
		T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES)), Out(4096), None())
	if n := secrets() - before; n != 0 {
		t.Fatalf("refused encapsulations made %d keys", n)
	}
	aesFixed := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_EXTRACTABLE, false)}
	out = s.Must(ck.CKR_OK, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(pub), T(aesFixed...), Out(4096), None())
	ct, k1 := bytes.Clone(out[4].Bytes), out[5].Ulong
	if isTrue(s.attr(k1, ck.CKA_EXTRACTABLE)) {
		t.Error("the encapsulated key is extractable")
	}

	// Decapsulated: sensitive and unable to wrap though the caller did
	// not ask it; asking the opposite is refused.
	aes := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_ENCRYPT, true)}
	k2 := s.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv), T(aes...), B(ct), None())[5].Ulong
	if !isTrue(s.attr(k2, ck.CKA_SENSITIVE)) || isTrue(s.attr(k2, ck.CKA_WRAP)) {
		t.Error("CKA_DECAPSULATE_TEMPLATE was not imposed")
	}
	s.Must(ck.CKR_ATTRIBUTE_SENSITIVE, "C_GetAttributeValue", U(h), U(k2), Q(wire.Query{Type: ck.CKA_VALUE}))
	s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(priv),
		T(append(aes, AB(ck.CKA_SENSITIVE, false))...), B(ct), None())
	// The same secret all the same: what one encrypts the other decrypts.
	iv := wire.Param{Kind: calls.PBytes, Bytes: bytes.Repeat([]byte{7}, 16)}
	s.Must(ck.CKR_OK, "C_EncryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(k1))
	enc := bytes.Clone(s.Must(ck.CKR_OK, "C_Encrypt", U(h), B([]byte("kem template")), Out(64))[2].Bytes)
	s.Must(ck.CKR_OK, "C_DecryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(k2))
	if dec := s.Must(ck.CKR_OK, "C_Decrypt", U(h), B(enc), Out(64))[2].Bytes; string(dec) != "kem template" {
		t.Errorf("decrypted %q", dec)
	}

	// A template that carries what only the token sets is refused on the
	// key, as a wrap template would be.
	s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKeyPair", U(h), M(ck.CKM_ML_KEM_KEY_PAIR_GEN),
		T(AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_512)),
		T(wire.Attribute{Type: ck.CKA_DECAPSULATE_TEMPLATE, Nested: []wire.Attribute{AB(ck.CKA_LOCAL, true)}}), None(), None())
}
