package escrow

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// DomainLabel is the HMAC label whose output identifies a security domain:
// DomainID(secret) = HMAC-SHA256(key = secret, message = DomainLabel).
//
// The TPM code computes the same value with TPM2_HMAC over the master key it
// holds, which is how a daemon tells which domain a TPM carries without the
// key ever leaving it. Changing this string orphans every domain in
// existence.
const DomainLabel = "hsmemu/domain/v1"

const (
	// secretLen is the size of the master secret: a 256-bit HMAC key.
	secretLen = 32
	// maxShares is the most shares GF(2^8) has room for: one per non-zero
	// x-coordinate.
	maxShares = 255
)

var (
	// ErrNotEnoughShares is returned by Combine when it is given fewer
	// distinct shares than their threshold. Shares from more custodians of
	// the same domain will do.
	ErrNotEnoughShares = errors.New("escrow: not enough shares")

	// ErrShareMismatch is returned by Combine when the shares do not belong
	// together: they name different domains or thresholds, two of them have
	// the same index, or the secret they recreate is not the one their
	// domain id was computed from, which means at least one share is wrong
	// or corrupted. Retrying with the same shares will not help.
	ErrShareMismatch = errors.New("escrow: shares do not match")

	// ErrIncorrectKey is returned by DecryptShare when the share file was
	// encrypted to a key other than the one given. The file may still open
	// with another custodian's key.
	ErrIncorrectKey = errors.New("escrow: share file is not encrypted to this key")
)

// DomainID returns the 32-byte identifier of the security domain whose
// master secret is secret. It is safe to publish: it is an HMAC output, and
// reveals nothing about the key.
func DomainID(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(DomainLabel))
	return m.Sum(nil)
}

// An EncryptedShare is one custodian's share, sealed to their key.
type EncryptedShare struct {
	Custodian   string // the custodian's name
	Fingerprint string // the fingerprint of the key the share is encrypted to
	Index       byte   // the share's x-coordinate, 1 to N
	// File is the PEM block, of type "HSMEMU ESCROW SHARE", to hand to the
	// custodian. It is safe to store and send in clear: only the custodian's
	// private key opens it.
	File []byte
}

// Split splits secret, which must be 32 bytes, into one share per custodian,
// so that any threshold of them recreate it and fewer reveal nothing about
// it. custodians[i] receives the share with index i+1, encrypted to its key.
// Names and key fingerprints must be unique: one person holding two shares
// would quietly lower the threshold.
//
// A threshold of 1 is allowed, and means that every custodian alone can
// recreate the secret.
//
// rnd supplies the random polynomial coefficients; nil means crypto/rand.
// The encryption to each custodian draws its own randomness from the crypto
// packages, which since Go 1.26 do not accept a caller's source.
//
// The returned Metadata records the domain id, the threshold and who holds
// which index. It is not secret, and it is what a later recovery is checked
// against.
func Split(secret []byte, threshold int, custodians []Custodian, rnd io.Reader) ([]EncryptedShare, Metadata, error) {
	if len(secret) != secretLen {
		return nil, Metadata{}, fmt.Errorf("escrow: secret is %d bytes, want %d", len(secret), secretLen)
	}
	n := len(custodians)
	if n < 1 || n > maxShares {
		return nil, Metadata{}, fmt.Errorf("escrow: %d custodians; need 1 to %d", n, maxShares)
	}
	if threshold < 1 || threshold > n {
		return nil, Metadata{}, fmt.Errorf("escrow: threshold %d with %d custodians; need 1 to %d", threshold, n, n)
	}
	if rnd == nil {
		rnd = rand.Reader
	}

	// Check every custodian before any secret is touched.
	algs := make([]string, n)
	fps := make([]string, n)
	names := make(map[string]bool, n)
	byFP := make(map[string]string, n)
	for i, c := range custodians {
		if err := checkName(c.Name); err != nil {
			return nil, Metadata{}, fmt.Errorf("escrow: %w", err)
		}
		alg, err := c.algorithm()
		if err != nil {
			return nil, Metadata{}, err
		}
		fp := c.Fingerprint()
		if fp == "" {
			return nil, Metadata{}, fmt.Errorf("escrow: custodian %q: cannot encode key", c.Name)
		}
		if names[c.Name] {
			return nil, Metadata{}, fmt.Errorf("escrow: two custodians named %q", c.Name)
		}
		if other, ok := byFP[fp]; ok {
			return nil, Metadata{}, fmt.Errorf("escrow: custodians %q and %q have the same key %s", other, c.Name, fp)
		}
		names[c.Name] = true
		byFP[fp] = c.Name
		algs[i], fps[i] = alg, fp
	}

	domainID := DomainID(secret)
	ys, err := shamirSplit(secret, threshold, n, rnd)
	if err != nil {
		return nil, Metadata{}, err
	}
	defer func() {
		for _, y := range ys {
			clear(y)
		}
	}()

	meta := Metadata{
		Version:    formatVersion,
		Threshold:  threshold,
		DomainID:   bytes.Clone(domainID),
		Custodians: make([]CustodianInfo, 0, n),
	}
	out := make([]EncryptedShare, 0, n)
	for i, c := range custodians {
		h := &header{
			algorithm:   algs[i],
			domainID:    domainID,
			threshold:   threshold,
			index:       byte(i + 1),
			custodian:   c.Name,
			fingerprint: fps[i],
		}
		record := marshalRecord(domainID, threshold, h.index, ys[i])
		ct, err := seal(c.Key, h.context(), record)
		clear(record)
		if err != nil {
			return nil, Metadata{}, fmt.Errorf("escrow: encrypting share for custodian %q: %w", c.Name, err)
		}
		file, err := encodeShareFile(h, ct)
		if err != nil {
			return nil, Metadata{}, err
		}
		out = append(out, EncryptedShare{Custodian: c.Name, Fingerprint: fps[i], Index: h.index, File: file})
		meta.Custodians = append(meta.Custodians, CustodianInfo{Name: c.Name, Fingerprint: fps[i], Index: h.index})
	}
	return out, meta, nil
}

