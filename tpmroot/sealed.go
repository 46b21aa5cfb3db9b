package tpmroot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// SealedVersion is the current version of Sealed and its encoding for a
// master key made in this TPM under its SRK. Version 1 (before PIN
// recovery keys) is still read and loaded. SealedImportedVersion is one
// imported from another node's duplication blob (masterdup.go): version
// 2's fields and the import key it is loaded under.
const (
	SealedVersion         = 2
	SealedImportedVersion = 3
)

// Sealed is the master key wrapped by one TPM: what the keystore persists.
// Nothing in it is secret in clear: the private area is encrypted and
// integrity-protected under the SRK of the TPM that made it, and is useless
// anywhere else.
type Sealed struct {
	Version  int    // SealedVersion
	SRKName  []byte // TPM name of the SRK it was sealed under
	Public   []byte // TPMT_PUBLIC of the master key
	Private  []byte // TPM2B_PRIVATE contents: the wrapped sensitive area
	DomainID []byte // escrow.DomainID of the master secret, 32 bytes
	// RecoveryPublic is the X25519 public key PIN records' recovery
	// copies are encrypted to (version 2): its private key is derived from
	// the master secret in software, never by the TPM (RecoveryKey).
	// RecoveryMAC is TPM2_HMAC(master key, "hsmemu/pin-recovery-public/v1"
	// ‖ RecoveryPublic), checked by Load, so that only someone who can use
	// the master key can put another public key here. Both are nil in
	// version 1.
	RecoveryPublic []byte
	RecoveryMAC    []byte
	// Parent is, in version 3, the node's import key (ImportKey's
	// encoding, TPM-wrapped under SRKName) that Private is wrapped
	// under: the master key was imported from a duplication blob a
	// rotation made for this node. Nil in versions 1 and 2.
	Parent []byte
}

// The encoding:
//
//	"HSMK" | version u8 | srk name | public | private | domain id [| recovery public | recovery mac [| parent]]
//
// where each field is a big-endian u16 length and that many bytes; the
// recovery key and its MAC are in versions 2 and 3, the parent in 3 only.
// Decoding accepts exactly what encoding produces: version 1 to 3, every
// length within its bound, no trailing bytes.
const sealedMagic = "HSMK"

// Bounds on the fields. A name is a 2-byte hash algorithm and a digest
// (64 bytes at most, SHA-512); the public and private areas of an HMAC key
// are about a hundred bytes each, far under these caps.
const (
	maxNameLen     = 2 + 64
	maxAreaLen     = 2048
	domainIDLength = 32
	recoveryLength = 32
	// An import key's encoding: magic, version, two areas.
	maxImportKeyLen = len(importKeyMagic) + 1 + 2*(2+maxAreaLen)
)

// clone returns a copy of s that shares nothing with it.
func (s *Sealed) clone() *Sealed {
	return &Sealed{Version: s.Version, SRKName: bytes.Clone(s.SRKName), Public: bytes.Clone(s.Public),
		Private: bytes.Clone(s.Private), DomainID: bytes.Clone(s.DomainID), RecoveryPublic: bytes.Clone(s.RecoveryPublic),
		RecoveryMAC: bytes.Clone(s.RecoveryMAC), Parent: bytes.Clone(s.Parent)}
}

// check validates field lengths and the version.
func (s *Sealed) check() error {
	switch {
	case s.Version < 1 || s.Version > SealedImportedVersion:
		return fmt.Errorf("version %d, want 1 to %d", s.Version, SealedImportedVersion)
	case len(s.SRKName) < 3 || len(s.SRKName) > maxNameLen:
		return fmt.Errorf("%d-byte SRK name", len(s.SRKName))
	case len(s.Public) == 0 || len(s.Public) > maxAreaLen:
		return fmt.Errorf("%d-byte public area", len(s.Public))
	case len(s.Private) == 0 || len(s.Private) > maxAreaLen:
		return fmt.Errorf("%d-byte private area", len(s.Private))
	case len(s.DomainID) != domainIDLength:
		return fmt.Errorf("%d-byte domain id, want %d", len(s.DomainID), domainIDLength)
	case s.Version == 1 && (s.RecoveryPublic != nil || s.RecoveryMAC != nil):
		return errors.New("a version 1 sealed master key has no recovery key")
	case s.Version >= 2 && (len(s.RecoveryPublic) != recoveryLength || len(s.RecoveryMAC) != recoveryLength):
		return fmt.Errorf("%d-byte recovery key, %d-byte MAC, want %d", len(s.RecoveryPublic), len(s.RecoveryMAC), recoveryLength)
	case s.Version < SealedImportedVersion && s.Parent != nil:
		return errors.New("only a version 3 sealed master key has a parent import key")
	case s.Version == SealedImportedVersion && (len(s.Parent) == 0 || len(s.Parent) > maxImportKeyLen):
		return fmt.Errorf("%d-byte parent import key", len(s.Parent))
	}
	return nil
}

// fields are the encoded fields of s's version.
func (s *Sealed) fields() []*[]byte {
	f := []*[]byte{&s.SRKName, &s.Public, &s.Private, &s.DomainID}
	if s.Version >= 2 {
		f = append(f, &s.RecoveryPublic, &s.RecoveryMAC)
	}
	if s.Version >= SealedImportedVersion {
		f = append(f, &s.Parent)
	}
	return f
}

// MarshalBinary encodes s.
func (s *Sealed) MarshalBinary() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("tpmroot: marshalling sealed master key: %w", err)
	}
	fields := s.fields()
	n := len(sealedMagic) + 1
	for _, f := range fields {
		n += 2 + len(*f)
	}
	b := make([]byte, 0, n)
	b = append(b, sealedMagic...)
	b = append(b, byte(s.Version))
	for _, f := range fields {
		b = binary.BigEndian.AppendUint16(b, uint16(len(*f)))
		b = append(b, *f...)
	}
	return b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded. It never panics, and
// leaves s unchanged on error. The result does not alias data.
func (s *Sealed) UnmarshalBinary(data []byte) error {
	if len(data) < len(sealedMagic)+1 || string(data[:len(sealedMagic)]) != sealedMagic {
		return errors.New("tpmroot: not a sealed master key")
	}
	v := Sealed{Version: int(data[len(sealedMagic)])}
	if v.Version < 1 || v.Version > SealedImportedVersion {
		return fmt.Errorf("tpmroot: sealed master key of version %d; this hsmemu reads versions 1 to %d", v.Version, SealedImportedVersion)
	}
	rest := data[len(sealedMagic)+1:]
	for _, f := range v.fields() {
		if len(rest) < 2 {
			return errors.New("tpmroot: sealed master key truncated")
		}
		n := int(binary.BigEndian.Uint16(rest))
		rest = rest[2:]
		if len(rest) < n {
			return errors.New("tpmroot: sealed master key truncated")
		}
		*f = append([]byte(nil), rest[:n]...)
		rest = rest[n:]
	}
	if len(rest) != 0 {
		return fmt.Errorf("tpmroot: %d trailing bytes after the sealed master key", len(rest))
	}
	if err := v.check(); err != nil {
		return fmt.Errorf("tpmroot: sealed master key: %w", err)
	}
	*s = v
	return nil
}
