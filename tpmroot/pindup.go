package tpmroot

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// PIN-bound secrets for other nodes. A PIN-bound secret (pinseal.go) is
// fixedTPM: only the TPM that made it loads it. Another node of the domain
// gets the same secret behind the same authorisation as a TPM2_Import
// duplication blob made for its import key (importkey.go): a sealed data
// object like the node's own, but with fixedTPM and fixedParent clear, as
// TPM2_Import requires, its sensitive area (the authorisation value, the
// secret, an obfuscation seed) under the outer wrapper only that node's
// TPM removes (a seed encrypted to the import key by ECDH, AES-128-CFB
// under a key derived from it, and an HMAC over the encrypted area and
// the object's name). The blob is made in software, from the secret and
// the authorisation the writing node has at hand when it writes the
// record: no TPM takes part, so no TPM2_Duplicate policy is needed, and
// the writing node's own object stays fixedTPM.
//
// The object is still not noDA and has no policy: the node that imports
// it opens it with TPM2_Unseal to the PIN's authorisation alone, and
// every wrong one is counted by its TPM. With no policy it has no
// duplication role either (TPM2_Duplicate needs a policy session), so
// once imported it goes nowhere else.
//
//	"HSPD" | version u8 (1) | import key name | public | duplicate | seed
//
// each a big-endian u16 length and its bytes.

const (
	pinDupMagic   = "HSPD"
	pinDupVersion = 1
)

// ErrPINDupRefused: a PIN duplication blob that this node's TPM does not
// take (made for another import key, or altered: TPM2_Import's integrity
// check), or that is not one. No PIN was tried and nothing was counted.
var ErrPINDupRefused = errors.New("tpmroot: the PIN duplication blob is refused")

// dupRefusedError marks a refusal for callers that do not import this
// package (keystore): its method PINDupRefused.
type dupRefusedError struct{ err error }

func (e *dupRefusedError) Error() string { return e.err.Error() }
func (e *dupRefusedError) Unwrap() error { return e.err }

// PINDupRefused marks the error as the refusal of a blob.
func (e *dupRefusedError) PINDupRefused() {}

func refuse(err error) error { return &dupRefusedError{err: err} }

// MaxPINDup bounds a duplication blob's encoding.
const MaxPINDup = len(pinDupMagic) + 1 + 4*2 + maxNameLen + 3*maxAreaLen

// pinDupTemplate is the public area of a duplicated PIN-bound secret:
// pinSecretTemplate with fixedTPM and fixedParent clear.
func pinDupTemplate() tpm2.TPMTPublic {
	p := pinSecretTemplate()
	p.ObjectAttributes = tpm2.TPMAObject{UserWithAuth: true}
	return p
}

