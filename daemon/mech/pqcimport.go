package mech

import (
	"encoding/asn1"
	"errors"
	"fmt"

	"hsmemu/cryptoki/ck"
)

// Reading post-quantum keys from files, for `key import`: a public key
// as a SubjectPublicKeyInfo (the IETF profiles: RFC 9881 for ML-DSA, the
// LAMPS ML-KEM profile, RFC 9909 for SLH-DSA) and a private key as
// PKCS#8 (decodePQCPrivate's forms). crypto/x509 reads neither in the Go
// in use. The errors say what is wrong in terms an administrator can act
// on (the algorithm, the sizes), never the material.

// PQCImport is a post-quantum key read from a file: its key type and
// parameter set, the public key object's attributes and, for a private
// key, the private key object's (CKA_SEED and CKA_VALUE, checked and
// completed as C_CreateObject completes them).
type PQCImport struct {
	KeyType, Set uint64
	Name         string // "ML-DSA-65"
	Public       map[uint64][]byte
	Private      map[uint64][]byte
}

// Wipe clears the private material.
func (p *PQCImport) Wipe() {
	for _, v := range p.Private {
		clear(v)
	}
}

// PQCOID says whether oid is the algorithm of a post-quantum parameter
// set the token has.
func PQCOID(oid asn1.ObjectIdentifier) bool {
	_, _, ok := pqcOIDKey(oid)
	return ok
}

// spkiOf is a SubjectPublicKeyInfo with its parameters kept raw.
type spkiOf struct {
	Algorithm struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	}
	PublicKey asn1.BitString
}

// ParsePQCPublicKeyInfo reads a post-quantum SubjectPublicKeyInfo. ok is
// false when der is not one with a post-quantum algorithm (crypto/x509
// may read it); err says why one that is cannot be held.
func ParsePQCPublicKeyInfo(der []byte) (p *PQCImport, ok bool, err error) {
	var s spkiOf
	if rest, err := asn1.Unmarshal(der, &s); err != nil || len(rest) > 0 {
		return nil, false, nil
	}
	kt, set, found := pqcOIDKey(s.Algorithm.Algorithm)
	if !found {
		return nil, false, nil
	}
	name := PQCSetName(kt, set)
	if len(s.Algorithm.Parameters.FullBytes) > 0 {
		return nil, true, fmt.Errorf("the %s AlgorithmIdentifier has parameters; its profile says they are absent", name)
	}
	if s.PublicKey.BitLength%8 != 0 {
		return nil, true, fmt.Errorf("the %s public key is not a whole number of bytes", name)
	}
	p = &PQCImport{KeyType: kt, Set: set, Name: name, Public: map[uint64][]byte{
		ck.CKA_PARAMETER_SET: ulong(set),
		ck.CKA_VALUE:         append([]byte(nil), s.PublicKey.Bytes...),
	}}
	if err := p.check(ck.CKO_PUBLIC_KEY, p.Public); err != nil {
		return nil, true, err
	}
	return p, true, nil
}

// ParsePQCPrivateKey reads a post-quantum private key's PKCS#8 and
// computes its public key. ok is false when der is not PKCS#8 with a
// post-quantum algorithm.
func ParsePQCPrivateKey(der []byte) (p *PQCImport, ok bool, err error) {
	add, kt, ok, err := decodePQCPrivate(der)
	if !ok {
		return nil, false, nil
	}
	set := ulongOf(add[ck.CKA_PARAMETER_SET])
	name := PQCSetName(kt, set)
	if err != nil {
		return nil, true, fmt.Errorf("the %s privateKey is none of the profile's forms (seed [0], expanded key, or both in a SEQUENCE)", name)
	}
	p = &PQCImport{KeyType: kt, Set: set, Name: name, Private: add}
	if err := p.check(ck.CKO_PRIVATE_KEY, add); err != nil {
		p.Wipe()
		return nil, true, err
	}
	pub, _, err := pqcPublicBytes(&mapKey{class: ck.CKO_PRIVATE_KEY, kt: kt, m: add})
	if err != nil {
		p.Wipe()
		return nil, true, fmt.Errorf("the %s private key does not give its public key", name)
	}
	p.Public = map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: pub}
	return p, true, nil
}

// check holds the material in m to its parameter set's sizes, then to
// what C_CreateObject checks (CompletePQCKey), which also computes a
// private key's CKA_VALUE from its seed.
func (p *PQCImport) check(class uint64, m map[uint64][]byte) error {
	_, pubLen, privLen, _, _ := PQCSizes(&mapKey{kt: p.KeyType, m: m})
	seedLen := map[uint64]int{ck.CKK_ML_DSA: mldsaSeedLen, ck.CKK_ML_KEM: mlkemSeedLen}[p.KeyType]
	if class == ck.CKO_PUBLIC_KEY {
		if n := len(m[ck.CKA_VALUE]); n != pubLen {
			return fmt.Errorf("a %s public key is %d bytes, not %d", p.Name, pubLen, n)
		}
	} else {
		if v, ok := m[ck.CKA_VALUE]; ok && len(v) != privLen {
			return fmt.Errorf("a %s private key is %d bytes, not %d", p.Name, privLen, len(v))
		}
		if s, ok := m[ck.CKA_SEED]; ok && len(s) != seedLen {
			return fmt.Errorf("a %s seed is %d bytes, not %d", p.Name, seedLen, len(s))
		}
	}
	err := CompletePQCKey(class, p.KeyType, m)
	var ce ck.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce) && ce == ck.CKR_ATTRIBUTE_VALUE_INVALID && class == ck.CKO_PUBLIC_KEY:
		return fmt.Errorf("the %s public key is not a valid one (FIPS 203's modulus check, or a malformed encoding)", p.Name)
	case errors.As(err, &ce) && ce == ck.CKR_ATTRIBUTE_VALUE_INVALID:
		return fmt.Errorf("the %s private key is not a valid one (its seed and expanded key differ, or the expanded key is malformed)", p.Name)
	}
	return fmt.Errorf("the %s key cannot be held: %w", p.Name, err)
}
