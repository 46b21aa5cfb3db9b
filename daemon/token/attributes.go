package token

import (
	"bytes"
	"cmp"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// The attribute rules of the PKCS#11 specification, as data: which
// attributes each class has, their types and defaults, and the footnotes of
// the specification's tables (required on create, never settable,
// modifiable, sensitive, one-way). One routine per operation enforces them
// (checkCreate, checkCopy, checkSet, readAttr); no attribute has a code path
// of its own.

type vkind uint8

const (
	vBytes vkind = iota
	vBool
	vUlong
	vDate   // CK_DATE: a calendar date in 8 ASCII digits, or empty
	vUlongs // CK_ULONG array
	vAttrs  // CK_ATTRIBUTE array
)

type flag uint16

const (
	fRequired  flag = 1 << iota // must be given to C_CreateObject
	fNever                      // set by the token only: never in a template
	fModify                     // may change after creation (C_SetAttributeValue, C_CopyObject)
	fSecret                     // kept sealed apart from the other attributes
	fSensitive                  // unreadable while CKA_SENSITIVE or !CKA_EXTRACTABLE
	fToTrue                     // may only change FALSE to TRUE
	fToFalse                    // may only change TRUE to FALSE
	fSOTrue                     // only the SO may set it TRUE
)

// class masks
type cmask uint8

const (
	mData cmask = 1 << iota
	mCert
	mPub
	mPriv
	mSecret
	mDomain // domain parameters (DSA's)
	mAll    = mData | mCert | mPub | mPriv | mSecret | mDomain
	mKeys   = mPub | mPriv | mSecret
)

func classMask(class uint64) cmask {
	switch class {
	case ck.CKO_DATA:
		return mData
	case ck.CKO_CERTIFICATE:
		return mCert
	case ck.CKO_PUBLIC_KEY:
		return mPub
	case ck.CKO_PRIVATE_KEY:
		return mPriv
	case ck.CKO_SECRET_KEY:
		return mSecret
	case ck.CKO_DOMAIN_PARAMETERS:
		return mDomain
	}
	return 0
}

type rule struct {
	kind     vkind
	classes  cmask
	keyTypes []uint64 // nil: every key type (or not a key)
	flags    flag
	def      []byte // default stored when absent; nil: absent
}

var (
	vTrue  = []byte{1}
	vFalse = []byte{0}
	vEmpty = []byte{}
	// emptyTemplate is a template attribute's value holding no
	// attributes.
	emptyTemplate = keystore.Attributes(nil).Encode()
)

func ulong(v uint64) []byte { return keystore.Ulong(v) }

var (
	rsaKeys = []uint64{ck.CKK_RSA}
	dsaKeys = []uint64{ck.CKK_DSA}
	ecLike  = []uint64{ck.CKK_EC, ck.CKK_EC_EDWARDS, ck.CKK_EC_MONTGOMERY}
	// hmacKeys are the HMAC key types of PKCS#11 3.0.
	hmacKeys = []uint64{
		ck.CKK_SHA_1_HMAC, ck.CKK_SHA224_HMAC, ck.CKK_SHA256_HMAC, ck.CKK_SHA384_HMAC, ck.CKK_SHA512_HMAC,
		ck.CKK_SHA512_224_HMAC, ck.CKK_SHA512_256_HMAC,
		ck.CKK_SHA3_224_HMAC, ck.CKK_SHA3_256_HMAC, ck.CKK_SHA3_384_HMAC, ck.CKK_SHA3_512_HMAC,
	}
	// withLen are the secret key types with a CKA_VALUE_LEN: all but the
	// DES keys, whose length their type says.
	withLen = append([]uint64{ck.CKK_AES, ck.CKK_GENERIC_SECRET, ck.CKK_CHACHA20}, hmacKeys...)
	desKeys = []uint64{ck.CKK_DES, ck.CKK_DES2, ck.CKK_DES3}
	// pqcKeys are the post-quantum key types of PKCS#11 3.2; seeded the
	// ones whose private keys may keep their seed (CKA_SEED).
	pqcKeys    = []uint64{ck.CKK_ML_KEM, ck.CKK_ML_DSA, ck.CKK_SLH_DSA}
	seededKeys = []uint64{ck.CKK_ML_KEM, ck.CKK_ML_DSA}
	kemKeys    = []uint64{ck.CKK_ML_KEM}
)

// rules is the table. Defaults that depend on the class (CKA_PRIVATE) or on
// how the object came to be (CKA_LOCAL and friends) are filled by the
// operations, not here.
var rules = map[uint64]rule{
	// Common to all objects.
	ck.CKA_CLASS: {kind: vUlong, classes: mAll, flags: fRequired},
	// Made by the token for every object: a token object's keystore uuid
	// (View), a session object's own random one (keep).
	ck.CKA_UNIQUE_ID:   {kind: vBytes, classes: mAll, flags: fNever},
	ck.CKA_TOKEN:       {kind: vBool, classes: mAll, def: vFalse},
	ck.CKA_PRIVATE:     {kind: vBool, classes: mAll},
	ck.CKA_MODIFIABLE:  {kind: vBool, classes: mAll, def: vTrue},
	ck.CKA_COPYABLE:    {kind: vBool, classes: mAll, flags: fToFalse | fModify, def: vTrue},
	ck.CKA_DESTROYABLE: {kind: vBool, classes: mAll, flags: fToFalse | fModify, def: vTrue},
	ck.CKA_LABEL:       {kind: vBytes, classes: mAll, flags: fModify, def: vEmpty},

	// Data objects.
	ck.CKA_APPLICATION: {kind: vBytes, classes: mData, flags: fModify, def: vEmpty},
	ck.CKA_OBJECT_ID:   {kind: vBytes, classes: mData, flags: fModify, def: vEmpty},
	// A version of a secret (docs/tokens.md, "Secrets"). Its number and
	// birth are fixed; whether it is enabled and when it expires change.
	ck.CKA_HSMEMU_SECRET_VERSION:      {kind: vUlong, classes: mData},
	ck.CKA_HSMEMU_SECRET_ENABLED:      {kind: vBool, classes: mData, flags: fModify},
	ck.CKA_HSMEMU_SECRET_EXPIRES:      {kind: vUlong, classes: mData, flags: fModify},
	ck.CKA_HSMEMU_SECRET_CONTENT_TYPE: {kind: vBytes, classes: mData, flags: fModify},
	ck.CKA_HSMEMU_SECRET_CREATED:      {kind: vUlong, classes: mData},
	// CKA_VALUE: data objects (sealed, readable), certificates (public),
	// secret keys and EC, Edwards, Montgomery and DSA private keys
	// (sealed, sensitive), DSA public keys (public). Its per-class
	// handling is in valueRule.
	ck.CKA_VALUE: {kind: vBytes, classes: mData | mCert | mPub | mPriv | mSecret},

	// Certificates (X.509).
	ck.CKA_CERTIFICATE_TYPE:           {kind: vUlong, classes: mCert, flags: fRequired},
	ck.CKA_TRUSTED:                    {kind: vBool, classes: mCert | mPub | mSecret, flags: fModify | fSOTrue, def: vFalse},
	ck.CKA_CERTIFICATE_CATEGORY:       {kind: vUlong, classes: mCert, def: ulong(0)},
	ck.CKA_CHECK_VALUE:                {kind: vBytes, classes: mCert | mSecret},
	ck.CKA_START_DATE:                 {kind: vDate, classes: mCert | mKeys, flags: fModify, def: vEmpty},
	ck.CKA_END_DATE:                   {kind: vDate, classes: mCert | mKeys, flags: fModify, def: vEmpty},
	ck.CKA_PUBLIC_KEY_INFO:            {kind: vBytes, classes: mCert | mPub | mPriv, def: vEmpty},
	ck.CKA_SUBJECT:                    {kind: vBytes, classes: mCert | mPub | mPriv, flags: fModify, def: vEmpty},
	ck.CKA_ID:                         {kind: vBytes, classes: mCert | mKeys, flags: fModify, def: vEmpty},
	ck.CKA_ISSUER:                     {kind: vBytes, classes: mCert, flags: fModify, def: vEmpty},
	ck.CKA_SERIAL_NUMBER:              {kind: vBytes, classes: mCert, flags: fModify, def: vEmpty},
	ck.CKA_URL:                        {kind: vBytes, classes: mCert, def: vEmpty},
	ck.CKA_HASH_OF_SUBJECT_PUBLIC_KEY: {kind: vBytes, classes: mCert, def: vEmpty},
	ck.CKA_HASH_OF_ISSUER_PUBLIC_KEY:  {kind: vBytes, classes: mCert, def: vEmpty},
	ck.CKA_JAVA_MIDP_SECURITY_DOMAIN:  {kind: vUlong, classes: mCert, def: ulong(0)},
	ck.CKA_NAME_HASH_ALGORITHM:        {kind: vUlong, classes: mCert, def: ulong(ck.CKM_SHA_1)},

	// Keys.
	ck.CKA_KEY_TYPE:            {kind: vUlong, classes: mKeys | mDomain, flags: fRequired},
	ck.CKA_DERIVE:              {kind: vBool, classes: mKeys, flags: fModify, def: vFalse},
	ck.CKA_LOCAL:               {kind: vBool, classes: mKeys | mDomain, flags: fNever},
	ck.CKA_KEY_GEN_MECHANISM:   {kind: vUlong, classes: mKeys, flags: fNever},
	ck.CKA_ALLOWED_MECHANISMS:  {kind: vUlongs, classes: mKeys, def: vEmpty},
	ck.CKA_ENCRYPT:             {kind: vBool, classes: mPub | mSecret, flags: fModify, def: vTrue},
	ck.CKA_VERIFY:              {kind: vBool, classes: mPub | mSecret, flags: fModify, def: vTrue},
	ck.CKA_VERIFY_RECOVER:      {kind: vBool, classes: mPub, flags: fModify, def: vTrue},
	ck.CKA_WRAP:                {kind: vBool, classes: mPub | mSecret, flags: fModify, def: vTrue},
	ck.CKA_WRAP_TEMPLATE:       {kind: vAttrs, classes: mPub | mSecret},
	ck.CKA_DECRYPT:             {kind: vBool, classes: mPriv | mSecret, flags: fModify, def: vTrue},
	ck.CKA_SIGN:                {kind: vBool, classes: mPriv | mSecret, flags: fModify, def: vTrue},
	ck.CKA_SIGN_RECOVER:        {kind: vBool, classes: mPriv, flags: fModify, def: vTrue},
	ck.CKA_UNWRAP:              {kind: vBool, classes: mPriv | mSecret, flags: fModify, def: vTrue},
	ck.CKA_UNWRAP_TEMPLATE:     {kind: vAttrs, classes: mPriv | mSecret},
	ck.CKA_DERIVE_TEMPLATE:     {kind: vAttrs, classes: mPriv | mSecret},
	ck.CKA_SENSITIVE:           {kind: vBool, classes: mPriv | mSecret, flags: fModify | fToTrue, def: vFalse},
	ck.CKA_EXTRACTABLE:         {kind: vBool, classes: mPriv | mSecret, flags: fModify | fToFalse, def: vTrue},
	ck.CKA_ALWAYS_SENSITIVE:    {kind: vBool, classes: mPriv | mSecret, flags: fNever},
	ck.CKA_NEVER_EXTRACTABLE:   {kind: vBool, classes: mPriv | mSecret, flags: fNever},
	ck.CKA_WRAP_WITH_TRUSTED:   {kind: vBool, classes: mPriv | mSecret, flags: fModify | fToTrue, def: vFalse},
	ck.CKA_ALWAYS_AUTHENTICATE: {kind: vBool, classes: mPriv, def: vFalse},
	ck.CKA_VALUE_LEN:           {kind: vUlong, classes: mSecret, keyTypes: withLen},
	// The protection level: set when the key is made, never changed.
	ck.CKA_HSMEMU_PROTECTION: {kind: vUlong, classes: mPriv | mSecret},
	// An AES key's IV counter for message-based encryption: the token's
	// alone (ivcounter.go), readable.
	ck.CKA_HSMEMU_IV_COUNTER: {kind: vBytes, classes: mSecret, keyTypes: []uint64{ck.CKK_AES}, flags: fNever},

	// RSA.
	ck.CKA_MODULUS:          {kind: vBytes, classes: mPub | mPriv, keyTypes: rsaKeys, flags: fRequired},
	ck.CKA_MODULUS_BITS:     {kind: vUlong, classes: mPub, keyTypes: rsaKeys},
	ck.CKA_PUBLIC_EXPONENT:  {kind: vBytes, classes: mPub | mPriv, keyTypes: rsaKeys},
	ck.CKA_PRIVATE_EXPONENT: {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fRequired | fSecret | fSensitive},
	ck.CKA_PRIME_1:          {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fSecret | fSensitive},
	ck.CKA_PRIME_2:          {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fSecret | fSensitive},
	ck.CKA_EXPONENT_1:       {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fSecret | fSensitive},
	ck.CKA_EXPONENT_2:       {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fSecret | fSensitive},
	ck.CKA_COEFFICIENT:      {kind: vBytes, classes: mPriv, keyTypes: rsaKeys, flags: fSecret | fSensitive},

	// DSA: the domain parameters of keys and of domain parameter
	// objects. CKA_PRIME_BITS and CKA_SUBPRIME_BITS say what
	// CKM_DSA_PARAMETER_GEN makes; the token computes them for a created
	// object.
	ck.CKA_PRIME:         {kind: vBytes, classes: mPub | mPriv | mDomain, keyTypes: dsaKeys, flags: fRequired},
	ck.CKA_SUBPRIME:      {kind: vBytes, classes: mPub | mPriv | mDomain, keyTypes: dsaKeys, flags: fRequired},
	ck.CKA_BASE:          {kind: vBytes, classes: mPub | mPriv | mDomain, keyTypes: dsaKeys, flags: fRequired},
	ck.CKA_PRIME_BITS:    {kind: vUlong, classes: mDomain, keyTypes: dsaKeys},
	ck.CKA_SUBPRIME_BITS: {kind: vUlong, classes: mDomain, keyTypes: dsaKeys},

	// EC, Edwards and Montgomery curves.
	ck.CKA_EC_PARAMS: {kind: vBytes, classes: mPub | mPriv, keyTypes: ecLike, flags: fRequired},
	ck.CKA_EC_POINT:  {kind: vBytes, classes: mPub, keyTypes: ecLike, flags: fRequired},

	// ML-KEM, ML-DSA and SLH-DSA (PKCS#11 3.2): the parameter set, and a
	// private key's seed, which may stand in for its CKA_VALUE on
	// create. CKA_ENCAPSULATE and CKA_DECAPSULATE are the usage flags of
	// C_EncapsulateKey and C_DecapsulateKey.
	ck.CKA_PARAMETER_SET: {kind: vUlong, classes: mPub | mPriv, keyTypes: pqcKeys, flags: fRequired},
	ck.CKA_SEED:          {kind: vBytes, classes: mPriv, keyTypes: seededKeys, flags: fSecret | fSensitive},
	ck.CKA_ENCAPSULATE:   {kind: vBool, classes: mPub, keyTypes: kemKeys, flags: fModify, def: vTrue},
	ck.CKA_DECAPSULATE:   {kind: vBool, classes: mPriv, keyTypes: kemKeys, flags: fModify, def: vTrue},
	// CKA_ENCAPSULATE_TEMPLATE is what a key encapsulated with the public
	// key must match, CKA_DECAPSULATE_TEMPLATE what a key decapsulated
	// with the private key is given (C_EncapsulateKey, C_DecapsulateKey),
	// as CKA_WRAP_TEMPLATE and CKA_UNWRAP_TEMPLATE are for wrapping.
	ck.CKA_ENCAPSULATE_TEMPLATE: {kind: vAttrs, classes: mPub, keyTypes: kemKeys},
	ck.CKA_DECAPSULATE_TEMPLATE: {kind: vAttrs, classes: mPriv, keyTypes: kemKeys},
}

// ruleFor returns the rule of attribute t on an object of the given class
// and key type, and whether the object has that attribute at all.
// typedRule is a rule with its attribute type.
type typedRule struct {
	t    uint64
	rule rule
}

// rulesOf lists the rules that apply to an object of class and keyType,
// made once per pair: creating an object walks them twice.
func rulesOf(class, keyType uint64) []typedRule {
	k := [2]uint64{class, keyType}
	if v, ok := rulesByKind.Load(k); ok {
		return v.([]typedRule)
	}
	var out []typedRule
	for t := range rules {
		if r, ok := ruleFor(t, class, keyType); ok {
			out = append(out, typedRule{t, r})
		}
	}
	slices.SortFunc(out, func(a, b typedRule) int { return cmp.Compare(a.t, b.t) })
	if rulesCached.Add(1) <= maxRulesCached {
		rulesByKind.Store(k, out)
	}
	return out
}

// rulesByKind caches rulesOf. Classes and key types come from callers'
// templates, so it keeps the first maxRulesCached pairs and no more.
var (
	rulesByKind sync.Map
	rulesCached atomic.Int64
)

const maxRulesCached = 256

func ruleFor(t uint64, class, keyType uint64) (rule, bool) {
	r, ok := rules[t]
	if !ok || r.classes&classMask(class) == 0 {
		return rule{}, false
	}
	if r.keyTypes != nil {
		found := false
		for _, k := range r.keyTypes {
			found = found || k == keyType
		}
		if !found {
			return rule{}, false
		}
	}
	if t == ck.CKA_VALUE {
		r = valueRule(class, keyType, r)
		if r.classes == 0 {
			return rule{}, false
		}
	}
	return r, true
}

// valueRule is CKA_VALUE's rule, which differs by class.
func valueRule(class, keyType uint64, r rule) rule {
	switch class {
	case ck.CKO_DATA:
		r.flags = fModify | fSecret
		r.def = vEmpty
	case ck.CKO_CERTIFICATE:
		r.flags = fRequired
	case ck.CKO_SECRET_KEY:
		r.flags = fRequired | fSecret | fSensitive
	case ck.CKO_PRIVATE_KEY:
		r.flags = fRequired | fSecret | fSensitive
		switch keyType {
		case ck.CKK_EC, ck.CKK_EC_EDWARDS, ck.CKK_EC_MONTGOMERY, ck.CKK_DSA, ck.CKK_SLH_DSA:
		case ck.CKK_ML_KEM, ck.CKK_ML_DSA:
			// The seed may stand in for it (checkMaterial).
			r.flags = fSecret | fSensitive
		default:
			r.classes = 0
		}
	case ck.CKO_PUBLIC_KEY:
		// A DSA public key's y; a post-quantum public key.
		if keyType != ck.CKK_DSA && !slices.Contains(pqcKeys, keyType) {
			r.classes = 0
		}
		r.flags = fRequired
	}
	return r
}

// isDate says whether v is a CK_DATE: a day of the calendar, its year
// ("1900" - "9999"), month ("01" - "12") and day ("01" - "31") each in
// ASCII digits (PKCS#11 v3.0, CK_DATE). A day the month does not have
// (February 30th) is no date either.
func isDate(v []byte) bool {
	if len(v) != 8 {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	d, err := time.Parse("20060102", string(v))
	return err == nil && d.Year() >= 1900
}

// checkValue validates one attribute value against its kind.
func checkValue(r rule, v []byte) error {
	switch r.kind {
	case vBool:
		if len(v) != 1 || v[0] > 1 {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	case vUlong:
		if len(v) != 8 {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	case vUlongs:
		if len(v)%8 != 0 {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	case vDate:
		if len(v) != 0 && !isDate(v) {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	case vAttrs:
		if _, err := keystore.DecodeAttributes(v); err != nil {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	}
	return nil
}

func isTrue(v []byte) bool { return len(v) == 1 && v[0] == 1 }

// Object is the engine's view of an object: its ordinary attributes and,
// apart, the sealed ones (key material, a data object's value). It is the
// mech.Key a mechanism gets.
type Object struct {
	attrs  keystore.Attributes
	secret keystore.Attributes

	// What every call that uses the object asks first, read once when
	// the view is made (viewOf): its class, its key type, and which
	// of the standard CK_BBOOL attributes (types below boolTypes) are
	// true. An operation's Init asks a key a dozen such questions, each
	// a search of its attributes otherwise.
	indexed  bool
	class    uint64
	keyType  uint64
	truthful [boolTypes / 64]uint64

	// uniqueID is a token object's CKA_UNIQUE_ID, its uuid in the
	// keystore (View): not one of its stored attributes.
	uniqueID []byte

	// parsed keeps the key material parsed for mechanisms (an RSA private
	// key with its CRT values, an EC scalar and its public point), so an
	// operation's Init does not parse it again. Objects never change: an
	// edit makes a new one.
	mu     sync.Mutex
	parsed map[string]parsedKey
}

type parsedKey struct {
	key any
	err error
}

// Memoized returns what Memo kept for kind, if it has (mech's look-up
// ahead of Memo, which spares making the parse function).
func (o *Object) Memoized(kind string) (any, error, bool) {
	o.mu.Lock()
	p, ok := o.parsed[kind]
	o.mu.Unlock()
	return p.key, p.err, ok
}

// Memo returns what parse returns, parsing once per object and kind
// (mech.Key). The lock is not held while parsing: one parse may need
// another (an RSA private key its public half), and two racing parses
// agree.
func (o *Object) Memo(kind string, parse func() (any, error)) (any, error) {
	o.mu.Lock()
	p, ok := o.parsed[kind]
	o.mu.Unlock()
	if ok {
		return p.key, p.err
	}
	k, err := parse()
	o.mu.Lock()
	defer o.mu.Unlock()
	if p, ok := o.parsed[kind]; ok {
		return p.key, p.err
	}
	if o.parsed == nil {
		o.parsed = map[string]parsedKey{}
	}
	o.parsed[kind] = parsedKey{k, err}
	return k, err
}

// boolTypes bounds the attribute types whose truth an Object indexes:
// every CK_BBOOL attribute of the specification is below it.
const boolTypes = 1024

// viewOf is the engine's view of an object's two parts, indexed.
func viewOf(attrs, secret keystore.Attributes) *Object {
	o := &Object{attrs: attrs, secret: secret, indexed: true}
	o.class = o.readClass()
	o.keyType = o.readKeyType()
	for _, a := range attrs {
		if a.Type < boolTypes && isTrue(a.Value) {
			o.truthful[a.Type/64] |= 1 << (a.Type % 64)
		}
	}
	return o
}

// Class is the object's CKA_CLASS.
func (o *Object) Class() uint64 {
	if o.indexed {
		return o.class
	}
	return o.readClass()
}

func (o *Object) readClass() uint64 {
	v, _, _ := o.attrs.Ulong(ck.CKA_CLASS)
	return v
}

// KeyType is a key's CKA_KEY_TYPE, all ones for an object that is not a
// key.
func (o *Object) KeyType() uint64 {
	if o.indexed {
		return o.keyType
	}
	return o.readKeyType()
}

func (o *Object) readKeyType() uint64 {
	v, ok, _ := o.attrs.Ulong(ck.CKA_KEY_TYPE)
	if !ok {
		return ^uint64(0)
	}
	return v
}

// Bool reads a CK_BBOOL attribute: true only when it is there and true.
func (o *Object) Bool(t uint64) bool {
	if o.indexed && t < boolTypes {
		return o.truthful[t/64]&(1<<(t%64)) != 0
	}
	v, _ := o.attrs.Get(t)
	return isTrue(v)
}

// attrsGet returns an ordinary attribute's value, or nil.
func (o *Object) attrsGet(t uint64) []byte {
	v, _ := o.attrs.Get(t)
	return v
}

// Attr returns an attribute's stored value, from either part (mech.Key).
func (o *Object) Attr(t uint64) ([]byte, bool) {
	if v, ok := o.attrs.Get(t); ok {
		return v, true
	}
	return o.secret.Get(t)
}

// readAttr applies the specification's rules for one attribute of
// C_GetAttributeValue: its value, or the CK_RV that says why not.
func (o *Object) readAttr(t uint64) ([]byte, uint64) {
	r, ok := ruleFor(t, o.Class(), o.KeyType())
	if !ok {
		return nil, ck.CKR_ATTRIBUTE_TYPE_INVALID
	}
	if r.flags&fSensitive != 0 && (o.Bool(ck.CKA_SENSITIVE) || !o.Bool(ck.CKA_EXTRACTABLE)) {
		return nil, ck.CKR_ATTRIBUTE_SENSITIVE
	}
	v, ok := o.Attr(t)
	if t == ck.CKA_UNIQUE_ID && o.uniqueID != nil {
		v, ok = o.uniqueID, true
	}
	if t == ck.CKA_CHECK_VALUE && (!ok || len(v) > 0) {
		// Computed when read, unless the template that made the
		// object asked for none, stored empty (checkvalue.go). A
		// value an earlier version stored unchecked is not believed.
		if value, has := o.Attr(ck.CKA_VALUE); has {
			v, ok = checkValueOf(o.Class(), o.KeyType(), value)
		}
	}
	if t == ck.CKA_PUBLIC_KEY_INFO && classMask(o.Class())&(mPub|mPriv) != 0 {
		// Computed when read (pubinfo.go), whatever an earlier
		// version stored unchecked; as stored for a key type it is
		// not computed for.
		if der, has := publicKeyInfoOf(o); has {
			v, ok = der, true
		}
	}
	if !ok && r.kind == vAttrs {
		// A key without a CKA_WRAP_TEMPLATE (or kin) has the empty
		// one: it imposes nothing (wrappable, impose). Encoded as a
		// template given empty is, so a search for one finds both.
		v, ok = emptyTemplate, true
	}
	if !ok {
		// The object may have this attribute but holds no value for it.
		return nil, ck.CKR_ATTRIBUTE_TYPE_INVALID
	}
	return v, ck.CKR_OK
}

// matches reports whether the object matches a search template. An
// attribute the caller could not read never matches.
func (o *Object) matches(tmpl []keystore.Attribute) bool {
	for _, a := range tmpl {
		v, code := o.readAttr(a.Type)
		if code != ck.CKR_OK || !bytes.Equal(v, a.Value) {
			return false
		}
	}
	return true
}

// split sorts a full set of attributes into the object's two parts.
func split(all map[uint64][]byte, class, keyType uint64) (*Object, error) {
	attrs := make([]keystore.Attribute, 0, len(all))
	var secret []keystore.Attribute
	// The rules are sorted by type, so walking them yields the attributes
	// in the order NewAttributes wants; any attribute without a rule (none
	// gets this far today) is picked up after.
	seen := 0
	for _, tr := range rulesOf(class, keyType) {
		v, ok := all[tr.t]
		if !ok {
			continue
		}
		seen++
		if tr.rule.flags&fSecret != 0 {
			secret = append(secret, keystore.Attribute{Type: tr.t, Value: v})
		} else {
			attrs = append(attrs, keystore.Attribute{Type: tr.t, Value: v})
		}
	}
	if seen < len(all) {
		for t, v := range all {
			if _, ok := ruleFor(t, class, keyType); !ok {
				attrs = append(attrs, keystore.Attribute{Type: t, Value: v})
			}
		}
	}
	a, err := keystore.NewAttributes(attrs...)
	if err != nil {
		return nil, oversized(err, attrs)
	}
	s, err := keystore.NewAttributes(secret...)
	if err != nil {
		return nil, oversized(err, secret)
	}
	return viewOf(a, s), nil
}

// oversized names split's refusal of an object's attributes: the keystore
// keeps no value over keystore.MaxAttributeValue
// (CKR_ATTRIBUTE_VALUE_INVALID), and no object whose attributes, or
// whose secret attributes, are together more than it reads back
// (CKR_DEVICE_MEMORY: the token has no room for it). Session objects are
// held to the same bounds, so that CKA_TOKEN decides only where an
// object lives.
func oversized(err error, attrs []keystore.Attribute) error {
	if !errors.Is(err, keystore.ErrTooLarge) {
		return ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	for _, a := range attrs {
		if len(a.Value) > keystore.MaxAttributeValue {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	}
	return ck.Error(ck.CKR_DEVICE_MEMORY)
}

// All returns every attribute of the object in one map, for edits.
func (o *Object) All() map[uint64][]byte {
	m := make(map[uint64][]byte, len(o.attrs)+len(o.secret))
	for _, a := range o.attrs {
		m[a.Type] = a.Value
	}
	for _, a := range o.secret {
		m[a.Type] = a.Value
	}
	return m
}