// checkPINDupPublic checks a duplicated object's public area against the
// template before the TPM sees it: an edited blob cannot hand it an
// object that does not count failures (noDA) or opens another way.
func checkPINDupPublic(pub *tpm2.TPMTPublic) error {
	want := pinDupTemplate()
	if pub.Type != want.Type || pub.NameAlg != want.NameAlg || pub.ObjectAttributes != want.ObjectAttributes || len(pub.AuthPolicy.Buffer) != 0 {
		return errors.New("not a duplicated PIN-bound secret (type, name algorithm, attributes or policy)")
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

type pinDup struct {
	parent, public, duplicate, seed []byte
}

func (d *pinDup) marshal() []byte {
	b := append([]byte(pinDupMagic), pinDupVersion)
	for _, f := range [][]byte{d.parent, d.public, d.duplicate, d.seed} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

func parsePINDup(b []byte) (*pinDup, error) {
	if len(b) < len(pinDupMagic)+1 || string(b[:len(pinDupMagic)]) != pinDupMagic || b[len(pinDupMagic)] != pinDupVersion {
		return nil, fmt.Errorf("%w: not a PIN duplication blob", ErrPINDupRefused)
	}
	rest := b[len(pinDupMagic)+1:]
	d := &pinDup{}
	for _, f := range []*[]byte{&d.parent, &d.public, &d.duplicate, &d.seed} {
		if len(rest) < 2 {
			return nil, fmt.Errorf("%w: truncated", ErrPINDupRefused)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n || n == 0 || n > maxAreaLen {
			return nil, fmt.Errorf("%w: truncated or out of range", ErrPINDupRefused)
		}
		*f, rest = rest[2:2+n:2+n], rest[2+n:]
	}
	if len(rest) != 0 || len(d.parent) > maxNameLen {
		return nil, fmt.Errorf("%w: trailing bytes or a field out of range", ErrPINDupRefused)
	}
	return d, nil
}

// IsPINDup reports whether b is encoded as a duplication blob (not
// whether it is a good one).
func IsPINDup(b []byte) bool {
	return len(b) > len(pinDupMagic) && string(b[:len(pinDupMagic)]) == pinDupMagic
}

// DuplicatePINSecret makes, in software, a duplication blob of a
// PIN-bound secret for the node whose import key is importKey (its
// ImportKey encoding; only the public area is used): the same secret
// behind the same authorisation, which that node's TPM alone imports.
func DuplicatePINSecret(importKey, auth, secret []byte) ([]byte, error) {
	if len(auth) != pinSecretSize || len(secret) != pinSecretSize {
		return nil, fmt.Errorf("tpmroot: a PIN-bound secret and its authorisation are %d bytes, not %d and %d", pinSecretSize, len(secret), len(auth))
	}
	var ik ImportKey
	if err := ik.UnmarshalBinary(importKey); err != nil {
		return nil, err
	}
	ikPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ik.Public)
	if err != nil {
		return nil, err
	}
	ikName, err := tpm2.ObjectName(ikPub)
	if err != nil {
		return nil, err
	}
	ek, err := tpm2.ImportEncapsulationKey(ikPub)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: an import key's public key: %w", err)
	}
	// A keyed-hash object's unique field is H(seed ‖ data): the random
	// seed keeps the public area from being a hash of the secret alone.
	seed := make([]byte, sha256.Size)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	unique := sha256.New()
	unique.Write(seed)
	unique.Write(secret)
	pub := pinDupTemplate()
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique.Sum(nil)})
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, err
	}
	av := authValue(auth)
	defer clear(av)
	sens := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		AuthValue:     tpm2.TPM2BAuth{Buffer: av},
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	defer clear(sens)
	dup, encSeed, err := tpm2.CreateDuplicate(rand.Reader, ek, name.Buffer, sens)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: making a PIN duplication blob: %w", err)
	}
	d := pinDup{parent: ikName.Buffer, public: tpm2.Marshal(pub), duplicate: dup, seed: encSeed}
	if len(d.public) > maxAreaLen || len(d.duplicate) > maxAreaLen || len(d.seed) > maxAreaLen {
		return nil, errors.New("tpmroot: a PIN duplication blob out of range")
	}
	return d.marshal(), nil
}

