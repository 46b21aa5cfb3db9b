package mech

import (
	"crypto"
	"crypto/dsa"
	"crypto/rand"
	"math/big"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// DSA (FIPS 186-4), in legacy tables only (Table.WithLegacy): domain
// parameter generation (CKM_DSA_PARAMETER_GEN, a CKO_DOMAIN_PARAMETERS
// object), key pair generation on given parameters, and signatures with
// CKM_DSA (single-part, on a digest the caller made) and CKM_DSA_SHA1 to
// CKM_DSA_SHA3_512. The arithmetic is crypto/dsa's, deprecated in Go and
// variable-time: the legacy policy is for test fixtures and migrations.
//
// Domain parameters are FIPS 186-4's four sizes, (L, N) = (1024, 160),
// (2048, 224), (2048, 256) and (3072, 256); CK_MECHANISM_INFO gives the
// prime's size in bits. A signature is r || s, each of the subprime's
// size; a digest longer than the subprime is cut to its leftmost N bits.

const (
	dsaMinBits = 1024
	dsaMaxBits = 3072
)

var dsaOnly = []uint64{ck.CKK_DSA}

// dsaHashes are the DSA signature mechanisms and their hashes (0: CKM_DSA).
var dsaHashes = map[uint64]crypto.Hash{
	ck.CKM_DSA:          0,
	ck.CKM_DSA_SHA1:     crypto.SHA1,
	ck.CKM_DSA_SHA224:   crypto.SHA224,
	ck.CKM_DSA_SHA256:   crypto.SHA256,
	ck.CKM_DSA_SHA384:   crypto.SHA384,
	ck.CKM_DSA_SHA512:   crypto.SHA512,
	ck.CKM_DSA_SHA3_224: crypto.SHA3_224,
	ck.CKM_DSA_SHA3_256: crypto.SHA3_256,
	ck.CKM_DSA_SHA3_384: crypto.SHA3_384,
	ck.CKM_DSA_SHA3_512: crypto.SHA3_512,
}

func dsaInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: dsaMinBits, MaxKeySize: dsaMaxBits, Flags: flags}
}

func dsaMechanisms() map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{
		ck.CKM_DSA_PARAMETER_GEN: {
			info:       dsaInfo(ck.CKF_GENERATE),
			genKeyType: ck.CKK_DSA,
			genClass:   ck.CKO_DOMAIN_PARAMETERS,
			generate:   dsaGenerateParameters,
		},
		ck.CKM_DSA_KEY_PAIR_GEN: {
			info:         dsaInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_DSA,
			generatePair: dsaGeneratePair,
		},
	}
	for typ, h := range dsaHashes {
		t[typ] = &Mechanism{
			info:     dsaInfo(ck.CKF_SIGN | ck.CKF_VERIFY),
			keyTypes: dsaOnly,
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return dsaSigner(k, m, h) },
			verify:   func(k Key, m *wire.Mechanism) (SignOp, error) { return dsaVerifier(k, m, h) },
		}
	}
	return t
}

// dsaSizes maps FIPS 186-4's (L, N) to crypto/dsa's.
func dsaSizes(l, n int) (dsa.ParameterSizes, bool) {
	switch {
	case l == 1024 && n == 160:
		return dsa.L1024N160, true
	case l == 2048 && n == 224:
		return dsa.L2048N224, true
	case l == 2048 && n == 256:
		return dsa.L2048N256, true
	case l == 3072 && n == 256:
		return dsa.L3072N256, true
	}
	return 0, false
}

