package daemon

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/asn1"
	"math/big"

	"hsmemu/cryptoki/ck"
)

// key is an object as a mechanism sees it: its attributes and its
// material, parsed on demand.
type key struct {
	obj     *object
	class   uint64
	keyType uint64
}

func newKey(o *object) *key { return &key{obj: o, class: o.class(), keyType: o.keyType()} }

// needsContextLogin reports a private key that wants the PIN again for
// each use: only operations started with an Init can take that login.
func (k *key) needsContextLogin() bool {
	return k.class == ck.CKO_PRIVATE_KEY && k.obj.bool(ck.CKA_ALWAYS_AUTHENTICATE)
}

// memoKey parses a key's material once per object and kind (see
// object.memo).
func memoKey[T any](k *key, kind string, parse func() (T, error)) (T, error) {
	v, err := k.obj.memo(kind, func() (any, error) { return parse() })
	if err != nil {
		var zero T
		return zero, err
	}
	return v.(T), nil
}

// nistCurve returns the NIST curve of an EC key's CKA_EC_PARAMS.
func (k *key) nistCurve() (elliptic.Curve, error) {
	oid, name, err := k.ecParams()
	if err != nil {
		return nil, err
	}
	c, ok := ellipticCurve(oid, name)
	if !ok {
		return nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return c, nil
}

// value is a secret key's CKA_VALUE.
func (k *key) value() []byte {
	v, _ := k.obj.get(ck.CKA_VALUE)
	return v
}

func (k *key) bigAttr(t uint64) *big.Int {
	v, _ := k.obj.get(t)
	return new(big.Int).SetBytes(v)
}

var errKeyBroken = ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)

// rsaPublic returns an RSA key's public half (of a public or private key).
func (k *key) rsaPublic() (*rsa.PublicKey, error) { return memoKey(k, "rsaPublic", k.parseRsaPublic) }

