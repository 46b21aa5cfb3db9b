package mech

import (
	"bytes"
	"crypto/rand"

	"github.com/cloudflare/circl/sign"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// ML-DSA (FIPS 204) through circl, whose ML-DSA-44, -65 and -87 are
// FIPS 204's (Go's own is internal to its FIPS module). Keys are CKK_ML_DSA
// with CKA_PARAMETER_SET one of CKP_ML_DSA_*; a private key holds the
// 32-byte seed ξ (CKA_SEED) and the encoded private key (CKA_VALUE).
//
// CKM_HASH_ML_DSA and its hash-specific variants (HashML-DSA, FIPS 204
// §5.4) are hashmldsa.go's: circl signs only the pure form (its domain
// separator is fixed at 0), so they sign through filippo.io/mldsa, and do
// not verify.

// mldsaSet is one parameter set.
type mldsaSet struct {
	name   string
	scheme sign.Scheme
	sigLen int
	// eta bounds the coefficients of s1 (l polynomials) and s2 (k), as
	// FIPS 204's Table 1 gives them: mldsaCheckS reads them.
	eta, k, l int
	// signTo signs msg with context ctx, hedged when randomized.
	signTo func(sk sign.PrivateKey, msg, ctx []byte, randomized bool, sig []byte) error
	verify func(pk sign.PublicKey, msg, ctx, sig []byte) bool
}

const mldsaSeedLen = 32

// sign is signTo, never a panic. circl's signer gives up on a key whose
// every attempt its rejection sampling refuses, after 576 of them, with a
// panic, which a genuine key never meets (the odds are below 2^-128) but
// an expanded key given without its seed can bring about: its t0 is read
// as given, and one whose coefficients sit at the ends of their range
// makes c·t0 too large for every attempt. Such a key fails the
// pairwise-consistency test, and a signature with it is
// CKR_FUNCTION_FAILED.
func (p *mldsaSet) sign(sk sign.PrivateKey, msg, ctx []byte, randomized bool, sig []byte) (err error) {
	defer func() {
		if recover() != nil {
			err = ck.Error(ck.CKR_FUNCTION_FAILED)
		}
	}()
	return p.signTo(sk, msg, ctx, randomized, sig)
}

var mldsaSets = map[uint64]*mldsaSet{
	ck.CKP_ML_DSA_44: {
		name: "ML-DSA-44", scheme: mldsa44.Scheme(), sigLen: mldsa44.SignatureSize, eta: 2, k: 4, l: 4,
		signTo: func(sk sign.PrivateKey, msg, ctx []byte, r bool, sig []byte) error {
			return mldsa44.SignTo(sk.(*mldsa44.PrivateKey), msg, ctx, r, sig)
		},
		verify: func(pk sign.PublicKey, msg, ctx, sig []byte) bool {
			return mldsa44.Verify(pk.(*mldsa44.PublicKey), msg, ctx, sig)
		},
	},
	ck.CKP_ML_DSA_65: {
		name: "ML-DSA-65", scheme: mldsa65.Scheme(), sigLen: mldsa65.SignatureSize, eta: 4, k: 6, l: 5,
		signTo: func(sk sign.PrivateKey, msg, ctx []byte, r bool, sig []byte) error {
			return mldsa65.SignTo(sk.(*mldsa65.PrivateKey), msg, ctx, r, sig)
		},
		verify: func(pk sign.PublicKey, msg, ctx, sig []byte) bool {
			return mldsa65.Verify(pk.(*mldsa65.PublicKey), msg, ctx, sig)
		},
	},
	ck.CKP_ML_DSA_87: {
		name: "ML-DSA-87", scheme: mldsa87.Scheme(), sigLen: mldsa87.SignatureSize, eta: 2, k: 8, l: 7,
		signTo: func(sk sign.PrivateKey, msg, ctx []byte, r bool, sig []byte) error {
			return mldsa87.SignTo(sk.(*mldsa87.PrivateKey), msg, ctx, r, sig)
		},
		verify: func(pk sign.PublicKey, msg, ctx, sig []byte) bool {
			return mldsa87.Verify(pk.(*mldsa87.PublicKey), msg, ctx, sig)
		},
	},
}

// mldsaInfo: the key sizes are the public keys', in bytes (PKCS#11 3.2,
// "ML-DSA key pair generation").
func mldsaInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: mldsa44.PublicKeySize, MaxKeySize: mldsa87.PublicKeySize, Flags: flags}
}