// dsaGenerateParameters is CKM_DSA_PARAMETER_GEN: p, q and g for the
// template's CKA_PRIME_BITS and CKA_SUBPRIME_BITS (by default 160 for
// 1024 bits, 224 for 2048, 256 for 3072, as the specification says).
// Generating 2048- and 3072-bit parameters takes seconds.
func dsaGenerateParameters(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	lv, ok := tmpl[ck.CKA_PRIME_BITS]
	if !ok {
		return nil, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	l := ulongOf(lv)
	n := uint64(160)
	switch l {
	case 2048:
		n = 224
	case 3072:
		n = 256
	}
	if v, ok := tmpl[ck.CKA_SUBPRIME_BITS]; ok {
		n = ulongOf(v)
	}
	if l > dsaMaxBits || n > 256 {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	sizes, ok := dsaSizes(int(l), int(n))
	if !ok {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	var params dsa.Parameters
	if err := dsa.GenerateParameters(&params, rand.Reader, sizes); err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return map[uint64][]byte{
		ck.CKA_PRIME: params.P.Bytes(), ck.CKA_SUBPRIME: params.Q.Bytes(), ck.CKA_BASE: params.G.Bytes(),
		ck.CKA_PRIME_BITS: ulong(l), ck.CKA_SUBPRIME_BITS: ulong(n),
	}, nil
}

// dsaParams reads and checks domain parameters: p of 1024 to 3072 bits,
// q of 160, 224 or 256 bits dividing p-1, and 1 < g < p.
func dsaParams(p, q, g []byte) (dsa.Parameters, error) {
	P, Q, G := new(big.Int).SetBytes(p), new(big.Int).SetBytes(q), new(big.Int).SetBytes(g)
	l, n := P.BitLen(), Q.BitLen()
	if l < dsaMinBits || l > dsaMaxBits || (n != 160 && n != 224 && n != 256) {
		return dsa.Parameters{}, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	pm1 := new(big.Int).Sub(P, big.NewInt(1))
	if G.Cmp(big.NewInt(1)) <= 0 || G.Cmp(P) >= 0 || new(big.Int).Mod(pm1, Q).Sign() != 0 {
		return dsa.Parameters{}, ck.Error(ck.CKR_DOMAIN_PARAMS_INVALID)
	}
	return dsa.Parameters{P: P, Q: Q, G: G}, nil
}

// dsaGeneratePair is CKM_DSA_KEY_PAIR_GEN on the parameters of the
// public template.
func dsaGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, pok := pub[ck.CKA_PRIME]
	q, qok := pub[ck.CKA_SUBPRIME]
	g, gok := pub[ck.CKA_BASE]
	if !pok || !qok || !gok {
		return nil, nil, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	params, err := dsaParams(p, q, g)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := dsaSizes(params.P.BitLen(), params.Q.BitLen()); !ok {
		return nil, nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	k := &dsa.PrivateKey{PublicKey: dsa.PublicKey{Parameters: params}}
	if err := dsa.GenerateKey(k, rand.Reader); err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return map[uint64][]byte{ck.CKA_VALUE: k.Y.Bytes()},
		map[uint64][]byte{
			ck.CKA_PRIME: params.P.Bytes(), ck.CKA_SUBPRIME: params.Q.Bytes(), ck.CKA_BASE: params.G.Bytes(),
			ck.CKA_VALUE: k.X.Bytes(),
		}, nil
}

// dsaPublic is a DSA public key object's key.
func dsaPublic(k Key) (*dsa.PublicKey, error) {
	return memoKey(k, "dsaPublic", func(k Key) (*dsa.PublicKey, error) {
		if k.KeyType() != ck.CKK_DSA || k.Class() != ck.CKO_PUBLIC_KEY {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		p, _ := k.Attr(ck.CKA_PRIME)
		q, _ := k.Attr(ck.CKA_SUBPRIME)
		g, _ := k.Attr(ck.CKA_BASE)
		params, err := dsaParams(p, q, g)
		if err != nil {
			return nil, err
		}
		y := bigAttr(k, ck.CKA_VALUE)
		if y.Cmp(big.NewInt(1)) <= 0 || y.Cmp(params.P) >= 0 {
			return nil, errKeyBroken
		}
		return &dsa.PublicKey{Parameters: params, Y: y}, nil
	})
}

// dsaPrivate is a DSA private key object's key, with its public value
// computed.
func dsaPrivate(k Key) (*dsa.PrivateKey, error) {
	return memoKey(k, "dsaPrivate", func(k Key) (*dsa.PrivateKey, error) {
		if k.KeyType() != ck.CKK_DSA || k.Class() != ck.CKO_PRIVATE_KEY {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		p, _ := k.Attr(ck.CKA_PRIME)
		q, _ := k.Attr(ck.CKA_SUBPRIME)
		g, _ := k.Attr(ck.CKA_BASE)
		params, err := dsaParams(p, q, g)
		if err != nil {
			return nil, err
		}
		x := bigAttr(k, ck.CKA_VALUE)
		if x.Sign() <= 0 || x.Cmp(params.Q) >= 0 {
			return nil, errKeyBroken
		}
		y := new(big.Int).Exp(params.G, x, params.P)
		return &dsa.PrivateKey{PublicKey: dsa.PublicKey{Parameters: params, Y: y}, X: x}, nil
	})
}

// dsaDigest cuts a digest to the subprime's leftmost bits (q's size is a
// whole number of bytes).
func dsaDigest(q *big.Int, d []byte) []byte {
	if n := (q.BitLen() + 7) / 8; len(d) > n {
		return d[:n]
	}
	return d
}

// dsaRawLengths are the digest lengths CKM_DSA signs.
func dsaRawLength(n int) bool { return n == 20 || n == 28 || n == 32 || n == 48 || n == 64 }

func dsaSigner(k Key, m *wire.Mechanism, h crypto.Hash) (SignOp, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	priv, err := dsaPrivate(k)
	if err != nil {
		return nil, err
	}
	size := (priv.Q.BitLen() + 7) / 8
	return newSigner(h, func(in []byte) ([]byte, error) {
		if h == 0 && !dsaRawLength(len(in)) {
			return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
		}
		r, s, err := dsa.Sign(rand.Reader, priv, dsaDigest(priv.Q, in))
		if err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		return append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...), nil
	}, nil), nil
}

func dsaVerifier(k Key, m *wire.Mechanism, h crypto.Hash) (SignOp, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	pub, err := dsaPublic(k)
	if err != nil {
		return nil, err
	}
	size := (pub.Q.BitLen() + 7) / 8
	return newSigner(h, nil, func(in, sig []byte) error {
		if h == 0 && !dsaRawLength(len(in)) {
			return ck.Error(ck.CKR_DATA_LEN_RANGE)
		}
		if len(sig) != 2*size {
			return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		if !dsa.Verify(pub, dsaDigest(pub.Q, in), r, s) {
			return ck.Error(ck.CKR_SIGNATURE_INVALID)
		}
		return nil
	}), nil
}
