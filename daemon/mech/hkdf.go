package mech

import (
	"crypto/hkdf"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// HKDF (RFC 5869) as CKM_HKDF_DERIVE: extract, expand, or both, from a
// generic secret base key, with CK_HKDF_PARAMS.
//
// Not offered:
//   - a salt from a key (CKF_HKDF_SALT_KEY): the mechanism sees only its
//     base key, and resolving a second handle within the engine's usage
//     rules is the engine's job; it answers CKR_MECHANISM_PARAM_INVALID;
//   - CKM_HKDF_DATA (the output as a data object) and CKM_HKDF_KEY_GEN
//     with CKK_HKDF keys: the engine derives only secret keys, and objects
//     of type CKK_HKDF do not exist here.
//
// The derived key's length: extract alone makes the PRK, whose length is
// the hash's (a template asking for another is CKR_TEMPLATE_INCONSISTENT);
// with expand, the template must say it (CKA_VALUE_LEN, or an AES key's),
// up to 255 hash lengths.

func hkdfMechanisms() map[uint64]*Mechanism {
	return map[uint64]*Mechanism{
		ck.CKM_HKDF_DERIVE: {
			info:     wire.MechanismInfo{MinKeySize: 8, MaxKeySize: 8 * maxGenericBytes, Flags: ck.CKF_DERIVE},
			keyTypes: genericOnly,
			derive:   deriveHKDF,
		},
	}
}

// hkdfHashes are the PRFs CK_HKDF_PARAMS may name.
var hkdfHashes = map[uint64]bool{
	ck.CKM_SHA_1: true, ck.CKM_SHA224: true, ck.CKM_SHA256: true, ck.CKM_SHA384: true, ck.CKM_SHA512: true,
	ck.CKM_SHA3_256: true, ck.CKM_SHA3_384: true, ck.CKM_SHA3_512: true,
}

func deriveHKDF(base Key, m *wire.Mechanism, length int) ([]byte, error) {
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.HKDFParams()
	if err != nil {
		return nil, paramErr(err)
	}
	if (!p.Extract && !p.Expand) || !hkdfHashes[p.PRFHashMechanism] {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	h := hashes[p.PRFHashMechanism]
	size := h().Size()
	ikm := value(base)
	if len(ikm) == 0 || len(ikm) > maxGenericBytes {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	if !p.Expand {
		if length != 0 && length != size {
			return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
	} else if length == 0 {
		return nil, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	} else if length > 255*size {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}

	prk := ikm
	if p.Extract {
		var salt []byte
		switch p.SaltType {
		case ck.CKF_HKDF_SALT_NULL:
			// RFC 5869: a string of hash-length zeros, which is what
			// crypto/hkdf uses for a nil salt.
			if len(p.Salt) != 0 {
				return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
			}
		case ck.CKF_HKDF_SALT_DATA:
			if len(p.Salt) == 0 {
				return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
			}
			salt = p.Salt
		default: // CKF_HKDF_SALT_KEY included: see above
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		if prk, err = hkdf.Extract(h, ikm, salt); err != nil {
			return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
		}
		if !p.Expand {
			return prk, nil
		}
		defer wipe(prk)
	}
	out, err := hkdf.Expand(h, prk, string(p.Info), length)
	if err != nil {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return out, nil
}
