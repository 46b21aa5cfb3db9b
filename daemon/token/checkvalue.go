package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/sha1"
	"slices"

	"hsmemu/cryptoki/ck"
)

// CKA_CHECK_VALUE, the check value of a secret key or a certificate
// (PKCS#11 v3.0, secret key and certificate objects): three bytes that
// say which key or certificate it is without saying anything of a key's
// value. The token makes it for every such object, however it was made,
// so it is computed from the value when read and not stored; a template
// may give it, and then it must be the one the token computes
// (CKR_ATTRIBUTE_VALUE_INVALID otherwise), or give it empty to have none,
// which is stored.

// checkValueOf computes the check value of an object of the given class
// and key type from its CKA_VALUE: the first three bytes of the ECB
// encryption of a zero block for AES and DES keys, of the SHA-1 hash of
// the value for the other secret keys (generic secrets and ChaCha20 by
// the specification; HMAC keys, which it leaves out, as the generic
// secrets they are) and for certificates. ok is false for other objects.
func checkValueOf(class, kt uint64, value []byte) (kcv []byte, ok bool) {
	switch class {
	case ck.CKO_CERTIFICATE:
		sum := sha1.Sum(value)
		return sum[:3], true
	case ck.CKO_SECRET_KEY:
		var b cipher.Block
		var err error
		switch kt {
		case ck.CKK_AES:
			b, err = aes.NewCipher(value)
		case ck.CKK_DES:
			b, err = des.NewCipher(value)
		case ck.CKK_DES2:
			if len(value) != 16 {
				return nil, false
			}
			b, err = des.NewTripleDESCipher(slices.Concat(value, value[:8]))
		case ck.CKK_DES3:
			b, err = des.NewTripleDESCipher(value)
		default:
			sum := sha1.Sum(value)
			return sum[:3], true
		}
		if err != nil {
			return nil, false
		}
		block := make([]byte, b.BlockSize())
		b.Encrypt(block, block)
		return block[:3], true
	}
	return nil, false
}

// settleCheckValue checks the CKA_CHECK_VALUE a new object's template
// gave against its value (in m): a wrong one is
// CKR_ATTRIBUTE_VALUE_INVALID; the right one is dropped, being computed
// when read; an empty one stays, and the object has none.
func settleCheckValue(m map[uint64][]byte, class, kt uint64) error {
	given, ok := m[ck.CKA_CHECK_VALUE]
	if !ok || len(given) == 0 {
		return nil
	}
	if want, ok := checkValueOf(class, kt, m[ck.CKA_VALUE]); ok && !bytes.Equal(given, want) {
		return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	delete(m, ck.CKA_CHECK_VALUE)
	return nil
}
