package mech

import (
	"crypto/rand"
	"crypto/sha3"
	"encoding/asn1"
	"hash"
	"io"

	"filippo.io/mldsa"
	"filippo.io/mldsa/mldsacrypto"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// HashML-DSA (FIPS 204 §5.4), signing only. CKM_HASH_ML_DSA signs a
// digest computed elsewhere, the hash named by its
// CK_HASH_SIGN_ADDITIONAL_CONTEXT; CKM_HASH_ML_DSA_<hash> hash the message
// on the token, its parts streaming into the hash. Both sign FIPS 204's
// Algorithm 4: M' = 1 ‖ |ctx| ‖ ctx ‖ OID(PH) ‖ PH(M), and the signature is
// ML-DSA.Sign_internal's over μ = SHAKE256(tr ‖ M', 64), tr =
// SHAKE256(pk, 64).
//
// circl signs only pure ML-DSA (its domain separator is fixed at 0), so
// the token computes μ itself, with crypto/sha3, and filippo.io/mldsa
// signs it: its PrivateKey.Sign and SignDeterministic take an external μ
// (mldsacrypto.MLDSAMu, RFC 9881's "pre-hashed μ message
// representative"). No lattice arithmetic is the token's own.
//
// Neither library verifies an external μ: filippo.io/mldsa's Verify and
// circl's both build the pure M' themselves, which no HashML-DSA message
// matches. So the mechanisms sign and do not verify (CKF_SIGN without
// CKF_VERIFY; C_VerifyInit is CKR_MECHANISM_INVALID).
//
// filippo.io/mldsa makes a private key only from its 32-byte seed ξ. A
// key imported with CKA_VALUE alone (FIPS 204's expanded encoding) cannot
// sign HashML-DSA: its attributes lack what this function needs, which is
// CKR_KEY_FUNCTION_NOT_PERMITTED (not CKR_MECHANISM_INVALID, which would
// say the token lacks the mechanism, nor CKR_KEY_TYPE_INCONSISTENT: it is
// an ML-DSA key, and a seeded one of the same type signs).

// mldsaPH is a pre-hash HashML-DSA takes: its OID under NIST's hashAlgs
// (2.16.840.1.101.3.4.2, Computer Security Objects Register) and its
// output, PH(M), in bytes.
type mldsaPH struct {
	arc  int
	size int
	new  func() preHasher
}

// preHasher is a hash or XOF computing PH(M) as the message comes.
type preHasher interface {
	io.Writer
	digest() []byte
}

type fixedHash struct{ hash.Hash }

func (h fixedHash) digest() []byte { return h.Sum(nil) }

// xofHash is SHAKE128 or SHAKE256 read for n bytes: FIPS 204 §5.4 takes
// 256 bits of SHAKE128 and 512 of SHAKE256.
type xofHash struct {
	*sha3.SHAKE
	n int
}

func (h xofHash) digest() []byte {
	out := make([]byte, h.n)
	h.Read(out)
	return out
}

func fixed(digestMech uint64) func() preHasher {
	return func() preHasher { return fixedHash{hashes[digestMech]()} }
}

// mldsaPHByDigest are the hashes CKM_HASH_ML_DSA's parameter may name:
// the token's digest mechanisms FIPS 202 and 180-4 define, SHA-1 aside
// (FIPS 204 §5.4 asks for a hash as strong as the parameter set, which
// SHA-1 is for none). SHAKE128 and SHAKE256 have no digest mechanism in
// PKCS#11 3.2 to name them by; CKM_HASH_ML_DSA_SHAKE128 and _SHAKE256
// offer them.
var mldsaPHByDigest = map[uint64]*mldsaPH{
	ck.CKM_SHA256:     {arc: 1, size: 32, new: fixed(ck.CKM_SHA256)},
	ck.CKM_SHA384:     {arc: 2, size: 48, new: fixed(ck.CKM_SHA384)},
	ck.CKM_SHA512:     {arc: 3, size: 64, new: fixed(ck.CKM_SHA512)},
	ck.CKM_SHA224:     {arc: 4, size: 28, new: fixed(ck.CKM_SHA224)},
	ck.CKM_SHA512_224: {arc: 5, size: 28, new: fixed(ck.CKM_SHA512_224)},
	ck.CKM_SHA512_256: {arc: 6, size: 32, new: fixed(ck.CKM_SHA512_256)},
	ck.CKM_SHA3_224:   {arc: 7, size: 28, new: fixed(ck.CKM_SHA3_224)},
	ck.CKM_SHA3_256:   {arc: 8, size: 32, new: fixed(ck.CKM_SHA3_256)},
	ck.CKM_SHA3_384:   {arc: 9, size: 48, new: fixed(ck.CKM_SHA3_384)},
	ck.CKM_SHA3_512:   {arc: 10, size: 64, new: fixed(ck.CKM_SHA3_512)},
}

// mldsaPHByMech are the CKM_HASH_ML_DSA_<hash> mechanisms and their hash
// (PKCS#11 3.2, "HashML-DSA Signature with hashing").
var mldsaPHByMech = map[uint64]*mldsaPH{
	ck.CKM_HASH_ML_DSA_SHA224:   mldsaPHByDigest[ck.CKM_SHA224],
	ck.CKM_HASH_ML_DSA_SHA256:   mldsaPHByDigest[ck.CKM_SHA256],
	ck.CKM_HASH_ML_DSA_SHA384:   mldsaPHByDigest[ck.CKM_SHA384],
	ck.CKM_HASH_ML_DSA_SHA512:   mldsaPHByDigest[ck.CKM_SHA512],
	ck.CKM_HASH_ML_DSA_SHA3_224: mldsaPHByDigest[ck.CKM_SHA3_224],
	ck.CKM_HASH_ML_DSA_SHA3_256: mldsaPHByDigest[ck.CKM_SHA3_256],
	ck.CKM_HASH_ML_DSA_SHA3_384: mldsaPHByDigest[ck.CKM_SHA3_384],
	ck.CKM_HASH_ML_DSA_SHA3_512: mldsaPHByDigest[ck.CKM_SHA3_512],
	ck.CKM_HASH_ML_DSA_SHAKE128: {arc: 11, size: 32, new: func() preHasher { return xofHash{sha3.NewSHAKE128(), 32} }},
	ck.CKM_HASH_ML_DSA_SHAKE256: {arc: 12, size: 64, new: func() preHasher { return xofHash{sha3.NewSHAKE256(), 64} }},
}

// oid is the DER encoding of the hash's OID, tag and length included, as
// Algorithm 4 puts it in M'.
func (p *mldsaPH) oid() []byte {
	b, err := asn1.Marshal(nistOID(nistHashAlgs, p.arc))
	if err != nil {
		panic("mech: internal error: hash OID")
	}
	return b
}

var nistHashAlgs = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2}

