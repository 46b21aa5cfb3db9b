package tpmroot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// A node's import key: the TPM-resident key other nodes of its domain
// encrypt to it (TPM2_Import's new parent: a duplication blob, or a master
// secret at a rotation, made for this TPM alone). It is a storage key, an
// ECC P-256 restricted decryption key created under the SRK from the
// standard storage template (fixedTPM | fixedParent |
// sensitiveDataOrigin | userWithAuth | noDA | restricted | decrypt,
// AES-128-CFB for its children): its private part is made by the TPM and
// never leaves it in clear; the keystore keeps its public area and its
// private area wrapped under the SRK, which only this TPM loads.
//
//	"HSIK" | version u8 (1) | public (u16 length) | private (u16 length)

const (
	importKeyMagic   = "HSIK"
	importKeyVersion = 1
)

// ImportKey is a node's import key as the keystore keeps it.
type ImportKey struct {
	Public  []byte // TPMT_PUBLIC
	Private []byte // TPM2B_PRIVATE contents, wrapped under the SRK
}

// MarshalBinary encodes k.
func (k *ImportKey) MarshalBinary() ([]byte, error) {
	if len(k.Public) == 0 || len(k.Public) > maxAreaLen || len(k.Private) == 0 || len(k.Private) > maxAreaLen {
		return nil, errors.New("tpmroot: an import key's areas out of range")
	}
	b := append([]byte(importKeyMagic), importKeyVersion)
	for _, f := range [][]byte{k.Public, k.Private} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded, exactly, and checks
// that the public area is an import key's.
func (k *ImportKey) UnmarshalBinary(b []byte) error {
	if len(b) < len(importKeyMagic)+1 || string(b[:len(importKeyMagic)]) != importKeyMagic || b[len(importKeyMagic)] != importKeyVersion {
		return errors.New("tpmroot: not an import key")
	}
	rest := b[len(importKeyMagic)+1:]
	var v ImportKey
	for _, f := range []*[]byte{&v.Public, &v.Private} {
		if len(rest) < 2 {
			return errors.New("tpmroot: import key truncated")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest)-2 < n || n == 0 || n > maxAreaLen {
			return errors.New("tpmroot: import key truncated or out of range")
		}
		*f, rest = append([]byte(nil), rest[2:2+n]...), rest[2+n:]
	}
	if len(rest) != 0 {
		return errors.New("tpmroot: trailing bytes after an import key")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](v.Public)
	if err != nil || string(tpm2.Marshal(pub)) != string(v.Public) {
		return errors.New("tpmroot: import key: corrupt public area")
	}
	if err := checkImportPublic(pub); err != nil {
		return fmt.Errorf("tpmroot: import key: %w", err)
	}
	*k = v
	return nil
}

// Name is the import key's TPM name, which a duplication blob for it is
// bound to.
func (k *ImportKey) Name() ([]byte, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
	if err != nil {
		return nil, err
	}
	n, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// checkImportPublic checks a public area against the template.
func checkImportPublic(pub *tpm2.TPMTPublic) error {
	want := tpm2.ECCSRKTemplate
	if pub.Type != want.Type || pub.NameAlg != want.NameAlg || pub.ObjectAttributes != want.ObjectAttributes || len(pub.AuthPolicy.Buffer) != 0 {
		return errors.New("not a storage key of the standard template (type, name algorithm, attributes or policy)")
	}
	return nil
}

// CreateImportKey creates this TPM's import key under the SRK. Nothing is
// secret in the command or its response.
func (t *TPM) CreateImportKey() (*ImportKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	var rsp *tpm2.CreateResponse
	restore, err := t.makingRoom(func() (err error) {
		rsp, err = tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute(t.tpm)
		return err
	})
	if rerr := restore(); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, fmt.Errorf("tpmroot: creating the node's import key (TPM2_Create): %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpmroot: the import key's public area: %w", err)
	}
	if err := checkImportPublic(pub); err != nil {
		return nil, fmt.Errorf("tpmroot: the TPM created an import key unlike the template: %w", err)
	}
	return &ImportKey{Public: append([]byte(nil), rsp.OutPublic.Bytes()...), Private: append([]byte(nil), rsp.OutPrivate.Buffer...)}, nil
}
