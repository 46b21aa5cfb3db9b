package escrow

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The share file format, version 1.
//
// A share file is one PEM block of type "HSMEMU ESCROW SHARE" with exactly
// the headers below, in the order encoding/pem writes them, and the
// ciphertext as its body. The plaintext is the 67-byte record
//
//	version (1) ‖ domain id (32) ‖ threshold (1) ‖ index (1) ‖ share value (32)
//
// The clear headers are the HPKE info or the OAEP label, serialised by
// (*header).context as "hsmemu/escrow/v1\n" followed by one "Name: value\n"
// line for each of Version, Algorithm, Domain, Threshold, Index, Custodian
// and Fingerprint, in that order. An edited header changes the key schedule
// and the file no longer decrypts. The record repeats the fields that
// matter to recovery, and DecryptShare checks that it agrees with the
// headers, so a file that was consistent when sealed is the only kind that
// opens.
//
// Nothing in the format is particular to this package. An RSA share opens
// with `openssl pkeyutl -decrypt` (OAEP, SHA-256 for both the hash and MGF1,
// the context as the label), which was checked against testdata when the
// format was written. An HPKE share is a single-shot base-mode Seal (the
// encapsulated key, then the ciphertext; no AAD) that any RFC 9180
// implementation opens. A recovery does not depend on this code surviving.
const (
	shareBlockType = "HSMEMU ESCROW SHARE"
	formatVersion  = 1
	recordVersion  = 1
	contextLabel   = "hsmemu/escrow/v1"

	domainIDLen = sha256.Size
	recordLen   = 1 + domainIDLen + 1 + 1 + secretLen

	// maxShareFile bounds a share file before any parsing. The largest
	// legitimate one (RSA-16384) is under 4 KiB.
	maxShareFile = 16 << 10
	// maxCiphertext is the largest body any accepted key produces: one
	// RSA-16384 block. HPKE bodies are at most 133+67+16 bytes.
	maxCiphertext = maxRSABits / 8
)

// The PEM header names, in the order they enter the authenticated context.
const (
	hdrVersion     = "Version"
	hdrAlgorithm   = "Algorithm"
	hdrDomain      = "Domain"
	hdrThreshold   = "Threshold"
	hdrIndex       = "Index"
	hdrCustodian   = "Custodian"
	hdrFingerprint = "Fingerprint"
)

var headerOrder = []string{hdrVersion, hdrAlgorithm, hdrDomain, hdrThreshold, hdrIndex, hdrCustodian, hdrFingerprint}

// header is the clear part of a share file.
type header struct {
	algorithm   string
	domainID    []byte
	threshold   int
	index       byte
	custodian   string
	fingerprint string
}

func (h *header) values() map[string]string {
	return map[string]string{
		hdrVersion:     strconv.Itoa(formatVersion),
		hdrAlgorithm:   h.algorithm,
		hdrDomain:      hex.EncodeToString(h.domainID),
		hdrThreshold:   strconv.Itoa(h.threshold),
		hdrIndex:       strconv.Itoa(int(h.index)),
		hdrCustodian:   h.custodian,
		hdrFingerprint: h.fingerprint,
	}
}

// context returns the bytes every share is bound to: a label naming this
// format, then each header as "Name: value\n" in a fixed order. No value may
// contain a newline (checkName and the parsers see to it), so the encoding is
// unambiguous. It includes the domain id and the index, so a ciphertext
// cannot be moved under another file's headers.
func (h *header) context() []byte {
	v := h.values()
	var b bytes.Buffer
	b.WriteString(contextLabel + "\n")
	for _, k := range headerOrder {
		b.WriteString(k + ": " + v[k] + "\n")
	}
	return b.Bytes()
}

// encodeShareFile writes the PEM file for one sealed share.
func encodeShareFile(h *header, ciphertext []byte) ([]byte, error) {
	file := pem.EncodeToMemory(&pem.Block{Type: shareBlockType, Headers: h.values(), Bytes: ciphertext})
	if file == nil {
		return nil, errors.New("escrow: internal error: encoding share file")
	}
	// Read it back: a name that did not survive the trip through a PEM
	// header would make the file undecryptable, and better to learn that
	// now than at recovery time.
	got, _, err := parseShareFile(file)
	if err != nil {
		return nil, fmt.Errorf("escrow: custodian %q: share file does not read back: %w", h.custodian, err)
	}
	if !bytes.Equal(got.context(), h.context()) {
		return nil, fmt.Errorf("escrow: custodian %q: share file headers do not read back unchanged", h.custodian)
	}
	return file, nil
}

