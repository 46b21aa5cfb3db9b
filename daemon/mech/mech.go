package mech

import (
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// CipherOp is an encryption or decryption in progress.
type CipherOp interface {
	// Update takes one part and returns what output it completes.
	Update(in []byte) ([]byte, error)
	// Final returns the last output.
	Final() ([]byte, error)
}

// OneShot is implemented by cipher operations whose single-part form is
// not Update then Final (GCM, RSA): C_Encrypt and C_Decrypt use it when
// present.
type OneShot interface {
	One(in []byte) ([]byte, error)
}

// Buffering is implemented by cipher operations that keep their input
// until the Final (AES-GCM, ChaCha20-Poly1305, key wrap used to encrypt):
// Buffered returns the bytes of input they hold and the memory holding
// them. The engine bounds the one and accounts for the other
// (docs/mechanisms.md, "Operations in sessions").
type Buffering interface {
	Buffered() (input, memory int)
}

// SignOp is a signature, MAC or verification in progress.
type SignOp interface {
	Update(in []byte) error
	// Sign returns the signature (or MAC) of everything given.
	Sign() ([]byte, error)
	// Verify checks sig against everything given: nil, or an error
	// carrying CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE.
	Verify(sig []byte) error
}

// KeepsState is implemented by sign operations whose Sign leaves the
// operation as it was (a hash's Sum, a MAC's): a C_SignFinal that was
// only measured (a size query, PKCS#11 5.2) may be followed by more
// C_SignUpdate calls. Without it, an Update after a measured Final is
// refused (CKR_OPERATION_ACTIVE), since the signature may have consumed
// the input (SLH-DSA's pre-hash, a SHAKE read).
type KeepsState interface {
	keepsState()
}

// Wiper is implemented by cipher operations that keep input (plaintext,
// on encryption) past their Final, so that a Final that was only
// measured can be taken back (Rewinder) and more input follow: Wipe
// clears it when the operation ends.
type Wiper interface {
	Wipe()
}

// SinglePartOnly is implemented by sign operations that take their input
// in one call only, as the specification lists them (raw RSA, ECDSA
// without a hash, EdDSA): C_SignUpdate and C_VerifyUpdate on them are
// CKR_FUNCTION_NOT_SUPPORTED, and end the operation.
type SinglePartOnly interface {
	singlePart()
}

// SignatureFirst is implemented by verify operations that take their
// input in parts only when the signature came first
// (C_VerifySignatureInit): pure SLH-DSA, whose message digest begins with
// the randomizer R the signature carries (FIPS 205, H_msg). PKCS#11 3.2
// makes CKM_SLH_DSA's C_Verify single-part ("SLH-DSA Signature", and its
// mechanism table's footnote): C_VerifyUpdate, C_VerifyFinal and
// C_VerifyMessageBegin on them are CKR_FUNCTION_NOT_SUPPORTED, as for
// SinglePartOnly.
type SignatureFirst interface {
	signatureFirst()
}

// DigestOp is a digest in progress.
type DigestOp interface {
	Update(in []byte)
	Sum() []byte
}

// Func is something a mechanism can do.
type Func int

const (
	Encrypt Func = iota
	Decrypt
	Sign
	Verify
	Digest
	Generate
	GeneratePair
	Wrap
	Unwrap
	Derive
	// The message-based functions of PKCS#11 3.0. Every signature and MAC
	// mechanism signs and verifies messages; the AEADs encrypt and
	// decrypt them.
	MessageEncrypt
	MessageDecrypt
	MessageSign
	MessageVerify
	// The key encapsulation of PKCS#11 3.2 (C_EncapsulateKey,
	// C_DecapsulateKey).
	Encapsulate
	Decapsulate
)

// Mechanism is one entry of the table. A nil constructor means the
// mechanism does not do that; its method then answers
// CKR_MECHANISM_INVALID.
type Mechanism struct {
	info     wire.MechanismInfo
	keyTypes []uint64 // key types Init accepts; nil: no key (digests)

	encrypt func(k Key, m *wire.Mechanism) (CipherOp, error)
	decrypt func(k Key, m *wire.Mechanism) (CipherOp, error)
	sign    func(k Key, m *wire.Mechanism) (SignOp, error)
	verify  func(k Key, m *wire.Mechanism) (SignOp, error)
	digest  func(m *wire.Mechanism) (DigestOp, error)
	// message is the message-based encryption and decryption of an AEAD
	// (message.go).
	message func(k Key, encrypt bool) (MsgCipher, error)

	// genKeyType is the key type generate and generatePair make;
	// genClass the class generate makes, a secret key unless set
	// (CKO_DOMAIN_PARAMETERS for DSA's parameter generation).
	genKeyType uint64
	genClass   uint64
	// generate makes a secret key's material for the validated template
	// (CKA_VALUE_LEN and the like are in it) and returns the attributes to
	// add, CKA_VALUE among them.
	generate func(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error)
	// generatePair returns the attributes to add to the public and the
	// private key.
	generatePair func(m *wire.Mechanism, pub, priv map[uint64][]byte) (pubAdd, privAdd map[uint64][]byte, err error)
	// wrap encrypts a key's encoding (a secret key's value, a private
	// key's PKCS#8) under the wrapping key; unwrap decrypts it.
	wrap   func(wrapping Key, m *wire.Mechanism, encoded []byte) ([]byte, error)
	unwrap func(unwrapping Key, m *wire.Mechanism, wrapped []byte) ([]byte, error)
	// derive returns the new key's value, of the length asked (0: the
	// mechanism's natural length).
	derive func(base Key, m *wire.Mechanism, length int) ([]byte, error)
	// encapsulate returns a KEM's ciphertext and shared secret for a
	// public key; decapsulate the shared secret a ciphertext carries;
	// ciphertextLen the length of encapsulate's ciphertext, for a length
	// query that makes no key.
	encapsulate   func(pub Key, m *wire.Mechanism) (ct, secret []byte, err error)
	decapsulate   func(priv Key, m *wire.Mechanism, ct []byte) ([]byte, error)
	ciphertextLen func(pub Key) (int, error)
}

// Info is what C_GetMechanismInfo reports.
func (m *Mechanism) Info() wire.MechanismInfo { return m.info }

// Takes reports whether an operation's key may be of key type kt.
func (m *Mechanism) Takes(kt uint64) bool { return slices.Contains(m.keyTypes, kt) }

// GenKeyType is the key type Generate and GeneratePair make.
func (m *Mechanism) GenKeyType() uint64 { return m.genKeyType }

// GenClass is the class of the object Generate makes.
func (m *Mechanism) GenClass() uint64 {
	if m.genClass == 0 {
		return ck.CKO_SECRET_KEY
	}
	return m.genClass
}

// Does reports whether the mechanism does f.
func (m *Mechanism) Does(f Func) bool {
	switch f {
	case Encrypt:
		return m.encrypt != nil
	case Decrypt:
		return m.decrypt != nil
	case Sign:
		return m.sign != nil
	case Verify:
		return m.verify != nil
	case Digest:
		return m.digest != nil
	case Generate:
		return m.generate != nil
	case GeneratePair:
		return m.generatePair != nil
	case Wrap:
		return m.wrap != nil
	case Unwrap:
		return m.unwrap != nil
	case Derive:
		return m.derive != nil
	case MessageEncrypt, MessageDecrypt:
		return m.message != nil
	case MessageSign:
		return m.sign != nil
	case MessageVerify:
		return m.verify != nil
	case Encapsulate:
		return m.encapsulate != nil
	case Decapsulate:
		return m.decapsulate != nil
	}
	return false
}

var errNotThis = ck.Error(ck.CKR_MECHANISM_INVALID)

// Encrypt starts an encryption with key k and the call's mechanism p.
func (m *Mechanism) Encrypt(k Key, p *wire.Mechanism) (CipherOp, error) {
	if m.encrypt == nil {
		return nil, errNotThis
	}
	return m.encrypt(k, p)
}

// Decrypt starts a decryption.
func (m *Mechanism) Decrypt(k Key, p *wire.Mechanism) (CipherOp, error) {
	if m.decrypt == nil {
		return nil, errNotThis
	}
	return m.decrypt(k, p)
}

// Sign starts a signature (or a MAC).
func (m *Mechanism) Sign(k Key, p *wire.Mechanism) (SignOp, error) {
	if m.sign == nil {
		return nil, errNotThis
	}
	return m.sign(k, p)
}

// Verify starts a verification.
func (m *Mechanism) Verify(k Key, p *wire.Mechanism) (SignOp, error) {
	if m.verify == nil {
		return nil, errNotThis
	}
	return m.verify(k, p)
}

// Digest starts a digest.
func (m *Mechanism) Digest(p *wire.Mechanism) (DigestOp, error) {
	if m.digest == nil {
		return nil, errNotThis
	}
	return m.digest(p)
}

// Generate makes a secret key's material for a checked template and
// returns the attributes to add to it.
func (m *Mechanism) Generate(p *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	if m.generate == nil {
		return nil, errNotThis
	}
	return m.generate(p, tmpl)
}

// GeneratePair makes a key pair for checked templates and returns the
// attributes to add to each half.
func (m *Mechanism) GeneratePair(p *wire.Mechanism, pub, priv map[uint64][]byte) (pubAdd, privAdd map[uint64][]byte, err error) {
	if m.generatePair == nil {
		return nil, nil, errNotThis
	}
	return m.generatePair(p, pub, priv)
}

// Wrap encrypts a key's encoding (EncodeKey) under wrapping.
func (m *Mechanism) Wrap(wrapping Key, p *wire.Mechanism, encoded []byte) ([]byte, error) {
	if m.wrap == nil {
		return nil, errNotThis
	}
	return m.wrap(wrapping, p, encoded)
}

// Unwrap decrypts a wrapped key's encoding; the caller wipes it.
func (m *Mechanism) Unwrap(unwrapping Key, p *wire.Mechanism, wrapped []byte) ([]byte, error) {
	if m.unwrap == nil {
		return nil, errNotThis
	}
	return m.unwrap(unwrapping, p, wrapped)
}

// Derive returns a new key's value from base, of length bytes (0: the
// mechanism's natural length).
func (m *Mechanism) Derive(base Key, p *wire.Mechanism, length int) ([]byte, error) {
	if m.derive == nil {
		return nil, errNotThis
	}
	return m.derive(base, p, length)
}

// Encapsulate returns a new ciphertext and the shared secret it carries,
// for the public key pub; the caller wipes the secret.
func (m *Mechanism) Encapsulate(pub Key, p *wire.Mechanism) (ct, secret []byte, err error) {
	if m.encapsulate == nil {
		return nil, nil, errNotThis
	}
	return m.encapsulate(pub, p)
}

// CiphertextLen is the length of Encapsulate's ciphertext for pub.
func (m *Mechanism) CiphertextLen(pub Key) (int, error) {
	if m.ciphertextLen == nil {
		return 0, errNotThis
	}
	return m.ciphertextLen(pub)
}

// Decapsulate returns the shared secret ct carries for the private key
// priv; the caller wipes it.
func (m *Mechanism) Decapsulate(priv Key, p *wire.Mechanism, ct []byte) ([]byte, error) {
	if m.decapsulate == nil {
		return nil, errNotThis
	}
	return m.decapsulate(priv, p, ct)
}

// Table is every mechanism, by type, with what they own: the ECDSA nonce
// pools and their fillers. It is a value: an engine makes one and closes
// it when it stops, and tests run as many as they like.
//
// A table is modern (New) or legacy (Table.WithLegacy). The legacy one
// holds the same mechanisms and the legacy algorithms besides: single
// and triple DES, DSA, RSA keys of 1024 bits, and SHA-1 in new
// signatures. The modern one refuses RSA keys under 2048 bits
// (CKR_KEY_SIZE_RANGE) and only verifies with the SHA-1 signature
// mechanisms, whose CK_MECHANISM_INFO says so.
type Table struct {
	byType map[uint64]*Mechanism
	types  []uint64 // sorted
	nonces *noncePools
	legacy bool
	owner  bool // Close stops the nonce fillers: the table that made them
}

// policy is what the families build their mechanisms for.
type policy struct {
	// legacy: the legacy algorithms are in, and SHA-1 signs.
	legacy bool
	nonces *noncePools
}

// New builds the modern table. Each family adds its own entries in its
// file through a table function, so the table is built once, in one
// place, with no global state changed at run time.
func New() *Table {
	t := build(policy{nonces: newNoncePools()})
	t.owner = true
	return t
}

// WithLegacy returns a legacy table: t's mechanisms and the legacy ones.
// It shares t's background work (the nonce pools): closing t stops it,
// and the legacy table's own Close does nothing.
func (t *Table) WithLegacy() *Table {
	return build(policy{legacy: true, nonces: t.nonces})
}

func build(p policy) *Table {
	t := &Table{byType: map[uint64]*Mechanism{}, nonces: p.nonces, legacy: p.legacy}
	for _, family := range []func(policy) map[uint64]*Mechanism{
		digestMechanisms,
		symmetricMechanisms,
		asymmetricMechanisms,
		pqcMechanisms,
	} {
		for typ, m := range family(p) {
			if _, dup := t.byType[typ]; dup {
				panic("mech: internal error: mechanism listed twice")
			}
			m.info.Flags |= messageFlags(typ, m)
			t.byType[typ] = m
			t.types = append(t.types, typ)
		}
	}
	slices.Sort(t.types)
	return t
}

// singlePartSigs are the signature mechanisms the specification makes
// single-part (their SignOp is SinglePartOnly): their messages come whole,
// never through C_SignMessageBegin (no CKF_MULTI_MESSAGE).
var singlePartSigs = map[uint64]bool{
	ck.CKM_RSA_PKCS: true, ck.CKM_RSA_PKCS_PSS: true, ck.CKM_ECDSA: true, ck.CKM_DSA: true, ck.CKM_EDDSA: true,
	ck.CKM_HASH_ML_DSA: true,
}

// messageFlags are the CK_MECHANISM_INFO flags of the message-based
// functions a mechanism does: the AEADs' encryption and decryption,
// every signature's and MAC's; CKF_MULTI_MESSAGE where a message may come
// in parts.
func messageFlags(typ uint64, m *Mechanism) uint64 {
	var f uint64
	if m.message != nil {
		f |= ck.CKF_MESSAGE_ENCRYPT | ck.CKF_MESSAGE_DECRYPT | ck.CKF_MULTI_MESSAGE
	}
	if m.sign != nil {
		f |= ck.CKF_MESSAGE_SIGN
	}
	if m.verify != nil {
		f |= ck.CKF_MESSAGE_VERIFY
	}
	if (m.sign != nil || m.verify != nil) && !singlePartSigs[typ] {
		f |= ck.CKF_MULTI_MESSAGE
	}
	return f
}

// Legacy reports whether the table holds the legacy algorithms.
func (t *Table) Legacy() bool { return t.legacy }

// Close stops the table's background work (the nonce fillers), if it
// owns it. The mechanisms keep working, more slowly.
func (t *Table) Close() {
	if t.owner {
		t.nonces.close()
	}
}

// Get returns the mechanism of type typ.
func (t *Table) Get(typ uint64) (*Mechanism, bool) {
	m, ok := t.byType[typ]
	return m, ok
}

// Types lists the mechanism types, sorted. The slice is the table's: do
// not change it.
func (t *Table) Types() []uint64 { return t.types }

// merge adds the parts' mechanisms to t, refusing a type listed twice.
func merge(t map[uint64]*Mechanism, parts ...map[uint64]*Mechanism) map[uint64]*Mechanism {
	for _, part := range parts {
		for typ, m := range part {
			if _, dup := t[typ]; dup {
				panic("mech: internal error: mechanism listed twice")
			}
			t[typ] = m
		}
	}
	return t
}