// mldsaParams are filippo.io/mldsa's parameter sets, by CKA_PARAMETER_SET.
var mldsaParams = map[uint64]mldsa.Parameters{
	ck.CKP_ML_DSA_44: mldsa.MLDSA44(),
	ck.CKP_ML_DSA_65: mldsa.MLDSA65(),
	ck.CKP_ML_DSA_87: mldsa.MLDSA87(),
}

// mldsaTR is FIPS 204's tr, the 64-byte SHAKE256 of the encoded public
// key.
func mldsaTR(pk []byte) []byte {
	h := sha3.NewSHAKE256()
	h.Write(pk)
	tr := make([]byte, 64)
	h.Read(tr)
	return tr
}

// mldsaMu is FIPS 204's μ = SHAKE256(tr ‖ M', 64) for M' = domain ‖ |ctx|
// ‖ ctx ‖ oid ‖ msg: pure ML-DSA's (domain 0, no OID; Algorithm 2) or
// HashML-DSA's (domain 1, the pre-hash's OID, msg its PH(M); Algorithm
// 4). ctx is at most 255 bytes (signContext checks it).
func mldsaMu(tr []byte, domain byte, ctx, oid, msg []byte) []byte {
	h := sha3.NewSHAKE256()
	h.Write(tr)
	h.Write([]byte{domain, byte(len(ctx))})
	h.Write(ctx)
	h.Write(oid)
	h.Write(msg)
	mu := make([]byte, 64)
	h.Read(mu)
	return mu
}

// mldsaSeedKey is a private key as filippo.io/mldsa signs with it, and
// its tr.
type mldsaSeedKey struct {
	sk *mldsa.PrivateKey
	tr []byte
}

