package keystore

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// PIN records bound to the TPM (record version 3).
//
// A version 2 record stands behind Argon2id alone: whoever holds the
// database and the TPM (root on the machine, a stolen state directory with
// its swtpm) derives the token's PIN key through the TPM, which asks for
// no authorisation, and then tests PIN guesses offline, as fast as Argon2id
// allows. A version 3 record puts the TPM's dictionary-attack protection
// in that loop. For each record the daemon makes a secret s, sealed in a
// TPM object under the SRK whose authorisation value is derived from the
// PIN:
//
//	stretched = Argon2id(PIN, salt)
//	auth      = HKDF-SHA256(stretched, salt, "hsmemu/pin-tpm-auth/v1")      the object's authorisation
//	wrap key  = HKDF-SHA256(PIN key, stretched ‖ s, "hsmemu/pin-wrap/v2")   opens the data key
//
// s comes out of the TPM only to the right auth (TPM2_Unseal), and every
// wrong auth is counted by the TPM (the object is not noDA): past the
// TPM's maximum it refuses every PIN check, right or wrong, until the
// count drains with time. Argon2id stays in front (each guess costs it),
// and the daemon's own lockout acts first (a locked role is refused before
// anything is stretched or sent to the TPM).
//
// Each record also carries a recovery copy of s and auth, encrypted to the
// PIN recovery key of the master key current when it was written
// (X25519, HKDF-SHA256, AES-256-GCM): the object is fixedTPM, and
// recovering the domain into a new TPM (RebindPINs) seals s there again
// under the same auth. The TPM cannot open a copy: the recovery private
// key is derived from the master secret in software (tpmroot).

// PINSealer is a Root whose TPM can hold PIN-bound secrets:
// tpmroot.Root. With one attached, new PIN records are bound to the TPM.
//
// UnsealPINSecret's error for a wrong auth has a method PINAuthFailure();
// its error while the TPM is in dictionary-attack lockout has a method
// RetryAfter() time.Duration bounding how long it lasts.
type PINSealer interface {
	// SealPINSecret makes a random 32-byte secret, sealed in the TPM
	// behind auth (32 bytes), and returns the seal and the secret.
	SealPINSecret(auth []byte) (seal, secret []byte, err error)
	// ResealPINSecret seals a given secret behind auth in this TPM.
	ResealPINSecret(auth, secret []byte) ([]byte, error)
	// UnsealPINSecret returns the secret of a seal, to its auth.
	UnsealPINSecret(seal, auth []byte) ([]byte, error)
	// PINRecoveryKey is the master key's PIN recovery public key: nil
	// for a master key made before there were any.
	PINRecoveryKey() *ecdh.PublicKey
}

// ErrTPMLockout: the TPM is in dictionary-attack lockout and refuses every
// PIN check, right or wrong, for now. The PIN was not tried and no
// failure is counted. It comes as a *TPMLockoutError saying until when.
var ErrTPMLockout = errors.New("keystore: the TPM's dictionary-attack lockout is active")

// TPMLockoutError is ErrTPMLockout with when it ends.
type TPMLockoutError struct {
	// Until bounds the end of the lockout: the TPM forgives one failure
	// per recovery interval and does not say how far into the current
	// one it is. Zero when the TPM does not recover by itself.
	Until time.Time
	Err   error // the TPM's answer
}

func (e *TPMLockoutError) Error() string {
	if e.Until.IsZero() {
		return ErrTPMLockout.Error() + ": every PIN check is refused until it is reset"
	}
	return fmt.Sprintf("%v: every PIN check waits until %s at the latest", ErrTPMLockout, e.Until.Format(time.RFC3339))
}

func (e *TPMLockoutError) Is(target error) bool { return target == ErrTPMLockout }
func (e *TPMLockoutError) Unwrap() error        { return e.Err }

// errNoPINSealer: a bound record, and a root that cannot check it.
var errNoPINSealer = errors.New("keystore: the PIN record is bound to a TPM, and the attached root has none")

