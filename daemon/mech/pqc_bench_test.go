package mech

import (
	"crypto/mlkem"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The post-quantum mechanisms in process beside their bare library calls,
// in the same run, as the other mechanisms' (bench_test.go): "mech" is
// what the daemon does for C_SignInit then C_Sign (or C_Verify*, or the
// KEM calls) on a key object whose parsed form is kept; "bare" the library
// call on a key parsed once.

func BenchmarkMechMLDSA65Sign(b *testing.B) {
	_, priv := genPQC(b, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65)
	msg := make([]byte, 32)
	b.Run("mech", func(b *testing.B) {
		benchSign(b, priv, &wire.Mechanism{Type: ck.CKM_ML_DSA}, msg)
	})
	b.Run("bare", func(b *testing.B) {
		var sk mldsa65.PrivateKey
		if err := sk.UnmarshalBinary(priv.attrs[ck.CKA_VALUE]); err != nil {
			b.Fatal(err)
		}
		sig := make([]byte, mldsa65.SignatureSize)
		for b.Loop() {
			if err := mldsa65.SignTo(&sk, msg, nil, true, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMechMLDSA65Verify(b *testing.B) {
	pub, priv := genPQC(b, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65)
	msg := make([]byte, 32)
	m := &wire.Mechanism{Type: ck.CKM_ML_DSA}
	sig, err := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, m, msg)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("mech", func(b *testing.B) {
		for b.Loop() {
			if err := pqcVerify(mechanisms[ck.CKM_ML_DSA], pub, m, msg, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare", func(b *testing.B) {
		var pk mldsa65.PublicKey
		if err := pk.UnmarshalBinary(pub.attrs[ck.CKA_VALUE]); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if !mldsa65.Verify(&pk, msg, nil, sig) {
				b.Fatal("refused")
			}
		}
	})
}

func BenchmarkMechMLKEM768(b *testing.B) {
	pub, priv := genPQC(b, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768)
	m := &wire.Mechanism{Type: ck.CKM_ML_KEM}
	kem := mechanisms[ck.CKM_ML_KEM]
	ct, _, err := kem.Encapsulate(pub, m)
	if err != nil {
		b.Fatal(err)
	}
	ek, err := mlkem.NewEncapsulationKey768(pub.attrs[ck.CKA_VALUE])
	if err != nil {
		b.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey768(priv.attrs[ck.CKA_SEED])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encapsulate/mech", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := kem.Encapsulate(pub, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encapsulate/bare", func(b *testing.B) {
		for b.Loop() {
			ek.Encapsulate()
		}
	})
	b.Run("decapsulate/mech", func(b *testing.B) {
		for b.Loop() {
			if _, err := kem.Decapsulate(priv, m, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decapsulate/bare", func(b *testing.B) {
		for b.Loop() {
			if _, err := dk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
		}
	})
}
