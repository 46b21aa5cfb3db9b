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

// dupBlob is a TPM2_Import blob for a node's import key: a PIN-bound
// secret's (magic "HSPD") or a master key's (masterdup.go, "HSMD"), the
// same encoding under each magic.
type dupBlob struct {
	magic                           string
	parent, public, duplicate, seed []byte
}

func (d *dupBlob) marshal() []byte {
	b := append([]byte(d.magic), pinDupVersion)
	for _, f := range [][]byte{d.parent, d.public, d.duplicate, d.seed} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// parseDup decodes a blob encoded under magic; errors wrap refused.
func parseDup(magic string, refused error, b []byte) (*dupBlob, error) {
	if len(b) < len(magic)+1 || string(b[:len(magic)]) != magic || b[len(magic)] != pinDupVersion {
		return nil, fmt.Errorf("%w: not a duplication blob of its kind", refused)
	}
	rest := b[len(magic)+1:]
	d := &dupBlob{magic: magic}
	for _, f := range []*[]byte{&d.parent, &d.public, &d.duplicate, &d.seed} {
		if len(rest) < 2 {
			return nil, fmt.Errorf("%w: truncated", refused)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n || n == 0 || n > maxAreaLen {
			return nil, fmt.Errorf("%w: truncated or out of range", refused)
		}
		*f, rest = rest[2:2+n:2+n], rest[2+n:]
	}
	if len(rest) != 0 || len(d.parent) > maxNameLen {
		return nil, fmt.Errorf("%w: trailing bytes or a field out of range", refused)
	}
	return d, nil
}

func parsePINDup(b []byte) (*dupBlob, error) { return parseDup(pinDupMagic, ErrPINDupRefused, b) }

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
	av := authValue(auth)
	defer clear(av)
	return duplicateKeyedHash(pinDupMagic, importKey, pinDupTemplate(), av, secret)
}

// duplicateKeyedHash makes, in software, a duplication blob under magic
// of the keyed-hash object with public area pub (its unique field filled
// here), authorisation value av and sensitive data secret, for the
// node whose import key is importKey (its ImportKey encoding; only the
// public area is used).
func duplicateKeyedHash(magic string, importKey []byte, pub tpm2.TPMTPublic, av, secret []byte) ([]byte, error) {
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
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique.Sum(nil)})
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, err
	}
	sens := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		AuthValue:     tpm2.TPM2BAuth{Buffer: av},
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: secret}),
	})
	defer clear(sens)
	dup, encSeed, err := tpm2.CreateDuplicate(rand.Reader, ek, name.Buffer, sens)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: making a duplication blob: %w", err)
	}
	d := dupBlob{magic: magic, parent: ikName.Buffer, public: tpm2.Marshal(pub), duplicate: dup, seed: encSeed}
	if len(d.public) > maxAreaLen || len(d.duplicate) > maxAreaLen || len(d.seed) > maxAreaLen {
		return nil, errors.New("tpmroot: a duplication blob out of range")
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
	run := &importRun{t: t, ik: &ik, d: d, load: true, what: "a PIN duplication blob"}
	restore, err := t.makingRoom(run.op)
	var secret []byte
	loadErr := err
	if err == nil && run.refused == nil {
		secret, err = t.unsealLoaded(pub, run.obj, authValue(auth))
	}
	cerr := errors.Join(append(run.flush(), restore())...)
	switch {
	case loadErr != nil:
		return nil, errors.Join(fmt.Errorf("tpmroot: %s: %w", run.stage, loadErr), cerr)
	case run.refused != nil:
		return nil, errors.Join(refuse(fmt.Errorf("%w: TPM2_Import: %w", ErrPINDupRefused, run.refused)), cerr)
	case err != nil:
		// The unseal's own error (a wrong PIN, a lockout) keeps its type.
		return nil, errors.Join(err, cerr)
	case cerr != nil:
		clear(secret)
		return nil, cerr
	}
	return secret, nil
}

// importRun imports a duplication blob under this node's import key: the
// import key's load under the SRK, TPM2_Import, and, with load, the
// imported object's load under the import key. Each is done once: op is
// makingRoom's, run again after each master key it moves out, and goes
// on from where it stopped. t.mu is held.
type importRun struct {
	t        *TPM
	ik       *ImportKey
	d        *dupBlob
	load     bool
	what     string
	ikRsp    *tpm2.LoadResponse
	imported *tpm2.ImportResponse
	obj      *tpm2.LoadResponse
	refused  error // the TPM's refusal of the blob (a parameter it rejects)
	stage    string
}

func (r *importRun) op() error {
	t := r.t
	if r.ikRsp == nil {
		r.stage = "loading this node's import key (TPM2_Load)"
		rsp, err := tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    tpm2.TPM2BPrivate{Buffer: r.ik.Private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](r.ik.Public),
		}.Execute(t.tpm)
		if err != nil {
			return err
		}
		r.ikRsp = rsp
	}
	if r.imported == nil {
		r.stage = "importing " + r.what + " (TPM2_Import)"
		rsp, err := tpm2.Import{
			ParentHandle: tpm2.AuthHandle{Handle: r.ikRsp.ObjectHandle, Name: r.ikRsp.Name, Auth: tpm2.PasswordAuth(nil)},
			ObjectPublic: tpm2.BytesAs2B[tpm2.TPMTPublic](r.d.public),
			Duplicate:    tpm2.TPM2BPrivate{Buffer: r.d.duplicate},
			InSymSeed:    tpm2.TPM2BEncryptedSecret{Buffer: r.d.seed},
			Symmetric:    tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		}.Execute(t.tpm)
		var fmt1 tpm2.TPMFmt1Error
		if errors.As(err, &fmt1) {
			// A parameter the TPM refuses: the blob (its integrity, its
			// seed, its public area).
			r.refused = err
			return nil
		}
		if err != nil {
			return err
		}
		r.imported = rsp
	}
	if !r.load {
		return nil
	}
	r.stage = "loading " + r.what + " once imported (TPM2_Load)"
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: r.ikRsp.ObjectHandle, Name: r.ikRsp.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    r.imported.OutPrivate,
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](r.d.public),
	}.Execute(t.tpm)
	if err != nil {
		return err
	}
	r.obj = rsp
	return nil
}

// flush flushes what op loaded.
func (r *importRun) flush() []error {
	var errs []error
	if r.obj != nil {
		errs = append(errs, flush(r.t.tpm, r.obj.ObjectHandle))
	}
	if r.ikRsp != nil {
		errs = append(errs, flush(r.t.tpm, r.ikRsp.ObjectHandle))
	}
	return errs
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