// UnsealPINDup imports a duplication blob under this node's import key
// (importKey, its ImportKey encoding, TPM-wrapped under this TPM's SRK)
// and unseals it to auth, as UnsealPINSecret does a seal: a wrong auth
// gives ErrPINAuthFail, counted by this TPM; a TPM in lockout a
// *DALockoutError. A blob made for another import key, altered, or not a
// duplicated PIN-bound secret gives ErrPINDupRefused before any
// authorisation is presented: nothing is counted. The imported object is
// flushed after the unseal; the caller seals the secret in this TPM
// (ResealPINSecret) to keep it.
func (t *TPM) UnsealPINDup(importKey, blob, auth []byte) ([]byte, error) {
	d, err := parsePINDup(blob)
	if err != nil {
		return nil, refuse(err)
	}
	if len(auth) != pinSecretSize {
		return nil, fmt.Errorf("tpmroot: a PIN-bound secret's authorisation is %d bytes, not %d", pinSecretSize, len(auth))
	}
	var ik ImportKey
	if err := ik.UnmarshalBinary(importKey); err != nil {
		return nil, err
	}
	ikName, err := ik.Name()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(ikName, d.parent) {
		return nil, refuse(fmt.Errorf("%w: made for the import key named %x; this node's is %x", ErrPINDupRefused, d.parent, ikName))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.public)
	if err != nil || !bytes.Equal(tpm2.Marshal(pub), d.public) {
		return nil, refuse(fmt.Errorf("%w: corrupt public area", ErrPINDupRefused))
	}
	if err := checkPINDupPublic(pub); err != nil {
		return nil, refuse(fmt.Errorf("%w: %w", ErrPINDupRefused, err))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	// The import key, the import and the imported object's load, each
	// done once: makingRoom runs op again after each master key it moves
	// out, and op goes on from where it stopped.
	var ikRsp, objRsp *tpm2.LoadResponse
	var imported *tpm2.ImportResponse
	var refused error
	stage := "loading this node's import key (TPM2_Load)"
	op := func() (err error) {
		if ikRsp == nil {
			rsp, err := tpm2.Load{
				ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)},
				InPrivate:    tpm2.TPM2BPrivate{Buffer: ik.Private},
				InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](ik.Public),
			}.Execute(t.tpm)
			if err != nil {
				return err
			}
			ikRsp = rsp
		}
		if imported == nil {
			rsp, err := tpm2.Import{
				ParentHandle: tpm2.AuthHandle{Handle: ikRsp.ObjectHandle, Name: ikRsp.Name, Auth: tpm2.PasswordAuth(nil)},
				ObjectPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](d.public),
				Duplicate:    tpm2.TPM2BPrivate{Buffer: d.duplicate},
				InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: d.seed},
				Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
			}.Execute(t.tpm)
			var fmt1 tpm2.TPMFmt1Error
			if errors.As(err, &fmt1) {
				// A parameter the TPM refuses: the blob (its
				// integrity, its seed, its public area).
				refused = err
				return nil
			}
			if err != nil {
				stage = "importing a PIN duplication blob (TPM2_Import)"
				return err
			}
			imported = rsp
		}
		stage = "loading an imported PIN-bound secret (TPM2_Load)"
		rsp, err := tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: ikRsp.ObjectHandle, Name: ikRsp.Name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    imported.OutPrivate,
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](d.public),
		}.Execute(t.tpm)
		if err != nil {
			return err
		}
		objRsp = rsp
		return nil
	}
	restore, err := t.makingRoom(op)
	var secret []byte
	loadErr := err
	if err == nil && refused == nil {
		secret, err = t.unsealLoaded(pub, objRsp, authValue(auth))
	}
	var cleanup []error
	if objRsp != nil {
		cleanup = append(cleanup, flush(t.tpm, objRsp.ObjectHandle))
	}
	if ikRsp != nil {
		cleanup = append(cleanup, flush(t.tpm, ikRsp.ObjectHandle))
	}
	cerr := errors.Join(append(cleanup, restore())...)
	switch {
	case loadErr != nil:
		return nil, errors.Join(fmt.Errorf("tpmroot: %s: %w", stage, loadErr), cerr)
	case refused != nil:
		return nil, errors.Join(refuse(fmt.Errorf("%w: TPM2_Import: %w", ErrPINDupRefused, refused)), cerr)
	case err != nil:
		// The unseal's own error (a wrong PIN, a lockout) keeps its type.
		return nil, errors.Join(err, cerr)
	case cerr != nil:
		clear(secret)
		return nil, cerr
	}
	return secret, nil
}

// UnsealPINDup is TPM.UnsealPINDup on the root's TPM.
func (r *Root) UnsealPINDup(importKey, blob, auth []byte) ([]byte, error) {
	return r.t.UnsealPINDup(importKey, blob, auth)
}

// DuplicatePINSecret is the package's DuplicatePINSecret: the keystore
// reaches it through the root it holds.
func (r *Root) DuplicatePINSecret(importKey, auth, secret []byte) ([]byte, error) {
	return DuplicatePINSecret(importKey, auth, secret)
}
