package mech

import (
	"crypto"
	"hash"

	"hsmemu/cryptoki/ck"
)

// Public-key mechanisms. The family is split by key type:
//   - rsa.go and rsasign.go: RSA key pairs, PKCS#1 v1.5 and PSS
//     signatures, PKCS#1 v1.5 and OAEP encryption and key wrap, and
//     RSA-AES key wrap;
//   - ec.go, secp256k1.go and montgomery.go: key pairs on the short
//     Weierstrass curves (P-224 to P-521, secp256k1), Ed25519 and Ed448,
//     X25519 and X448; ECDSA, EdDSA and ECDH;
//   - dsa.go: DSA key pairs, domain parameters and signatures, in legacy
//     tables only.
//
// This file holds what they share: the hash tables of their parameters,
// and the signature operation that feeds a key's primitive.
//
// Sizes in CK_MECHANISM_INFO are in bits, as the specification says for
// RSA (the modulus), EC (the order of the curve's base point, or the
// curve's size for Edwards and Montgomery curves) and DSA (the prime).

// asymmetricMechanisms lists the public-key mechanisms.
func asymmetricMechanisms(p policy) map[uint64]*Mechanism {
	t := merge(rsaMechanisms(p), ecMechanisms(p))
	if p.legacy {
		merge(t, dsaMechanisms())
	}
	return t
}

// sigHashes are the digest mechanisms a signature or OAEP parameter may
// name (CK_RSA_PKCS_PSS_PARAMS.hashAlg, CK_RSA_PKCS_OAEP_PARAMS.hashAlg),
// as crypto.Hash.
var sigHashes = map[uint64]crypto.Hash{
	ck.CKM_SHA_1:    crypto.SHA1,
	ck.CKM_SHA224:   crypto.SHA224,
	ck.CKM_SHA256:   crypto.SHA256,
	ck.CKM_SHA384:   crypto.SHA384,
	ck.CKM_SHA512:   crypto.SHA512,
	ck.CKM_SHA3_224: crypto.SHA3_224,
	ck.CKM_SHA3_256: crypto.SHA3_256,
	ck.CKM_SHA3_384: crypto.SHA3_384,
	ck.CKM_SHA3_512: crypto.SHA3_512,
}

// mgfHashes are the mask generation functions (CKG_MGF1_*), by the hash
// they use.
var mgfHashes = map[uint64]crypto.Hash{
	ck.CKG_MGF1_SHA1:     crypto.SHA1,
	ck.CKG_MGF1_SHA224:   crypto.SHA224,
	ck.CKG_MGF1_SHA256:   crypto.SHA256,
	ck.CKG_MGF1_SHA384:   crypto.SHA384,
	ck.CKG_MGF1_SHA512:   crypto.SHA512,
	ck.CKG_MGF1_SHA3_224: crypto.SHA3_224,
	ck.CKG_MGF1_SHA3_256: crypto.SHA3_256,
	ck.CKG_MGF1_SHA3_384: crypto.SHA3_384,
	ck.CKG_MGF1_SHA3_512: crypto.SHA3_512,
}

// signer is a public-key signature or verification in progress. It takes
// the input, hashing it as it comes for the hash-and-sign mechanisms
// (CKM_SHA256_RSA_PKCS, CKM_ECDSA_SHA256, ...) or keeping it whole for
// those that sign what they are given (CKM_RSA_PKCS, CKM_ECDSA, CKM_EDDSA),
// and hands the result to the key's primitive: sign for a signature,
// verify for a verification.
type signer struct {
	h      hash.Hash // nil: the input is kept whole
	msg    []byte
	sign   func(in []byte) ([]byte, error)
	verify func(in, sig []byte) error
}

func (s *signer) Update(in []byte) error {
	if s.h != nil {
		s.h.Write(in)
		return nil
	}
	s.msg = append(s.msg, in...)
	return nil
}

// input is what the primitive gets: the digest, or the whole input.
func (s *signer) input() []byte {
	if s.h != nil {
		return s.h.Sum(nil)
	}
	return s.msg
}

func (s *signer) Sign() ([]byte, error) {
	if s.sign == nil {
		return nil, ck.Error(ck.CKR_GENERAL_ERROR)
	}
	return s.sign(s.input())
}

func (s *signer) Verify(sig []byte) error {
	if s.verify == nil {
		return ck.Error(ck.CKR_GENERAL_ERROR)
	}
	return s.verify(s.input(), sig)
}

// Sign hashes a copy of the state (hash.Hash's Sum) or reads the input
// kept: it takes nothing away.
func (*signer) keepsState() {}

// singleSigner is a signer for a mechanism the specification allows only
// single-part (raw RSA, PSS on a given hash, ECDSA without a hash, EdDSA).
type singleSigner struct{ signer }

func (*singleSigner) singlePart() {}

// newSigner returns a signature operation: hashed with h, or single-part
// on the whole input when h is 0.
func newSigner(h crypto.Hash, sign func([]byte) ([]byte, error), verify func(in, sig []byte) error) SignOp {
	if h == 0 {
		return &singleSigner{signer{sign: sign, verify: verify}}
	}
	return &signer{h: h.New(), sign: sign, verify: verify}
}

// mechParamErr turns a typed parameter accessor's error into the CK_RV.
func mechParamErr(err error) error {
	if err != nil {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return nil
}
