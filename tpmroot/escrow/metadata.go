package escrow

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// maxMetadata bounds the input to UnmarshalBinary. 255 custodians with the
// longest names, every byte escaped, fit in well under this.
const maxMetadata = 1 << 20

// Metadata describes one split: which domain, how many shares recreate it,
// and who holds which index. The daemon stores it beside the keystore. It
// holds nothing secret, and nothing that would help to recreate the secret;
// it is what lets an administrator ask the right custodians, and lets a
// recovery check that the shares brought are the ones that were handed out.
type Metadata struct {
	Version    int // the share file format version, currently 1
	Threshold  int
	DomainID   []byte // 32 bytes
	Custodians []CustodianInfo
}

// CustodianInfo records who holds one share.
type CustodianInfo struct {
	Name        string
	Fingerprint string // of the key the share is encrypted to
	Index       byte
}

// The JSON form. Field names are spelled out so that renaming a Go field
// cannot silently change a stored format, and the domain id is hex to match
// the share files' Domain header.
type jsonMetadata struct {
	Version    int             `json:"version"`
	Threshold  int             `json:"threshold"`
	DomainID   string          `json:"domain_id"`
	Custodians []jsonCustodian `json:"custodians"`
}

type jsonCustodian struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Index       int    `json:"index"`
}

// MarshalBinary encodes m as JSON. It refuses metadata that UnmarshalBinary
// would refuse, so what is stored can always be read back.
func (m Metadata) MarshalBinary() ([]byte, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	j := jsonMetadata{
		Version:    m.Version,
		Threshold:  m.Threshold,
		DomainID:   hex.EncodeToString(m.DomainID),
		Custodians: make([]jsonCustodian, len(m.Custodians)),
	}
	for i, c := range m.Custodians {
		j.Custodians[i] = jsonCustodian{Name: c.Name, Fingerprint: c.Fingerprint, Index: int(c.Index)}
	}
	out, err := json.MarshalIndent(j, "", "\t")
	if err != nil {
		return nil, fmt.Errorf("escrow: encoding metadata: %w", err)
	}
	return append(out, '\n'), nil
}

// UnmarshalBinary decodes metadata written by MarshalBinary and checks it. On
// error m is left unchanged.
func (m *Metadata) UnmarshalBinary(data []byte) error {
	if len(data) > maxMetadata {
		return fmt.Errorf("escrow: metadata is larger than %d bytes", maxMetadata)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var j jsonMetadata
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("escrow: decoding metadata: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("escrow: decoding metadata: data after the JSON object")
	}
	if len(j.Custodians) > maxShares {
		return fmt.Errorf("escrow: metadata lists %d custodians; at most %d", len(j.Custodians), maxShares)
	}
	id, err := hex.DecodeString(j.DomainID)
	if err != nil {
		return fmt.Errorf("escrow: metadata domain id %q is not hex", truncate(j.DomainID))
	}
	out := Metadata{
		Version:    j.Version,
		Threshold:  j.Threshold,
		DomainID:   id,
		Custodians: make([]CustodianInfo, len(j.Custodians)),
	}
	for i, c := range j.Custodians {
		if c.Index < 1 || c.Index > maxShares {
			return fmt.Errorf("escrow: metadata custodian %q has index %d; want 1 to %d", truncate(c.Name), c.Index, maxShares)
		}
		out.Custodians[i] = CustodianInfo{Name: c.Name, Fingerprint: c.Fingerprint, Index: byte(c.Index)}
	}
	if err := out.check(); err != nil {
		return err
	}
	*m = out
	return nil
}

// check enforces what Split guarantees: a known version, a threshold the
// custodians can meet, and custodians with distinct names, keys and indices.
func (m Metadata) check() error {
	if m.Version != formatVersion {
		return fmt.Errorf("escrow: metadata version %d is not supported; this build reads version %d", m.Version, formatVersion)
	}
	n := len(m.Custodians)
	if n < 1 || n > maxShares {
		return fmt.Errorf("escrow: metadata lists %d custodians; need 1 to %d", n, maxShares)
	}
	if m.Threshold < 1 || m.Threshold > n {
		return fmt.Errorf("escrow: metadata threshold %d with %d custodians", m.Threshold, n)
	}
	if len(m.DomainID) != domainIDLen {
		return fmt.Errorf("escrow: metadata domain id is %d bytes, want %d", len(m.DomainID), domainIDLen)
	}
	names := make(map[string]bool, n)
	fps := make(map[string]bool, n)
	var indices [maxShares + 1]bool
	for _, c := range m.Custodians {
		if err := checkName(c.Name); err != nil {
			return fmt.Errorf("escrow: metadata: %w", err)
		}
		if err := checkFingerprint(c.Fingerprint); err != nil {
			return fmt.Errorf("escrow: metadata: custodian %q: %w", c.Name, err)
		}
		if c.Index == 0 {
			return fmt.Errorf("escrow: metadata custodian %q has index 0", c.Name)
		}
		if names[c.Name] || fps[c.Fingerprint] || indices[c.Index] {
			return fmt.Errorf("escrow: metadata custodian %q repeats a name, key or index", c.Name)
		}
		names[c.Name], fps[c.Fingerprint], indices[c.Index] = true, true, true
	}
	return nil
}
