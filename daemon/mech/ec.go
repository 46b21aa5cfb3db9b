package mech

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"math/big"

	"github.com/cloudflare/circl/sign/ed448"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Elliptic curves: key pairs on P-224, P-256, P-384, P-521 and secp256k1
// (CKK_EC), on Ed25519 and Ed448 (CKK_EC_EDWARDS), and on X25519 and X448
// (CKK_EC_MONTGOMERY, montgomery.go); ECDSA, EdDSA and ECDH. The
// primitives are the standard library's, except secp256k1's
// (secp256k1.go) and Ed448's and X448's (github.com/cloudflare/circl).
//
// ECDSA signs with precomputed nonces on the curves crypto/ecdh has
// (nonces.go): P-256, P-384, P-521. On P-224 it signs with crypto/ecdsa,
// on secp256k1 with its library.

// Curve sizes, in bits: the order of the base point for the short
// Weierstrass curves (P-224 to P-521), the curve for the others.
const (
	ecMinBits = 224
	ecMaxBits = 521
)

var (
	ecOnly      = []uint64{ck.CKK_EC}
	edwardsOnly = []uint64{ck.CKK_EC_EDWARDS}
	ecdhTypes   = []uint64{ck.CKK_EC, ck.CKK_EC_MONTGOMERY}
)

// ecCurveFlags describe the curves: over prime fields, named, with
// uncompressed points.
const ecCurveFlags = ck.CKF_EC_F_P | ck.CKF_EC_NAMEDCURVE | ck.CKF_EC_UNCOMPRESS

func ecInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: ecMinBits, MaxKeySize: ecMaxBits, Flags: flags | ecCurveFlags}
}

// edInfo is the information of the Edwards and Montgomery mechanisms:
// curves of 255 and 448 bits.
func edInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: curve25519, MaxKeySize: curve448, Flags: flags | ck.CKF_EC_NAMEDCURVE}
}

// ecdsaHashes are the ECDSA mechanisms and their hashes (0: CKM_ECDSA,
// which signs what it is given).
var ecdsaHashes = map[uint64]crypto.Hash{
	ck.CKM_ECDSA:          0,
	ck.CKM_ECDSA_SHA1:     crypto.SHA1,
	ck.CKM_ECDSA_SHA224:   crypto.SHA224,
	ck.CKM_ECDSA_SHA256:   crypto.SHA256,
	ck.CKM_ECDSA_SHA384:   crypto.SHA384,
	ck.CKM_ECDSA_SHA512:   crypto.SHA512,
	ck.CKM_ECDSA_SHA3_224: crypto.SHA3_224,
	ck.CKM_ECDSA_SHA3_256: crypto.SHA3_256,
	ck.CKM_ECDSA_SHA3_384: crypto.SHA3_384,
	ck.CKM_ECDSA_SHA3_512: crypto.SHA3_512,
}

func ecMechanisms(p policy) map[uint64]*Mechanism {
	signVerify := uint64(ck.CKF_SIGN | ck.CKF_VERIFY)
	t := map[uint64]*Mechanism{
		ck.CKM_EC_KEY_PAIR_GEN: {
			info:         ecInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_EC,
			generatePair: ecGeneratePair,
		},
		ck.CKM_EC_EDWARDS_KEY_PAIR_GEN: {
			info:         edInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_EC_EDWARDS,
			generatePair: edGeneratePair,
		},
		ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN: {
			info:         edInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_EC_MONTGOMERY,
			generatePair: montgomeryGeneratePair,
		},
		ck.CKM_EDDSA: {info: edInfo(signVerify), keyTypes: edwardsOnly, sign: eddsaSign, verify: eddsaVerify},
		ck.CKM_ECDH1_DERIVE: {
			info:     ecInfo(ck.CKF_DERIVE),
			keyTypes: ecdhTypes,
			derive:   ecdhDerive,
		},
	}
	for typ, h := range ecdsaHashes {
		e := &Mechanism{
			info:     ecInfo(signVerify),
			keyTypes: ecOnly,
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return ecdsaSigner(p.nonces, k, m, h) },
			verify:   func(k Key, m *wire.Mechanism) (SignOp, error) { return ecdsaVerifier(k, m, h) },
		}
		if h == crypto.SHA1 && !p.legacy {
			// SHA-1 in new signatures is legacy: verify only.
			e.info = ecInfo(ck.CKF_VERIFY)
			e.sign = nil
		}
		t[typ] = e
	}
	return t
}