// parseShareFile parses the clear part of a share file and returns its
// headers and ciphertext. It accepts only the exact bytes encodeShareFile
// writes, up to CRLF line endings and white space around the block.
func parseShareFile(file []byte) (*header, []byte, error) {
	if len(file) > maxShareFile {
		return nil, nil, fmt.Errorf("escrow: share file is larger than %d bytes", maxShareFile)
	}
	norm := bytes.ReplaceAll(file, []byte("\r\n"), []byte("\n"))
	norm = append(bytes.TrimSpace(norm), '\n')
	block, rest := pem.Decode(norm)
	if block == nil {
		return nil, nil, errors.New("escrow: not a share file: no PEM block")
	}
	if block.Type != shareBlockType {
		return nil, nil, fmt.Errorf("escrow: not a share file: PEM block of type %q, want %q", truncate(block.Type), shareBlockType)
	}
	if len(rest) != 0 {
		return nil, nil, errors.New("escrow: share file has data after the PEM block")
	}
	if !bytes.Equal(pem.EncodeToMemory(block), norm) {
		return nil, nil, errors.New("escrow: share file is not in canonical form; was it edited or re-wrapped?")
	}
	h, err := parseHeaders(block.Headers)
	if err != nil {
		return nil, nil, err
	}
	if len(block.Bytes) == 0 || len(block.Bytes) > maxCiphertext {
		return nil, nil, fmt.Errorf("escrow: share ciphertext of %d bytes is out of range", len(block.Bytes))
	}
	return h, block.Bytes, nil
}

func parseHeaders(m map[string]string) (*header, error) {
	if len(m) != len(headerOrder) {
		return nil, fmt.Errorf("escrow: share file has %d headers, want %d", len(m), len(headerOrder))
	}
	for _, k := range headerOrder {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("escrow: share file has no %s header", k)
		}
	}
	if v := m[hdrVersion]; v != strconv.Itoa(formatVersion) {
		return nil, fmt.Errorf("escrow: share file format version %q is not supported; this build reads version %d", truncate(v), formatVersion)
	}
	h := &header{
		algorithm:   m[hdrAlgorithm],
		custodian:   m[hdrCustodian],
		fingerprint: m[hdrFingerprint],
	}
	switch h.algorithm {
	case algRSA, algX25519, algP256, algP384, algP521:
	default:
		return nil, fmt.Errorf("escrow: share file algorithm %q is not supported", truncate(h.algorithm))
	}
	var err error
	if h.domainID, err = parseDomainID(m[hdrDomain]); err != nil {
		return nil, err
	}
	if h.threshold, err = parseSmallInt(hdrThreshold, m[hdrThreshold]); err != nil {
		return nil, err
	}
	index, err := parseSmallInt(hdrIndex, m[hdrIndex])
	if err != nil {
		return nil, err
	}
	h.index = byte(index)
	if err := checkName(h.custodian); err != nil {
		return nil, fmt.Errorf("escrow: share file: %w", err)
	}
	if err := checkFingerprint(h.fingerprint); err != nil {
		return nil, fmt.Errorf("escrow: share file: %w", err)
	}
	return h, nil
}

// parseDomainID accepts exactly the lower-case hex that hex.EncodeToString
// writes for a 32-byte domain id.
func parseDomainID(s string) ([]byte, error) {
	id, err := hex.DecodeString(s)
	if err != nil || len(id) != domainIDLen || hex.EncodeToString(id) != s {
		return nil, fmt.Errorf("escrow: malformed domain id %q", truncate(s))
	}
	return id, nil
}

// parseSmallInt accepts exactly the decimal strconv.Itoa writes for 1..255.
func parseSmallInt(name, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxShares || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("escrow: malformed %s %q; want 1 to %d", strings.ToLower(name), truncate(s), maxShares)
	}
	return n, nil
}

// seal encrypts a share record to one custodian.
func seal(pub crypto.PublicKey, context, record []byte) ([]byte, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsa.EncryptOAEP(sha256.New(), rand.Reader, k, record, context)
	case *ecdh.PublicKey:
		pk, err := hpke.NewDHKEMPublicKey(k)
		if err != nil {
			return nil, err
		}
		return hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), context, record)
	}
	return nil, fmt.Errorf("escrow: internal error: no encryption for %T", pub)
}

