package tpmroot

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Master keys for other nodes. A master key is fixedTPM: only the TPM
// that made it loads it. A rotation makes the new master secret in
// software (Provision), so besides creating the key in its own TPM it
// makes, for every other node that published an import key
// (importkey.go), a TPM2_Import duplication blob of the same key: the
// master key's template with fixedTPM and fixedParent clear, as
// TPM2_Import requires, its sensitive area under the outer wrapper only
// that node's TPM removes (pindup.go makes and imports both kinds of
// blob). The object keeps everything else of a master key: a keyed-hash
// HMAC signing key (TPM2_Unseal refuses an object with the sign
// attribute: the secret never comes out), noDA, an empty authorisation
// value, and no policy, so no TPM2_Duplicate sends it anywhere else.
//
// The node imports the blob under its import key (ImportMaster) and keeps
// the result as a version 3 Sealed: the private area wrapped under the
// import key, loaded by loading the import key under the SRK, the master
// key under it, and flushing the import key.
//
//	"HSMD" | version u8 (1) | import key name | public | duplicate | seed

const masterDupMagic = "HSMD"

// ErrMasterDupRefused: a master key duplication blob this node's TPM does
// not take (made for another import key, or altered: TPM2_Import's
// integrity check), that is not one, or whose key is not the domain's.
var ErrMasterDupRefused = errors.New("tpmroot: the master key duplication blob is refused")

// importedMasterTemplate is the public area of a master key imported
// from a duplication blob: masterTemplate with fixedTPM and fixedParent
// clear.
func importedMasterTemplate() tpm2.TPMTPublic {
	p := masterTemplate()
	p.ObjectAttributes.FixedTPM = false
	p.ObjectAttributes.FixedParent = false
	return p
}

// checkImportedMasterPublic is checkMasterPublic for an imported master
// key: the same properties but the two flags TPM2_Import needs clear.
func checkImportedMasterPublic(pub *tpm2.TPMTPublic) error {
	if pub.ObjectAttributes != importedMasterTemplate().ObjectAttributes {
		return fmt.Errorf("attributes %#x, want %#x", tpm2.Marshal(pub.ObjectAttributes), tpm2.Marshal(importedMasterTemplate().ObjectAttributes))
	}
	p := *pub
	p.ObjectAttributes = masterTemplate().ObjectAttributes
	return checkMasterPublic(&p)
}

// duplicateMaster makes the duplication blob of the master key with
// secret for the node whose import key is importKey.
func duplicateMaster(importKey, secret []byte) ([]byte, error) {
	if len(secret) != secretSize {
		return nil, fmt.Errorf("tpmroot: internal error: %d-byte master secret", len(secret))
	}
	return duplicateKeyedHash(masterDupMagic, importKey, importedMasterTemplate(), nil, secret)
}

