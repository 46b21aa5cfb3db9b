package mech

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/asn1"
	"math/big"

	"github.com/cloudflare/circl/sign/ed448"

	"hsmemu/cryptoki/ck"
)

// Key is a key object as a mechanism sees it. The token engine hands a
// mechanism the key only once it has checked that the caller may use it
// for this (its class, CKA_SIGN and kin, CKA_ALLOWED_MECHANISMS): a
// mechanism reads what it needs, sensitive values included, and never
// decides who may do what.
type Key interface {
	// Class is the key's CKA_CLASS; KeyType its CKA_KEY_TYPE.
	Class() uint64
	KeyType() uint64
	// Attr returns an attribute's stored value, sealed ones (CKA_VALUE,
	// CKA_PRIVATE_EXPONENT, ...) included.
	Attr(t uint64) ([]byte, bool)
	// Memo returns what parse returns, calling it at most once per key
	// and kind in the common case: a parsed RSA key with its CRT values,
	// an AES key schedule. Objects never change (an edit makes a new
	// one), so what is kept stays right for the key's life.
	Memo(kind string, parse func() (any, error)) (any, error)
}

// memoized is a Key's optional look-up of what Memo kept for a kind,
// which memoKey asks first: Memo's parse function captures the key, and
// making it costs an allocation on every Init, found or not.
type memoized interface {
	// Memoized returns what the kind's parse returned, and false when
	// it has not run yet.
	Memoized(kind string) (v any, err error, ok bool)
}