const (
	pinRecordBound  = 3
	pinSecretLen    = 32
	maxPINSealLen   = 8192
	pinAuthLabel    = "hsmemu/pin-tpm-auth/v1"
	pinWrapLabel    = "hsmemu/pin-wrap/v2"
	recoveryCopyLbl = "hsmemu/pin-recovery-copy/v1"
	recoveryAADLbl  = "hsmemu/pin-recovery/v1"
	// A recovery copy: master generation u32 | recipient public key (32) |
	// ephemeral public key (32) | nonce (12) | GCM(s ‖ auth) (64 + 16).
	recoveryCopyLen = 4 + 32 + 32 + gcmNonceLen + 2*pinSecretLen + gcmTagLen
)

// parseBoundTail splits a version 3 record's seal and recovery copy.
func parseBoundTail(b []byte) (seal, rc []byte, err error) {
	next := func() ([]byte, bool) {
		if len(b) < 2 {
			return nil, false
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b)-2 < n {
			return nil, false
		}
		f := b[2 : 2+n : 2+n]
		b = b[2+n:]
		return f, true
	}
	seal, ok1 := next()
	rc, ok2 := next()
	if !ok1 || !ok2 || len(b) != 0 || len(seal) == 0 || len(seal) > maxPINSealLen || (len(rc) != 0 && len(rc) != recoveryCopyLen) {
		return nil, nil, ErrTampered
	}
	return seal, rc, nil
}

// updateTokenHeld is updateToken with the token's rotation lock
// read-held, as a write to the token takes it (the Store's rot lock is
// the caller's), and released however the update ends: a panic left in
// it (in the TPM's library, answered by the administrator's handler,
// which serves on) would stop every later write to the token.
func (s *Store) updateTokenHeld(ctx context.Context, token UUID, f func(cur *TokenInfo) error) error {
	l := s.tokenRot(token)
	l.RLock()
	defer l.RUnlock()
	return s.updateToken(ctx, token, f)
}

// pinBinding is how the Store writes PIN records now.
type pinBinding struct {
	sealer    PINSealer       // nil: version 2 records
	recovery  *ecdh.PublicKey // nil: no recovery copy
	masterGen uint32          // the master key recovery is under
}

// binding returns how PIN records are written: bound to the TPM when the
// current root can, with a recovery copy when it has a recovery key. A
// domain escrowed to custodians whose master key predates recovery keys
// keeps writing version 2 records: a bound record without a recovery copy
// would not survive the domain's recovery into another TPM, which is what
// escrow promises. Its next master key rotation makes a recovery key.
func (s *Store) binding() pinBinding {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ps, ok := s.roots[s.masterGen].(PINSealer)
	if !ok {
		return pinBinding{}
	}
	b := pinBinding{sealer: ps, recovery: ps.PINRecoveryKey(), masterGen: s.masterGen}
	if b.recovery == nil && s.escrowed {
		return pinBinding{}
	}
	return b
}

// sealerFor returns a root able to open bound records, whether or not new
// ones are written bound.
func (s *Store) sealerFor() PINSealer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ps, _ := s.roots[s.masterGen].(PINSealer)
	return ps
}

// PINBinding says how the keystore's PIN checks are guarded.
type PINBinding struct {
	// Bound: new and rewritten PIN records are bound to the TPM, whose
	// dictionary-attack protection counts every wrong PIN.
	Bound bool
	// Recoverable: they carry recovery copies, so they survive the
	// domain's recovery into another TPM.
	Recoverable bool
	// Why, when not Bound.
	Why string
}

// PINBinding reports how PIN records are written now.
func (s *Store) PINBinding() PINBinding {
	b := s.binding()
	switch {
	case b.sealer != nil:
		return PINBinding{Bound: true, Recoverable: b.recovery != nil}
	case s.sealerFor() == nil:
		return PINBinding{Why: "the keystore's root cannot hold TPM objects"}
	}
	return PINBinding{Why: "the domain is escrowed and its master key predates PIN recovery keys: PIN records stay behind Argon2id alone, not counted by the TPM, until `hsmemu rotate master` makes a master key with one"}
}