// mldsaSeeded parses an ML-DSA private key for signing an external μ: it
// needs the key's seed.
func mldsaSeeded(k Key) (*mldsaSeedKey, error) {
	// The seed and the value, if both there, must be one key, as for
	// CKM_ML_DSA.
	if _, err := mldsaPrivate(k); err != nil {
		return nil, err
	}
	return memoKey(k, "mldsaSeeded", func(k Key) (*mldsaSeedKey, error) {
		set, _ := parameterSet(k)
		params, ok := mldsaParams[set]
		if !ok {
			return nil, errKeyBroken
		}
		seed, _ := k.Attr(ck.CKA_SEED)
		if len(seed) == 0 {
			return nil, ck.Error(ck.CKR_KEY_FUNCTION_NOT_PERMITTED)
		}
		sk, err := mldsa.NewPrivateKey(params, seed)
		if err != nil {
			return nil, errKeyBroken
		}
		return &mldsaSeedKey{sk: sk, tr: mldsaTR(sk.PublicKey().Bytes())}, nil
	})
}

// signMu signs μ, hedged or deterministically.
func (k *mldsaSeedKey) signMu(mu []byte, deterministic bool) ([]byte, error) {
	var sig []byte
	var err error
	if deterministic {
		sig, err = k.sk.SignDeterministic(mu, mldsacrypto.MLDSAMu)
	} else {
		// The library draws the hedging randomness itself; the reader is
		// ignored.
		sig, err = k.sk.Sign(rand.Reader, mu, mldsacrypto.MLDSAMu)
	}
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return sig, nil
}

func hashMLDSAMechanisms() map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{
		ck.CKM_HASH_ML_DSA: {
			info:     mldsaInfo(ck.CKF_SIGN),
			keyTypes: []uint64{ck.CKK_ML_DSA},
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return hashMLDSASign(k, m, nil) },
		},
	}
	for typ, ph := range mldsaPHByMech {
		t[typ] = &Mechanism{
			info:     mldsaInfo(ck.CKF_SIGN),
			keyTypes: []uint64{ck.CKK_ML_DSA},
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return hashMLDSASign(k, m, ph) },
		}
	}
	return t
}

// hashMLDSASigner signs HashML-DSA: PH(M) computed as the message comes
// (h), or given whole (phm, for CKM_HASH_ML_DSA).
type hashMLDSASigner struct {
	key *mldsaSeedKey
	ph  *mldsaPH
	ctx sigContext
	h   preHasher
	phm []byte
}

func (s *hashMLDSASigner) Update(in []byte) error {
	if s.h != nil {
		s.h.Write(in)
		return nil
	}
	// The input is a digest: longer than the hash's is already wrong.
	if len(s.phm)+len(in) > s.ph.size {
		return ck.Error(ck.CKR_DATA_LEN_RANGE)
	}
	s.phm = append(s.phm, in...)
	return nil
}

func (s *hashMLDSASigner) Sign() ([]byte, error) {
	phm := s.phm
	if s.h != nil {
		phm = s.h.digest()
	} else if len(phm) != s.ph.size {
		return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
	}
	return s.key.signMu(mldsaMu(s.key.tr, 1, s.ctx.ctx, s.ph.oid(), phm), s.ctx.deterministic)
}

// Verify is never reached: the mechanisms have no verify constructor.
func (s *hashMLDSASigner) Verify([]byte) error { return ck.Error(ck.CKR_GENERAL_ERROR) }

// hashMLDSADigestSigner is CKM_HASH_ML_DSA's, single-part as the
// specification makes it (its input is the digest).
type hashMLDSADigestSigner struct{ hashMLDSASigner }

func (*hashMLDSADigestSigner) singlePart() {}

// hashMLDSASign starts a HashML-DSA signature: with ph the
// hash-specific mechanism's, or with ph nil CKM_HASH_ML_DSA's, whose
// parameter names the hash.
func hashMLDSASign(k Key, m *wire.Mechanism, ph *mldsaPH) (SignOp, error) {
	generic := ph == nil
	c, err := signContext(m, generic)
	if err != nil {
		return nil, err
	}
	if generic {
		if ph = mldsaPHByDigest[c.hash]; ph == nil {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
	}
	if err := pqcPrivate(k, ck.CKK_ML_DSA); err != nil {
		return nil, err
	}
	key, err := mldsaSeeded(k)
	if err != nil {
		return nil, err
	}
	s := hashMLDSASigner{key: key, ph: ph, ctx: c}
	if generic {
		return &hashMLDSADigestSigner{s}, nil
	}
	s.h = ph.new()
	return &s, nil
}