// memoKey parses a key's material once per key and kind (Key.Memo), typed.
func memoKey[T any](k Key, kind string, parse func(Key) (T, error)) (T, error) {
	var v any
	var err error
	if m, ok := k.(memoized); ok {
		var found bool
		if v, err, found = m.Memoized(kind); !found {
			v, err = k.Memo(kind, func() (any, error) { return parse(k) })
		}
	} else {
		v, err = k.Memo(kind, func() (any, error) { return parse(k) })
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return v.(T), nil
}

// value is a secret key's CKA_VALUE (a private EC or Edwards key's too).
func value(k Key) []byte {
	v, _ := k.Attr(ck.CKA_VALUE)
	return v
}

// nistCurve returns the NIST curve of an EC key's CKA_EC_PARAMS.
func nistCurve(k Key) (elliptic.Curve, error) {
	oid, name, err := ecParams(k)
	if err != nil {
		return nil, err
	}
	c, ok := ellipticCurve(oid, name)
	if !ok {
		return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return c, nil
}

func bigAttr(k Key, t uint64) *big.Int {
	v, _ := k.Attr(t)
	return new(big.Int).SetBytes(v)
}

var errKeyBroken = ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)

// rsaPublic returns an RSA key's public half (of a public or private key).
func rsaPublic(k Key) (*rsa.PublicKey, error) { return memoKey(k, "rsaPublic", parseRsaPublic) }

func parseRsaPublic(k Key) (*rsa.PublicKey, error) {
	if k.KeyType() != ck.CKK_RSA {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	n, e := bigAttr(k, ck.CKA_MODULUS), bigAttr(k, ck.CKA_PUBLIC_EXPONENT)
	if n.Sign() == 0 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, errKeyBroken
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

// rsaPrivate returns an RSA private key, with its CRT values when the
// object has its primes.
func rsaPrivate(k Key) (*rsa.PrivateKey, error) {
	return memoKey(k, "rsaPrivate", parseRsaPrivate)
}

func parseRsaPrivate(k Key) (*rsa.PrivateKey, error) {
	if k.KeyType() != ck.CKK_RSA || k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	pub, err := rsaPublic(k)
	if err != nil {
		return nil, err
	}
	priv := &rsa.PrivateKey{PublicKey: *pub, D: bigAttr(k, ck.CKA_PRIVATE_EXPONENT)}
	p, q := bigAttr(k, ck.CKA_PRIME_1), bigAttr(k, ck.CKA_PRIME_2)
	if p.Sign() > 0 && q.Sign() > 0 {
		priv.Primes = []*big.Int{p, q}
		// The object's CRT values spare crypto/rsa computing them again;
		// it checks them against the rest.
		dp, dq, qinv := bigAttr(k, ck.CKA_EXPONENT_1), bigAttr(k, ck.CKA_EXPONENT_2), bigAttr(k, ck.CKA_COEFFICIENT)
		if dp.Sign() > 0 && dq.Sign() > 0 && qinv.Sign() > 0 {
			priv.Precomputed = rsa.PrecomputedValues{Dp: dp, Dq: dq, Qinv: qinv}
		}
	}
	// Precompute first: Validate then finds the key checked, where the
	// other order builds and checks it twice.
	priv.Precompute()
	if err := priv.Validate(); err != nil {
		return nil, errKeyBroken
	}
	return priv, nil
}

// The DER OIDs of the named curves hsmemu supports: the short
// Weierstrass curves of CKK_EC, the Edwards curves of CKK_EC_EDWARDS
// (RFC 8410's EdDSA algorithms) and the Montgomery curves of
// CKK_EC_MONTGOMERY (RFC 8410's ECDH algorithms).
var (
	oidP224      = asn1.ObjectIdentifier{1, 3, 132, 0, 33}
	oidP256      = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384      = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521      = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
	oidX25519    = asn1.ObjectIdentifier{1, 3, 101, 110}
	oidX448      = asn1.ObjectIdentifier{1, 3, 101, 111}
	oidEd25519   = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidEd448     = asn1.ObjectIdentifier{1, 3, 101, 113}
)

// ecParams reads CKA_EC_PARAMS: a DER OID, or a PrintableString naming the
// curve (PKCS#11 3.0 allows both for Edwards curves).
func ecParams(k Key) (asn1.ObjectIdentifier, string, error) {
	v, _ := k.Attr(ck.CKA_EC_PARAMS)
	return parseECParams(v)
}

func parseECParams(v []byte) (asn1.ObjectIdentifier, string, error) {
	var oid asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(v, &oid); err == nil && len(rest) == 0 {
		return oid, "", nil
	}
	var name string
	if rest, err := asn1.UnmarshalWithParams(v, &name, "printable"); err == nil && len(rest) == 0 {
		return nil, name, nil
	}
	return nil, "", ck.Error(ck.CKR_DOMAIN_PARAMS_INVALID)
}

// ellipticCurve returns the NIST curve of a key's CKA_EC_PARAMS.
func ellipticCurve(oid asn1.ObjectIdentifier, name string) (elliptic.Curve, bool) {
	switch {
	case oid.Equal(oidP224) || name == "secp224r1":
		return elliptic.P224(), true
	case oid.Equal(oidP256) || name == "prime256v1" || name == "secp256r1":
		return elliptic.P256(), true
	case oid.Equal(oidP384) || name == "secp384r1":
		return elliptic.P384(), true
	case oid.Equal(oidP521) || name == "secp521r1":
		return elliptic.P521(), true
	}
	return nil, false
}

func isSecp256k1(oid asn1.ObjectIdentifier, name string) bool {
	return oid.Equal(oidSecp256k1) || name == "secp256k1"
}

// weierstrass says which curve a CKK_EC key is on: one of crypto/ecdsa's
// (P-224, P-256, P-384, P-521), or secp256k1 (secp256k1.go). The answer
// is kept with the key: every signature's Init asks, and parsing the
// DER of CKA_EC_PARAMS costs allocations.
func weierstrass(k Key) (c elliptic.Curve, k256 bool, err error) {
	w, err := memoKey(k, "weierstrass", parseWeierstrass)
	return w.c, w.k256, err
}

type weierstrassCurve struct {
	c    elliptic.Curve
	k256 bool
}

func parseWeierstrass(k Key) (weierstrassCurve, error) {
	c, k256, err := readWeierstrass(k)
	return weierstrassCurve{c, k256}, err
}

func readWeierstrass(k Key) (c elliptic.Curve, k256 bool, err error) {
	oid, name, err := ecParams(k)
	if err != nil {
		return nil, false, err
	}
	if isSecp256k1(oid, name) {
		return nil, true, nil
	}
	c, ok := ellipticCurve(oid, name)
	if !ok {
		return nil, false, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return c, false, nil
}

// Edwards and Montgomery curves, by their size in bits as CK_MECHANISM_INFO
// counts them: 255 (edwards25519, curve25519) or 448.
const (
	curve25519 = 255
	curve448   = 448
)

// edwardsCurve names the Edwards curve of CKA_EC_PARAMS, by OID (RFC 8410)
// or name (RFC 8032), or 0.
func edwardsCurve(oid asn1.ObjectIdentifier, name string) int {
	switch {
	case oid.Equal(oidEd25519) || name == "edwards25519" || name == "ed25519":
		return curve25519
	case oid.Equal(oidEd448) || name == "edwards448" || name == "ed448":
		return curve448
	}
	return 0
}

// montgomeryCurve names the Montgomery curve of CKA_EC_PARAMS, by OID
// (RFC 8410) or name (RFC 7748), or 0.
func montgomeryCurve(oid asn1.ObjectIdentifier, name string) int {
	switch {
	case oid.Equal(oidX25519) || name == "curve25519" || name == "x25519":
		return curve25519
	case oid.Equal(oidX448) || name == "curve448" || name == "x448":
		return curve448
	}
	return 0
}

// edwardsOf is the Edwards curve of a key, or CKR_CURVE_NOT_SUPPORTED.
func edwardsOf(k Key) (int, error) {
	oid, name, err := ecParams(k)
	if err != nil {
		return 0, err
	}
	if c := edwardsCurve(oid, name); c != 0 {
		return c, nil
	}
	return 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
}

// montgomeryOf is the Montgomery curve of a key, or
// CKR_CURVE_NOT_SUPPORTED.
func montgomeryOf(k Key) (int, error) {
	oid, name, err := ecParams(k)
	if err != nil {
		return 0, err
	}
	if c := montgomeryCurve(oid, name); c != 0 {
		return c, nil
	}
	return 0, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
}

// ecPoint reads CKA_EC_POINT: a DER OCTET STRING around the point, as the
// specification says, or (as some clients send) the bare point.
func ecPoint(v []byte) []byte {
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err == nil && len(rest) == 0 {
		return raw
	}
	return v
}

// pointOfSize reads a point or public key of a known size n, bare or in a
// DER OCTET STRING. The bare form is recognised by its size first: the
// DER parse alone would mistake some bare keys for an OCTET STRING.
func pointOfSize(v []byte, n int) ([]byte, bool) {
	if len(v) == n {
		return v, true
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err == nil && len(rest) == 0 && len(raw) == n {
		return raw, true
	}
	return nil, false
}

// ecdsaPublic returns an EC key's public key (of a public key object).
func ecdsaPublic(k Key) (*ecdsa.PublicKey, error) {
	return memoKey(k, "ecdsaPublic", parseEcdsaPublic)
}

func parseEcdsaPublic(k Key) (*ecdsa.PublicKey, error) {
	if k.KeyType() != ck.CKK_EC {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := nistCurve(k)
	if err != nil {
		return nil, err
	}
	v, _ := k.Attr(ck.CKA_EC_POINT)
	pub, err := ecdsa.ParseUncompressedPublicKey(c, ecPoint(v))
	if err != nil {
		return nil, errKeyBroken
	}
	return pub, nil
}

// ecdsaScalar is the key for signing with precomputed nonces
// (nonces.go).
func ecdsaScalar(k Key) (*ecScalar, error) {
	return memoKey(k, "ecdsaScalar", func(k Key) (*ecScalar, error) {
		priv, err := ecdsaPrivate(k)
		if err != nil {
			return nil, err
		}
		d, err := priv.Bytes()
		if err != nil {
			return nil, errKeyBroken
		}
		defer clear(d)
		sc, err := newECScalar(priv.Curve, d)
		if err != nil {
			return nil, errKeyBroken
		}
		return sc, nil
	})
}

// ecdsaPrivate returns an EC private key.
func ecdsaPrivate(k Key) (*ecdsa.PrivateKey, error) {
	return memoKey(k, "ecdsaPrivate", parseEcdsaPrivate)
}

func parseEcdsaPrivate(k Key) (*ecdsa.PrivateKey, error) {
	if k.KeyType() != ck.CKK_EC || k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := nistCurve(k)
	if err != nil {
		return nil, err
	}
	// CKA_VALUE is the private scalar, big-endian; pad it to the curve's
	// size, as some writers drop leading zeros.
	d := value(k)
	size := (c.Params().BitSize + 7) / 8
	if len(d) == 0 || len(d) > size {
		return nil, errKeyBroken
	}
	padded := make([]byte, size)
	copy(padded[size-len(d):], d)
	priv, err := ecdsa.ParseRawPrivateKey(c, padded)
	if err != nil {
		return nil, errKeyBroken
	}
	return priv, nil
}

// ecdhPrivate returns an EC private key for key agreement.
func ecdhPrivate(k Key) (*ecdh.PrivateKey, error) {
	return memoKey(k, "ecdhPrivate", parseEcdhPrivate)
}

func parseEcdhPrivate(k Key) (*ecdh.PrivateKey, error) {
	priv, err := ecdsaPrivate(k)
	if err != nil {
		return nil, err
	}
	d, err := priv.ECDH()
	if err != nil {
		return nil, errKeyBroken
	}
	return d, nil
}

// ed25519Private returns an Edwards private key (CKA_VALUE is its seed).
func ed25519Private(k Key) (ed25519.PrivateKey, error) {
	return memoKey(k, "ed25519Private", parseEd25519Private)
}

func parseEd25519Private(k Key) (ed25519.PrivateKey, error) {
	if k.KeyType() != ck.CKK_EC_EDWARDS || k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if c, err := edwardsOf(k); err != nil || c != curve25519 {
		return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	seed := value(k)
	if len(seed) != ed25519.SeedSize {
		return nil, errKeyBroken
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// ed25519Public returns an Edwards public key.
func ed25519Public(k Key) (ed25519.PublicKey, error) {
	return memoKey(k, "ed25519Public", parseEd25519Public)
}

func parseEd25519Public(k Key) (ed25519.PublicKey, error) {
	if k.KeyType() != ck.CKK_EC_EDWARDS {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if c, err := edwardsOf(k); err != nil || c != curve25519 {
		return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	v, _ := k.Attr(ck.CKA_EC_POINT)
	p, ok := pointOfSize(v, ed25519.PublicKeySize)
	if !ok {
		return nil, errKeyBroken
	}
	return ed25519.PublicKey(p), nil
}

// ed448Private returns an Ed448 private key (CKA_VALUE is its 57-byte
// seed).
func ed448Private(k Key) (ed448.PrivateKey, error) {
	return memoKey(k, "ed448Private", func(k Key) (ed448.PrivateKey, error) {
		if k.KeyType() != ck.CKK_EC_EDWARDS || k.Class() != ck.CKO_PRIVATE_KEY {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		if c, err := edwardsOf(k); err != nil || c != curve448 {
			return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		seed := value(k)
		if len(seed) != ed448.SeedSize {
			return nil, errKeyBroken
		}
		return ed448.NewKeyFromSeed(seed), nil
	})
}

// ed448Public returns an Ed448 public key (57 bytes in CKA_EC_POINT).
func ed448Public(k Key) (ed448.PublicKey, error) {
	return memoKey(k, "ed448Public", func(k Key) (ed448.PublicKey, error) {
		if k.KeyType() != ck.CKK_EC_EDWARDS {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		if c, err := edwardsOf(k); err != nil || c != curve448 {
			return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
		}
		v, _ := k.Attr(ck.CKA_EC_POINT)
		p, ok := pointOfSize(v, ed448.PublicKeySize)
		if !ok {
			return nil, errKeyBroken
		}
		return ed448.PublicKey(p), nil
	})
}
