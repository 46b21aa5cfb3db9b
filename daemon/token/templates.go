package token

import (
	"errors"
	"math/big"
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// attr is one attribute of a caller's template, as the engine receives it.
type attr = keystore.Attribute

// toMap turns a template into a map, refusing a type given twice.
func toMap(tmpl []attr) (map[uint64][]byte, error) {
	// Room for the defaults an object gets, so that filling them in
	// does not grow the map again and again.
	m := make(map[uint64][]byte, len(tmpl)+48)
	for _, a := range tmpl {
		if _, dup := m[a.Type]; dup {
			return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
		v := a.Value
		if v == nil {
			v = vEmpty
		}
		m[a.Type] = v
	}
	return m, nil
}

func ulongOf(v []byte) uint64 {
	if len(v) != 8 {
		return ^uint64(0)
	}
	var x uint64
	for _, b := range v {
		x = x<<8 | uint64(b)
	}
	return x
}

// keyTypeSupported says which key types objects of a class may have. The
// legacy ones (single and triple DES, DSA) need a token whose mechanism
// table has them (docs/mechanisms.md, "The legacy policy"); elsewhere a
// template naming them is CKR_ATTRIBUTE_VALUE_INVALID.
func keyTypeSupported(class, kt uint64, legacy bool) bool {
	switch class {
	case ck.CKO_SECRET_KEY:
		switch {
		case kt == ck.CKK_AES || kt == ck.CKK_GENERIC_SECRET || kt == ck.CKK_CHACHA20:
			return true
		case slices.Contains(hmacKeys, kt):
			return true
		case slices.Contains(desKeys, kt):
			return legacy
		}
	case ck.CKO_PUBLIC_KEY, ck.CKO_PRIVATE_KEY:
		switch kt {
		case ck.CKK_RSA, ck.CKK_EC, ck.CKK_EC_EDWARDS, ck.CKK_EC_MONTGOMERY:
			return true
		case ck.CKK_DSA:
			return legacy
		case ck.CKK_ML_KEM, ck.CKK_ML_DSA, ck.CKK_SLH_DSA:
			return true
		}
	case ck.CKO_DOMAIN_PARAMETERS:
		return kt == ck.CKK_DSA && legacy
	}
	return false
}

// origin is how an object comes to be: it decides which attributes a
// template may hold and what CKA_LOCAL and its kin say.
type origin int

const (
	originCreate   origin = iota // C_CreateObject: the caller gives the material
	originGenerate               // C_GenerateKey(Pair): the token makes it
	originUnwrap                 // C_UnwrapKey: it comes wrapped
	originDerive                 // C_DeriveKey: the token derives it
)

// isMaterial reports whether an attribute is key material or computed from
// it: only C_CreateObject may give it.
func isMaterial(t, class uint64) bool {
	switch t {
	case ck.CKA_MODULUS, ck.CKA_PRIVATE_EXPONENT, ck.CKA_PRIME_1, ck.CKA_PRIME_2,
		ck.CKA_EXPONENT_1, ck.CKA_EXPONENT_2, ck.CKA_COEFFICIENT, ck.CKA_EC_POINT:
		return true
	case ck.CKA_VALUE:
		return class == ck.CKO_SECRET_KEY || class == ck.CKO_PRIVATE_KEY || class == ck.CKO_PUBLIC_KEY
	case ck.CKA_SEED:
		return true
	case ck.CKA_PUBLIC_EXPONENT:
		return class == ck.CKO_PRIVATE_KEY
	case ck.CKA_EC_PARAMS:
		// An EC, Edwards or Montgomery private key's domain parameters
		// are the public key template's at generation, the wrapped
		// key's at unwrap: "MUST not be specified" in its own template
		// (PKCS#11 v3.0, elliptic curve private key objects, footnotes
		// 4 and 6; "the EC domain parameters are not specified in the
		// key's template").
		return class == ck.CKO_PRIVATE_KEY
	case ck.CKA_PRIME, ck.CKA_SUBPRIME, ck.CKA_BASE:
		// A DSA public key's template gives the domain parameters a
		// key pair is generated on; the private key and domain
		// parameters get them from the mechanism.
		return class == ck.CKO_PRIVATE_KEY || class == ck.CKO_DOMAIN_PARAMETERS
	}
	return false
}

// policy is what a token allows on this daemon: its tier (which decides
// keys' protection) and its mechanism table (the legacy one for a token
// of the standard tier when the daemon runs with the legacy policy).
type policy struct {
	tier  keystore.Tier
	mechs *mech.Table
}

// legacy reports whether the token takes the legacy algorithms' key
// types.
func (p policy) legacy() bool { return p.mechs != nil && p.mechs.Legacy() }

// checkCreate validates a C_CreateObject template and returns the object's
// full set of attributes, defaults and computed values included.
func checkCreate(tmpl []attr, so bool, pol policy) (map[uint64][]byte, uint64, uint64, error) {
	m, class, kt, err := checkTemplate(tmpl, so, pol.legacy(), originCreate, 0, noKeyType)
	if err != nil {
		return nil, 0, 0, err
	}
	if err := completeObject(m, class, kt, originCreate, 0, nil, pol); err != nil {
		return nil, 0, 0, err
	}
	return m, class, kt, nil
}

// noKeyType is checkTemplate's "no default key type": 0 cannot say it,
// since CKK_RSA is 0.
const noKeyType = ^uint64(0)

// checkTemplate validates a template for an object of the given origin,
// on a token that takes the legacy key types or not; defClass and
// defKeyType fill a missing CKA_CLASS or CKA_KEY_TYPE (0, noKeyType:
// none). The material comes later, then completeObject.
func checkTemplate(tmpl []attr, so, legacy bool, org origin, defClass, defKeyType uint64) (map[uint64][]byte, uint64, uint64, error) {
	m, err := toMap(tmpl)
	if err != nil {
		return nil, 0, 0, err
	}
	if _, ok := m[ck.CKA_CLASS]; !ok && defClass != 0 {
		m[ck.CKA_CLASS] = ulong(defClass)
	}
	cv, ok := m[ck.CKA_CLASS]
	if !ok {
		return nil, 0, 0, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	if len(cv) != 8 {
		return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	class := ulongOf(cv)
	cm := classMask(class)
	if cm == 0 || (org != originCreate && cm&(mKeys|mDomain) == 0) {
		return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	if defClass != 0 && class != defClass {
		return nil, 0, 0, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	kt := ^uint64(0)
	if cm&(mKeys|mDomain) != 0 {
		if _, ok := m[ck.CKA_KEY_TYPE]; !ok && defKeyType != noKeyType {
			m[ck.CKA_KEY_TYPE] = ulong(defKeyType)
		}
		v, ok := m[ck.CKA_KEY_TYPE]
		if !ok {
			return nil, 0, 0, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
		}
		kt = ulongOf(v)
		// A well-formed key type other than the one the mechanism makes
		// is CKR_TEMPLATE_INCONSISTENT (PKCS#11 v3.0, C_GenerateKey
		// and C_GenerateKeyPair), even one this class never has: the
		// template disagrees with the mechanism before it names a bad value.
		if len(v) == 8 && defKeyType != noKeyType && kt != defKeyType {
			return nil, 0, 0, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
		if !keyTypeSupported(class, kt, legacy) {
			return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	}
	for t, v := range m {
		r, ok := ruleFor(t, class, kt)
		if !ok {
			return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_TYPE_INVALID)
		}
		switch {
		case r.flags&fNever != 0:
			return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		case org == originCreate && (t == ck.CKA_VALUE_LEN || t == ck.CKA_MODULUS_BITS || t == ck.CKA_PRIME_BITS || t == ck.CKA_SUBPRIME_BITS):
			// Computed by the token from the key material.
			return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		case org != originCreate && isMaterial(t, class):
			return nil, 0, 0, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
		if err := checkValue(r, v); err != nil {
			return nil, 0, 0, err
		}
		if r.flags&fSOTrue != 0 && isTrue(v) && !so {
			return nil, 0, 0, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		if r.kind == vAttrs {
			if err := checkNested(v, so, t == ck.CKA_WRAP_TEMPLATE); err != nil {
				return nil, 0, 0, err
			}
		}
	}
	return m, class, kt, nil
}

// checkNested holds a template attribute (CKA_UNWRAP_TEMPLATE and kin)
// to what its owner could set: it will be imposed on keys unwrapped or
// derived later, so it may not carry what only the token, or only the SO,
// sets. A CKA_WRAP_TEMPLATE (match) is only matched against the keys it
// lets be wrapped, and may name what the token sets: CKA_LOCAL TRUE, for
// a wrapping key that wraps only keys made on the token.
func checkNested(v []byte, so, match bool) error {
	nested, err := keystore.DecodeAttributes(v)
	if err != nil {
		return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	for _, a := range nested {
		r, ok := rules[a.Type]
		if !ok || (r.flags&fNever != 0 && !match) || r.kind == vAttrs {
			return ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
		if err := checkValue(r, a.Value); err != nil {
			return err
		}
		if r.flags&fSOTrue != 0 && isTrue(a.Value) && !so {
			return ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
	}
	return nil
}

// completeObject finishes an object once its material is in m: the
// required attributes, what the key type demands of the material, the
// defaults, and what its origin says of it. mech is the generating
// mechanism; base, for a derived key, the key it came from.
func completeObject(m map[uint64][]byte, class, kt uint64, org origin, mech uint64, base *Object, pol policy) error {
	if classMask(class)&(mPriv|mSecret) != 0 {
		if err := protect(m, pol.tier); err != nil {
			return err
		}
	}
	for _, tr := range rulesOf(class, kt) {
		if tr.rule.flags&fRequired != 0 {
			if _, ok := m[tr.t]; !ok {
				return ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
			}
		}
	}
	if err := checkMaterial(m, class, kt, org); err != nil {
		return err
	}
	if err := settleCheckValue(m, class, kt); err != nil {
		return err
	}
	if err := settlePublicKeyInfo(m, class, kt); err != nil {
		return err
	}
	fillDefaults(m, class, kt)
	cm := classMask(class)
	if cm&(mKeys|mDomain) == 0 {
		return nil
	}
	m[ck.CKA_LOCAL] = keystore.Bool(org == originGenerate)
	if cm == mDomain {
		return nil
	}
	m[ck.CKA_KEY_GEN_MECHANISM] = ulong(ck.CK_UNAVAILABLE_INFORMATION)
	if org == originGenerate {
		m[ck.CKA_KEY_GEN_MECHANISM] = ulong(mech)
	}
	if cm&(mPriv|mSecret) != 0 {
		sensitive, extractable := isTrue(m[ck.CKA_SENSITIVE]), isTrue(m[ck.CKA_EXTRACTABLE])
		switch org {
		case originGenerate:
			// Made inside: sensitive and unextractable from the start if
			// the template says so.
			m[ck.CKA_ALWAYS_SENSITIVE] = keystore.Bool(sensitive)
			m[ck.CKA_NEVER_EXTRACTABLE] = keystore.Bool(!extractable)
		case originDerive:
			m[ck.CKA_ALWAYS_SENSITIVE] = keystore.Bool(sensitive && base != nil && base.Bool(ck.CKA_ALWAYS_SENSITIVE))
			m[ck.CKA_NEVER_EXTRACTABLE] = keystore.Bool(!extractable && base != nil && base.Bool(ck.CKA_NEVER_EXTRACTABLE))
		default:
			// Its material was in someone's hands, in clear or wrapped.
			m[ck.CKA_ALWAYS_SENSITIVE] = vFalse
			m[ck.CKA_NEVER_EXTRACTABLE] = vFalse
		}
	}
	return nil
}

// fillDefaults adds every attribute the class has a default for.
func fillDefaults(m map[uint64][]byte, class, kt uint64) {
	for _, tr := range rulesOf(class, kt) {
		if tr.rule.def == nil {
			continue
		}
		if _, ok := m[tr.t]; !ok {
			m[tr.t] = tr.rule.def
		}
	}
	if _, ok := m[ck.CKA_PRIVATE]; !ok {
		// Keys that hold secrets are private unless said otherwise.
		m[ck.CKA_PRIVATE] = keystore.Bool(class == ck.CKO_PRIVATE_KEY || class == ck.CKO_SECRET_KEY)
	}
}

// checkMaterial checks what the class and key type demand of the values.
func checkMaterial(m map[uint64][]byte, class, kt uint64, org origin) error {
	switch class {
	case ck.CKO_CERTIFICATE:
		if ulongOf(m[ck.CKA_CERTIFICATE_TYPE]) != ck.CKC_X_509 {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
		if _, ok := m[ck.CKA_SUBJECT]; !ok {
			return ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
		}
	case ck.CKO_SECRET_KEY:
		v := m[ck.CKA_VALUE]
		switch kt {
		case ck.CKK_AES:
			if len(v) != 16 && len(v) != 24 && len(v) != 32 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
		case ck.CKK_CHACHA20:
			if len(v) != 32 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
		case ck.CKK_DES, ck.CKK_DES2, ck.CKK_DES3:
			// Each DES key with its parity bits set: the
			// specification refuses others on create and unwrap.
			if n := desKeyLen(kt); len(v) != n || !mech.DESParityOK(v) {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
		default: // generic secrets and HMAC keys
			if len(v) == 0 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
		}
		if slices.Contains(withLen, kt) {
			m[ck.CKA_VALUE_LEN] = ulong(uint64(len(v)))
		}
	case ck.CKO_DOMAIN_PARAMETERS:
		if kt == ck.CKK_DSA {
			p, q := m[ck.CKA_PRIME], m[ck.CKA_SUBPRIME]
			if len(p) == 0 || len(q) == 0 || len(m[ck.CKA_BASE]) == 0 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
			m[ck.CKA_PRIME_BITS] = ulong(uint64(new(big.Int).SetBytes(p).BitLen()))
			m[ck.CKA_SUBPRIME_BITS] = ulong(uint64(new(big.Int).SetBytes(q).BitLen()))
		}
	case ck.CKO_PUBLIC_KEY, ck.CKO_PRIVATE_KEY:
		if kt == ck.CKK_RSA {
			n := m[ck.CKA_MODULUS]
			if len(n) == 0 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
			if class == ck.CKO_PUBLIC_KEY {
				if _, ok := m[ck.CKA_PUBLIC_EXPONENT]; !ok {
					return ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
				}
				m[ck.CKA_MODULUS_BITS] = ulong(uint64(new(big.Int).SetBytes(n).BitLen()))
			}
		}
		if slices.Contains(ecLike, kt) {
			if len(m[ck.CKA_EC_PARAMS]) == 0 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
			if class == ck.CKO_PRIVATE_KEY && len(m[ck.CKA_VALUE]) == 0 {
				return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
		}
		if slices.Contains(pqcKeys, kt) {
			if org == originGenerate {
				// The mechanism made it whole: parsing it again would
				// double a generation's cost.
				return nil
			}
			err := mech.CompletePQCKey(class, kt, m)
			if org == originUnwrap && errors.Is(err, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)) {
				// An unwrapped key's material is the wrapped key's (its
				// template may name no material): a seed of the wrong
				// size, or a seed and value of different keys, is a
				// wrapped key that is not valid, as a malformed RSA or EC
				// key in the same PKCS#8 is.
				return ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
			}
			return err
		}
		if kt == ck.CKK_DSA {
			for _, t := range []uint64{ck.CKA_PRIME, ck.CKA_SUBPRIME, ck.CKA_BASE, ck.CKA_VALUE} {
				if len(m[t]) == 0 {
					return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
				}
			}
		}
	}
	return nil
}

// checkChange validates a change of existing attributes, by
// C_SetAttributeValue (copy false) or in a C_CopyObject template (copy
// true), and returns the object's new attributes.
func checkChange(o *Object, tmpl []attr, so, copy bool) (map[uint64][]byte, error) {
	if copy && !o.Bool(ck.CKA_COPYABLE) {
		return nil, ck.Error(ck.CKR_ACTION_PROHIBITED)
	}
	if !copy && !o.Bool(ck.CKA_MODIFIABLE) {
		return nil, ck.Error(ck.CKR_ACTION_PROHIBITED)
	}
	class, kt := o.Class(), o.KeyType()
	// "Trusted certificates cannot be modified" (PKCS#11 v3.0,
	// certificate objects), not even by the SO who made them trusted; a
	// copy may change only what says where it lives and who sees it.
	trustedCert := class == ck.CKO_CERTIFICATE && o.Bool(ck.CKA_TRUSTED)
	if trustedCert && !copy {
		return nil, ck.Error(ck.CKR_ACTION_PROHIBITED)
	}
	changes, err := toMap(tmpl)
	if err != nil {
		return nil, err
	}
	m := o.All()
	for t, v := range changes {
		r, ok := ruleFor(t, class, kt)
		if !ok {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_TYPE_INVALID)
		}
		if err := checkValue(r, v); err != nil {
			return nil, err
		}
		if trustedCert && t != ck.CKA_TOKEN && t != ck.CKA_PRIVATE && t != ck.CKA_MODIFIABLE {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		old := m[t]
		allowed := r.flags&fModify != 0
		if copy {
			switch t {
			case ck.CKA_TOKEN:
				allowed = true
			case ck.CKA_MODIFIABLE:
				allowed, r.flags = true, r.flags|fToFalse
			case ck.CKA_PRIVATE:
				// A key that was private stays private.
				allowed = true
				if class == ck.CKO_PRIVATE_KEY || class == ck.CKO_SECRET_KEY {
					r.flags |= fToTrue
				}
			}
		}
		if !allowed {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		if r.flags&fToTrue != 0 && isTrue(old) && !isTrue(v) {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		if r.flags&fToFalse != 0 && !isTrue(old) && isTrue(v) {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		if r.flags&fSOTrue != 0 && isTrue(v) && !isTrue(old) && !so {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_READ_ONLY)
		}
		m[t] = v
	}
	// Once sensitive, always-sensitive can only have stayed as it was;
	// once extractable, never-extractable turns false for good.
	if isTrue(m[ck.CKA_ALWAYS_SENSITIVE]) && !isTrue(m[ck.CKA_SENSITIVE]) {
		m[ck.CKA_ALWAYS_SENSITIVE] = vFalse
	}
	if isTrue(m[ck.CKA_NEVER_EXTRACTABLE]) && isTrue(m[ck.CKA_EXTRACTABLE]) {
		m[ck.CKA_NEVER_EXTRACTABLE] = vFalse
	}
	return m, nil
}

// desKeyLen is the length of a DES key type's value.
func desKeyLen(kt uint64) int {
	switch kt {
	case ck.CKK_DES:
		return 8
	case ck.CKK_DES2:
		return 16
	case ck.CKK_DES3:
		return 24
	}
	return 0
}