// wrapPIN makes role's PIN record holding dataKey, bound to the TPM when
// the keystore's root can, and what the other nodes' bindings of it are
// made from (pindup.go): the caller gives the job to putPINDups in the
// transaction that writes the record, and wipes it after.
func (s *Store) wrapPIN(keys *tokenKeys, token UUID, role Role, dgen uint32, pin, dataKey []byte) ([]byte, *pinDupJob, error) {
	b := s.binding()
	if b.sealer == nil {
		rec, err := wrapDataKey(keys, token, role, dgen, pin, dataKey, s.opts.Argon2)
		return rec, nil, err
	}
	others, job := s.pinDupper(b.sealer, token, role)
	rec, err := wrapBound(b, keys, token, role, dgen, pin, dataKey, s.opts.Argon2, others)
	if err != nil {
		job.wipe()
		return nil, nil, err
	}
	return rec, job, nil
}

// pinAuth is the TPM object's authorisation value of a stretched PIN.
func pinAuth(stretched, salt []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, stretched, salt, pinAuthLabel, pinSecretLen)
}

// boundAEAD is a version 3 record's cipher.
func boundAEAD(pinKey, stretched, secret []byte) (cipher.AEAD, error) {
	ikm := make([]byte, 0, len(stretched)+len(secret))
	ikm = append(append(ikm, stretched...), secret...)
	defer wipe(ikm)
	k, err := hkdf.Key(sha256.New, ikm, pinKey, pinWrapLabel, 32)
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	return newGCM(k)
}

// wrapBound makes a version 3 record: a fresh TPM object per record.
// others, when not nil, is given the record's salt, authorisation and
// secret, to make the other nodes' bindings.
func wrapBound(b pinBinding, keys *tokenKeys, token UUID, role Role, dgen uint32, pin, dataKey []byte, p Argon2Params, others func(salt, auth, secret []byte) error) ([]byte, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	if len(pin) == 0 || len(pin) > maxPINLen {
		return nil, ErrPINLenRange
	}
	r := &pinRecord{version: pinRecordBound, gen: keys.generation, params: p, salt: make([]byte, pinSaltLen), nonce: make([]byte, gcmNonceLen)}
	if _, err := rand.Read(r.salt); err != nil {
		return nil, err
	}
	if _, err := rand.Read(r.nonce); err != nil {
		return nil, err
	}
	st := stretch(pin, r.salt, p)
	defer wipe(st)
	auth, err := pinAuth(st, r.salt)
	if err != nil {
		return nil, err
	}
	defer wipe(auth)
	seal, secret, err := b.sealer.SealPINSecret(auth)
	if err != nil {
		return nil, fmt.Errorf("keystore: binding a PIN to the TPM: %w", err)
	}
	defer wipe(secret)
	if len(seal) == 0 || len(seal) > maxPINSealLen || len(secret) != pinSecretLen {
		return nil, fmt.Errorf("keystore: the TPM gave a %d-byte seal and a %d-byte secret", len(seal), len(secret))
	}
	r.seal = seal
	if others != nil {
		if err := others(r.salt, auth, secret); err != nil {
			return nil, err
		}
	}
	if b.recovery != nil {
		if r.copy, err = sealRecoveryCopy(b.recovery, b.masterGen, token, role, dgen, r.salt, secret, auth); err != nil {
			return nil, err
		}
	}
	aead, err := boundAEAD(keys.pinKey, st, secret)
	if err != nil {
		return nil, err
	}
	r.marshal() // sets the header the associated data covers
	r.sealed = aead.Seal(nil, r.nonce, dataKey, r.aad(token, role, dgen))
	return r.marshal(), nil
}

