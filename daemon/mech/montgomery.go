package mech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"

	"github.com/cloudflare/circl/dh/x448"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Montgomery curves (CKK_EC_MONTGOMERY, PKCS#11 3.0): X25519 and X448 key
// pairs, and ECDH with them through CKM_ECDH1_DERIVE (ec.go). X25519 is
// crypto/ecdh's, X448 github.com/cloudflare/circl's.
//
// CKA_VALUE holds the private key's bytes as RFC 7748 gives them (32 or
// 56), CKA_EC_POINT the public u coordinate (as long) in a DER OCTET
// STRING; a bare one is taken too, as is a peer's public data in either
// form. A shared secret of all zeros (a peer's low-order point) is
// refused, as RFC 7748 allows: CKR_MECHANISM_PARAM_INVALID.

// montgomeryBytes is the size of a curve's keys.
func montgomeryBytes(c int) int {
	if c == curve448 {
		return x448.Size
	}
	return 32
}

// montgomeryGeneratePair makes an X25519 or X448 key pair.
func montgomeryGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
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
	var pk, sk []byte
	switch montgomeryCurve(oid, name) {
	case curve25519:
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		pk, sk = k.PublicKey().Bytes(), k.Bytes()
	case curve448:
		var s, p x448.Key
		rand.Read(s[:])
		x448.KeyGen(&p, &s)
		pk, sk = bytes.Clone(p[:]), bytes.Clone(s[:])
		clear(s[:])
	default:
		return nil, nil, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)
	}
	return map[uint64][]byte{ck.CKA_EC_POINT: pointDER(pk)},
		map[uint64][]byte{ck.CKA_EC_PARAMS: bytes.Clone(params), ck.CKA_VALUE: sk}, nil
}

// x25519Private is an X25519 private key object's key.
func x25519Private(k Key) (*ecdh.PrivateKey, error) {
	return memoKey(k, "x25519Private", func(k Key) (*ecdh.PrivateKey, error) {
		priv, err := ecdh.X25519().NewPrivateKey(value(k))
		if err != nil {
			return nil, errKeyBroken
		}
		return priv, nil
	})
}

// montgomerySecret is X25519 or X448 of the base key and the peer's
// public key.
func montgomerySecret(base Key, public []byte) ([]byte, error) {
	c, err := montgomeryOf(base)
	if err != nil {
		return nil, err
	}
	n := montgomeryBytes(c)
	peer, ok := pointOfSize(public, n)
	if !ok {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if c == curve25519 {
		priv, err := x25519Private(base)
		if err != nil {
			return nil, err
		}
		pk, err := ecdh.X25519().NewPublicKey(peer)
		if err != nil {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		z, err := priv.ECDH(pk) // refuses a zero result
		if err != nil {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		return z, nil
	}
	if len(value(base)) != x448.Size {
		return nil, errKeyBroken
	}
	var sk, pk, z x448.Key
	copy(sk[:], value(base))
	defer clear(sk[:])
	copy(pk[:], peer)
	if !x448.Shared(&z, &sk, &pk) {
		clear(z[:])
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return z[:], nil
}

// montgomeryPublic is a Montgomery key's public key bytes: a public key's
// CKA_EC_POINT, or a private key's, computed.
func montgomeryPublic(k Key) ([]byte, int, error) {
	c, err := montgomeryOf(k)
	if err != nil {
		return nil, 0, err
	}
	n := montgomeryBytes(c)
	if k.Class() != ck.CKO_PRIVATE_KEY {
		v, _ := k.Attr(ck.CKA_EC_POINT)
		p, ok := pointOfSize(v, n)
		if !ok {
			return nil, 0, errKeyBroken
		}
		return p, c, nil
	}
	if c == curve25519 {
		priv, err := x25519Private(k)
		if err != nil {
			return nil, 0, err
		}
		return priv.PublicKey().Bytes(), c, nil
	}
	if len(value(k)) != x448.Size {
		return nil, 0, errKeyBroken
	}
	var sk, pk x448.Key
	copy(sk[:], value(k))
	x448.KeyGen(&pk, &sk)
	clear(sk[:])
	return pk[:], c, nil
}
