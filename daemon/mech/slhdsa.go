package mech

import (
	"crypto"
	"crypto/rand"

	"github.com/cloudflare/circl/sign/slhdsa"
	"github.com/cloudflare/circl/xof"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// SLH-DSA (FIPS 205) through circl, all twelve parameter sets. PKCS#11
// 3.2 numbers them (CKP_SLH_DSA_*) in the order circl's slhdsa.ID does,
// SHA2-128s = 1 to SHAKE-256f = 12. A private key's CKA_VALUE is FIPS
// 205's SK.seed ‖ SK.prf ‖ PK.seed ‖ PK.root, a public key's PK.seed ‖
// PK.root.
//
// CKM_SLH_DSA signs the message (pure SLH-DSA); CKM_HASH_SLH_DSA_<hash>
// hashes it on the token and signs HashSLH-DSA (FIPS 205 §10.2.2), so
// its parts stream into the hash. The generic CKM_HASH_SLH_DSA, whose
// input is a digest computed elsewhere, is not offered: circl builds the
// pre-hash message only from the message itself.

// slhdsaID is the circl parameter set of CKA_PARAMETER_SET v.
func slhdsaID(v uint64) (slhdsa.ID, bool) {
	if v < ck.CKP_SLH_DSA_SHA2_128S || v > ck.CKP_SLH_DSA_SHAKE_256F {
		return 0, false
	}
	id := slhdsa.ID(v)
	return id, id.IsValid()
}

// slhdsaPreHash are the HashSLH-DSA mechanisms and their pre-hash.
var slhdsaPreHash = map[uint64]func() (*slhdsa.PreHash, error){
	ck.CKM_HASH_SLH_DSA_SHA224:   func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA224) },
	ck.CKM_HASH_SLH_DSA_SHA256:   func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA256) },
	ck.CKM_HASH_SLH_DSA_SHA384:   func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA384) },
	ck.CKM_HASH_SLH_DSA_SHA512:   func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA512) },
	ck.CKM_HASH_SLH_DSA_SHA3_224: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA3_224) },
	ck.CKM_HASH_SLH_DSA_SHA3_256: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA3_256) },
	ck.CKM_HASH_SLH_DSA_SHA3_384: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA3_384) },
	ck.CKM_HASH_SLH_DSA_SHA3_512: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithHash(crypto.SHA3_512) },
	ck.CKM_HASH_SLH_DSA_SHAKE128: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithXof(xof.SHAKE128) },
	ck.CKM_HASH_SLH_DSA_SHAKE256: func() (*slhdsa.PreHash, error) { return slhdsa.NewPreHashWithXof(xof.SHAKE256) },
}

// slhdsaInfo: the key sizes are the public keys', in bytes: 32 for the
// 128-bit sets to 64 for the 256-bit ones.
func slhdsaInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: 32, MaxKeySize: 64, Flags: flags}
}

func slhdsaMechanisms() map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{
		ck.CKM_SLH_DSA_KEY_PAIR_GEN: {
			info:         slhdsaInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_SLH_DSA,
			generatePair: slhdsaGeneratePair,
		},
		ck.CKM_SLH_DSA: {
			info:     slhdsaInfo(ck.CKF_SIGN | ck.CKF_VERIFY),
			keyTypes: []uint64{ck.CKK_SLH_DSA},
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return slhdsaSign(k, m, nil) },
			verify:   func(k Key, m *wire.Mechanism) (SignOp, error) { return slhdsaVerify(k, m, nil) },
		},
	}
	for typ, ph := range slhdsaPreHash {
		t[typ] = &Mechanism{
			info:     slhdsaInfo(ck.CKF_SIGN | ck.CKF_VERIFY),
			keyTypes: []uint64{ck.CKK_SLH_DSA},
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return slhdsaSign(k, m, ph) },
			verify:   func(k Key, m *wire.Mechanism) (SignOp, error) { return slhdsaVerify(k, m, ph) },
		}
	}
	return t
}

func slhdsaGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	set, err := templateSet(pub, priv)
	if err != nil {
		return nil, nil, err
	}
	id, ok := slhdsaID(set)
	if !ok {
		return nil, nil, ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
	}
	pk, sk, err := slhdsa.GenerateKey(rand.Reader, id)
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	pkb, _ := pk.MarshalBinary()
	skb, _ := sk.MarshalBinary()
	return map[uint64][]byte{ck.CKA_VALUE: pkb},
		map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: skb}, nil
}

func slhdsaIDOf(k Key) (slhdsa.ID, error) {
	set, _ := parameterSet(k)
	id, ok := slhdsaID(set)
	if !ok {
		return 0, errKeyBroken
	}
	return id, nil
}

