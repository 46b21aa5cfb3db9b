package tpmroot

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hmac"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot/escrow"
)

// ErrWrongTPM is returned by Load when the sealed master key belongs to
// another TPM: it was sealed under another SRK (another TPM, or this one
// after a TPM2_Clear), or this TPM refuses the wrapped key. Nothing is
// changed; with the right TPM, or a recovery from escrow, the keystore
// opens again.
var ErrWrongTPM = errors.New("tpmroot: the keystore was provisioned on a different TPM")

// ErrDomainMismatch is returned by Load when the master key loads but its
// domain id, computed by the TPM, is not the one recorded with it: the
// stored record was edited or mixed with another keystore's.
var ErrDomainMismatch = errors.New("tpmroot: the master key does not belong to the recorded domain")

// MaxLabel is the longest label DeriveKEK accepts: TPM2_HMAC takes its data
// as a TPM2B_MAX_BUFFER, 1024 bytes on every TPM we know of.
const MaxLabel = 1024

// A Root is the master key loaded in the TPM. Its methods are safe for
// concurrent use; they share the TPM's lock.
type Root struct {
	t      *TPM
	sealed *Sealed        // what it was loaded from, to load it again after the TPM was lost
	handle tpm2.TPMHandle // guarded by t.mu: a reconnection changes it
	name   tpm2.TPM2BName
	domain []byte
	// recovery is the PIN recovery public key (Sealed version 2), nil
	// for a master key sealed before.
	recovery *ecdh.PublicKey
	closed   bool // guarded by t.mu
}

