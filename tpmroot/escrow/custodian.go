package escrow

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	// minRSABits is the smallest RSA modulus a share is encrypted to. Shares
	// are kept for years; 2048 bits is the floor NIST allows through 2030.
	minRSABits = 2048
	// maxRSABits bounds the cost of parsing and using a custodian's key, and
	// with it the size of an RSA share file.
	maxRSABits = 16384
	// maxNameLen bounds a custodian name: it is a label, not a document.
	maxNameLen = 128
	// maxCustodianPEM bounds the input to ParseCustodianPEM. The largest key
	// accepted (RSA-16384) is about 2.8 KiB of PEM.
	maxCustodianPEM = 64 << 10
)

// A Custodian is a person (or a key held on their behalf) who receives one
// share of the master secret.
type Custodian struct {
	// Name is free text, such as the base name of the key file. It is written
	// in clear into the share file and the metadata, and is never secret.
	Name string
	// Key is an *rsa.PublicKey of at least 2048 bits, or an *ecdh.PublicKey
	// on X25519, P-256, P-384 or P-521.
	Key crypto.PublicKey
}

// ParseCustodianPEM parses a custodian's public key from a PEM block of type
// "PUBLIC KEY" (PKIX), as written by `openssl pkey -pubout`. It accepts RSA
// keys of at least 2048 bits, ECDSA keys on P-256, P-384 and P-521 (which are
// converted to *ecdh.PublicKey: the same point serves key agreement), and
// X25519 keys. Ed25519 keys are refused: they can only sign.
func ParseCustodianPEM(name string, pemBytes []byte) (Custodian, error) {
	if err := checkName(name); err != nil {
		return Custodian{}, fmt.Errorf("escrow: %w", err)
	}
	if len(pemBytes) > maxCustodianPEM {
		return Custodian{}, fmt.Errorf("escrow: custodian %q: key file is larger than %d bytes", name, maxCustodianPEM)
	}
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return Custodian{}, fmt.Errorf("escrow: custodian %q: no PEM block found", name)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return Custodian{}, fmt.Errorf("escrow: custodian %q: data after the PEM block; expected exactly one PUBLIC KEY", name)
	}
	switch block.Type {
	case "PUBLIC KEY":
	case "RSA PUBLIC KEY":
		return Custodian{}, fmt.Errorf("escrow: custodian %q: PKCS#1 \"RSA PUBLIC KEY\" block; convert it with `openssl rsa -RSAPublicKey_in -pubout`", name)
	case "CERTIFICATE":
		return Custodian{}, fmt.Errorf("escrow: custodian %q: certificate, not a public key; extract it with `openssl x509 -pubkey -noout`", name)
	default:
		if strings.Contains(block.Type, "PRIVATE KEY") {
			// Never echo any of it: the caller was handed a secret by mistake.
			return Custodian{}, fmt.Errorf("escrow: custodian %q: this is a private key; give the custodian's public key", name)
		}
		return Custodian{}, fmt.Errorf("escrow: custodian %q: PEM block of type %q, want \"PUBLIC KEY\"", name, block.Type)
	}
	if len(block.Headers) != 0 {
		return Custodian{}, fmt.Errorf("escrow: custodian %q: unexpected PEM headers in PUBLIC KEY block", name)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return Custodian{}, fmt.Errorf("escrow: custodian %q: parsing public key: %w", name, err)
	}
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		e, err := k.ECDH()
		if err != nil {
			return Custodian{}, fmt.Errorf("escrow: custodian %q: ECDSA key on %s cannot be used for key agreement: %w", name, k.Curve.Params().Name, err)
		}
		pub = e
	}
	c := Custodian{Name: name, Key: pub}
	if _, err := c.algorithm(); err != nil {
		return Custodian{}, err
	}
	return c, nil
}

