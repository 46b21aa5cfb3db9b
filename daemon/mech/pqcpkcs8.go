package mech

import (
	"crypto/x509/pkix"
	"encoding/asn1"

	"hsmemu/cryptoki/ck"
)

// PKCS#8 (RFC 5958 OneAsymmetricKey) for the post-quantum private keys,
// which crypto/x509 does not encode: what C_WrapKey wraps and C_UnwrapKey
// unwraps. The algorithm is the parameter set's OID, without parameters.
// An ML-DSA or ML-KEM privateKey is the IETF profiles' CHOICE: the seed
// ([0] IMPLICIT OCTET STRING), the expanded key (OCTET STRING), or both
// (SEQUENCE); the token writes both when it has the seed. An SLH-DSA
// privateKey is FIPS 205's private key itself (RFC 9909).

type oneAsymmetricKey struct {
	Version    int
	Algorithm  pkix.AlgorithmIdentifier
	PrivateKey []byte
	Attributes asn1.RawValue  `asn1:"optional,tag:0"`
	PublicKey  asn1.BitString `asn1:"optional,tag:1"`
}

type seedAndKey struct {
	Seed     []byte
	Expanded []byte
}

// pqcOID is the OID of a post-quantum key type's parameter set.
func pqcOID(kt, set uint64) (asn1.ObjectIdentifier, bool) {
	switch kt {
	case ck.CKK_ML_DSA:
		if _, ok := mldsaSets[set]; ok {
			return nistOID(nistSigAlgs, 16+int(set)), true
		}
	case ck.CKK_ML_KEM:
		if _, ok := mlkemSets[set]; ok {
			return nistOID(nistKEMs, int(set)), true
		}
	case ck.CKK_SLH_DSA:
		if arc, ok := slhdsaOIDs[set]; ok {
			return nistOID(nistSigAlgs, arc), true
		}
	}
	return nil, false
}

// pqcOIDKey is pqcOID's inverse.
func pqcOIDKey(oid asn1.ObjectIdentifier) (kt, set uint64, ok bool) {
	for _, kt := range []uint64{ck.CKK_ML_DSA, ck.CKK_ML_KEM, ck.CKK_SLH_DSA} {
		for set := uint64(1); set <= ck.CKP_SLH_DSA_SHAKE_256F; set++ {
			if o, found := pqcOID(kt, set); found && o.Equal(oid) {
				return kt, set, true
			}
		}
	}
	return 0, 0, false
}

// encodePQCPrivate is a post-quantum private key's PKCS#8.
func encodePQCPrivate(k Key) ([]byte, error) {
	set, _ := parameterSet(k)
	oid, ok := pqcOID(k.KeyType(), set)
	if !ok {
		return nil, errKeyBroken
	}
	seed, _ := k.Attr(ck.CKA_SEED)
	val := value(k)
	var inner []byte
	var err error
	switch {
	case k.KeyType() == ck.CKK_SLH_DSA:
		inner = append([]byte(nil), val...)
	case len(seed) > 0 && len(val) > 0:
		inner, err = asn1.Marshal(seedAndKey{seed, val})
	case len(seed) > 0:
		inner, err = asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: seed})
	default:
		inner, err = asn1.Marshal(val)
	}
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	defer wipe(inner)
	return asn1.Marshal(oneAsymmetricKey{Algorithm: pkix.AlgorithmIdentifier{Algorithm: oid}, PrivateKey: inner})
}

// decodePQCPrivate reads a post-quantum private key's PKCS#8 into the
// attributes of a new key (its material checked when the key is
// completed, as any created key's is). ok is false when the encoding is
// not one of theirs.
func decodePQCPrivate(der []byte) (add map[uint64][]byte, kt uint64, ok bool, err error) {
	var p oneAsymmetricKey
	if rest, err := asn1.Unmarshal(der, &p); err != nil || len(rest) > 0 || (p.Version != 0 && p.Version != 1) {
		return nil, 0, false, nil
	}
	kt, set, found := pqcOIDKey(p.Algorithm.Algorithm)
	if !found {
		return nil, 0, false, nil
	}
	add = map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set)}
	bad := ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	if kt == ck.CKK_SLH_DSA {
		add[ck.CKA_VALUE] = append([]byte(nil), p.PrivateKey...)
		return add, kt, true, nil
	}
	var raw asn1.RawValue
	if rest, err := asn1.Unmarshal(p.PrivateKey, &raw); err != nil || len(rest) > 0 {
		return nil, 0, true, bad
	}
	switch {
	case raw.Class == asn1.ClassContextSpecific && raw.Tag == 0 && !raw.IsCompound:
		add[ck.CKA_SEED] = append([]byte(nil), raw.Bytes...)
	case raw.Class == asn1.ClassUniversal && raw.Tag == asn1.TagOctetString && !raw.IsCompound:
		add[ck.CKA_VALUE] = append([]byte(nil), raw.Bytes...)
	case raw.Class == asn1.ClassUniversal && raw.Tag == asn1.TagSequence:
		var both seedAndKey
		if rest, err := asn1.Unmarshal(p.PrivateKey, &both); err != nil || len(rest) > 0 {
			return nil, 0, true, bad
		}
		add[ck.CKA_SEED], add[ck.CKA_VALUE] = both.Seed, both.Expanded
	default:
		return nil, 0, true, bad
	}
	return add, kt, true, nil
}
