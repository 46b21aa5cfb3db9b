package adminapi

import "time"

// Certificates: X.509 certificates stored as CKO_CERTIFICATE objects beside
// the keys they certify (docs/tokens.md, "Certificates").
const (
	OpCertImport  = "cert.import"
	OpCertRequest = "cert.request"
	OpCertList    = "cert.list"
	OpCertShow    = "cert.show"
	OpCertExport  = "cert.export"
)

// CertImport stores certificates, as the token's user. Material is a
// PKCS#12 file (Password opens it) or PEM: a private key with its
// certificate and chain, or certificates alone, the first of which (the
// one no other certifies) is attached to the token's key with its public
// key. A private key is stored as `key import` stores one, labelled Label
// (default: the certificate's subject common name), with Protection.
type CertImport struct {
	Token      string `json:"token"`
	UserPIN    []byte `json:"user_pin"`
	Material   []byte `json:"material"`
	Password   []byte `json:"password,omitempty"`
	Label      string `json:"label,omitempty"`
	Protection string `json:"protection,omitempty"`
	// AllowDuplicateLabel, as KeyOptions' (for the private key).
	AllowDuplicateLabel bool `json:"allow_duplicate_label,omitempty"`
}

// CertImported is what cert.import stored: the key, when the material
// held one, and the certificates, leaf first (a chain certificate the
// token held already is listed, not stored twice).
type CertImported struct {
	Keys  []Key  `json:"keys,omitempty"`
	Certs []Cert `json:"certs"`
}

// CertRequest asks for a PKCS#10 request signed inside the token by the
// named key: Subject as "CN=...,O=...", SANs as "DNS:name", "IP:addr",
// "EMAIL:addr" or "URI:uri".
type CertRequest struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	KeySelector
	Subject string   `json:"subject"`
	SANs    []string `json:"sans,omitempty"`
}

// CSR is a signed certificate request.
type CSR struct {
	PEM     string `json:"pem"`
	Subject string `json:"subject"`
	Key     Key    `json:"key"`
}

// CertSelector names a certificate by label, uuid or CKA_ID (hex).
type CertSelector struct {
	Cert string `json:"cert,omitempty"`
	UUID string `json:"uuid,omitempty"`
	ID   string `json:"id,omitempty"`
}

// CertRef names a certificate, acting as the token's user.
type CertRef struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	CertSelector
}

// CertList lists a token's certificates.
type CertList struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
}

// Cert describes a certificate object. Expired and ExpiresSoon (within 30
// days) are as of the answer.
type Cert struct {
	UUID        string    `json:"uuid"`
	Label       string    `json:"label,omitempty"`
	ID          string    `json:"id,omitempty"`
	Category    string    `json:"category"` // leaf, authority, or unspecified
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	Serial      string    `json:"serial"` // hex
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	SANs        []string  `json:"sans,omitempty"`
	SHA256      string    `json:"sha256"` // fingerprint of the DER
	SHA1        string    `json:"sha1"`
	Key         string    `json:"key,omitempty"` // the uuid of the private key it certifies, in this token
	KeyLabel    string    `json:"key_label,omitempty"`
	Expired     bool      `json:"expired"`
	ExpiresSoon bool      `json:"expires_soon"`
	PEM         string    `json:"pem,omitempty"` // with show
}

// CertExport is a certificate and the chain to its root, as far as the
// token holds it, leaf first.
type CertExport struct {
	Certs []Cert `json:"certs"`
	PEM   string `json:"pem"`
}
