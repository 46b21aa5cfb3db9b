package token

import (
	"bytes"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech"
)

// CKA_PUBLIC_KEY_INFO of a public or private key (PKCS#11 v3.0, public
// and private key objects): the DER SubjectPublicKeyInfo of the key's
// public half, "DEFAULT derived from the underlying key data", and when a
// template gives it, it "MUST be consistent with the underlying private
// key data" (CKR_ATTRIBUTE_VALUE_INVALID otherwise). Applications take a
// key's public half from it: a private key that named another key's
// would sign for one public key and claim another. So the token computes
// it from the material when read (mech.PublicKeyInfo), stores none, and
// checks one a template gives; for the key types whose encoding it does
// not compute (DSA, secp256k1, Ed448, X448) it does not take one
// (CKR_ATTRIBUTE_TYPE_INVALID, as the specification has a token that
// does not support it answer) and reads as empty.

// publicKeyInfoOf computes a key's CKA_PUBLIC_KEY_INFO; ok is false for
// a key it cannot encode.
func publicKeyInfoOf(o *Object) (der []byte, ok bool) {
	der, err := mech.PublicKeyInfo(o)
	return der, err == nil
}

// settlePublicKeyInfo checks the CKA_PUBLIC_KEY_INFO a new public or
// private key's template gave (in m) against the key's material, and
// drops it: it is computed when read. An empty one is no claim.
func settlePublicKeyInfo(m map[uint64][]byte, class, kt uint64) error {
	given := m[ck.CKA_PUBLIC_KEY_INFO]
	if len(given) == 0 || (class != ck.CKO_PUBLIC_KEY && class != ck.CKO_PRIVATE_KEY) {
		return nil
	}
	o, err := split(m, class, kt)
	if err != nil {
		return err
	}
	want, ok := publicKeyInfoOf(o)
	if !ok {
		return ck.Error(ck.CKR_ATTRIBUTE_TYPE_INVALID)
	}
	if !bytes.Equal(given, want) {
		return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	delete(m, ck.CKA_PUBLIC_KEY_INFO)
	return nil
}