// A Share is one decrypted share of a master secret. Its Value is secret:
// threshold shares of one domain recreate the master key. Wipe it once
// Combine has run.
type Share struct {
	DomainID  []byte // the domain the share belongs to, 32 bytes
	Threshold int    // how many shares of the domain recreate its secret
	Index     byte   // the x-coordinate, 1 to 255
	Value     []byte // the y-values, one per byte of the secret: 32 bytes
}

// Wipe zeroes the share's value.
func (s *Share) Wipe() {
	if s != nil {
		clear(s.Value)
	}
}

// String describes the share without its value, so that a share that ends
// up in a log line or an error message gives nothing away.
func (s Share) String() string {
	return fmt.Sprintf("escrow.Share{DomainID: %x, Threshold: %d, Index: %d, Value: REDACTED}", s.DomainID, s.Threshold, s.Index)
}

// GoString is String, so that %#v redacts too.
func (s Share) GoString() string { return s.String() }

// MarshalJSON refuses: a share has no business in a JSON document.
func (s Share) MarshalJSON() ([]byte, error) {
	return nil, errors.New("escrow: refusing to marshal a share to JSON")
}

// Combine recreates the master secret from shares of one domain. It needs at
// least Threshold shares with distinct indices; with fewer it returns an
// error wrapping ErrNotEnoughShares. Shares that disagree on the domain or
// the threshold, repeat an index, or recreate a secret whose DomainID is not
// theirs return an error wrapping ErrShareMismatch. Every share given is
// used, so one bad share among more than enough is detected, not skipped.
//
// The shares are not modified; the caller wipes them, and the returned
// secret once it is in the TPM.
func Combine(shares []*Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, fmt.Errorf("%w: no shares given", ErrNotEnoughShares)
	}
	for i, s := range shares {
		switch {
		case s == nil:
			return nil, fmt.Errorf("escrow: share %d of %d is nil", i+1, len(shares))
		case len(s.DomainID) != domainIDLen:
			return nil, fmt.Errorf("escrow: share %d has a %d-byte domain id, want %d", s.Index, len(s.DomainID), domainIDLen)
		case len(s.Value) != secretLen:
			return nil, fmt.Errorf("escrow: share %d has a %d-byte value, want %d", s.Index, len(s.Value), secretLen)
		case s.Threshold < 1 || s.Threshold > maxShares:
			return nil, fmt.Errorf("escrow: share %d has threshold %d, want 1 to %d", s.Index, s.Threshold, maxShares)
		case s.Index == 0:
			return nil, errors.New("escrow: share with index 0: that would be the secret itself")
		}
	}
	first := shares[0]
	var seen [maxShares + 1]bool
	xs := make([]byte, len(shares))
	ys := make([][]byte, len(shares))
	for i, s := range shares {
		if !bytes.Equal(s.DomainID, first.DomainID) {
			return nil, fmt.Errorf("%w: share %d is for domain %x, share %d for domain %x", ErrShareMismatch, s.Index, s.DomainID, first.Index, first.DomainID)
		}
		if s.Threshold != first.Threshold {
			return nil, fmt.Errorf("%w: share %d has threshold %d, share %d has %d", ErrShareMismatch, s.Index, s.Threshold, first.Index, first.Threshold)
		}
		if seen[s.Index] {
			return nil, fmt.Errorf("%w: two shares with index %d", ErrShareMismatch, s.Index)
		}
		seen[s.Index] = true
		xs[i], ys[i] = s.Index, s.Value
	}
	if len(shares) < first.Threshold {
		return nil, fmt.Errorf("%w: have %d of the %d needed", ErrNotEnoughShares, len(shares), first.Threshold)
	}
	secret := shamirCombine(xs, ys)
	if !hmac.Equal(DomainID(secret), first.DomainID) {
		clear(secret)
		return nil, fmt.Errorf("%w: the recreated secret is not that of domain %x; a share is wrong or corrupted", ErrShareMismatch, first.DomainID)
	}
	return secret, nil
}