// ImportMaster imports a master key duplication blob made for this node's
// import key (importKey, its ImportKey encoding, TPM-wrapped under this
// TPM's SRK) and returns it as this node's Sealed (version 3), once Load
// has checked through the TPM that it computes current's domain id and
// recovery key MAC (current is the sealed form of the same master key on
// the node that made the blob: its domain id and PIN recovery key are
// taken from it). A blob made for another import key, altered, not a
// master key's, or of another master key gives ErrMasterDupRefused.
// Nothing stays loaded; nothing is written.
func (t *TPM) ImportMaster(importKey, blob []byte, current *Sealed) (*Sealed, error) {
	d, err := parseDup(masterDupMagic, ErrMasterDupRefused, blob)
	if err != nil {
		return nil, err
	}
	if current == nil || current.Version < 2 {
		return nil, errors.New("tpmroot: importing a master key needs its sealed form, of version 2 or later, on the node that made it")
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
		return nil, fmt.Errorf("%w: made for the import key named %x; this node's is %x", ErrMasterDupRefused, d.parent, ikName)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.public)
	if err != nil || !bytes.Equal(tpm2.Marshal(pub), d.public) {
		return nil, fmt.Errorf("%w: corrupt public area", ErrMasterDupRefused)
	}
	if err := checkImportedMasterPublic(pub); err != nil {
		return nil, fmt.Errorf("%w: not a master key: %w", ErrMasterDupRefused, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	var s *Sealed
	err = t.do(func() error {
		run := &importRun{t: t, ik: &ik, d: d, what: "a master key duplication blob"}
		restore, err := t.makingRoom(run.op)
		cerr := errors.Join(append(run.flush(), restore())...)
		switch {
		case err != nil:
			return errors.Join(fmt.Errorf("tpmroot: %s: %w", run.stage, err), cerr)
		case run.refused != nil:
			return errors.Join(fmt.Errorf("%w: TPM2_Import: %w", ErrMasterDupRefused, run.refused), cerr)
		case cerr != nil:
			return cerr
		}
		s = &Sealed{
			Version:        SealedImportedVersion,
			SRKName:        bytes.Clone(t.srk.name.Buffer),
			Public:         bytes.Clone(d.public),
			Private:        bytes.Clone(run.imported.OutPrivate.Buffer),
			DomainID:       bytes.Clone(current.DomainID),
			RecoveryPublic: bytes.Clone(current.RecoveryPublic),
			RecoveryMAC:    bytes.Clone(current.RecoveryMAC),
			Parent:         bytes.Clone(importKey),
		}
		if err := s.check(); err != nil {
			return fmt.Errorf("tpmroot: an imported master key: %w", err)
		}
		r, err := t.loadLocked(s)
		if errors.Is(err, ErrDomainMismatch) {
			// A key the TPM took, but not the domain's: another
			// secret, encrypted to this node's published key.
			return fmt.Errorf("%w: %w", ErrMasterDupRefused, err)
		}
		if err != nil {
			return err
		}
		return r.flushLocked()
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// loadMasterObject loads s's key object: under the SRK, or, for an
// imported one, under its import key, loaded under the SRK for the
// while. With room, TPM2_ContextSave makes space for the import key when
// the TPM's slots are full (makingRoom; not while the TPM is reconnected
// to, when no loaded handle is valid yet). t.mu is held.
func (t *TPM) loadMasterObject(s *Sealed, room bool) (*tpm2.LoadResponse, error) {
	srkParent := tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)}
	if s.Parent == nil {
		return tpm2.Load{
			ParentHandle: srkParent,
			InPrivate:    tpm2.TPM2BPrivate{Buffer: s.Private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](s.Public),
		}.Execute(t.tpm)
	}
	var ik ImportKey
	if err := ik.UnmarshalBinary(s.Parent); err != nil {
		return nil, err
	}
	var ikRsp, rsp *tpm2.LoadResponse
	op := func() (err error) {
		if ikRsp == nil {
			if ikRsp, err = (tpm2.Load{
				ParentHandle: srkParent,
				InPrivate:    tpm2.TPM2BPrivate{Buffer: ik.Private},
				InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](ik.Public),
			}).Execute(t.tpm); err != nil {
				return err
			}
		}
		rsp, err = tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: ikRsp.ObjectHandle, Name: ikRsp.Name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    tpm2.TPM2BPrivate{Buffer: s.Private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](s.Public),
		}.Execute(t.tpm)
		return err
	}
	restore := func() error { return nil }
	var err error
	if room {
		restore, err = t.makingRoom(op)
	} else {
		err = op()
	}
	var cleanup []error
	if ikRsp != nil {
		cleanup = append(cleanup, flush(t.tpm, ikRsp.ObjectHandle))
	}
	cleanup = append(cleanup, restore())
	if cerr := errors.Join(cleanup...); cerr != nil {
		if rsp != nil {
			flush(t.tpm, rsp.ObjectHandle)
		}
		return nil, errors.Join(err, cerr)
	}
	return rsp, err
}
