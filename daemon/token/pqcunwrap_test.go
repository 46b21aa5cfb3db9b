package token

import (
	"bytes"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem512"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/slhdsa"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// TestPQCUnwrapInvalid: a wrapped post-quantum private key whose PKCS#8
// decodes but whose material is no key (a seed of the wrong length, a
// seed and an expanded key of different keys, an ML-DSA expanded key whose
// t0 is another's, an ML-KEM dk whose dk_PKE is another's, an SLH-DSA key
// of the wrong length or whose PK.root its seeds do not make) is
// CKR_WRAPPED_KEY_INVALID,
// as a malformed RSA or EC key in PKCS#8 is: the caller's template gave no
// value to be invalid. No key is made.
func TestPQCUnwrapInvalid(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	kek := s.Create(h, secretTmpl(ck.CKK_AES, bytes.Repeat([]byte{5}, 32), AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_UNWRAP, true))...)
	// The wrapped form of plain: AES-KWP under kek, through the token's own
	// encryption with the mechanism.
	wrap := func(plain []byte) []byte {
		s.Must(ck.CKR_OK, "C_EncryptInit", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek))
		return bytes.Clone(s.Must(ck.CKR_OK, "C_Encrypt", U(h), B(plain), Out(1<<16))[2].Bytes)
	}
	pkcs8 := func(oid asn1.ObjectIdentifier, inner []byte) []byte {
		der, err := asn1.Marshal(struct {
			Version    int
			Algorithm  pkix.AlgorithmIdentifier
			PrivateKey []byte
		}{0, pkix.AlgorithmIdentifier{Algorithm: oid}, inner})
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	must := func(b []byte, err error) []byte {
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mldsa44OID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 17}
	slh128fOID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 21}
	seedOnly := func(n int) []byte {
		return must(asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: bytes.Repeat([]byte{1}, n)}))
	}
	_, slhKey, err := slhdsa.GenerateKey(nil, slhdsa.SHA2_128f)
	if err != nil {
		t.Fatal(err)
	}
	slhBytes := must(slhKey.MarshalBinary())
	slhBadRoot := bytes.Clone(slhBytes)
	slhBadRoot[len(slhBadRoot)-1] ^= 1
	// An ML-DSA-44 expanded key with the t0 of another: its tr is right,
	// only the pairwise-consistency test finds it.
	mldsaT0 := 128 + (4+4)*96 // after ρ, K, tr, s1 and s2
	_, mlKey := mldsa44.NewKeyFromSeed(&[32]byte{1})
	_, mlOther := mldsa44.NewKeyFromSeed(&[32]byte{2})
	mlOtherT0 := must(mlKey.MarshalBinary())
	copy(mlOtherT0[mldsaT0:], must(mlOther.MarshalBinary())[mldsaT0:])
	// An ML-KEM-512 dk with another key's dk_PKE (2·384 bytes): its ek and
	// H(ek) are its own.
	_, kemKey := mlkem512.Scheme().DeriveKeyPair(bytes.Repeat([]byte{1}, 64))
	_, kemOther := mlkem512.Scheme().DeriveKeyPair(bytes.Repeat([]byte{2}, 64))
	kemOtherPKE := must(kemKey.MarshalBinary())
	copy(kemOtherPKE[:2*384], must(kemOther.MarshalBinary())[:2*384])
	mlkem512OID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 1}

	tmpl := func(kt uint64) wire.Value {
		use := AB(ck.CKA_SIGN, true)
		if kt == ck.CKK_ML_KEM {
			use = AB(ck.CKA_DECAPSULATE, true)
		}
		return T(AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, kt), use)
	}
	privs := func() int { return len(s.Find(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY))) }
	before := privs()
	for _, c := range []struct {
		name  string
		kt    uint64
		plain []byte
	}{
		{"ML-DSA seed of 31 bytes", ck.CKK_ML_DSA, pkcs8(mldsa44OID, seedOnly(31))},
		{"ML-DSA seed of 33 bytes", ck.CKK_ML_DSA, pkcs8(mldsa44OID, seedOnly(33))},
		{"ML-DSA seed and another key", ck.CKK_ML_DSA, pkcs8(mldsa44OID, must(asn1.Marshal(struct{ Seed, Expanded []byte }{
			bytes.Repeat([]byte{1}, 32), make([]byte, mldsa44.PrivateKeySize)})))},
		{"ML-DSA expanded key of the wrong length", ck.CKK_ML_DSA, pkcs8(mldsa44OID, must(asn1.Marshal(make([]byte, 100))))},
		{"ML-DSA expanded key with another's t0", ck.CKK_ML_DSA, pkcs8(mldsa44OID, must(asn1.Marshal(mlOtherT0)))},
		{"ML-KEM dk with another's dk_PKE", ck.CKK_ML_KEM, pkcs8(mlkem512OID, must(asn1.Marshal(kemOtherPKE)))},
		{"SLH-DSA of the wrong length", ck.CKK_SLH_DSA, pkcs8(slh128fOID, slhBytes[1:])},
		{"SLH-DSA with another root", ck.CKK_SLH_DSA, pkcs8(slh128fOID, slhBadRoot)},
	} {
		if rv, _ := s.Call("C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrap(c.plain)), tmpl(c.kt), None()); rv != ck.CKR_WRAPPED_KEY_INVALID {
			t.Errorf("%s: %s, want CKR_WRAPPED_KEY_INVALID", c.name, ck.Error(rv))
		}
	}
	if n := privs() - before; n != 0 {
		t.Fatalf("refused unwraps made %d keys", n)
	}
	// The same SLH-DSA, ML-DSA and ML-KEM keys whole unwrap.
	s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrap(pkcs8(slh128fOID, slhBytes))), tmpl(ck.CKK_SLH_DSA), None())
	s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrap(pkcs8(mldsa44OID, must(asn1.Marshal(must(mlKey.MarshalBinary())))))), tmpl(ck.CKK_ML_DSA), None())
	s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), B(wrap(pkcs8(mlkem512OID, must(asn1.Marshal(must(kemKey.MarshalBinary())))))), tmpl(ck.CKK_ML_KEM), None())
}
