package tpmroot

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// PIN-bound secrets. Each PIN record of the keystore holds a small sealed
// data object created under the SRK: its sensitive data is a random 32-byte
// secret, and its authorisation value is derived from the PIN (the caller
// gives it, already stretched). The object is not noDA, so every wrong
// authorisation presented for it, by the daemon or by anyone holding the
// database and this TPM, goes through the TPM's dictionary-attack
// protection: the lockout counter, its recovery time, and the lockout that
// refuses every DA-protected authorisation once the counter reaches the
// TPM's maximum. The PIN check's secret cannot be had any other way: the
// object is fixedTPM | fixedParent (no duplication), has no policy and no
// admin policy, and TPM2_Unseal is the only command that returns its data.
//
// The objects are transient: loaded for one TPM2_Unseal and flushed, never
// made persistent, so a replaced record needs no cleanup in the TPM.

// ErrPINAuthFail is returned (wrapped) by UnsealPINSecret when the TPM
// refuses the authorisation: the PIN was wrong. The TPM has counted the
// failure. Its error value has the method PINAuthFailure.
var ErrPINAuthFail = errors.New("tpmroot: the TPM refuses the PIN's authorisation")

// ErrDALockout is returned (wrapped, as a *DALockoutError) by
// UnsealPINSecret while the TPM is in dictionary-attack lockout: it refuses
// every DA-protected authorisation, right or wrong, until enough failures
// have drained with time (or someone with the lockout authorisation resets
// it).
var ErrDALockout = errors.New("tpmroot: the TPM's dictionary-attack lockout is active")

// ErrLockoutAuthSet is ConfigureDA's error for a TPM whose lockout
// authorisation is already set: its dictionary-attack parameters belong to
// whoever set it. Nothing was sent that could count as a failure.
var ErrLockoutAuthSet = errors.New("tpmroot: the TPM's lockout authorisation is set; its dictionary-attack parameters are not ours to change")

// pinAuthError is ErrPINAuthFail with the TPM's code.
type pinAuthError struct{ rc error }

func (e *pinAuthError) Error() string        { return fmt.Sprintf("%v (%v)", ErrPINAuthFail, e.rc) }
func (e *pinAuthError) Is(target error) bool { return target == ErrPINAuthFail }
func (e *pinAuthError) Unwrap() error        { return e.rc }

// PINAuthFailure marks the error as a wrong PIN for callers that do not
// import this package (keystore).
func (e *pinAuthError) PINAuthFailure() {}

// DALockoutError is ErrDALockout with the TPM's state when it refused.
type DALockoutError struct {
	Info DAInfo // as read right after the refusal; zero if it could not be read
}

func (e *DALockoutError) Error() string {
	if e.Info.MaxTries == 0 && e.Info.Recovery == 0 {
		return ErrDALockout.Error()
	}
	return fmt.Sprintf("%v: %d failures counted, the TPM locks at %d; every PIN check waits until one is forgiven, at most %s from now (one every %s)",
		ErrDALockout, e.Info.Counter, e.Info.MaxTries, e.RetryAfter().Round(time.Second), e.Info.Recovery)
}

func (e *DALockoutError) Is(target error) bool { return target == ErrDALockout }

// RetryAfter bounds how long the lockout lasts: until the counter has
// drained below the maximum. The TPM does not say how far into the current
// interval it is, so this is an upper bound, and with no recovery time
// (DA protection off, or a TPM that never forgives) it is zero.
func (e *DALockoutError) RetryAfter() time.Duration { return e.Info.LockoutLeft() }

// DAInfo is the TPM's dictionary-attack state.
type DAInfo struct {
	Counter  uint32 // TPM_PT_LOCKOUT_COUNTER: failures counted now
	MaxTries uint32 // TPM_PT_MAX_AUTH_FAIL: the counter value that locks
	// Recovery is TPM_PT_LOCKOUT_INTERVAL: one failure is forgiven per
	// interval of the TPM running. Zero turns DA protection off.
	Recovery time.Duration
	// LockoutRecovery is TPM_PT_LOCKOUT_RECOVERY: how long the lockout
	// hierarchy stays locked after a wrong lockout authorisation.
	LockoutRecovery time.Duration
	// LockoutAuthSet (TPMA_PERMANENT) says the lockout hierarchy has an
	// authorisation value. Without one, anyone who can send commands to
	// the TPM resets the counter with TPM2_DictionaryAttackLockReset.
	LockoutAuthSet bool
	// InLockout (TPMA_PERMANENT): DA-protected authorisations are refused.
	InLockout bool
}

