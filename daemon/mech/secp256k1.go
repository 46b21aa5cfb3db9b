package mech

import (
	"bytes"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	k256ecdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"

	"hsmemu/cryptoki/ck"
)

// secp256k1 keys (CKK_EC with the curve's OID, 1.3.132.0.10, or the name
// "secp256k1"), whose arithmetic is github.com/decred/dcrd/dcrec/secp256k1:
// the standard library has no such curve. Signatures are ECDSA with
// RFC 6979 nonces and the low S (BIP 62) that library always makes;
// verification takes either S, as ECDSA does. ECDH is the x coordinate of
// d·Q.
//
// The library's scalar multiplications are not constant-time
// (ScalarBaseMultNonConst, ScalarMultNonConst): a signature's or an ECDH's
// timing depends on the nonce or the private key. docs/mechanisms.md says
// so under "Known weaknesses".

const k256Size = 32

// k256Private is a secp256k1 private key object's key.
func k256Private(k Key) (*secp256k1.PrivateKey, error) {
	return memoKey(k, "k256Private", func(k Key) (*secp256k1.PrivateKey, error) {
		if k.Class() != ck.CKO_PRIVATE_KEY {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		d := value(k)
		if len(d) == 0 || len(d) > k256Size {
			return nil, errKeyBroken
		}
		padded := make([]byte, k256Size)
		defer wipe(padded)
		copy(padded[k256Size-len(d):], d)
		var x secp256k1.ModNScalar
		if overflow := x.SetByteSlice(padded); overflow || x.IsZero() {
			return nil, errKeyBroken
		}
		return secp256k1.NewPrivateKey(&x), nil
	})
}

// k256Public is a secp256k1 key object's public key: a public key's
// CKA_EC_POINT (uncompressed), or a private key's public half.
func k256Public(k Key) (*secp256k1.PublicKey, error) {
	if k.Class() == ck.CKO_PRIVATE_KEY {
		priv, err := k256Private(k)
		if err != nil {
			return nil, err
		}
		return priv.PubKey(), nil
	}
	return memoKey(k, "k256Public", func(k Key) (*secp256k1.PublicKey, error) {
		v, _ := k.Attr(ck.CKA_EC_POINT)
		pub, err := k256ParsePoint(v)
		if err != nil {
			return nil, errKeyBroken
		}
		return pub, nil
	})
}

// k256ParsePoint reads an uncompressed point, bare or in a DER OCTET
// STRING.
func k256ParsePoint(v []byte) (*secp256k1.PublicKey, error) {
	p, ok := pointOfSize(v, 1+2*k256Size)
	if !ok || p[0] != 4 {
		return nil, ck.Error(ck.CKR_DOMAIN_PARAMS_INVALID)
	}
	return secp256k1.ParsePubKey(p)
}

// k256GeneratePair makes a key pair: CKA_EC_POINT uncompressed, in a DER
// OCTET STRING, and CKA_VALUE the 32-byte scalar.
func k256GeneratePair(params []byte) (map[uint64][]byte, map[uint64][]byte, error) {
	priv, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	defer priv.Zero()
	return map[uint64][]byte{ck.CKA_EC_POINT: pointDER(priv.PubKey().SerializeUncompressed())},
		map[uint64][]byte{ck.CKA_EC_PARAMS: bytes.Clone(params), ck.CKA_VALUE: priv.Serialize()}, nil
}

// k256Sign signs a digest: r || s, 32 bytes each. The digest's leftmost
// 256 bits are used, as SEC 1 says.
func k256Sign(priv *secp256k1.PrivateKey, digest []byte) []byte {
	sig := k256ecdsa.Sign(priv, digest)
	r, s := sig.R(), sig.S()
	out := make([]byte, 2*k256Size)
	r.PutBytesUnchecked(out[:k256Size])
	s.PutBytesUnchecked(out[k256Size:])
	return out
}

// k256Verify checks r || s over a digest; r and s must be in [1, n-1].
func k256Verify(pub *secp256k1.PublicKey, digest, sig []byte) error {
	if len(sig) != 2*k256Size {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	var r, s secp256k1.ModNScalar
	if r.SetByteSlice(sig[:k256Size]) || s.SetByteSlice(sig[k256Size:]) || r.IsZero() || s.IsZero() {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	if !k256ecdsa.NewSignature(&r, &s).Verify(digest, pub) {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

// k256Secret is ECDH's shared secret with a peer's uncompressed point.
func k256Secret(priv *secp256k1.PrivateKey, public []byte) ([]byte, error) {
	peer, err := k256ParsePoint(public)
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return secp256k1.GenerateSharedSecret(priv, peer), nil
}
