package mech

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"math/big"

	"hsmemu/cryptoki/ck"
)

// Keys to and from their encodings: what a wrap encrypts and an unwrap
// decrypts, the attributes of an imported key, a key's public half and
// size. The token engine and the administrator's calls use these; the
// rules of who may export what are theirs.

// Curves hsmemu holds, named as `hsmemu key generate` names them, with
// their CKA_EC_PARAMS: a DER OID.
var curveParams = map[string]asn1.ObjectIdentifier{
	"P-224":     oidP224,
	"P-256":     oidP256,
	"P-384":     oidP384,
	"P-521":     oidP521,
	"secp256k1": oidSecp256k1,
	"Ed25519":   oidEd25519,
	"Ed448":     oidEd448,
	"X25519":    oidX25519,
	"X448":      oidX448,
}

// ECParams returns the CKA_EC_PARAMS of a curve by name ("P-224",
// "P-256", "P-384", "P-521", "secp256k1", "Ed25519", "Ed448", "X25519",
// "X448"), or nil.
func ECParams(curve string) []byte {
	oid, ok := curveParams[curve]
	if !ok {
		return nil
	}
	return oidDER(oid)
}

// oidDER encodes a curve's OID as CKA_EC_PARAMS.
func oidDER(oid asn1.ObjectIdentifier) []byte {
	b, _ := asn1.Marshal(oid)
	return b
}

// curveOID returns the OID of a NIST curve.
func curveOID(c elliptic.Curve) (asn1.ObjectIdentifier, bool) {
	switch c {
	case elliptic.P224():
		return oidP224, true
	case elliptic.P256():
		return oidP256, true
	case elliptic.P384():
		return oidP384, true
	case elliptic.P521():
		return oidP521, true
	}
	return nil, false
}

// PrivateKeyAttrs turns a parsed private key into a private key object's
// attributes, and says its key type.
func PrivateKeyAttrs(priv any) (map[uint64][]byte, uint64, error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return nil, 0, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		k.Precompute()
		return map[uint64][]byte{
			ck.CKA_MODULUS:          k.N.Bytes(),
			ck.CKA_PUBLIC_EXPONENT:  big.NewInt(int64(k.E)).Bytes(),
			ck.CKA_PRIVATE_EXPONENT: k.D.Bytes(),
			ck.CKA_PRIME_1:          k.Primes[0].Bytes(),
			ck.CKA_PRIME_2:          k.Primes[1].Bytes(),
			ck.CKA_EXPONENT_1:       k.Precomputed.Dp.Bytes(),
			ck.CKA_EXPONENT_2:       k.Precomputed.Dq.Bytes(),
			ck.CKA_COEFFICIENT:      k.Precomputed.Qinv.Bytes(),
		}, ck.CKK_RSA, nil
	case *ecdsa.PrivateKey:
		oid, ok := curveOID(k.Curve)
		if !ok {
			return nil, 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		d, err := k.Bytes()
		if err != nil {
			return nil, 0, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oid), ck.CKA_VALUE: d}, ck.CKK_EC, nil
	case ed25519.PrivateKey:
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oidEd25519), ck.CKA_VALUE: k.Seed()}, ck.CKK_EC_EDWARDS, nil
	case *ecdh.PrivateKey:
		if k.Curve() != ecdh.X25519() {
			return nil, 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oidX25519), ck.CKA_VALUE: k.Bytes()}, ck.CKK_EC_MONTGOMERY, nil
	}
	return nil, 0, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
}

// pointDER wraps an EC point in the DER OCTET STRING CKA_EC_POINT holds.
func pointDER(p []byte) []byte {
	b, _ := asn1.Marshal(p)
	return b
}

// PublicKeyAttrs turns a public key into a public key object's attributes,
// and says its key type. A key of a kind hsmemu does not hold is
// CKR_KEY_TYPE_INCONSISTENT; one on another curve CKR_CURVE_NOT_SUPPORTED.
func PublicKeyAttrs(pub any) (map[uint64][]byte, uint64, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[uint64][]byte{ck.CKA_MODULUS: k.N.Bytes(), ck.CKA_PUBLIC_EXPONENT: big.NewInt(int64(k.E)).Bytes()}, ck.CKK_RSA, nil
	case *ecdsa.PublicKey:
		oid, ok := curveOID(k.Curve)
		if !ok {
			return nil, 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		point, err := k.Bytes()
		if err != nil {
			return nil, 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oid), ck.CKA_EC_POINT: pointDER(point)}, ck.CKK_EC, nil
	case ed25519.PublicKey:
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oidEd25519), ck.CKA_EC_POINT: pointDER(k)}, ck.CKK_EC_EDWARDS, nil
	case *ecdh.PublicKey:
		if k.Curve() != ecdh.X25519() {
			return nil, 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		return map[uint64][]byte{ck.CKA_EC_PARAMS: oidDER(oidX25519), ck.CKA_EC_POINT: pointDER(k.Bytes())}, ck.CKK_EC_MONTGOMERY, nil
	}
	return nil, 0, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
}