// LockoutLeft bounds how long the TPM stays in lockout: until the counter
// has drained below the maximum, one failure per Recovery. Zero when it is
// not in lockout, or when it never recovers by itself (Recovery zero).
func (d DAInfo) LockoutLeft() time.Duration {
	switch {
	case d.Recovery == 0:
		return 0
	case d.Counter >= d.MaxTries:
		return time.Duration(d.Counter-d.MaxTries+1) * d.Recovery
	case d.InLockout:
		return d.Recovery
	}
	return 0
}

// The TPMA_PERMANENT bits DAInfo reads (TPM 2.0 Part 2, 8.6).
const (
	permanentLockoutAuthSet = 1 << 2
	permanentInLockout      = 1 << 9
)

// DAInfo reads the TPM's dictionary-attack parameters and state.
func (t *TPM) DAInfo() (DAInfo, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return DAInfo{}, ErrClosed
	}
	return t.daInfoLocked()
}

func (t *TPM) daInfoLocked() (DAInfo, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTPermanent),
		PropertyCount: uint32(tpm2.TPMPTLockoutRecovery-tpm2.TPMPTPermanent) + 1,
	}.Execute(t.tpm)
	if err != nil {
		return DAInfo{}, fmt.Errorf("tpmroot: reading the TPM's dictionary-attack state: %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return DAInfo{}, fmt.Errorf("tpmroot: reading the TPM's dictionary-attack state: %w", err)
	}
	val := make(map[tpm2.TPMPT]uint32)
	for _, p := range props.TPMProperty {
		val[p.Property] = p.Value
	}
	for _, p := range []tpm2.TPMPT{tpm2.TPMPTPermanent, tpm2.TPMPTLockoutCounter, tpm2.TPMPTMaxAuthFail, tpm2.TPMPTLockoutInterval, tpm2.TPMPTLockoutRecovery} {
		if _, ok := val[p]; !ok {
			return DAInfo{}, fmt.Errorf("tpmroot: the TPM did not report property 0x%x", uint32(p))
		}
	}
	perm := val[tpm2.TPMPTPermanent]
	return DAInfo{
		Counter:         val[tpm2.TPMPTLockoutCounter],
		MaxTries:        val[tpm2.TPMPTMaxAuthFail],
		Recovery:        time.Duration(val[tpm2.TPMPTLockoutInterval]) * time.Second,
		LockoutRecovery: time.Duration(val[tpm2.TPMPTLockoutRecovery]) * time.Second,
		LockoutAuthSet:  perm&permanentLockoutAuthSet != 0,
		InLockout:       perm&permanentInLockout != 0,
	}, nil
}

// DAParams are the dictionary-attack parameters ConfigureDA sets.
type DAParams struct {
	MaxTries        uint32
	Recovery        time.Duration // whole seconds
	LockoutRecovery time.Duration // whole seconds
}

// ManagedDA are the parameters hsmemu gives the swtpm it manages (see
// docs/keychain.md, "PINs", for the arithmetic): 64 failures before the
// TPM locks, one forgiven a minute, and an hour's lockout of the lockout
// hierarchy after a wrong lockout authorisation (which nobody knows).
//
// The daemon's own lockout acts first: a role is locked after
// MaxPINFailures (default 10) wrong PINs in a row, so one token's users
// cannot spend more than 20 of the 64 before the SO steps in, and honest
// mistakes lock the TPM only if more than 64 of them arrive faster than one
// a minute, across every token.
var ManagedDA = DAParams{MaxTries: 64, Recovery: 60 * time.Second, LockoutRecovery: time.Hour}