// ecParamsOf returns the public template's CKA_EC_PARAMS, which the
// private key gets too (a private template naming other parameters is
// inconsistent).
func ecParamsOf(pub, priv map[uint64][]byte) ([]byte, error) {
	params, ok := pub[ck.CKA_EC_PARAMS]
	if !ok {
		return nil, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	if pv, ok := priv[ck.CKA_EC_PARAMS]; ok && !bytes.Equal(pv, params) {
		return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	return params, nil
}

// ecGeneratePair makes a key pair on the short Weierstrass curve
// CKA_EC_PARAMS names.
func ecGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	params, err := ecParamsOf(pub, priv)
	if err != nil {
		return nil, nil, err
	}
	oid, name, err := parseECParams(params)
	if err != nil {
		return nil, nil, err
	}
	if isSecp256k1(oid, name) {
		return k256GeneratePair(params)
	}
	c, ok := ellipticCurve(oid, name)
	if !ok {
		return nil, nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	point, err := k.PublicKey.Bytes()
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	d, err := k.Bytes()
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return map[uint64][]byte{ck.CKA_EC_POINT: pointDER(point)},
		map[uint64][]byte{ck.CKA_EC_PARAMS: bytes.Clone(params), ck.CKA_VALUE: d}, nil
}

// edGeneratePair makes an Ed25519 or Ed448 key pair: CKA_EC_POINT holds
// the public key (32 or 57 bytes, in a DER OCTET STRING), CKA_VALUE the
// private seed (as long).
func edGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	params, err := ecParamsOf(pub, priv)
	if err != nil {
		return nil, nil, err
	}
	oid, name, err := parseECParams(params)
	if err != nil {
		return nil, nil, err
	}
	var pk, seed []byte
	switch edwardsCurve(oid, name) {
	case curve25519:
		p, sk, err := ed25519.GenerateKey(nil)
		if err != nil {
			return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		pk, seed = p, bytes.Clone(sk.Seed())
		clear(sk)
	case curve448:
		p, sk, err := ed448.GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		pk, seed = p, bytes.Clone(sk.Seed())
		clear(sk)
	default:
		return nil, nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return map[uint64][]byte{ck.CKA_EC_POINT: pointDER(pk)},
		map[uint64][]byte{ck.CKA_EC_PARAMS: bytes.Clone(params), ck.CKA_VALUE: seed}, nil
}

// ecSize is the size in bytes of a curve's order, hence of r and s.
func ecSize(c elliptic.Curve) int { return (c.Params().N.BitLen() + 7) / 8 }

// ecdsaSigner signs the input's digest by h, or (h 0, CKM_ECDSA) the
// input as given, a digest the caller made. The signature is r || s, each
// of the order's size, as the specification says (not DER).
func ecdsaSigner(nonces *noncePools, k Key, m *wire.Mechanism, h crypto.Hash) (SignOp, error) {
	if m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if k.KeyType() != ck.CKK_EC || k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, k256, err := weierstrass(k)
	if err != nil {
		return nil, err
	}
	if k256 {
		priv, err := k256Private(k)
		if err != nil {
			return nil, err
		}
		return newSigner(h, func(in []byte) ([]byte, error) { return k256Sign(priv, in), nil }, nil), nil
	}
	if _, pooled := nonceCurveOf(c); !pooled {
		// P-224: crypto/ecdsa, with its own hedged nonces.
		priv, err := ecdsaPrivate(k)
		if err != nil {
			return nil, err
		}
		size := ecSize(c)
		return newSigner(h, func(in []byte) ([]byte, error) {
			r, s, err := ecdsa.Sign(rand.Reader, priv, in)
			if err != nil {
				return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
			}
			return append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...), nil
		}, nil), nil
	}
	priv, err := ecdsaScalar(k)
	if err != nil {
		return nil, err
	}
	pool := nonces.of(priv.curve)
	return newSigner(h, func(in []byte) ([]byte, error) {
		sig, err := pool.sign(priv.d, in)
		if err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		return sig, nil
	}, nil), nil
}

func ecdsaVerifier(k Key, m *wire.Mechanism, h crypto.Hash) (SignOp, error) {
	if m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if k.KeyType() != ck.CKK_EC {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	_, k256, err := weierstrass(k)
	if err != nil {
		return nil, err
	}
	if k256 {
		pub, err := k256Public(k)
		if err != nil {
			return nil, err
		}
		return newSigner(h, nil, func(in, sig []byte) error { return k256Verify(pub, in, sig) }), nil
	}
	pub, err := ecdsaPublicOf(k)
	if err != nil {
		return nil, err
	}
	if v, err := ecVerifyKeyOf(k, pub.Curve); err != nil || v != nil {
		if err != nil {
			return nil, err
		}
		return newSigner(h, nil, v.verify), nil
	}
	size := ecSize(pub.Curve)
	return newSigner(h, nil, func(in, sig []byte) error {
		if len(sig) != 2*size {
			return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
		}
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		if !ecdsa.Verify(pub, in, r, s) {
			return ck.Error(ck.CKR_SIGNATURE_INVALID)
		}
		return nil
	}), nil
}

// ecdsaPublicOf is an EC key's public key: a public key's, or a private
// key's public half.
func ecdsaPublicOf(k Key) (*ecdsa.PublicKey, error) {
	if k.Class() == ck.CKO_PRIVATE_KEY {
		priv, err := ecdsaPrivate(k)
		if err != nil {
			return nil, err
		}
		return &priv.PublicKey, nil
	}
	return ecdsaPublic(k)
}

// eddsaOptions reads the optional CK_EDDSA_PARAMS: none is pure EdDSA
// (Ed25519, or Ed448 with an empty context); phFlag selects the prehash
// variant (Ed25519ph, the token hashing the input with SHA-512; Ed448ph,
// with SHAKE256), and a context Ed25519ctx or Ed448's context (or the
// prehash variant's). A parameter with neither is pure Ed25519 too:
// RFC 8032 defines no Ed25519ctx with an empty context.
func eddsaOptions(m *wire.Mechanism) (*ed25519.Options, error) {
	if !m.Present {
		return &ed25519.Options{}, nil
	}
	p, err := m.Param.EdDSAParams()
	if err != nil {
		return nil, mechParamErr(err)
	}
	if len(p.ContextData) > 255 {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	o := &ed25519.Options{Context: string(p.ContextData)}
	if p.PHFlag {
		o.Hash = crypto.SHA512
	}
	return o, nil
}

// eddsaInput is what Ed25519 signs: the message, or for Ed25519ph its
// SHA-512.
func eddsaInput(o *ed25519.Options, msg []byte) []byte {
	if o.Hash == crypto.SHA512 {
		d := sha512.Sum512(msg)
		return d[:]
	}
	return msg
}

func eddsaSign(k Key, m *wire.Mechanism) (SignOp, error) {
	o, err := eddsaOptions(m)
	if err != nil {
		return nil, err
	}
	if k.KeyType() != ck.CKK_EC_EDWARDS || k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := edwardsOf(k)
	if err != nil {
		return nil, err
	}
	if c == curve448 {
		priv, err := ed448Private(k)
		if err != nil {
			return nil, err
		}
		return newSigner(0, func(in []byte) ([]byte, error) {
			if o.Hash != 0 {
				return ed448.SignPh(priv, in, o.Context), nil
			}
			return ed448.Sign(priv, in, o.Context), nil
		}, nil), nil
	}
	priv, err := ed25519Private(k)
	if err != nil {
		return nil, err
	}
	return newSigner(0, func(in []byte) ([]byte, error) {
		if o.Hash == 0 && o.Context == "" {
			return ed25519.Sign(priv, in), nil
		}
		sig, err := priv.Sign(nil, eddsaInput(o, in), o)
		if err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		return sig, nil
	}, nil), nil
}

func eddsaVerify(k Key, m *wire.Mechanism) (SignOp, error) {
	o, err := eddsaOptions(m)
	if err != nil {
		return nil, err
	}
	if k.KeyType() != ck.CKK_EC_EDWARDS {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := edwardsOf(k)
	if err != nil {
		return nil, err
	}
	if c == curve448 {
		pub, err := ed448PublicOf(k)
		if err != nil {
			return nil, err
		}
		return newSigner(0, nil, func(in, sig []byte) error {
			if len(sig) != ed448.SignatureSize {
				return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
			}
			ok := false
			if o.Hash != 0 {
				ok = ed448.VerifyPh(pub, in, sig, o.Context)
			} else {
				ok = ed448.Verify(pub, in, sig, o.Context)
			}
			if !ok {
				return ck.Error(ck.CKR_SIGNATURE_INVALID)
			}
			return nil
		}), nil
	}
	pub, err := ed25519PublicOf(k)
	if err != nil {
		return nil, err
	}
	return newSigner(0, nil, func(in, sig []byte) error {
		if len(sig) != ed25519.SignatureSize {
			return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
		}
		if ed25519.VerifyWithOptions(pub, eddsaInput(o, in), sig, o) != nil {
			return ck.Error(ck.CKR_SIGNATURE_INVALID)
		}
		return nil
	}), nil
}

// ed25519PublicOf and ed448PublicOf are an Edwards key's public key: a
// public key's, or a private key's public half.
func ed25519PublicOf(k Key) (ed25519.PublicKey, error) {
	if k.Class() == ck.CKO_PRIVATE_KEY {
		priv, err := ed25519Private(k)
		if err != nil {
			return nil, err
		}
		return priv.Public().(ed25519.PublicKey), nil
	}
	return ed25519Public(k)
}

func ed448PublicOf(k Key) (ed448.PublicKey, error) {
	if k.Class() == ck.CKO_PRIVATE_KEY {
		priv, err := ed448Private(k)
		if err != nil {
			return nil, err
		}
		return priv.Public().(ed448.PublicKey), nil
	}
	return ed448Public(k)
}

// maxDerived bounds what ECDH with a KDF derives, in bytes.
const maxDerived = 4096

// x963KDFs are the key derivation functions of CK_ECDH1_DERIVE_PARAMS,
// by their hash.
var x963KDFs = map[uint64]crypto.Hash{
	ck.CKD_SHA1_KDF:   crypto.SHA1,
	ck.CKD_SHA224_KDF: crypto.SHA224,
	ck.CKD_SHA256_KDF: crypto.SHA256,
	ck.CKD_SHA384_KDF: crypto.SHA384,
	ck.CKD_SHA512_KDF: crypto.SHA512,
}

// ecdhDerive is CKM_ECDH1_DERIVE: the shared secret Z of the base key and
// the peer's public key (the x coordinate on a short Weierstrass curve;
// RFC 7748's u coordinate for X25519 and X448), used as it is (CKD_NULL:
// its leading bytes when the key asks for fewer) or through the ANSI
// X9.63 KDF with the shared data. The derived length is the key's, or Z's
// when the template gives none.
func ecdhDerive(base Key, m *wire.Mechanism, length int) ([]byte, error) {
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.ECDH1DeriveParams()
	if err != nil {
		return nil, mechParamErr(err)
	}
	kdf, isKDF := x963KDFs[p.KDF]
	if !isKDF && (p.KDF != ck.CKD_NULL || len(p.SharedData) > 0) {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	z, err := ecdhSecret(base, p.PublicData)
	if err != nil {
		return nil, err
	}
	defer wipe(z)
	if length == 0 {
		length = len(z)
	}
	if !isKDF {
		if length > len(z) {
			return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		return bytes.Clone(z[:length]), nil
	}
	if length > maxDerived {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return x963KDF(kdf, z, p.SharedData, length), nil
}

// ecdhSecret is the shared secret of a private key and a peer's public
// key; the caller wipes it.
func ecdhSecret(base Key, public []byte) ([]byte, error) {
	if base.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	switch base.KeyType() {
	case ck.CKK_EC_MONTGOMERY:
		return montgomerySecret(base, public)
	case ck.CKK_EC:
	default:
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, k256, err := weierstrass(base)
	if err != nil {
		return nil, err
	}
	if k256 {
		priv, err := k256Private(base)
		if err != nil {
			return nil, err
		}
		return k256Secret(priv, public)
	}
	if c == elliptic.P224() {
		priv, err := ecdsaPrivate(base)
		if err != nil {
			return nil, err
		}
		return p224Secret(priv, public)
	}
	priv, err := ecdhPrivate(base)
	if err != nil {
		return nil, err
	}
	peer, err := priv.Curve().NewPublicKey(peerPoint(public, len(priv.PublicKey().Bytes())))
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return z, nil
}

// p224Secret is ECDH on P-224, which crypto/ecdh lacks: the peer's point
// is checked by crypto/ecdsa, and multiplied by crypto/elliptic's P-224,
// whose arithmetic is the standard library's constant-time one.
func p224Secret(priv *ecdsa.PrivateKey, public []byte) ([]byte, error) {
	c := elliptic.P224()
	size := (c.Params().BitSize + 7) / 8
	peer, err := ecdsa.ParseUncompressedPublicKey(c, peerPoint(public, 1+2*size))
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	d, err := priv.Bytes()
	if err != nil {
		return nil, errKeyBroken
	}
	defer wipe(d)
	// Deprecated, and the one constant-time P-224 scalar multiplication
	// the standard library offers.
	x, _ := c.ScalarMult(peer.X, peer.Y, d)
	defer clear(x.Bits())
	return x.FillBytes(make([]byte, size)), nil
}

// peerPoint reads the peer's public data: an uncompressed point of size
// bytes, bare or (as some clients send CKA_EC_POINT's value) in a DER
// OCTET STRING. The bare form is recognised by its exact size first: the
// DER parse alone would mistake some bare points for an OCTET STRING.
func peerPoint(v []byte, size int) []byte {
	if len(v) == size && v[0] == 4 {
		return v
	}
	return ecPoint(v)
}

// x963KDF is ANSI X9.63's KDF (SEC 1, 3.6.1): the concatenation of
// H(Z || counter || sharedInfo) for counter = 1, 2, ... (32-bit
// big-endian), cut to length.
func x963KDF(h crypto.Hash, z, shared []byte, length int) []byte {
	out := make([]byte, 0, length+h.Size())
	d := h.New()
	var ctr [4]byte
	for i := uint32(1); len(out) < length; i++ {
		d.Reset()
		d.Write(z)
		binary.BigEndian.PutUint32(ctr[:], i)
		d.Write(ctr[:])
		d.Write(shared)
		out = d.Sum(out)
	}
	clear(out[length:cap(out)])
	return out[:length]
}
