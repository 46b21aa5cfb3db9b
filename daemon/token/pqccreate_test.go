package token

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem768"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/slhdsa"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// TestPQCCreateRefusals: C_CreateObject refuses post-quantum material of
// the wrong size or of another parameter set with the precise code, and
// makes no object: seeds of every wrong length (an empty one is a seed of
// the wrong size, not a missing one), public keys one byte short or
// labelled with a set of another size, and an SLH-DSA private key
// labelled with another set of the same size (its PK.root is not that
// set's), and an ML-DSA expanded key whose t0 is another key's and an
// ML-KEM dk whose dk_PKE is another's (the pairwise-consistency tests).
func TestPQCCreateRefusals(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h
	key := func(class, kt, set uint64, extra ...wire.Attribute) []wire.Attribute {
		return append([]wire.Attribute{AU(ck.CKA_CLASS, class), AU(ck.CKA_KEY_TYPE, kt), AU(ck.CKA_PARAMETER_SET, set)}, extra...)
	}
	type refusal struct {
		name  string
		attrs []wire.Attribute
		want  uint64
	}
	var cases []refusal
	for _, n := range []int{0, 31, 33, 63, 64, 65} {
		cases = append(cases, refusal{fmt.Sprintf("ML-DSA seed of %d bytes", n),
			key(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65, A(ck.CKA_SEED, make([]byte, n))), ck.CKR_ATTRIBUTE_VALUE_INVALID})
	}
	for _, n := range []int{0, 31, 32, 33, 63, 65} {
		cases = append(cases, refusal{fmt.Sprintf("ML-KEM seed of %d bytes", n),
			key(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768, A(ck.CKA_SEED, make([]byte, n))), ck.CKR_ATTRIBUTE_VALUE_INVALID})
	}
	kemPub, _ := s.genPair(M(ck.CKM_ML_KEM_KEY_PAIR_GEN), []wire.Attribute{AU(ck.CKA_PARAMETER_SET, ck.CKP_ML_KEM_768)}, nil)
	ek := s.attr(kemPub, ck.CKA_VALUE)
	_, sk, err := slhdsa.GenerateKey(nil, slhdsa.SHA2_128s)
	if err != nil {
		t.Fatal(err)
	}
	skb, _ := sk.MarshalBinary()
	pkb, _ := sk.PublicKey().MarshalBinary()
	// An ML-DSA-65 expanded key with another key's t0 (after ρ, K, tr, s1
	// and s2), its tr right.
	_, mlKey := mldsa65.NewKeyFromSeed(&[32]byte{1})
	_, mlOther := mldsa65.NewKeyFromSeed(&[32]byte{2})
	mlOtherT0, _ := mlKey.MarshalBinary()
	otherb, _ := mlOther.MarshalBinary()
	copy(mlOtherT0[128+(6+5)*128:], otherb[128+(6+5)*128:])
	// An ML-KEM-768 dk with another key's dk_PKE (its first 3·384 bytes),
	// its ek and H(ek) its own.
	_, kemKey := mlkem768.Scheme().DeriveKeyPair(bytes.Repeat([]byte{1}, 64))
	_, kemOther := mlkem768.Scheme().DeriveKeyPair(bytes.Repeat([]byte{2}, 64))
	kemOtherPKE, _ := kemKey.MarshalBinary()
	kemOtherb, _ := kemOther.MarshalBinary()
	copy(kemOtherPKE[:3*384], kemOtherb[:3*384])
	cases = append(cases,
		refusal{"ML-KEM-768 public key a byte short", key(ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768, A(ck.CKA_VALUE, ek[1:])), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"ML-KEM-768 public key as ML-KEM-1024", key(ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, ck.CKP_ML_KEM_1024, A(ck.CKA_VALUE, ek)), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"ML-KEM-768 dk a byte long", key(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768, A(ck.CKA_VALUE, make([]byte, 2401))), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"SLH-DSA-128 public key as a 192 set", key(ck.CKO_PUBLIC_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_192S, A(ck.CKA_VALUE, pkb)), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"SLH-DSA private key a byte short", key(ck.CKO_PRIVATE_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128S, A(ck.CKA_VALUE, skb[1:])), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"SLH-DSA-SHA2-128s private key as SHAKE-128s", key(ck.CKO_PRIVATE_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHAKE_128S, A(ck.CKA_VALUE, skb)), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"SLH-DSA private key with a seed", key(ck.CKO_PRIVATE_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128S, A(ck.CKA_VALUE, skb), A(ck.CKA_SEED, make([]byte, 48))), ck.CKR_ATTRIBUTE_TYPE_INVALID},
		refusal{"ML-DSA-65 expanded key with another's t0", key(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65, A(ck.CKA_VALUE, mlOtherT0)), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"ML-KEM-768 dk with another's dk_PKE", key(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768, A(ck.CKA_VALUE, kemOtherPKE)), ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"parameter set of 4 bytes", []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_ML_KEM), A(ck.CKA_PARAMETER_SET, []byte{0, 0, 0, 2}), A(ck.CKA_VALUE, ek)}, ck.CKR_ATTRIBUTE_VALUE_INVALID},
		refusal{"parameter set 0", key(ck.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, 0, A(ck.CKA_VALUE, ek)), ck.CKR_PARAMETER_SET_NOT_SUPPORTED},
		refusal{"SLH-DSA parameter set 13", key(ck.CKO_PUBLIC_KEY, ck.CKK_SLH_DSA, 13, A(ck.CKA_VALUE, pkb)), ck.CKR_PARAMETER_SET_NOT_SUPPORTED},
	)
	objects := func() int { return len(s.Find(h)) }
	before := objects()
	for _, c := range cases {
		if rv, _ := s.Call("C_CreateObject", U(h), T(c.attrs...), None()); rv != c.want {
			t.Errorf("%s: %s, want %s", c.name, ck.Error(rv), ck.Error(c.want))
		}
	}
	if n := objects() - before; n != 0 {
		t.Fatalf("refused creations made %d objects", n)
	}
	// The SLH-DSA key under its own set is taken, and its public half
	// verifies what it signs.
	priv := s.Create(h, key(ck.CKO_PRIVATE_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128S, A(ck.CKA_VALUE, skb))...)
	pub := s.Create(h, key(ck.CKO_PUBLIC_KEY, ck.CKK_SLH_DSA, ck.CKP_SLH_DSA_SHA2_128S, A(ck.CKA_VALUE, pkb))...)
	sig := s.pqSign(priv, M(ck.CKM_SLH_DSA), []byte("m"))
	if rv := s.verify(pub, M(ck.CKM_SLH_DSA), []byte("m"), bytes.Clone(sig)); rv != ck.CKR_OK {
		t.Fatalf("verify: %s", ck.Error(rv))
	}
}