// ConfigureDA sets the TPM's dictionary-attack parameters with the empty
// lockout authorisation, then sets the lockout authorisation to 32 random
// bytes that are wiped at once, so that nobody, root included, can reset the
// counter (TPM2_DictionaryAttackLockReset) or change the parameters again:
// the counter drains with time only. It is for a TPM that is hsmemu's
// alone (a managed swtpm); a device TPM's parameters are the machine's.
// A TPM whose lockout authorisation is already set gives ErrLockoutAuthSet
// before anything is sent that could count as a failure.
//
// The new authorisation crosses the bus encrypted, in a session salted with
// the SRK; the parameters are not secret and go with the empty password.
func (t *TPM) ConfigureDA(p DAParams) error {
	if p.Recovery < 0 || p.LockoutRecovery < 0 || p.Recovery/time.Second > 1<<32-1 || p.LockoutRecovery/time.Second > 1<<32-1 {
		return fmt.Errorf("tpmroot: dictionary-attack times out of range: %s, %s", p.Recovery, p.LockoutRecovery)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	da, err := t.daInfoLocked()
	if err != nil {
		return err
	}
	if da.LockoutAuthSet {
		return ErrLockoutAuthSet
	}
	params := binary.BigEndian.AppendUint32(nil, p.MaxTries)
	params = binary.BigEndian.AppendUint32(params, uint32(p.Recovery/time.Second))
	params = binary.BigEndian.AppendUint32(params, uint32(p.LockoutRecovery/time.Second))
	if err := passwordCommand(t, tpm2.TPMCCDictionaryAttackParameters, tpm2.TPMRHLockout, params); err != nil {
		return fmt.Errorf("tpmroot: TPM2_DictionaryAttackParameters: %w", err)
	}
	auth := make([]byte, 32)
	defer clear(auth)
	if _, err := rand.Read(auth); err != nil {
		return err
	}
	// The authorisation is the empty password (nothing secret); the
	// second, unbound session only encrypts the new value on its way in.
	enc := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(t.srk.handle, t.srk.public))
	_, err = tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: auth},
	}.Execute(t.tpm, enc)
	if err != nil {
		return fmt.Errorf("tpmroot: setting the lockout authorisation (TPM2_HierarchyChangeAuth): %w", err)
	}
	return nil
}

// passwordCommand sends a command go-tpm has no type for, with one handle
// authorised by the empty password, and returns the TPM's response code as
// a tpm2.TPMRC error. t.mu is held.
func passwordCommand(t *TPM, cc tpm2.TPMCC, h tpm2.TPMHandle, params []byte) error {
	// TPMS_AUTH_COMMAND for TPM_RS_PW: handle, empty nonce, no
	// attributes, empty password.
	auth := binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMRSPW))
	auth = append(auth, 0, 0, 0, 0, 0)
	cmd := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(10+4+4+len(auth)+len(params)))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(cc))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(h))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(len(auth)))
	cmd = append(cmd, auth...)
	cmd = append(cmd, params...)
	rsp, err := t.tpm.Send(cmd)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("a %d-byte response", len(rsp))
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:])); rc != tpm2.TPMRCSuccess {
		return rc
	}
	return nil
}

// pinSecretSize is the size of a PIN-bound secret and of its authorisation
// (a TPM2B_AUTH holds at most the name algorithm's digest: 32 bytes).
const pinSecretSize = 32