// Fingerprint returns "SHA256:" followed by the unpadded standard base64 of
// the SHA-256 hash of the key's PKIX DER encoding, in the style of
// ssh-keygen -l. An ECDSA key and its ECDH conversion share one encoding, so
// one fingerprint. It returns the empty string for a key that has no PKIX
// encoding.
func (c Custodian) Fingerprint() string {
	return fingerprint(c.Key)
}

func fingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// fingerprintLen is the length of every string fingerprint returns.
var fingerprintLen = len("SHA256:") + base64.RawStdEncoding.EncodedLen(sha256.Size)

// checkFingerprint checks that s has the form fingerprint produces. It does
// not check that any key has it.
func checkFingerprint(s string) error {
	rest, ok := strings.CutPrefix(s, "SHA256:")
	if !ok || len(s) != fingerprintLen {
		return fmt.Errorf("malformed key fingerprint %q", truncate(s))
	}
	sum, err := base64.RawStdEncoding.Strict().DecodeString(rest)
	if err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("malformed key fingerprint %q", truncate(s))
	}
	return nil
}

// The algorithm names written in the Algorithm header of a share file.
const (
	algRSA    = "RSA-OAEP-SHA256"
	algX25519 = "HPKE-X25519-SHA256-AES256GCM"
	algP256   = "HPKE-P256-SHA256-AES256GCM"
	algP384   = "HPKE-P384-SHA256-AES256GCM"
	algP521   = "HPKE-P521-SHA256-AES256GCM"
)

// algorithm checks that the custodian's key is one a share may be encrypted
// to and returns the name of the encryption it calls for.
func (c Custodian) algorithm() (string, error) {
	return keyAlgorithm(c.Name, c.Key)
}

func keyAlgorithm(name string, pub crypto.PublicKey) (string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return "", fmt.Errorf("escrow: custodian %q: nil RSA key", name)
		}
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return "", fmt.Errorf("escrow: custodian %q: RSA key of %d bits; need %d to %d", name, bits, minRSABits, maxRSABits)
		}
		return algRSA, nil
	case *ecdh.PublicKey:
		if k == nil {
			return "", fmt.Errorf("escrow: custodian %q: nil ECDH key", name)
		}
		switch k.Curve() {
		case ecdh.X25519():
			return algX25519, nil
		case ecdh.P256():
			return algP256, nil
		case ecdh.P384():
			return algP384, nil
		case ecdh.P521():
			return algP521, nil
		}
		return "", fmt.Errorf("escrow: custodian %q: unsupported ECDH curve %v", name, k.Curve())
	case *ecdsa.PublicKey:
		return "", fmt.Errorf("escrow: custodian %q: ECDSA key; convert it with its ECDH method (ParseCustodianPEM does this)", name)
	case ed25519.PublicKey:
		return "", fmt.Errorf("escrow: custodian %q: Ed25519 keys can only sign, not decrypt; use an X25519, ECDH P-256/P-384/P-521 or RSA key", name)
	case nil:
		return "", fmt.Errorf("escrow: custodian %q: no key", name)
	default:
		return "", fmt.Errorf("escrow: custodian %q: unsupported key type %T", name, pub)
	}
}

// checkName checks that a custodian name can travel through a PEM header and
// come back unchanged, which its authentication depends on: printable UTF-8,
// no control characters, no surrounding white space, not empty.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty custodian name")
	case len(name) > maxNameLen:
		return fmt.Errorf("custodian name %q is longer than %d bytes", truncate(name), maxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("custodian name %q is not valid UTF-8", truncate(name))
	}
	for _, r := range name {
		if !unicode.IsPrint(r) && r != ' ' {
			return fmt.Errorf("custodian name %q contains a non-printable character", truncate(name))
		}
	}
	first, _ := utf8.DecodeRuneInString(name)
	last, _ := utf8.DecodeLastRuneInString(name)
	if unicode.IsSpace(first) || unicode.IsSpace(last) {
		return fmt.Errorf("custodian name %q begins or ends with white space", name)
	}
	return nil
}

// truncate shortens attacker-controlled text for an error message. None of
// it is ever secret; it just should not fill a terminal.
func truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