func (k *key) parseRsaPublic() (*rsa.PublicKey, error) {
	if k.keyType != ck.CKK_RSA {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	n, e := k.bigAttr(ck.CKA_MODULUS), k.bigAttr(ck.CKA_PUBLIC_EXPONENT)
	if n.Sign() == 0 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, errKeyBroken
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

// rsaPrivate returns an RSA private key, with its CRT values when the
// object has its primes.
func (k *key) rsaPrivate() (*rsa.PrivateKey, error) {
	return memoKey(k, "rsaPrivate", k.parseRsaPrivate)
}

func (k *key) parseRsaPrivate() (*rsa.PrivateKey, error) {
	if k.keyType != ck.CKK_RSA || k.class != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	pub, err := k.rsaPublic()
	if err != nil {
		return nil, err
	}
	priv := &rsa.PrivateKey{PublicKey: *pub, D: k.bigAttr(ck.CKA_PRIVATE_EXPONENT)}
	p, q := k.bigAttr(ck.CKA_PRIME_1), k.bigAttr(ck.CKA_PRIME_2)
	if p.Sign() > 0 && q.Sign() > 0 {
		priv.Primes = []*big.Int{p, q}
		// The object's CRT values spare crypto/rsa computing them again;
		// it checks them against the rest.
		dp, dq, qinv := k.bigAttr(ck.CKA_EXPONENT_1), k.bigAttr(ck.CKA_EXPONENT_2), k.bigAttr(ck.CKA_COEFFICIENT)
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

// curves maps the DER OIDs of the named curves hsmemu supports.
var (
	oidP256    = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384    = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
	oidP521    = asn1.ObjectIdentifier{1, 3, 132, 0, 35}
	oidEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// ecParams reads CKA_EC_PARAMS: a DER OID, or a PrintableString naming the
// curve (PKCS#11 3.0 allows both for Edwards curves).
func (k *key) ecParams() (asn1.ObjectIdentifier, string, error) {
	v, _ := k.obj.get(ck.CKA_EC_PARAMS)
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
	case oid.Equal(oidP256) || name == "prime256v1" || name == "secp256r1":
		return elliptic.P256(), true
	case oid.Equal(oidP384) || name == "secp384r1":
		return elliptic.P384(), true
	case oid.Equal(oidP521) || name == "secp521r1":
		return elliptic.P521(), true
	}
	return nil, false
}

// checkEd25519 accepts an Edwards key only on the curve this token has.
func (k *key) checkEd25519() error {
	oid, name, err := k.ecParams()
	if err != nil {
		return err
	}
	if !isEd25519(oid, name) {
		return ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return nil
}

func isEd25519(oid asn1.ObjectIdentifier, name string) bool {
	return oid.Equal(oidEd25519) || name == "edwards25519" || name == "ed25519"
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

// ecdsaPublic returns an EC key's public key (of a public key object).
func (k *key) ecdsaPublic() (*ecdsa.PublicKey, error) {
	return memoKey(k, "ecdsaPublic", k.parseEcdsaPublic)
}

func (k *key) parseEcdsaPublic() (*ecdsa.PublicKey, error) {
	if k.keyType != ck.CKK_EC {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := k.nistCurve()
	if err != nil {
		return nil, err
	}
	v, _ := k.obj.get(ck.CKA_EC_POINT)
	pub, err := ecdsa.ParseUncompressedPublicKey(c, ecPoint(v))
	if err != nil {
		return nil, errKeyBroken
	}
	return pub, nil
}

// ecdsaScalar is the key for signing with precomputed nonces
// (ecdsa_nonces.go).
func (k *key) ecdsaScalar() (*ecScalar, error) {
	return memoKey(k, "ecdsaScalar", func() (*ecScalar, error) {
		priv, err := k.ecdsaPrivate()
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
func (k *key) ecdsaPrivate() (*ecdsa.PrivateKey, error) {
	return memoKey(k, "ecdsaPrivate", k.parseEcdsaPrivate)
}

func (k *key) parseEcdsaPrivate() (*ecdsa.PrivateKey, error) {
	if k.keyType != ck.CKK_EC || k.class != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	c, err := k.nistCurve()
	if err != nil {
		return nil, err
	}
	// CKA_VALUE is the private scalar, big-endian; pad it to the curve's
	// size, as some writers drop leading zeros.
	d := k.value()
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
func (k *key) ecdhPrivate() (*ecdh.PrivateKey, error) {
	return memoKey(k, "ecdhPrivate", k.parseEcdhPrivate)
}

func (k *key) parseEcdhPrivate() (*ecdh.PrivateKey, error) {
	priv, err := k.ecdsaPrivate()
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
func (k *key) ed25519Private() (ed25519.PrivateKey, error) {
	return memoKey(k, "ed25519Private", k.parseEd25519Private)
}

func (k *key) parseEd25519Private() (ed25519.PrivateKey, error) {
	if k.keyType != ck.CKK_EC_EDWARDS || k.class != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if err := k.checkEd25519(); err != nil {
		return nil, err
	}
	seed := k.value()
	if len(seed) != ed25519.SeedSize {
		return nil, errKeyBroken
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// ed25519Public returns an Edwards public key.
func (k *key) ed25519Public() (ed25519.PublicKey, error) {
	return memoKey(k, "ed25519Public", k.parseEd25519Public)
}

func (k *key) parseEd25519Public() (ed25519.PublicKey, error) {
	if k.keyType != ck.CKK_EC_EDWARDS {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if err := k.checkEd25519(); err != nil {
		return nil, err
	}
	v, _ := k.obj.get(ck.CKA_EC_POINT)
	p := ecPoint(v)
	if len(p) != ed25519.PublicKeySize {
		return nil, errKeyBroken
	}
	return ed25519.PublicKey(p), nil
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

// privateKeyAttrs turns a parsed private key into a private key object's
// attributes, and says its key type.
func privateKeyAttrs(priv any) (map[uint64][]byte, uint64, error) {
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