// pinSecretTemplate is the public area of a PIN-bound secret: a keyedhash
// sealed data object (no scheme, neither sign nor decrypt) that only its
// authorisation value opens.
//
//   - fixedTPM | fixedParent: never duplicated, so the only way to its data
//     is TPM2_Unseal in this TPM;
//   - userWithAuth, no policy, adminWithPolicy clear: the authorisation
//     value is the only way in, for every role;
//   - noDA clear: every wrong authorisation is counted.
func pinSecretTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// checkPINSecretPublic checks a stored public area against the template,
// so that an edited database cannot hand the TPM an object that does not
// count failures (noDA) or opens another way (a policy).
func checkPINSecretPublic(pub *tpm2.TPMTPublic) error {
	want := pinSecretTemplate()
	if pub.Type != want.Type || pub.NameAlg != want.NameAlg {
		return fmt.Errorf("type %v / name algorithm %v, want keyedhash / SHA-256", pub.Type, pub.NameAlg)
	}
	if pub.ObjectAttributes != want.ObjectAttributes {
		return fmt.Errorf("attributes %#x, want %#x", tpm2.Marshal(pub.ObjectAttributes), tpm2.Marshal(want.ObjectAttributes))
	}
	if len(pub.AuthPolicy.Buffer) != 0 {
		return errors.New("the object has an authorisation policy")
	}
	parms, err := pub.Parameters.KeyedHashDetail()
	if err != nil {
		return err
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgNull {
		return fmt.Errorf("scheme %v, want none", parms.Scheme.Scheme)
	}
	return nil
}

// A seal is the TPM-wrapped object, as the keystore stores it:
//
//	"HSPN" | version u8 (1) | SRK name | public | private
//
// each of the three fields a big-endian u16 length and its bytes. The SRK
// name says which TPM it belongs to.
const (
	pinSealMagic   = "HSPN"
	pinSealVersion = 1
)

type pinSeal struct {
	srkName, public, private []byte
}

func (s *pinSeal) marshal() []byte {
	b := append([]byte(pinSealMagic), pinSealVersion)
	for _, f := range [][]byte{s.srkName, s.public, s.private} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

func parsePINSeal(b []byte) (*pinSeal, error) {
	if len(b) < len(pinSealMagic)+1 || string(b[:len(pinSealMagic)]) != pinSealMagic || b[len(pinSealMagic)] != pinSealVersion {
		return nil, errors.New("tpmroot: not a PIN seal")
	}
	rest := b[len(pinSealMagic)+1:]
	s := &pinSeal{}
	for _, f := range []*[]byte{&s.srkName, &s.public, &s.private} {
		if len(rest) < 2 {
			return nil, errors.New("tpmroot: PIN seal truncated")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n {
			return nil, errors.New("tpmroot: PIN seal truncated")
		}
		*f, rest = rest[2:2+n:2+n], rest[2+n:]
	}
	switch {
	case len(rest) != 0:
		return nil, errors.New("tpmroot: trailing bytes after a PIN seal")
	case len(s.srkName) < 3 || len(s.srkName) > maxNameLen, len(s.public) == 0 || len(s.public) > maxAreaLen,
		len(s.private) == 0 || len(s.private) > maxAreaLen:
		return nil, errors.New("tpmroot: PIN seal field out of range")
	}
	return s, nil
}

// MaxPINSeal bounds a seal's encoding: the keystore refuses longer ones
// before they reach this package.
const MaxPINSeal = len(pinSealMagic) + 1 + 3*2 + maxNameLen + 2*maxAreaLen

// SealPINSecret creates a PIN-bound secret: a random 32-byte secret sealed
// in a new object under the SRK, whose authorisation value is auth (32
// bytes, derived from the PIN by the caller). It returns the seal to store
// and the secret. The secret and auth go to the TPM encrypted, in a session
// salted with the SRK.
func (t *TPM) SealPINSecret(auth []byte) (seal, secret []byte, err error) {
	secret = make([]byte, pinSecretSize)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, err
	}
	seal, err = t.ResealPINSecret(auth, secret)
	if err != nil {
		clear(secret)
		return nil, nil, err
	}
	return seal, secret, nil
}

// ResealPINSecret is SealPINSecret with a given secret: the same secret,
// behind the same authorisation, in this TPM. Domain recovery uses it to
// bring a PIN record into a new TPM.
func (t *TPM) ResealPINSecret(auth, secret []byte) ([]byte, error) {
	if len(auth) != pinSecretSize || len(secret) != pinSecretSize {
		return nil, fmt.Errorf("tpmroot: a PIN-bound secret and its authorisation are %d bytes, not %d and %d", pinSecretSize, len(secret), len(auth))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	var rsp *tpm2.CreateResponse
	restore, err := t.makingRoom(func() (err error) {
		rsp, err = tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: t.srk.secretIn()},
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
				UserAuth: tpm2.TPM2BAuth{Buffer: authValue(auth)},
				Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
			}},
			InPublic: tpm2.New2B(pinSecretTemplate()),
		}.Execute(t.tpm)
		return err
	})
	if rerr := restore(); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, fmt.Errorf("tpmroot: creating a PIN-bound secret (TPM2_Create): %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpmroot: parsing a PIN-bound secret's public area: %w", err)
	}
	if err := checkPINSecretPublic(pub); err != nil {
		return nil, fmt.Errorf("tpmroot: the TPM created a PIN-bound secret unlike the template: %w", err)
	}
	s := pinSeal{srkName: t.srk.name.Buffer, public: rsp.OutPublic.Bytes(), private: rsp.OutPrivate.Buffer}
	return s.marshal(), nil
}