// unwrapBound opens a version 3 record. A PIN that opened it before is
// found in the cache with the TPM's secret and skips both the stretch and
// the TPM; any other PIN (a wrong one always) is stretched and presented
// to the TPM, which counts it if wrong. The seal and the recovery copy are
// outside the associated data (recovery rewrites the seal), but a seal
// swapped for another object gives another secret, and the data key does
// not open.
func unwrapBound(ps PINSealer, pinKey []byte, r *pinRecord, token UUID, role Role, dgen uint32, pin []byte, cache *stretchCache) ([]byte, error) {
	open := func(stretched, secret []byte) ([]byte, error) {
		aead, err := boundAEAD(pinKey, stretched, secret)
		if err != nil {
			return nil, err
		}
		return aead.Open(nil, r.nonce, r.sealed, r.aad(token, role, dgen))
	}
	var id [32]byte
	if cache != nil {
		id = cache.id(r.salt, r.params, pin)
		if e, ok := cache.get(id); ok {
			var dk []byte
			err := ErrTampered
			if len(e) == 2*pinSecretLen {
				dk, err = open(e[:pinSecretLen], e[pinSecretLen:])
			}
			wipe(e)
			if err == nil {
				return dk, nil
			}
			cache.drop(id)
		}
	}
	if ps == nil {
		return nil, errNoPINSealer
	}
	st := stretch(pin, r.salt, r.params)
	defer wipe(st)
	auth, err := pinAuth(st, r.salt)
	if err != nil {
		return nil, err
	}
	defer wipe(auth)
	secret, err := ps.UnsealPINSecret(r.seal, auth)
	if err != nil {
		return nil, pinCheckErr(err)
	}
	defer wipe(secret)
	dk, err := open(st, secret)
	if err != nil {
		// The TPM took the auth, so the PIN is right for that object: the
		// record around it is not the one it was made for.
		return nil, ErrTampered
	}
	if cache != nil {
		e := append(append(make([]byte, 0, 2*pinSecretLen), st...), secret...)
		cache.put(id, e)
		wipe(e)
	}
	return dk, nil
}

// pinCheckErr maps the TPM's refusals to the keystore's errors.
func pinCheckErr(err error) error {
	var wrong interface{ PINAuthFailure() }
	if errors.As(err, &wrong) {
		return ErrPINIncorrect
	}
	var lock interface{ RetryAfter() time.Duration }
	if errors.As(err, &lock) {
		le := &TPMLockoutError{Err: err}
		if d := lock.RetryAfter(); d > 0 {
			le.Until = time.Now().Add(d).Truncate(time.Second)
		}
		return le
	}
	return fmt.Errorf("keystore: the TPM's PIN check: %w", err)
}

// pinRecordStale reports whether a record that just opened is to be
// written again for the binding b: a version 1 or 2 record when PINs can
// be bound (migration at the next login), a bound one whose recovery copy
// is missing or under an earlier master key's recovery key.
func pinRecordStale(rec []byte, b pinBinding) bool {
	if b.sealer == nil {
		return false
	}
	r, err := parsePINRecord(rec)
	if err != nil {
		return false
	}
	if r.version != pinRecordBound {
		return true
	}
	if b.recovery == nil {
		return false
	}
	return len(r.copy) == 0 || binary.BigEndian.Uint32(r.copy) != b.masterGen || !bytes.Equal(r.copy[4:36], b.recovery.Bytes())
}

// recoveryAAD binds a recovery copy to its record.
func recoveryAAD(token UUID, role Role, dgen, masterGen uint32, salt []byte) []byte {
	aad := append([]byte(recoveryAADLbl), token[:]...)
	aad = append(aad, byte(role))
	aad = binary.BigEndian.AppendUint32(aad, dgen)
	aad = binary.BigEndian.AppendUint32(aad, masterGen)
	return append(aad, salt...)
}

func recoveryAEAD(shared, ephemeral, recipient []byte) (cipher.AEAD, error) {
	salt := append(bytes.Clone(ephemeral), recipient...)
	k, err := hkdf.Key(sha256.New, shared, salt, recoveryCopyLbl, 32)
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	return newGCM(k)
}