func slhdsaPrivate(k Key) (*slhdsa.PrivateKey, error) {
	return memoKey(k, "slhdsaPrivate", func(k Key) (*slhdsa.PrivateKey, error) {
		id, err := slhdsaIDOf(k)
		if err != nil {
			return nil, err
		}
		sk := &slhdsa.PrivateKey{ID: id}
		if err := sk.UnmarshalBinary(value(k)); err != nil {
			return nil, errKeyBroken
		}
		return sk, nil
	})
}

func slhdsaPublic(k Key) (*slhdsa.PublicKey, error) {
	return memoKey(k, "slhdsaPublic", func(k Key) (*slhdsa.PublicKey, error) {
		id, err := slhdsaIDOf(k)
		if err != nil {
			return nil, err
		}
		pk := &slhdsa.PublicKey{ID: id}
		if err := pk.UnmarshalBinary(value(k)); err != nil {
			return nil, errKeyBroken
		}
		return pk, nil
	})
}

// slhdsaInput collects what SLH-DSA signs: the message itself (pure), or
// its pre-hash as it comes.
type slhdsaInput struct {
	buf bufSigner
	ph  *slhdsa.PreHash
}

func (in *slhdsaInput) Update(b []byte) error {
	if in.ph != nil {
		in.ph.Write(b)
		return nil
	}
	return in.buf.Update(b)
}

func (in *slhdsaInput) message() (*slhdsa.Message, error) {
	if in.ph != nil {
		m, err := in.ph.BuildMessage()
		if err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		return m, nil
	}
	return slhdsa.NewMessage(in.buf.msg), nil
}

func newSLHInput(ph func() (*slhdsa.PreHash, error)) (*slhdsaInput, error) {
	in := &slhdsaInput{}
	if ph != nil {
		h, err := ph()
		if err != nil {
			return nil, ck.Error(ck.CKR_MECHANISM_INVALID)
		}
		in.ph = h
	}
	return in, nil
}

type slhdsaSigner struct {
	*slhdsaInput
	sk  *slhdsa.PrivateKey
	pk  *slhdsa.PublicKey
	ctx sigContext
}

func (s *slhdsaSigner) Sign() ([]byte, error) {
	if s.sk == nil {
		return nil, ck.Error(ck.CKR_GENERAL_ERROR)
	}
	msg, err := s.message()
	if err != nil {
		return nil, err
	}
	var sig []byte
	if s.ctx.deterministic {
		sig, err = slhdsa.SignDeterministic(s.sk, msg, s.ctx.ctx)
	} else {
		sig, err = slhdsa.SignRandomized(s.sk, rand.Reader, msg, s.ctx.ctx)
	}
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return sig, nil
}

func (s *slhdsaSigner) Verify(sig []byte) error {
	if s.pk == nil {
		return ck.Error(ck.CKR_GENERAL_ERROR)
	}
	if len(sig) != slhdsaSigLen(s.pk.ID) {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	msg, err := s.message()
	if err != nil {
		return err
	}
	if !slhdsa.Verify(s.pk, msg, sig, s.ctx.ctx) {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

// slhdsaSigLen is the signature length of a parameter set.
func slhdsaSigLen(id slhdsa.ID) int { return id.Scheme().SignatureSize() }

func slhdsaSign(k Key, m *wire.Mechanism, ph func() (*slhdsa.PreHash, error)) (SignOp, error) {
	c, err := signContext(m, false)
	if err != nil {
		return nil, err
	}
	if err := pqcPrivate(k, ck.CKK_SLH_DSA); err != nil {
		return nil, err
	}
	sk, err := slhdsaPrivate(k)
	if err != nil {
		return nil, err
	}
	in, err := newSLHInput(ph)
	if err != nil {
		return nil, err
	}
	return &slhdsaSigner{slhdsaInput: in, sk: sk, ctx: c}, nil
}

func slhdsaVerify(k Key, m *wire.Mechanism, ph func() (*slhdsa.PreHash, error)) (SignOp, error) {
	c, err := verifyContext(m)
	if err != nil {
		return nil, err
	}
	if err := pqcPublic(k, ck.CKK_SLH_DSA); err != nil {
		return nil, err
	}
	pk, err := slhdsaPublic(k)
	if err != nil {
		return nil, err
	}
	in, err := newSLHInput(ph)
	if err != nil {
		return nil, err
	}
	v := &slhdsaSigner{slhdsaInput: in, pk: pk, ctx: c}
	if ph == nil {
		return slhdsaPureVerifier{v}, nil
	}
	return v, nil
}

// slhdsaPureVerifier verifies pure SLH-DSA: its message is needed whole,
// after the signature (SignatureFirst).
type slhdsaPureVerifier struct{ *slhdsaSigner }

func (slhdsaPureVerifier) signatureFirst() {}