// Load loads a sealed master key under this TPM's SRK and checks, through
// the TPM, that it computes the domain id recorded with it. A key sealed on
// another TPM gives an error wrapping ErrWrongTPM; one whose domain id
// differs, ErrDomainMismatch. Load writes nothing, to the TPM or to s.
func (t *TPM) Load(s *Sealed) (*Root, error) {
	if s == nil {
		return nil, errors.New("tpmroot: Load of a nil Sealed")
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("tpmroot: sealed master key: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var r *Root
	err := t.do(func() (err error) {
		r, err = t.loadLocked(s)
		return err
	})
	return r, err
}

func (t *TPM) loadLocked(s *Sealed) (*Root, error) {
	if !bytes.Equal(s.SRKName, t.srk.name.Buffer) {
		return nil, fmt.Errorf("%w: it is sealed under the SRK named %x, and this TPM's (%s) is %x; either this is another TPM or it has been cleared",
			ErrWrongTPM, s.SRKName, t.spec, t.srk.name.Buffer)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.Public)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: sealed master key: corrupt public area: %w", err)
	}
	if !bytes.Equal(tpm2.Marshal(pub), s.Public) {
		return nil, errors.New("tpmroot: sealed master key: corrupt public area (trailing or non-canonical bytes)")
	}
	check := checkMasterPublic
	if s.Parent != nil {
		check = checkImportedMasterPublic
	}
	if err := check(pub); err != nil {
		return nil, fmt.Errorf("tpmroot: sealed master key: not a master key: %w", err)
	}

	// The wrapped private area is encrypted and integrity-protected under
	// the SRK (or the import key under it), so TPM2_Load carries nothing
	// secret in clear and needs no salted session.
	rsp, err := t.loadMasterObject(s, true)
	if err != nil {
		var fmt1 tpm2.TPMFmt1Error
		if errors.As(err, &fmt1) || errors.Is(err, tpm2.TPMRCSensitive) {
			return nil, fmt.Errorf("%w: the TPM refuses the sealed master key (made by another TPM, or corrupted): %w", ErrWrongTPM, err)
		}
		return nil, fmt.Errorf("tpmroot: loading the master key (TPM2_Load): %w", err)
	}
	r := &Root{t: t, sealed: s.clone(), handle: rsp.ObjectHandle, name: rsp.Name}
	t.roots[r] = struct{}{}
	if err := checkName(pub, rsp.Name); err != nil {
		r.flushLocked()
		return nil, fmt.Errorf("tpmroot: loading the master key: %w", err)
	}
	domain, err := r.hmacLocked([]byte(escrow.DomainLabel))
	if err != nil {
		r.flushLocked()
		return nil, fmt.Errorf("tpmroot: computing the domain id: %w", err)
	}
	if !hmac.Equal(domain, s.DomainID) {
		r.flushLocked()
		return nil, fmt.Errorf("%w: recorded %x, the TPM computes %x", ErrDomainMismatch, s.DomainID, domain)
	}
	r.domain = domain
	if s.Version >= 2 {
		// The recovery public key is only as good as its MAC: whoever
		// can write the database but not use this master key cannot put
		// a key of their own in its place.
		mac, err := r.hmacLocked(recoveryMACInput(s.RecoveryPublic))
		if err != nil {
			r.flushLocked()
			return nil, fmt.Errorf("tpmroot: checking the PIN recovery key: %w", err)
		}
		if !hmac.Equal(mac, s.RecoveryMAC) {
			r.flushLocked()
			return nil, fmt.Errorf("%w: the PIN recovery key recorded with it is not the master key's", ErrDomainMismatch)
		}
		if r.recovery, err = ecdh.X25519().NewPublicKey(s.RecoveryPublic); err != nil {
			r.flushLocked()
			return nil, fmt.Errorf("tpmroot: the PIN recovery key: %w", err)
		}
	}
	return r, nil
}

// DeriveKEK returns TPM2_HMAC(master key, label), 32 bytes. The label is at
// most MaxLabel bytes; a longer one is an error, never truncated. The HMAC
// runs in a session salted with the SRK that encrypts the result on its
// way out of the TPM.
func (r *Root) DeriveKEK(label []byte) ([]byte, error) {
	if len(label) > MaxLabel {
		return nil, fmt.Errorf("tpmroot: KEK label of %d bytes; TPM2_HMAC takes at most %d", len(label), MaxLabel)
	}
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	if r.closed || r.t.closed {
		return nil, ErrClosed
	}
	var kek []byte
	err := r.t.do(func() (err error) {
		kek, err = r.hmacLocked(label)
		return err
	})
	return kek, err
}

func (r *Root) hmacLocked(label []byte) ([]byte, error) {
	rsp, err := tpm2.Hmac{
		Handle:  tpm2.AuthHandle{Handle: r.handle, Name: r.name, Auth: r.t.srk.secretOut()},
		Buffer:  tpm2.TPM2BMaxBuffer{Buffer: label},
		HashAlg: tpm2.TPMAlgSHA256,
	}.Execute(r.t.tpm)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: TPM2_HMAC: %w", err)
	}
	if len(rsp.OutHMAC.Buffer) != 32 {
		return nil, fmt.Errorf("tpmroot: TPM2_HMAC returned %d bytes, want 32", len(rsp.OutHMAC.Buffer))
	}
	return rsp.OutHMAC.Buffer, nil
}

// DomainID returns the id of the security domain this master key belongs
// to: TPM2_HMAC(master key, escrow.DomainLabel), which equals
// escrow.DomainID of the master secret. It is not secret.
func (r *Root) DomainID() []byte { return append([]byte(nil), r.domain...) }

// Close flushes the master key from the TPM. It is idempotent, and a no-op
// after the TPM's Close (which flushes it).
func (r *Root) Close() error {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	if r.closed || r.t.closed {
		return nil
	}
	return r.flushLocked()
}

// flushLocked flushes the key and forgets it. t.mu is held.
func (r *Root) flushLocked() error {
	if r.closed {
		return nil
	}
	r.closed = true
	delete(r.t.roots, r)
	if err := flush(r.t.tpm, r.handle); err != nil {
		return fmt.Errorf("tpmroot: flushing the master key: %w", err)
	}
	return nil
}
