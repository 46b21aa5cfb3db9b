package mech

import (
	"crypto"
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
	"P-256":   oidP256,
	"P-384":   oidP384,
	"P-521":   oidP521,
	"Ed25519": oidEd25519,
}

// ECParams returns the CKA_EC_PARAMS of a curve by name ("P-256",
// "P-384", "P-521", "Ed25519"), or nil.
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
	}
	return nil, 0, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
}

// EncodeKey is what a wrap encrypts: a secret key's value, or a private
// key as PKCS#8. The caller wipes it.
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
			priv, err = ecdsaPrivate(k)
		case ck.CKK_EC_EDWARDS:
			priv, err = ed25519Private(k)
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
// key object; a secret key has none (CKR_KEY_TYPE_INCONSISTENT).
func PublicKey(k Key) (crypto.PublicKey, error) {
	switch {
	case k.KeyType() == ck.CKK_RSA:
		return rsaPublic(k)
	case k.KeyType() == ck.CKK_EC && k.Class() == ck.CKO_PUBLIC_KEY:
		return ecdsaPublic(k)
	case k.KeyType() == ck.CKK_EC:
		priv, err := ecdsaPrivate(k)
		if err != nil {
			return nil, err
		}
		return priv.Public(), nil
	case k.KeyType() == ck.CKK_EC_EDWARDS && k.Class() == ck.CKO_PUBLIC_KEY:
		return ed25519Public(k)
	case k.KeyType() == ck.CKK_EC_EDWARDS:
		priv, err := ed25519Private(k)
		if err != nil {
			return nil, err
		}
		return priv.Public(), nil
	}
	return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
}

// KeyBits is a key's size in bits, 0 when unknown.
func KeyBits(k Key) int {
	switch k.KeyType() {
	case ck.CKK_AES, ck.CKK_GENERIC_SECRET:
		if v, ok := k.Attr(ck.CKA_VALUE_LEN); ok && len(v) == 8 {
			return int(ulongOf(v)) * 8
		}
		return len(value(k)) * 8
	case ck.CKK_RSA:
		if pub, err := rsaPublic(k); err == nil {
			return pub.N.BitLen()
		}
	case ck.CKK_EC:
		if c, err := nistCurve(k); err == nil {
			return c.Params().BitSize
		}
	case ck.CKK_EC_EDWARDS:
		return 255
	}
	return 0
}
