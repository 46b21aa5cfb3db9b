package keystore

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// Role is who logs in: the security officer or the normal user. The values
// are PKCS#11's CKU_SO and CKU_USER.
type Role uint8

const (
	RoleSO   Role = 0
	RoleUser Role = 1
)

func (r Role) String() string {
	switch r {
	case RoleSO:
		return "SO"
	case RoleUser:
		return "user"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Argon2Params are the Argon2id costs of one token's PIN records. They are
// stored with each record, so a later change of defaults never locks anyone
// out.
type Argon2Params struct {
	Time      uint32 // passes
	MemoryKiB uint32
	Threads   uint8
}

// DefaultArgon2 is RFC 9106's second recommended setting, with two lanes
// for the two-core machines the daemon is sized for.
var DefaultArgon2 = Argon2Params{Time: 3, MemoryKiB: 64 * 1024, Threads: 2}

// Bounds on stored parameters. The token MAC covers the PIN records, so an
// edited record is refused before Argon2 runs; these bounds are the second
// line, should a record ever be read without that check.
const (
	maxArgonTime   = 16
	maxArgonMemory = 1 << 20 // 1 GiB in KiB
	maxArgonLanes  = 16
	maxPINLen      = 256
)

func (p Argon2Params) validate() error {
	if p.Time == 0 || p.Time > maxArgonTime || p.Threads == 0 || p.Threads > maxArgonLanes ||
		p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > maxArgonMemory {
		return fmt.Errorf("keystore: Argon2id parameters out of range (time %d, memory %d KiB, threads %d)", p.Time, p.MemoryKiB, p.Threads)
	}
	return nil
}

// ErrPINIncorrect: the PIN does not open the token data key.
var ErrPINIncorrect = errors.New("keystore: PIN incorrect")

// ErrPINLenRange: a PIN shorter than one byte or longer than the maximum.
var ErrPINLenRange = fmt.Errorf("keystore: PIN length out of range 1..%d", maxPINLen)

// ErrPINNotInitialized: the token has no user PIN yet (C_InitPIN not called).
var ErrPINNotInitialized = errors.New("keystore: user PIN not initialized")

// A PIN record wraps the token data key under a key derived from one PIN:
//
//	version u8 (2) | KEK generation u32 | time u32 | memory u32 | threads u8 | salt(16) | nonce(12) | sealed data key(32+16)
//
// The wrapping key is HKDF(PIN key of that KEK generation, Argon2id(PIN,
// salt)); the associated data binds the record to its token, role, data key
// generation, KEK generation and Argon2id parameters, so a record cannot be
// moved or weakened. A record of version 1 (written before master key
// rotation existed) has no KEK generation field: it is under generation 1.
//
// A record of version 3 is bound to the TPM (pinbind.go): the same fields,
// then the seal of its TPM object and its recovery copy,
//
//	... v2 fields ... | seal length u16 | seal | copy length u16 | copy
//
// and its wrapping key mixes in the secret that only the TPM gives out, to
// the right PIN.
const (
	pinRecordVersion = 2
	pinSaltLen       = 16
	pinRecordLen     = 1 + 4 + 4 + 4 + 1 + pinSaltLen + gcmNonceLen + 32 + gcmTagLen
	pinRecordLenV1   = pinRecordLen - 4
)

type pinRecord struct {
	version byte   // 1, 2 or 3 (pinRecordBound); marshal writes 2 for 0
	gen     uint32 // the KEK generation whose PIN key wraps it
	params  Argon2Params
	salt    []byte
	nonce   []byte
	sealed  []byte
	header  []byte // the bytes before the salt, as stored
	// Version 3 only: the TPM object's seal, and the recovery copy of its
	// secret and authorisation (empty without a recovery key).
	seal, copy []byte
}

func (r *pinRecord) marshal() []byte {
	v := r.version
	if v == 0 {
		v = pinRecordVersion
	}
	b := make([]byte, 0, pinRecordLen+4+len(r.seal)+len(r.copy))
	b = append(b, v)
	if v != 1 { // version 1 has no generation field
		b = binary.BigEndian.AppendUint32(b, r.gen)
	}
	b = binary.BigEndian.AppendUint32(b, r.params.Time)
	b = binary.BigEndian.AppendUint32(b, r.params.MemoryKiB)
	b = append(b, r.params.Threads)
	r.header = b[:len(b):len(b)]
	b = append(b, r.salt...)
	b = append(b, r.nonce...)
	b = append(b, r.sealed...)
	if v == pinRecordBound {
		b = binary.BigEndian.AppendUint16(b, uint16(len(r.seal)))
		b = append(b, r.seal...)
		b = binary.BigEndian.AppendUint16(b, uint16(len(r.copy)))
		b = append(b, r.copy...)
	}
	return b
}

func parsePINRecord(b []byte) (*pinRecord, error) {
	r := &pinRecord{}
	switch {
	case len(b) == pinRecordLen && b[0] == pinRecordVersion:
		r.version, r.gen, r.header, b = 2, binary.BigEndian.Uint32(b[1:]), b[:14], b[5:]
	case len(b) == pinRecordLenV1 && b[0] == 1:
		r.version, r.gen, r.header, b = 1, 1, b[:10], b[1:]
	case len(b) > pinRecordLen && b[0] == pinRecordBound:
		var err error
		if r.seal, r.copy, err = parseBoundTail(b[pinRecordLen:]); err != nil {
			return nil, ErrTampered
		}
		r.version, r.gen, r.header, b = pinRecordBound, binary.BigEndian.Uint32(b[1:]), b[:14], b[5:pinRecordLen]
	default:
		return nil, ErrTampered
	}
	r.params = Argon2Params{Time: binary.BigEndian.Uint32(b), MemoryKiB: binary.BigEndian.Uint32(b[4:]), Threads: b[8]}
	if r.params.validate() != nil {
		return nil, ErrTampered
	}
	b = b[9:]
	r.salt, b = b[:pinSaltLen], b[pinSaltLen:]
	r.nonce, r.sealed = b[:gcmNonceLen], b[gcmNonceLen:]
	return r, nil
}

// recordGen returns the KEK generation a stored PIN record is under.
func recordGen(record []byte) (uint32, bool) {
	r, err := parsePINRecord(record)
	if err != nil {
		return 0, false
	}
	return r.gen, true
}

func (r *pinRecord) aad(token UUID, role Role, dgen uint32) []byte {
	aad := []byte("hsmemu/pin/v1")
	aad = append(aad, token[:]...)
	aad = append(aad, byte(role))
	aad = binary.BigEndian.AppendUint32(aad, dgen)
	return append(aad, r.header...)
}

// pinAEAD is the cipher of a PIN record: AES-GCM under HKDF(pinKey,
// Argon2id(pin, salt)). The derived key is wiped once the cipher holds it.
func pinAEAD(pinKey, pin, salt []byte, p Argon2Params) (cipher.AEAD, error) {
	if len(pin) == 0 || len(pin) > maxPINLen {
		return nil, ErrPINLenRange
	}
	stretched := stretch(pin, salt, p)
	defer wipe(stretched)
	return stretchedAEAD(pinKey, stretched)
}

// stretch is Argon2id of a PIN; a variable so that tests can count it.
var stretch = func(pin, salt []byte, p Argon2Params) []byte {
	return argon2.IDKey(pin, salt, p.Time, p.MemoryKiB, p.Threads, 32)
}

// stretchedAEAD is pinAEAD's cipher from the stretched PIN.
func stretchedAEAD(pinKey, stretched []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, stretched, pinKey, "hsmemu/pin-wrap/v1", 32)
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	return newGCM(k)
}

// wrapDataKey makes a PIN record of version 2, holding dataKey for role:
// one that only Argon2id stands in front of. The Store writes them only
// when its root cannot bind PINs to the TPM (Store.wrapPIN).
func wrapDataKey(keys *tokenKeys, token UUID, role Role, dgen uint32, pin, dataKey []byte, p Argon2Params) ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	r := &pinRecord{gen: keys.generation, params: p, salt: make([]byte, pinSaltLen), nonce: make([]byte, gcmNonceLen)}
	if _, err := rand.Read(r.salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(r.nonce); err != nil {
		return nil, err
	}
	aead, err := pinAEAD(keys.pinKey, pin, r.salt, p)
	if err != nil {
		return nil, err
	}
	r.marshal() // sets the header the associated data covers
	r.sealed = aead.Seal(nil, r.nonce, dataKey, r.aad(token, role, dgen))
	return r.marshal(), nil
}

// unwrapDataKey opens a PIN record. A wrong PIN and an edited record look the
// same to GCM; both are reported as ErrPINIncorrect, since that is what the
// user can act on and the failure counter must count both.
//
// A PIN that opened this record before is found in cache (when not nil)
// and its stretch skipped; the record must still open under it.
//
// A record bound to the TPM (version 3) is opened through ps, the TPM
// counting every wrong PIN (unwrapBound).
func unwrapDataKey(keys *tokenKeys, token UUID, role Role, dgen uint32, pin, record []byte, cache *stretchCache, ps PINSealer) ([]byte, error) {
	r, err := parsePINRecord(record)
	if err != nil {
		return nil, err
	}
	if len(pin) == 0 || len(pin) > maxPINLen {
		return nil, ErrPINLenRange
	}
	pinKey, ok := keys.pinKeyFor(r.gen)
	if !ok {
		return nil, ErrTampered
	}
	if r.version == pinRecordBound {
		return unwrapBound(ps, pinKey, r, token, role, dgen, pin, cache)
	}
	open := func(stretched []byte) ([]byte, error) {
		aead, err := stretchedAEAD(pinKey, stretched)
		if err != nil {
			return nil, err
		}
		return aead.Open(nil, r.nonce, r.sealed, r.aad(token, role, dgen))
	}
	var id [32]byte
	if cache != nil {
		id = cache.id(r.salt, r.params, pin)
		if st, ok := cache.get(id); ok {
			dk, err := open(st)
			wipe(st)
			if err == nil {
				return dk, nil
			}
			cache.drop(id) // the record changed under it: check in full
		}
	}
	st := stretch(pin, r.salt, r.params)
	defer wipe(st)
	dk, err := open(st)
	if err != nil {
		return nil, ErrPINIncorrect
	}
	if cache != nil {
		cache.put(id, st)
	}
	return dk, nil
}