// opener returns the public half of priv and a function that decrypts a share
// ciphertext with it. The function's result is secret; its caller wipes it.
func opener(priv crypto.PrivateKey) (crypto.PublicKey, func(ct, context []byte) ([]byte, error), error) {
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		if k == nil || k.N == nil {
			return nil, nil, errors.New("escrow: nil RSA private key")
		}
		return &k.PublicKey, func(ct, context []byte) ([]byte, error) {
			if len(ct) != k.Size() {
				return nil, errors.New("ciphertext length does not match the key")
			}
			return rsa.DecryptOAEP(sha256.New(), nil, k, ct, context)
		}, nil
	case *ecdsa.PrivateKey:
		if k == nil {
			return nil, nil, errors.New("escrow: nil ECDSA private key")
		}
		e, err := k.ECDH()
		if err != nil {
			return nil, nil, fmt.Errorf("escrow: ECDSA key cannot be used for key agreement: %w", err)
		}
		return opener(e)
	case *ecdh.PrivateKey:
		if k == nil {
			return nil, nil, errors.New("escrow: nil ECDH private key")
		}
		return hpkeOpener(k)
	case ed25519.PrivateKey:
		return nil, nil, errors.New("escrow: Ed25519 keys can only sign; no share is encrypted to one")
	case ecdh.KeyExchanger:
		// An X25519 or NIST curve key held elsewhere, such as in a token.
		return hpkeOpener(k)
	case crypto.Decrypter:
		// An RSA key held elsewhere that can do OAEP, such as in a token.
		pub, ok := k.Public().(*rsa.PublicKey)
		if !ok {
			return nil, nil, fmt.Errorf("escrow: unsupported decrypter with %T public key", k.Public())
		}
		return pub, func(ct, context []byte) ([]byte, error) {
			return k.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256, Label: context})
		}, nil
	case nil:
		return nil, nil, errors.New("escrow: no private key")
	}
	return nil, nil, fmt.Errorf("escrow: unsupported private key type %T", priv)
}

func hpkeOpener(k ecdh.KeyExchanger) (crypto.PublicKey, func(ct, context []byte) ([]byte, error), error) {
	pub := k.PublicKey()
	if pub == nil {
		return nil, nil, errors.New("escrow: ECDH private key has no public key")
	}
	sk, err := hpke.NewDHKEMPrivateKey(k)
	if err != nil {
		return nil, nil, fmt.Errorf("escrow: unsupported ECDH key: %w", err)
	}
	return pub, func(ct, context []byte) ([]byte, error) {
		return hpke.Open(sk, hpke.HKDFSHA256(), hpke.AES256GCM(), context, ct)
	}, nil
}

// DecryptShare opens one share file with its custodian's private key: an
// *rsa.PrivateKey, an *ecdh.PrivateKey, or an *ecdsa.PrivateKey (converted
// with its ECDH method). Keys held elsewhere are accepted as an
// ecdh.KeyExchanger, or as a crypto.Decrypter with an RSA public key that
// supports OAEP.
//
// A file that was encrypted to a different key returns an error wrapping
// ErrIncorrectKey, without any decryption being attempted. A file whose
// headers or ciphertext were altered returns some other error.
func DecryptShare(file []byte, priv crypto.PrivateKey) (*Share, error) {
	h, ct, err := parseShareFile(file)
	if err != nil {
		return nil, err
	}
	pub, open, err := opener(priv)
	if err != nil {
		return nil, err
	}
	alg, err := keyAlgorithm(h.custodian, pub)
	if err != nil {
		return nil, err
	}
	if alg != h.algorithm {
		return nil, fmt.Errorf("%w: share for custodian %q is encrypted with %s, this key is for %s", ErrIncorrectKey, h.custodian, h.algorithm, alg)
	}
	if fp := fingerprint(pub); fp != h.fingerprint {
		return nil, fmt.Errorf("%w: share belongs to custodian %q with key %s, this key is %s", ErrIncorrectKey, h.custodian, h.fingerprint, fp)
	}
	pt, err := open(ct, h.context())
	if err != nil {
		// The key is the right one, so the file was altered or damaged.
		// The cause is deliberately not detailed any further: padding
		// oracles live in the difference between failures.
		return nil, fmt.Errorf("escrow: share %d for custodian %q does not decrypt: the file was altered or damaged", h.index, h.custodian)
	}
	defer clear(pt)
	if len(pt) != recordLen || pt[0] != recordVersion {
		return nil, fmt.Errorf("escrow: share %d for custodian %q holds a malformed record", h.index, h.custodian)
	}
	s := &Share{
		DomainID:  bytes.Clone(pt[1 : 1+domainIDLen]),
		Threshold: int(pt[1+domainIDLen]),
		Index:     pt[2+domainIDLen],
		Value:     bytes.Clone(pt[3+domainIDLen:]),
	}
	if !bytes.Equal(s.DomainID, h.domainID) || s.Threshold != h.threshold || s.Index != h.index {
		s.Wipe()
		return nil, fmt.Errorf("escrow: share %d for custodian %q: encrypted record disagrees with the file headers", h.index, h.custodian)
	}
	return s, nil
}

// marshalRecord returns the plaintext of one share. The caller wipes it.
func marshalRecord(domainID []byte, threshold int, index byte, value []byte) []byte {
	r := make([]byte, 0, recordLen)
	r = append(r, recordVersion)
	r = append(r, domainID...)
	r = append(r, byte(threshold), index)
	r = append(r, value...)
	return r
}
