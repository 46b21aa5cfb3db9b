package mech

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"math/big"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Elliptic curves: key pairs on P-256, P-384 and P-521 (CKK_EC) and on
// Ed25519 (CKK_EC_EDWARDS), ECDSA, EdDSA and ECDH. The primitives are the
// standard library's.

// Curve sizes, in bits: the NIST curves hsmemu knows, and Ed25519.
const (
	ecMinBits = 256
	ecMaxBits = 521
	edBits    = 255
)

var (
	ecOnly      = []uint64{ck.CKK_EC}
	edwardsOnly = []uint64{ck.CKK_EC_EDWARDS}
)

// ecCurveFlags describe the curves: over prime fields, named, with
// uncompressed points.
const ecCurveFlags = ck.CKF_EC_F_P | ck.CKF_EC_NAMEDCURVE | ck.CKF_EC_UNCOMPRESS

func ecInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: ecMinBits, MaxKeySize: ecMaxBits, Flags: flags | ecCurveFlags}
}

func edInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: edBits, MaxKeySize: edBits, Flags: flags | ck.CKF_EC_NAMEDCURVE}
}

func ecMechanisms(nonces *noncePools) map[uint64]*Mechanism {
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
		ck.CKM_EDDSA: {info: edInfo(signVerify), keyTypes: edwardsOnly, sign: eddsaSign, verify: eddsaVerify},
		ck.CKM_ECDH1_DERIVE: {
			info:     ecInfo(ck.CKF_DERIVE),
			keyTypes: ecOnly,
			derive:   ecdhDerive,
		},
	}
	for typ, h := range map[uint64]crypto.Hash{
		ck.CKM_ECDSA:        0,
		ck.CKM_ECDSA_SHA1:   crypto.SHA1,
		ck.CKM_ECDSA_SHA224: crypto.SHA224,
		ck.CKM_ECDSA_SHA256: crypto.SHA256,
		ck.CKM_ECDSA_SHA384: crypto.SHA384,
		ck.CKM_ECDSA_SHA512: crypto.SHA512,
	} {
		t[typ] = &Mechanism{
			info:     ecInfo(signVerify),
			keyTypes: ecOnly,
			sign:     func(k Key, m *wire.Mechanism) (SignOp, error) { return ecdsaSigner(nonces, k, m, h) },
			verify:   func(k Key, m *wire.Mechanism) (SignOp, error) { return ecdsaVerifier(k, m, h) },
		}
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

// ecGeneratePair makes a key pair on the NIST curve CKA_EC_PARAMS names.
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

// edGeneratePair makes an Ed25519 key pair: CKA_EC_POINT holds the public
// key (32 bytes, in a DER OCTET STRING), CKA_VALUE the private seed.
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
	if !isEd25519(oid, name) {
		return nil, nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	pk, sk, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	seed := bytes.Clone(sk.Seed())
	clear(sk)
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
	pub, err := ecdsaPublic(k)
	if err != nil {
		return nil, err
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

// eddsaOptions reads the optional CK_EDDSA_PARAMS: none is pure Ed25519;
// phFlag selects Ed25519ph (the token hashes the input with SHA-512), and
// a context Ed25519ctx (or the context of Ed25519ph). A parameter with
// neither is pure Ed25519 too: RFC 8032 defines no Ed25519ctx with an
// empty context.
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
	pub, err := ed25519Public(k)
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

// ecdhDerive is CKM_ECDH1_DERIVE: the shared secret Z (the x coordinate)
// of the base key and the peer's public point, used as it is (CKD_NULL:
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
	priv, err := ecdhPrivate(base)
	if err != nil {
		return nil, err
	}
	peer, err := priv.Curve().NewPublicKey(peerPoint(p.PublicData, priv))
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
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

// peerPoint reads the peer's public data: an uncompressed point, bare or
// (as some clients send CKA_EC_POINT's value) in a DER OCTET STRING. The
// bare form is recognised by its exact size first: the DER parse alone
// would mistake some bare points for an OCTET STRING.
func peerPoint(v []byte, priv *ecdh.PrivateKey) []byte {
	if len(v) == len(priv.PublicKey().Bytes()) && len(v) > 0 && v[0] == 4 {
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