func mldsaMechanisms() map[uint64]*Mechanism {
	return map[uint64]*Mechanism{
		ck.CKM_ML_DSA_KEY_PAIR_GEN: {
			info:         mldsaInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_ML_DSA,
			generatePair: mldsaGeneratePair,
		},
		ck.CKM_ML_DSA: {
			info:     mldsaInfo(ck.CKF_SIGN | ck.CKF_VERIFY),
			keyTypes: []uint64{ck.CKK_ML_DSA},
			sign:     mldsaSign,
			verify:   mldsaVerify,
		},
	}
}

func mldsaGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	set, err := templateSet(pub, priv)
	if err != nil {
		return nil, nil, err
	}
	p, ok := mldsaSets[set]
	if !ok {
		return nil, nil, ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
	}
	seed := make([]byte, mldsaSeedLen)
	if _, err := rand.Read(seed); err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	pk, sk := p.scheme.DeriveKey(seed)
	pkb, _ := pk.MarshalBinary()
	skb, _ := sk.MarshalBinary()
	return map[uint64][]byte{ck.CKA_VALUE: pkb},
		map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: seed, ck.CKA_VALUE: skb}, nil
}

// mldsaSetOf returns a key's parameter set.
func mldsaSetOf(k Key) (*mldsaSet, error) {
	set, _ := parameterSet(k)
	p, ok := mldsaSets[set]
	if !ok {
		return nil, errKeyBroken
	}
	return p, nil
}

// mldsaPrivate parses an ML-DSA private key: from its seed when it has
// one (the encoded key, if there too, must be the seed's), else from its
// encoding.
func mldsaPrivate(k Key) (sign.PrivateKey, error) {
	return memoKey(k, "mldsaPrivate", func(k Key) (sign.PrivateKey, error) {
		p, err := mldsaSetOf(k)
		if err != nil {
			return nil, err
		}
		seed, hasSeed := k.Attr(ck.CKA_SEED)
		val, hasVal := k.Attr(ck.CKA_VALUE)
		if hasSeed && len(seed) > 0 {
			if len(seed) != mldsaSeedLen {
				return nil, errKeyBroken
			}
			_, sk := p.scheme.DeriveKey(seed)
			if hasVal && len(val) > 0 {
				skb, _ := sk.MarshalBinary()
				if !bytes.Equal(skb, val) {
					return nil, errKeyBroken
				}
			}
			return sk, nil
		}
		if !mldsaCheckS(p, val) {
			return nil, errKeyBroken
		}
		sk, err := p.scheme.UnmarshalBinaryPrivateKey(val)
		if err != nil {
			return nil, errKeyBroken
		}
		return sk, nil
	})
}

// mldsaCheckS says whether an encoded private key's s1 and s2 are in
// range. FIPS 204's skEncode packs each coefficient c of s1 and s2 as
// η − c in bitlen(2η) bits (3 for η = 2, 4 for η = 4), which can hold
// values above 2η that no key has; skDecode does not catch them (FIPS
// 204 §7.2 leaves a malformed key to the caller) and neither does circl,
// which would sign with such a key. The vectors start after ρ, K and tr
// (128 bytes), each polynomial taking 32·bitlen(2η) bytes. Only a key
// given without its seed is read this way: one from a seed is right by
// construction.
func mldsaCheckS(p *mldsaSet, sk []byte) bool {
	bits := 3
	if p.eta == 4 {
		bits = 4
	}
	start := 128
	end := start + (p.k+p.l)*32*bits
	if len(sk) < end {
		return false
	}
	packed := sk[start:end]
	// 256 coefficients per polynomial; bits·8 coefficients fill bits
	// bytes, read little-endian as FIPS 204's BitsToInteger does.
	for i := 0; i+bits <= len(packed); i += bits {
		var w uint32
		for j := 0; j < bits; j++ {
			w |= uint32(packed[i+j]) << (8 * j)
		}
		for c := 0; c < 8; c++ {
			if int(w>>(c*bits)&(1<<bits-1)) > 2*p.eta {
				return false
			}
		}
	}
	return true
}