// EncodeKey is what a wrap encrypts: a secret key's value, or a private
// key as PKCS#8. The caller wipes it. Private keys x509 cannot encode
// (DSA, secp256k1, Ed448, X448) are CKR_KEY_NOT_WRAPPABLE.
func EncodeKey(k Key) ([]byte, error) {
	switch k.Class() {
	case ck.CKO_SECRET_KEY:
		// A copy: the caller wipes it, and the value is the object's own.
		return append([]byte(nil), value(k)...), nil
	case ck.CKO_PRIVATE_KEY:
		var priv any
		var err error
		switch k.KeyType() {
		case ck.CKK_RSA:
			priv, err = rsaPrivate(k)
		case ck.CKK_EC:
			if _, k256, werr := weierstrass(k); werr != nil || k256 {
				return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
			}
			priv, err = ecdsaPrivate(k)
		case ck.CKK_EC_EDWARDS:
			if c, _ := edwardsOf(k); c != curve25519 {
				return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
			}
			priv, err = ed25519Private(k)
		case ck.CKK_EC_MONTGOMERY:
			if c, _ := montgomeryOf(k); c != curve25519 {
				return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
			}
			priv, err = x25519Private(k)
		case ck.CKK_ML_DSA, ck.CKK_ML_KEM, ck.CKK_SLH_DSA:
			return encodePQCPrivate(k)
		default:
			return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
		}
		if err != nil {
			return nil, err
		}
		return x509.MarshalPKCS8PrivateKey(priv)
	}
	return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
}

// DecodeKey turns an unwrapped encoding into the material of a new key of
// class and key type kt, whose checked template is tmpl (a secret key's
// CKA_VALUE_LEN, if given, must match).
func DecodeKey(plain []byte, class, kt uint64, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	switch class {
	case ck.CKO_SECRET_KEY:
		v := append([]byte(nil), plain...)
		if want, ok := tmpl[ck.CKA_VALUE_LEN]; ok && ulongOf(want) != uint64(len(v)) {
			return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		return map[uint64][]byte{ck.CKA_VALUE: v}, nil
	case ck.CKO_PRIVATE_KEY:
		if add, gotType, ok, err := decodePQCPrivate(plain); ok {
			if err != nil {
				return nil, err
			}
			if gotType != kt {
				return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
			}
			return add, nil
		}
		priv, err := x509.ParsePKCS8PrivateKey(plain)
		if err != nil {
			return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		add, gotType, err := PrivateKeyAttrs(priv)
		if err != nil {
			return nil, err
		}
		if gotType != kt {
			return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
		return add, nil
	}
	return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
}

// PublicKey is an asymmetric key's public half, of a public or a private
// key object: a crypto/rsa, crypto/ecdsa, crypto/ed25519 or crypto/ecdh
// key, or for the curves the standard library lacks the library's own
// (*secp256k1.PublicKey, ed448.PublicKey, an X448 key's 56 bytes) and for
// DSA a *dsa.PublicKey. A secret key has none (CKR_KEY_TYPE_INCONSISTENT).
func PublicKey(k Key) (crypto.PublicKey, error) {
	switch k.KeyType() {
	case ck.CKK_RSA:
		return rsaPublic(k)
	case ck.CKK_EC:
		_, k256, err := weierstrass(k)
		if err != nil {
			return nil, err
		}
		if k256 {
			return k256Public(k)
		}
		return ecdsaPublicOf(k)
	case ck.CKK_EC_EDWARDS:
		c, err := edwardsOf(k)
		if err != nil {
			return nil, err
		}
		if c == curve448 {
			return ed448PublicOf(k)
		}
		return ed25519PublicOf(k)
	case ck.CKK_EC_MONTGOMERY:
		p, c, err := montgomeryPublic(k)
		if err != nil {
			return nil, err
		}
		if c == curve25519 {
			return ecdh.X25519().NewPublicKey(p)
		}
		return p, nil
	case ck.CKK_DSA:
		if k.Class() == ck.CKO_PRIVATE_KEY {
			priv, err := dsaPrivate(k)
			if err != nil {
				return nil, err
			}
			return &priv.PublicKey, nil
		}
		return dsaPublic(k)
	}
	return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
}

// KeyBits is a key's size in bits, 0 when unknown: a secret key's
// length, an RSA modulus's, a DSA prime's, an EC curve's order's (255 or
// 448 for Edwards and Montgomery curves).
func KeyBits(k Key) int {
	switch k.KeyType() {
	case ck.CKK_RSA:
		if pub, err := rsaPublic(k); err == nil {
			return pub.N.BitLen()
		}
	case ck.CKK_DSA:
		if p, ok := k.Attr(ck.CKA_PRIME); ok {
			return new(big.Int).SetBytes(p).BitLen()
		}
	case ck.CKK_EC:
		c, k256, err := weierstrass(k)
		switch {
		case err != nil:
		case k256:
			return 256
		default:
			return c.Params().BitSize
		}
	case ck.CKK_EC_EDWARDS:
		c, _ := edwardsOf(k)
		return c
	case ck.CKK_EC_MONTGOMERY:
		c, _ := montgomeryOf(k)
		return c
	default:
		if k.Class() != ck.CKO_SECRET_KEY {
			return 0
		}
		if v, ok := k.Attr(ck.CKA_VALUE_LEN); ok && len(v) == 8 {
			return int(ulongOf(v)) * 8
		}
		return len(value(k)) * 8
	}
	return 0
}