// UnsealPINSecret returns the secret of a seal made by SealPINSecret, if
// auth is its authorisation value. It loads the object under the SRK,
// unseals it in a session salted with the SRK that carries auth (as an
// HMAC key, never in clear) and encrypts the secret on its way out, and
// flushes it. A wrong auth gives an error wrapping ErrPINAuthFail, counted
// by the TPM; a TPM in dictionary-attack lockout, a *DALockoutError
// (ErrDALockout), whatever the auth; a seal of another TPM, ErrWrongTPM.
func (t *TPM) UnsealPINSecret(seal, auth []byte) ([]byte, error) {
	s, err := parsePINSeal(seal)
	if err != nil {
		return nil, err
	}
	if len(auth) != pinSecretSize {
		return nil, fmt.Errorf("tpmroot: a PIN-bound secret's authorisation is %d bytes, not %d", pinSecretSize, len(auth))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	if !bytes.Equal(s.srkName, t.srk.name.Buffer) {
		return nil, fmt.Errorf("%w: a PIN record is bound to the TPM whose SRK is named %x; this one's is %x", ErrWrongTPM, s.srkName, t.srk.name.Buffer)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.public)
	if err != nil || !bytes.Equal(tpm2.Marshal(pub), s.public) {
		return nil, errors.New("tpmroot: PIN seal: corrupt public area")
	}
	if err := checkPINSecretPublic(pub); err != nil {
		return nil, fmt.Errorf("tpmroot: PIN seal: not a PIN-bound secret: %w", err)
	}
	// As for the master key, the wrapped private area is protected under
	// the SRK, and the SRK is noDA with the empty authorisation: loading
	// works during a lockout too.
	var rsp *tpm2.LoadResponse
	restore, err := t.makingRoom(func() (err error) {
		rsp, err = tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    tpm2.TPM2BPrivate{Buffer: s.private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](s.public),
		}.Execute(t.tpm)
		return err
	})
	if err != nil {
		err = errors.Join(err, restore())
		var fmt1 tpm2.TPMFmt1Error
		if errors.As(err, &fmt1) || errors.Is(err, tpm2.TPMRCSensitive) {
			return nil, fmt.Errorf("%w: the TPM refuses a PIN record's object (made by another TPM, or corrupted): %w", ErrWrongTPM, err)
		}
		return nil, fmt.Errorf("tpmroot: loading a PIN-bound secret (TPM2_Load): %w", err)
	}
	secret, err := t.unsealLoaded(pub, rsp, authValue(auth))
	err = errors.Join(err, flush(t.tpm, rsp.ObjectHandle), restore())
	if err != nil {
		clear(secret)
		return nil, err
	}
	return secret, nil
}

