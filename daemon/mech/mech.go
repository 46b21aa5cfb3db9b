package daemon

import (
	"context"
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Mechanisms. Each one is an entry of a table: what it is good for
// (C_GetMechanismInfo), which key types it takes, and constructors for the
// operations it implements. The engine does everything around them once:
// sessions and their operation slots, key lookup and usage checks
// (CKA_SIGN, CKA_ALLOWED_MECHANISMS, ...), the size-query convention, and
// ending an operation when the specification says it ends. A mechanism only
// computes.

// cipherOp is an encryption or decryption in progress.
type cipherOp interface {
	// Update takes one part and returns what output it completes.
	Update(in []byte) ([]byte, error)
	// Final returns the last output.
	Final() ([]byte, error)
}

// oneShot is implemented by cipher operations whose single-part form is
// not Update then Final (GCM, RSA): C_Encrypt and C_Decrypt use it when
// present.
type oneShot interface {
	One(in []byte) ([]byte, error)
}

// signOp is a signature, MAC or verification in progress.
type signOp interface {
	Update(in []byte) error
	// Sign returns the signature (or MAC) of everything given.
	Sign() ([]byte, error)
	// Verify checks sig against everything given: nil, or an error
	// carrying CKR_SIGNATURE_INVALID or CKR_SIGNATURE_LEN_RANGE.
	Verify(sig []byte) error
}

// singlePartOnly is implemented by sign operations that take their input
// in one call only, as the specification lists them (raw RSA, ECDSA
// without a hash, EdDSA): C_SignUpdate and C_VerifyUpdate on them are
// CKR_FUNCTION_NOT_SUPPORTED, and end the operation.
type singlePartOnly interface {
	singlePart()
}

// digestOp is a digest in progress.
type digestOp interface {
	Update(in []byte)
	Sum() []byte
}

// mechanism is one entry of the table. A nil constructor means the
// mechanism does not do that.
type mechanism struct {
	info     wire.MechanismInfo
	keyTypes []uint64 // key types Init accepts; nil: no key (digests)

	encrypt func(k *key, m *wire.Mechanism) (cipherOp, error)
	decrypt func(k *key, m *wire.Mechanism) (cipherOp, error)
	sign    func(k *key, m *wire.Mechanism) (signOp, error)
	verify  func(k *key, m *wire.Mechanism) (signOp, error)
	digest  func(m *wire.Mechanism) (digestOp, error)

	// genKeyType is the key type generate and generatePair make.
	genKeyType uint64
	// generate makes a secret key's material for the validated template
	// (CKA_VALUE_LEN and the like are in it) and returns the attributes to
	// add, CKA_VALUE among them.
	generate func(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error)
	// generatePair returns the attributes to add to the public and the
	// private key.
	generatePair func(m *wire.Mechanism, pub, priv map[uint64][]byte) (pubAdd, privAdd map[uint64][]byte, err error)
	// wrap encrypts a key's encoding (a secret key's value, a private
	// key's PKCS#8) under the wrapping key; unwrap decrypts it.
	wrap   func(wrapping *key, m *wire.Mechanism, encoded []byte) ([]byte, error)
	unwrap func(unwrapping *key, m *wire.Mechanism, wrapped []byte) ([]byte, error)
	// derive returns the new key's value, of the length asked (0: the
	// mechanism's natural length).
	derive func(base *key, m *wire.Mechanism, length int) ([]byte, error)
}

// mechanisms is the table, by mechanism type. Each family adds its own
// entries in its file (mech_*.go) through a table function, so the table
// is built once, in one place, with no global state changed at run time.
var mechanisms = buildMechanisms()

func buildMechanisms() map[uint64]*mechanism {
	t := map[uint64]*mechanism{}
	for _, family := range []func() map[uint64]*mechanism{
		digestMechanisms,
		symmetricMechanisms,
		asymmetricMechanisms,
	} {
		for typ, m := range family() {
			if _, dup := t[typ]; dup {
				panic("daemon: internal error: mechanism listed twice")
			}
			t[typ] = m
		}
	}
	return t
}

// MechanismList returns the mechanisms a slot's token implements, sorted.
func (e *Engine) MechanismList(ctx context.Context, slot uint64) ([]uint64, error) {
	if slot != freeSlot {
		if _, err := e.token(ctx, slot); err != nil {
			return nil, err
		}
	}
	list := make([]uint64, 0, len(mechanisms))
	for t := range mechanisms {
		list = append(list, t)
	}
	slices.Sort(list)
	return list, nil
}

// MechanismInfo describes one mechanism.
func (e *Engine) MechanismInfo(ctx context.Context, slot, typ uint64) (*wire.MechanismInfo, error) {
	if slot != freeSlot {
		if _, err := e.token(ctx, slot); err != nil {
			return nil, err
		}
	}
	m, ok := mechanisms[typ]
	if !ok {
		return nil, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	info := m.info
	return &info, nil
}
