package tpmroot

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// srk is the storage root key, recreated at every Open.
type srk struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	public tpm2.TPMTPublic // for salting sessions
}

// createSRK creates the SRK in the owner hierarchy from the TCG's standard
// ECC P-256 template. The owner seed fixes the key, so the same TPM gives
// the same SRK, with the same name, every time, and nothing needs to be
// made persistent (no NV handle to allocate, collide with other software,
// or leave behind). The owner's authorisation is the empty password, as on
// a stock TPM.
func createSRK(t transport.TPM) (srk, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(t)
	if errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail) {
		return srk{}, fmt.Errorf("tpmroot: creating the SRK: the TPM's owner hierarchy has a password; hsmemu needs the empty owner authorisation: %w", err)
	}
	if err != nil {
		return srk{}, fmt.Errorf("tpmroot: creating the SRK: %w", err)
	}
	s := srk{handle: rsp.ObjectHandle, name: rsp.Name}
	pub, err := rsp.OutPublic.Contents()
	if err == nil {
		s.public = *pub
		err = checkName(pub, rsp.Name)
	}
	if err != nil {
		flush(t, rsp.ObjectHandle)
		return srk{}, fmt.Errorf("tpmroot: SRK: %w", err)
	}
	return s, nil
}

// checkName checks that name is the TPM name of pub: a response whose
// public area and name disagree is corrupt.
func checkName(pub *tpm2.TPMTPublic, name tpm2.TPM2BName) error {
	want, err := tpm2.ObjectName(pub)
	if err != nil {
		return fmt.Errorf("computing object name: %w", err)
	}
	if !bytes.Equal(want.Buffer, name.Buffer) {
		return errors.New("the TPM returned a name that does not match the public area")
	}
	return nil
}

// Sessions. Every command that carries a secret runs in a one-use HMAC
// session salted with the SRK: the session key is derived from a salt that
// only this TPM can decrypt, and AES-128-CFB parameter encryption under
// that key hides the first parameter in the chosen direction. Someone
// reading the bus (an LPC/SPI sniffer, or anything between us and swtpm's
// socket) sees only ciphertext. The salt is encrypted to the SRK's public
// key as the TPM reported it; telling a genuine TPM from an active
// impostor would need attestation of the SRK, which this package does not
// do.

// secretIn is a session for a command whose first parameter is secret
// (TPM2_Create carrying the master secret).
func (s srk) secretIn() tpm2.Session {
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(s.handle, s.public))
}

// secretOut is a session for a command whose first response parameter is
// secret (TPM2_HMAC returning a KEK). The command's first parameter is
// encrypted too: KEK labels name tokens, which is nobody's business.
func (s srk) secretOut() tpm2.Session {
	return tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptInOut), tpm2.Salted(s.handle, s.public))
}