// sealRecoveryCopy encrypts a record's secret and auth to the recovery key.
func sealRecoveryCopy(to *ecdh.PublicKey, masterGen uint32, token UUID, role Role, dgen uint32, salt, secret, auth []byte) ([]byte, error) {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	shared, err := eph.ECDH(to)
	if err != nil {
		return nil, fmt.Errorf("keystore: the PIN recovery key: %w", err)
	}
	defer wipe(shared)
	a, err := recoveryAEAD(shared, eph.PublicKey().Bytes(), to.Bytes())
	if err != nil {
		return nil, err
	}
	out := binary.BigEndian.AppendUint32(make([]byte, 0, recoveryCopyLen), masterGen)
	out = append(out, to.Bytes()...)
	out = append(out, eph.PublicKey().Bytes()...)
	nonce := make([]byte, gcmNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	plain := append(append(make([]byte, 0, 2*pinSecretLen), secret...), auth...)
	defer wipe(plain)
	return a.Seal(out, nonce, plain, recoveryAAD(token, role, dgen, masterGen, salt)), nil
}

// openRecoveryCopy opens a recovery copy with the recovery private key.
func openRecoveryCopy(priv *ecdh.PrivateKey, rc []byte, token UUID, role Role, dgen uint32, salt []byte) (secret, auth []byte, err error) {
	if len(rc) != recoveryCopyLen || !bytes.Equal(rc[4:36], priv.PublicKey().Bytes()) {
		return nil, nil, ErrTampered
	}
	eph, err := ecdh.X25519().NewPublicKey(rc[36:68])
	if err != nil {
		return nil, nil, ErrTampered
	}
	shared, err := priv.ECDH(eph)
	if err != nil {
		return nil, nil, ErrTampered
	}
	defer wipe(shared)
	a, err := recoveryAEAD(shared, rc[36:68], rc[4:36])
	if err != nil {
		return nil, nil, err
	}
	nonce := rc[68 : 68+gcmNonceLen]
	plain, err := a.Open(nil, nonce, rc[68+gcmNonceLen:], recoveryAAD(token, role, dgen, binary.BigEndian.Uint32(rc), salt))
	if err != nil || len(plain) != 2*pinSecretLen {
		return nil, nil, ErrTampered
	}
	return plain[:pinSecretLen], plain[pinSecretLen:], nil
}

// UnboundPIN is a PIN record RebindPINs could not bring into this TPM.
type UnboundPIN struct {
	Token UUID
	Label string
	Role  Role
	// MasterGeneration is the master key whose recovery key its copy is
	// under (shares of that master key would rebind it); 0 when the
	// record has no recovery copy, or the token row is unusable.
	MasterGeneration uint32
	Why              string
}

// RebindPINs brings every bound PIN record into the attached root's TPM,
// after the domain was recovered there from custodians' shares: it opens
// each record's recovery copy with the recovery private key of the master
// key it was made under (keys, derived from that master key's shares),
// seals the same secret behind the same authorisation in this TPM, and
// rewrites the record and its token's MAC. The PIN, its salt and the data
// key's wrapping are unchanged: the same PIN logs in. Records it cannot
// rebind (a copy under a master key whose shares were not given, no copy,
// a tampered token) are listed; their role cannot log in on this TPM until
// its PIN is set anew (the SO sets the user's). used[i] counts the
// records keys[i] opened.
func (s *Store) RebindPINs(ctx context.Context, keys []*ecdh.PrivateKey) (rebound int, left []UnboundPIN, used []int, err error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
	ps := s.sealerFor()
	if ps == nil {
		return 0, nil, nil, errNoPINSealer
	}
	rk := newRecoveryKeys(keys)
	used = make([]int, len(keys))
	tokens, err := s.Tokens(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	for _, ti := range tokens {
		if ti.Tampered != nil {
			left = append(left, UnboundPIN{Token: ti.UUID, Label: ti.Label, Role: RoleSO, Why: ti.Tampered.Error()})
			continue
		}
		var miss []UnboundPIN
		var opened []int
		n := 0
		// The token's lock, as a write to it takes (tokenrot.go).
		err := s.updateTokenHeld(ctx, ti.UUID, func(cur *TokenInfo) error {
			miss, opened, n = nil, nil, 0
			for _, f := range []struct {
				role Role
				rec  *[]byte
			}{{RoleSO, &cur.soPIN}, {RoleUser, &cur.userPIN}} {
				if *f.rec == nil {
					continue
				}
				r, err := parsePINRecord(*f.rec)
				if err != nil {
					return err
				}
				if r.version != pinRecordBound {
					continue
				}
				seal, ki, why, err := rk.reseal(ps, r, cur.UUID, cur.Label, f.role, cur.DataGeneration)
				if err != nil {
					return err
				}
				if why != nil {
					miss = append(miss, *why)
					continue
				}
				r.seal = seal
				*f.rec = r.marshal()
				opened = append(opened, ki)
				n++
			}
			if n == 0 {
				return errNothingToRebind
			}
			return nil
		})
		if errors.Is(err, errNothingToRebind) {
			err = nil
		}
		if err != nil {
			return rebound, left, used, err
		}
		rebound += n
		left = append(left, miss...)
		for _, i := range opened {
			used[i]++
		}
	}
	return rebound, left, used, nil
}

var errNothingToRebind = errors.New("nothing to rebind")

// recoveryKeys are the PIN recovery private keys of the master keys whose
// shares were given, found by their public keys (a copy names its
// recipient).
type recoveryKeys struct {
	keys  []*ecdh.PrivateKey
	byPub map[string]int
}

func newRecoveryKeys(keys []*ecdh.PrivateKey) recoveryKeys {
	byPub := map[string]int{}
	for i, k := range keys {
		byPub[string(k.PublicKey().Bytes())] = i
	}
	return recoveryKeys{keys: keys, byPub: byPub}
}

// reseal seals the secret of bound record r, opened from its recovery
// copy, behind the same authorisation in ps's TPM, for domain recovery
// (RebindPINs) and a node's join (BindNodePINs). A record it cannot bring
// over comes back as why (u.Why set); ki is the key that opened it.
func (rk recoveryKeys) reseal(ps PINSealer, r *pinRecord, token UUID, label string, role Role, dataGen uint32) (seal []byte, ki int, why *UnboundPIN, err error) {
	u := &UnboundPIN{Token: token, Label: label, Role: role}
	if len(r.copy) == 0 {
		u.Why = "no recovery copy (written while the domain had no recovery key)"
		return nil, 0, u, nil
	}
	u.MasterGeneration = binary.BigEndian.Uint32(r.copy)
	ki, ok := rk.byPub[string(r.copy[4:36])]
	if !ok {
		u.Why = fmt.Sprintf("its recovery copy is under master key generation %d, whose shares were not given", u.MasterGeneration)
		return nil, 0, u, nil
	}
	secret, auth, err := openRecoveryCopy(rk.keys[ki], r.copy, token, role, dataGen, r.salt)
	if err != nil {
		u.Why = "its recovery copy does not open"
		return nil, 0, u, nil
	}
	seal, err = ps.ResealPINSecret(auth, secret)
	wipe(secret)
	wipe(auth)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("keystore: sealing token %q's %s PIN in this TPM: %w", label, role, err)
	}
	return seal, ki, nil, nil
}

// PINRecords counts the PIN records of untampered tokens: bound to the
// TPM, and not (version 1 or 2, each rewritten bound at its role's next
// login when PINBinding says records are bound).
func (s *Store) PINRecords(ctx context.Context) (bound, unbound int, err error) {
	list, err := s.Tokens(ctx)
	if err != nil {
		return 0, 0, err
	}
	for _, ti := range list {
		if ti.Tampered != nil {
			continue
		}
		for _, rec := range [][]byte{ti.soPIN, ti.userPIN} {
			if rec == nil {
				continue
			}
			if rec[0] == pinRecordBound {
				bound++
			} else {
				unbound++
			}
		}
	}
	return bound, unbound, nil
}