// mldsaPublic parses an ML-DSA public key object's CKA_VALUE.
func mldsaPublic(k Key) (sign.PublicKey, error) {
	return memoKey(k, "mldsaPublic", func(k Key) (sign.PublicKey, error) {
		p, err := mldsaSetOf(k)
		if err != nil {
			return nil, err
		}
		pk, err := p.scheme.UnmarshalBinaryPublicKey(value(k))
		if err != nil {
			return nil, errKeyBroken
		}
		return pk, nil
	})
}

func mldsaSign(k Key, m *wire.Mechanism) (SignOp, error) {
	c, err := signContext(m, false)
	if err != nil {
		return nil, err
	}
	if err := pqcPrivate(k, ck.CKK_ML_DSA); err != nil {
		return nil, err
	}
	p, err := mldsaSetOf(k)
	if err != nil {
		return nil, err
	}
	sk, err := mldsaPrivate(k)
	if err != nil {
		return nil, err
	}
	return &bufSigner{sign: func(msg []byte) ([]byte, error) {
		sig := make([]byte, p.sigLen)
		if err := p.sign(sk, msg, c.ctx, !c.deterministic, sig); err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		return sig, nil
	}}, nil
}

func mldsaVerify(k Key, m *wire.Mechanism) (SignOp, error) {
	c, err := verifyContext(m)
	if err != nil {
		return nil, err
	}
	if err := pqcPublic(k, ck.CKK_ML_DSA); err != nil {
		return nil, err
	}
	p, err := mldsaSetOf(k)
	if err != nil {
		return nil, err
	}
	pk, err := mldsaPublic(k)
	if err != nil {
		return nil, err
	}
	return &bufSigner{verify: func(msg, sig []byte) error {
		if len(sig) != p.sigLen {
			return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
		}
		if !p.verify(pk, msg, c.ctx, sig) {
			return ck.Error(ck.CKR_SIGNATURE_INVALID)
		}
		return nil
	}}, nil
}

// mldsaPCTMessage is the message of the pairwise-consistency test.
var mldsaPCTMessage = []byte("hsmemu ML-DSA pairwise consistency")

// mldsaSignsForItsPublicKey is a pairwise-consistency test of a private
// key given without its seed: one deterministic signature of a fixed
// message, verified with the public key its ρ, s1 and s2 give (read back
// from its encoding, so tr is recomputed and not the key's). It is what
// catches a wrong t0: the signer uses t0 only to compute the hint that
// lets a verifier recover w1 from t1, and neither circl nor
// filippo.io/mldsa recomputes t0 from an expanded key to compare. A
// single signature is a test, not a proof: t0 from another key, or a
// coefficient far off, fails it, but a coefficient off by a little moves
// c·t0 across a rounding boundary only with a probability that small
// (docs/mechanisms.md gives the figures). Deterministic, so a key is
// refused or taken the same way every time.
func mldsaSignsForItsPublicKey(p *mldsaSet, sk sign.PrivateKey) bool {
	pkb, err := sk.Public().(sign.PublicKey).MarshalBinary()
	if err != nil {
		return false
	}
	pk, err := p.scheme.UnmarshalBinaryPublicKey(pkb)
	if err != nil {
		return false
	}
	sig := make([]byte, p.sigLen)
	if err := p.sign(sk, mldsaPCTMessage, nil, false, sig); err != nil {
		return false
	}
	return p.verify(pk, mldsaPCTMessage, nil, sig)
}