// unsealLoaded unseals a loaded PIN-bound object. t.mu is held.
func (t *TPM) unsealLoaded(pub *tpm2.TPMTPublic, rsp *tpm2.LoadResponse, auth []byte) ([]byte, error) {
	if err := checkName(pub, rsp.Name); err != nil {
		return nil, fmt.Errorf("tpmroot: loading a PIN-bound secret: %w", err)
	}
	var out *tpm2.UnsealResponse
	var err error
	for try := 0; ; try++ {
		sess := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth), tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(t.srk.handle, t.srk.public))
		out, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: sess}}.Execute(t.tpm)
		// The first DA-protected authorisation after a TPM2_Startup
		// makes the TPM mark its state as not orderly in NV, and answers
		// TPM_RC_RETRY (the reference implementation's g_daUsed): the
		// command is to be sent again.
		if !errors.Is(err, tpm2.TPMRCRetry) || try == 3 {
			break
		}
	}
	switch {
	case errors.Is(err, tpm2.TPMRCLockout):
		info, _ := t.daInfoLocked()
		return nil, &DALockoutError{Info: info}
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		return nil, &pinAuthError{rc: err}
	case err != nil:
		return nil, fmt.Errorf("tpmroot: TPM2_Unseal: %w", err)
	}
	if len(out.OutData.Buffer) != pinSecretSize {
		return nil, fmt.Errorf("tpmroot: TPM2_Unseal returned %d bytes, want %d", len(out.OutData.Buffer), pinSecretSize)
	}
	return out.OutData.Buffer, nil
}

// makingRoom runs op, a TPM2_Load or TPM2_Create. A TPM talked to
// without a resource manager (swtpm; a device through /dev/tpm0) has as
// few as three transient object slots, which the SRK and two master keys
// (during a master key rotation) fill, and either command needs one: then
// the loaded master keys are saved (TPM2_ContextSave) and flushed, one at
// a time, until op succeeds, and restore loads them back
// (TPM2_ContextLoad) under new handles. t.mu is held throughout, so no
// one uses a master key meanwhile; the caller calls restore once done
// with the slot, whatever op returned.
func (t *TPM) makingRoom(op func() error) (restore func() error, err error) {
	type saved struct {
		r   *Root
		ctx tpm2.TPMSContext
	}
	var out []saved
	restore = func() error {
		var errs []error
		for _, s := range out {
			rsp, err := tpm2.ContextLoad{Context: s.ctx}.Execute(t.tpm)
			if err != nil {
				// The key is gone from the TPM: its Root is closed, and
				// loads again from its Sealed.
				s.r.closed = true
				delete(t.roots, s.r)
				errs = append(errs, fmt.Errorf("tpmroot: loading a master key back (TPM2_ContextLoad): %w", err))
				continue
			}
			s.r.handle = rsp.LoadedHandle
		}
		out = nil
		return errors.Join(errs...)
	}
	err = op()
	for r := range t.roots {
		if !errors.Is(err, tpm2.TPMRCObjectMemory) {
			break
		}
		cs, serr := tpm2.ContextSave{SaveHandle: r.handle}.Execute(t.tpm)
		if serr != nil {
			return restore, errors.Join(err, serr)
		}
		if ferr := flush(t.tpm, r.handle); ferr != nil {
			return restore, errors.Join(err, ferr)
		}
		out = append(out, saved{r: r, ctx: cs.Context})
		err = op()
	}
	return restore, err
}

// authValue is the authorisation value the TPM object gets for auth:
// auth with every zero byte made 0x01. The TPM drops trailing zeros from
// an authorisation value; go-tpm v0.9 cuts its session HMAC key at the
// first zero byte it meets from the end (hmacKeyFromAuthValue does not
// stop at the first non-zero byte) and uses the untrimmed value for
// parameter encryption, so an auth with a zero byte anywhere would not
// match. With none, all three agree. It costs under 0.2 of 256 bits.
func authValue(auth []byte) []byte {
	v := bytes.Clone(auth)
	for i, b := range v {
		if b == 0 {
			v[i] = 1
		}
	}
	return v
}

// The Root gives the keystore the same operations: it is what the keystore
// holds of the TPM.

// SealPINSecret is TPM.SealPINSecret on the root's TPM.
func (r *Root) SealPINSecret(auth []byte) (seal, secret []byte, err error) {
	return r.t.SealPINSecret(auth)
}

// ResealPINSecret is TPM.ResealPINSecret on the root's TPM.
func (r *Root) ResealPINSecret(auth, secret []byte) ([]byte, error) {
	return r.t.ResealPINSecret(auth, secret)
}

// UnsealPINSecret is TPM.UnsealPINSecret on the root's TPM.
func (r *Root) UnsealPINSecret(seal, auth []byte) ([]byte, error) {
	return r.t.UnsealPINSecret(seal, auth)
}
