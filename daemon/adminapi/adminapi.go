// Package adminapi is the administrator's protocol: what `hsmemu <command>`
// sends the daemon over its socket, and the client that sends it.
//
// An admin connection opens with the module's hello (cryptoki/wire) with
// the admin flag set; the daemon accepts it only from its own user or root.
// Then each request and reply is one frame, a u32 big-endian length and
// that many bytes of JSON, at most MaxFrame. Admin calls are rare and
// small, so JSON's cost does not matter and its shapes stay readable.
// docs/protocol.md ("Admin connections") describes it.
package adminapi

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// MaxFrame bounds a frame's JSON, both ways, as the PKCS#11 protocol
// bounds its frames: a listing of thousands of keys fits.
const MaxFrame = 16 << 20

// MaxSecretSize bounds a secret's value: it travels in one admin frame.
const MaxSecretSize = 512 << 10

// Request is one admin call.
type Request struct {
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Reply is the daemon's answer: a result, or an error. A long call sends
// replies with only Progress first; the last reply has no Progress.
type Reply struct {
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
	Progress *Progress       `json:"progress,omitempty"`
}

// Progress is how far a long call has come.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}

// Error is a refused or failed admin call. Code is one of the Code*
// constants; Message says what happened and, where it can, what to do.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Error codes.
const (
	CodeBadRequest   = "bad-request"   // malformed or unknown call
	CodeNotFound     = "not-found"     // no such token, record, ...
	CodeExists       = "exists"        // the name is taken
	CodeInUse        = "in-use"        // sessions are open on the token
	CodePINIncorrect = "pin-incorrect" // a PIN was wrong; the failure was counted
	CodePINLocked    = "pin-locked"    // too many wrong PINs
	CodePINInvalid   = "pin-invalid"   // a new PIN of the wrong length
	CodeTampered     = "tampered"      // the keystore failed an integrity check
	CodeAmbiguous    = "ambiguous"     // a name matches several keys
	CodeRefused      = "refused"       // a policy forbids it (purge protection, CKA_DESTROYABLE)
	CodeDeleted      = "deleted"       // the key or secret named is deleted (recoverable)
	CodeInternal     = "internal"      // the daemon's fault; its log says more
)

// Errorf returns an *Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrFrame is a frame that breaks the protocol: too long, or not JSON.
var ErrFrame = errors.New("adminapi: malformed frame")

// WriteFrame writes v as one frame. The buffers it fills are wiped after
// the write, since a frame may carry PINs or a secret's value.
func WriteFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	defer clear(b)
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes, over %d", ErrFrame, len(b), MaxFrame)
	}
	buf := make([]byte, 4, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	buf = append(buf, b...)
	defer clear(buf)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one frame into v. A length over MaxFrame is refused
// before anything is read or allocated.
func ReadFrame(r io.Reader, v any) error {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > MaxFrame {
		return fmt.Errorf("%w: length %d over %d", ErrFrame, n, MaxFrame)
	}
	b := make([]byte, n)
	defer clear(b) // it may carry PINs or a secret's value
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return DecodeJSON(b, v)
}

// DecodeJSON decodes exactly one JSON value, refusing unknown fields, so a
// misspelt argument is an error rather than a default.
func DecodeJSON(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrFrame, err)
	}
	if d.More() {
		return fmt.Errorf("%w: trailing data", ErrFrame)
	}
	return nil
}

// The calls, their arguments and their results. PINs are []byte, which
// JSON carries as base64, so they can be wiped after use.
const (
	OpStatus      = "status"
	OpTokenCreate = "token.create"
	OpTokenList   = "token.list"
	OpTokenShow   = "token.show"
	OpTokenDelete = "token.delete"
	OpPINChange   = "pin.change"
	OpPINReset    = "pin.reset"
	OpPINUnlock   = "pin.unlock"
	OpAuditTail   = "audit.tail"
	OpAuditRange  = "audit.range"
	OpAuditVerify = "audit.verify"
	OpTokenSet    = "token.set"
	OpTokenLogout = "token.logout"

	OpKeyList         = "key.list"
	OpKeyShow         = "key.show"
	OpKeyExportPublic = "key.export-public"
	OpKeyDelete       = "key.delete"
	OpKeyRecover      = "key.recover"
	OpKeyPurge        = "key.purge"
	OpKeyGenerate     = "key.generate"
	OpKeyImport       = "key.import"
	OpKeyBackup       = "key.backup"
	OpKeyRestore      = "key.restore"

	OpSecretSet      = "secret.set"
	OpSecretGet      = "secret.get"
	OpSecretList     = "secret.list"
	OpSecretVersions = "secret.versions"
	OpSecretDelete   = "secret.delete"
	OpSecretRecover  = "secret.recover"
	OpSecretPurge    = "secret.purge"

	OpRotateToken        = "rotate.token"
	OpRotateMasterBegin  = "rotate.master.begin"
	OpRotateMasterFinish = "rotate.master.finish"
	OpRotateMasterAbort  = "rotate.master.abort"

	OpNodeLeave = "node.leave"
)

// Status is the answer to OpStatus.
type Status struct {
	Version string `json:"version"`
	// Commit is the commit the daemon was built from ("" when unknown).
	Commit    string    `json:"commit,omitempty"`
	Started   time.Time `json:"started"`
	UptimeSec float64   `json:"uptime_seconds"`
	TPM       TPMInfo   `json:"tpm"`
	// Domain is the security domain's id; its first 8 bytes in hex are
	// the root fingerprint shown to people.
	Domain   Hex  `json:"domain"`
	Escrowed bool `json:"escrowed"`
	// MasterGeneration counts the domain's master keys: 1 until the first
	// rotation. RotationPending is true while one is under way.
	MasterGeneration uint32 `json:"master_generation"`
	// NodeMasterGeneration is the generation of the master key the
	// answering daemon holds: master_generation's, or below it while
	// this node has not yet taken a rotation made on another node
	// (docs/cluster.md).
	NodeMasterGeneration uint32    `json:"node_master_generation"`
	RotationPending      bool      `json:"rotation_pending,omitempty"`
	Tokens               []Token   `json:"tokens"`
	Apps                 int       `json:"applications"`
	Sessions             int       `json:"sessions"`
	Audit                AuditHead `json:"audit"`
	// TamperDetected counts the audit log's tamper.detected records: the
	// integrity failures the daemon met, each counted once.
	TamperDetected int64 `json:"tamper_detected"`
	// PINs says how PIN checks are guarded.
	PINs PINState `json:"pins"`
	// Anchor is the keystore's rollback anchor (docs/keychain.md), nil
	// when the keystore has none yet.
	Anchor *Anchor `json:"anchor"`
	// Nodes are the domain's nodes: the TPMs that hold its master key.
	Nodes []Node `json:"nodes"`
	// Keystore is where the keystore is: its engine ("sqlite" or
	// "postgres") and its file, or its hosts, database and user.
	Keystore Keystore `json:"keystore"`
}

// Node is one node of the domain.
type Node struct {
	ID int64 `json:"id"`
	// TPM is the node's TPM identity, short: the first 8 bytes of its SRK
	// name's digest; TPMName the whole name.
	TPM      string     `json:"tpm,omitempty"`
	TPMName  Hex        `json:"tpm_name,omitempty"`
	Joined   *time.Time `json:"joined,omitempty"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// This marks the node the answering daemon runs on.
	This bool `json:"this,omitempty"`
	// Tampered says what failed when the node's row failed its integrity
	// check; the node is down, every other field empty.
	Tampered string `json:"tampered,omitempty"`
}

// NodeLeave removes a node from the domain (OpNodeLeave).
type NodeLeave struct {
	Node int64 `json:"node"`
}

// Keystore says where the daemon keeps its keystore.
type Keystore struct {
	Engine   string `json:"engine"`
	Location string `json:"location"`
}

// Anchor is the keystore's rollback anchor: the TPM NV counter an older
// copy of the keystore would be behind, and what is not anchored yet.
type Anchor struct {
	NVIndex    uint32 `json:"nv_index"`
	Counter    uint64 `json:"counter"`    // the counter value at the last anchor
	Generation uint64 `json:"generation"` // row changes since the record was made
	// Unanchored are the row changes since the last anchor: a copy of the
	// keystore from within them could be put back unnoticed.
	Unanchored uint64 `json:"unanchored"`
}

// PINState says whether PIN checks are counted by the TPM.
type PINState struct {
	// Bound: PIN records are bound to the TPM, whose dictionary-attack
	// protection counts every wrong PIN; Recoverable, with recovery
	// copies for domain recovery. Why says why not, when not Bound.
	Bound       bool   `json:"bound"`
	Recoverable bool   `json:"recoverable,omitempty"`
	Why         string `json:"why,omitempty"`
	// BoundRecords and UnboundRecords count the records (two per token
	// with a user PIN); an unbound one is rewritten bound at its role's
	// next login.
	BoundRecords   int `json:"bound_records"`
	UnboundRecords int `json:"unbound_records"`
}

// TPMDA is the TPM's dictionary-attack state.
type TPMDA struct {
	Counter            uint32 `json:"counter"`   // wrong authorisations counted now
	MaxTries           uint32 `json:"max_tries"` // the count that locks
	RecoverySec        uint32 `json:"recovery_seconds"`
	LockoutRecoverySec uint32 `json:"lockout_recovery_seconds"`
	LockoutAuthSet     bool   `json:"lockout_auth_set"`
	InLockout          bool   `json:"in_lockout"`
	// LockoutLeftSec bounds how long the lockout lasts, when in one.
	LockoutLeftSec uint32 `json:"lockout_left_seconds"`
}

// TPMInfo says which TPM holds the master key.
type TPMInfo struct {
	Kind         string `json:"kind"`
	Path         string `json:"path,omitempty"`
	Manufacturer string `json:"manufacturer"`
	Vendor       string `json:"vendor,omitempty"`
	Firmware     string `json:"firmware,omitempty"`
	// DA is the TPM's dictionary-attack state, when it could be read.
	DA *TPMDA `json:"dictionary_attack,omitempty"`
	// Available is false while the TPM does not answer and reconnecting
	// to it fails (Error says why, DownSince since when): what needs it
	// (a token's first use since the daemon started, a new token) fails,
	// keys already in use go on. Reconnects counts the times it was lost
	// and reconnected to (a managed swtpm restarted).
	Available  bool       `json:"available"`
	Error      string     `json:"error,omitempty"`
	DownSince  *time.Time `json:"down_since,omitempty"`
	Reconnects int        `json:"reconnects"`
}

// AuditHead is the newest record of the audit log.
type AuditHead struct {
	Records int64 `json:"records"`
	Head    Hex   `json:"head,omitempty"`
}

// Token describes a token. It holds nothing secret.
type Token struct {
	Label        string    `json:"label"`
	Slot         int64     `json:"slot"`
	Serial       string    `json:"serial"`
	Tier         string    `json:"tier"`
	UUID         string    `json:"uuid"`
	Created      time.Time `json:"created"`
	Objects      int64     `json:"objects"`
	UserPINSet   bool      `json:"user_pin_set"`
	SOFailures   int       `json:"so_failures"`
	UserFailures int       `json:"user_failures"`
	SOLocked     bool      `json:"so_locked"`
	UserLocked   bool      `json:"user_locked"`
	Sessions     int       `json:"sessions"`
	LoggedIn     bool      `json:"logged_in"`
	// RetentionDays is how long deleted objects are kept, recoverable.
	RetentionDays   int  `json:"retention_days"`
	PurgeProtection bool `json:"purge_protection"`
	// Tampered, when set, says what of the token's row failed its
	// integrity check ("mac", "range", ...): the token is unusable, and of
	// the fields above only Slot, and UUID when not empty, are believed.
	Tampered string `json:"tampered,omitempty"`
}

// TokenSet changes a token's deletion policy, with its SO PIN; a nil
// field is left as it is.
type TokenSet struct {
	Label           string `json:"label"`
	SOPIN           []byte `json:"so_pin"`
	RetentionDays   *int   `json:"retention_days,omitempty"`
	PurgeProtection *bool  `json:"purge_protection,omitempty"`
}

// KeySelector names a key of a token by label, uuid or CKA_ID (hex); the
// names given must all match. A key pair (a private and a public key of
// one type and CKA_ID) counts as one key.
type KeySelector struct {
	Key  string `json:"key,omitempty"`
	UUID string `json:"uuid,omitempty"`
	ID   string `json:"id,omitempty"`
	// Class narrows the selection to private-key, public-key or
	// secret-key objects (a PKCS#11 URI's type), one half of a pair.
	Class string `json:"class,omitempty"`
}

func (k KeySelector) String() string {
	var parts []string
	if k.Key != "" {
		parts = append(parts, fmt.Sprintf("label %q", k.Key))
	}
	if k.UUID != "" {
		parts = append(parts, "uuid "+k.UUID)
	}
	if k.ID != "" {
		parts = append(parts, "id "+k.ID)
	}
	if k.Class != "" {
		parts = append(parts, "class "+k.Class)
	}
	if len(parts) == 0 {
		return "(no name)"
	}
	return strings.Join(parts, " and ")
}

// KeyRef names a key, acting as the token's user.
type KeyRef struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	KeySelector
}

// KeyOptions describe a new key. Usage defaults by type; Protection is
// "hsm", "software", or "" for the token's default (HSM on a premium
// token); an HSM-protected key is never extractable. ID is hex; without it
// a random one is made, shared by a pair's halves.
type KeyOptions struct {
	Label       string   `json:"label"`
	ID          string   `json:"id,omitempty"`
	Usage       []string `json:"usage,omitempty"`
	Protection  string   `json:"protection,omitempty"`
	Extractable bool     `json:"extractable,omitempty"`
	// AllowDuplicateLabel lets the new key share its label with a live
	// key; without it that is refused (CodeExists), since a label that
	// names two keys names neither.
	AllowDuplicateLabel bool `json:"allow_duplicate_label,omitempty"`
}

// KeyGenerate makes a key in the token, as its user: Type is aes-128,
// aes-192, aes-256, generic-256, rsa-2048, rsa-3072, rsa-4096, ec-p256,
// ec-p384, ec-p521 or ed25519.
type KeyGenerate struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Type    string `json:"type"`
	KeyOptions
}

// KeyImport stores existing key material in the token, as its user:
// Material is PEM (PKCS#8, PKCS#1, SEC1 or a public key) or PKCS#8 DER,
// or raw bytes with Type "aes" or "generic". A private key comes with
// its public half.
type KeyImport struct {
	Token    string `json:"token"`
	UserPIN  []byte `json:"user_pin"`
	Type     string `json:"type,omitempty"`
	Material []byte `json:"material"`
	KeyOptions
}

// KeyList lists a token's keys, or its deleted keys.
type KeyList struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Deleted bool   `json:"deleted,omitempty"`
}

// KeyPurge removes deleted keys for good, with the SO PIN.
type KeyPurge struct {
	Token string `json:"token"`
	SOPIN []byte `json:"so_pin"`
	KeySelector
}

// KeySizes are a post-quantum key's sizes in bytes; a KEM key has a
// ciphertext, a signature key a signature.
type KeySizes struct {
	PublicKey  int `json:"public_key"`
	PrivateKey int `json:"private_key"`
	Signature  int `json:"signature,omitempty"`
	Ciphertext int `json:"ciphertext,omitempty"`
}

// Key describes a key object. Nothing in it is secret.
type Key struct {
	UUID string `json:"uuid"`
	// URI is the PKCS#11 URI (RFC 7512) of the object, for OpenSSL,
	// p11tool or ssh: pkcs11:token=...;id=...;object=...;type=....
	URI         string   `json:"uri"`
	Class       string   `json:"class"`
	KeyType     *CKConst `json:"key_type"` // nil when unknown
	Label       string   `json:"label,omitempty"`
	ID          string   `json:"id,omitempty"`
	Private     bool     `json:"private"`
	Bits        int      `json:"bits,omitempty"`
	Protection  string   `json:"protection,omitempty"` // software or hsm; none for public keys
	Usage       []string `json:"usage,omitempty"`
	Fingerprint string   `json:"fingerprint,omitempty"` // sha256 of the public key's SubjectPublicKeyInfo
	// ParameterSet and Sizes (in bytes: public-key, private-key, and
	// signature or ciphertext) describe a post-quantum key.
	ParameterSet string    `json:"parameter_set,omitempty"`
	Sizes        *KeySizes `json:"sizes,omitempty"`
	// Attributes and PublicPEM come with show.
	Attributes *KeyAttributes `json:"attributes,omitempty"`
	PublicPEM  string         `json:"public_pem,omitempty"`
	// DeletedAt and PurgeAfter are set for a deleted key.
	DeletedAt  *time.Time `json:"deleted_at,omitempty"`
	PurgeAfter *time.Time `json:"purge_after,omitempty"`
}

// KeyDeleted is what key.delete did.
type KeyDeleted struct {
	Keys       []Key     `json:"keys"`
	Kept       bool      `json:"kept"` // false: the token keeps nothing (retention 0)
	PurgeAfter time.Time `json:"purge_after,omitempty"`
}

// PublicKey is a key's public half.
type PublicKey struct {
	PEM         string `json:"pem"`
	Fingerprint string `json:"fingerprint"`
}

// TokenCreate creates a token. Without UserPIN the user PIN awaits
// C_InitPIN or `pin reset`.
type TokenCreate struct {
	Label   string `json:"label"`
	Tier    string `json:"tier"`
	SOPIN   []byte `json:"so_pin"`
	UserPIN []byte `json:"user_pin,omitempty"`
}

// TokenRef names a token.
type TokenRef struct {
	Label string `json:"label"`
}

// TokenDelete deletes a token and all its objects, with its SO PIN.
type TokenDelete struct {
	Label string `json:"label"`
	SOPIN []byte `json:"so_pin"`
}

// TokenLogout ends every login of a token on every daemon of the domain,
// with its SO PIN.
type TokenLogout struct {
	Label string `json:"label"`
	SOPIN []byte `json:"so_pin"`
}

// TokenLoggedOut is token.logout's result: the token's new login epoch
// (logins made under an earlier one end on every daemon) and how many
// applications were logged in on this daemon, logged out before the
// reply.
type TokenLoggedOut struct {
	Token        string `json:"token"`
	LoginEpoch   uint32 `json:"login_epoch"`
	Applications int    `json:"applications"`
}

// PINChange changes Role's PIN ("user" or "so") from Old to New.
type PINChange struct {
	Label string `json:"label"`
	Role  string `json:"role"`
	Old   []byte `json:"old_pin"`
	New   []byte `json:"new_pin"`
}

// PINReset sets a new user PIN with the SO PIN; it also unlocks a locked
// user PIN.
type PINReset struct {
	Label string `json:"label"`
	SOPIN []byte `json:"so_pin"`
	New   []byte `json:"new_pin"`
}

// PINUnlock clears Role's failure count. The user's needs the SO PIN; the
// SO's is the administrator's recovery path and needs only the peer
// credentials an admin connection already has.
type PINUnlock struct {
	Label string `json:"label"`
	Role  string `json:"role"`
	SOPIN []byte `json:"so_pin,omitempty"`
}

// AuditTail asks for the newest N records.
type AuditTail struct {
	N int `json:"n"`
}

// AuditRange asks for up to Limit records after sequence number After
// (all of them when Limit is 0).
type AuditRange struct {
	After int64 `json:"after"`
	Limit int   `json:"limit"`
}

// AuditRecord is one record of the audit log.
type AuditRecord struct {
	Seq      int64             `json:"seq"`
	Time     time.Time         `json:"time"`
	Actor    AuditActor        `json:"actor"`
	Event    string            `json:"event"`
	Detail   map[string]string `json:"detail,omitempty"`
	PrevHash Hex               `json:"prev_hash"`
	Hash     Hex               `json:"hash"`
}

// AuditActor says who acted.
type AuditActor struct {
	UID   uint32 `json:"uid"`
	PID   int32  `json:"pid"`
	Token string `json:"token,omitempty"`
	Role  string `json:"role,omitempty"`
	// Remote is a TLS client's certificate identity (cn:NAME, uri:URI).
	Remote string `json:"remote,omitempty"`
}

// AuditVerify is the outcome of walking the chain.
type AuditVerify struct {
	OK      bool   `json:"ok"`
	Records int64  `json:"records"`
	HeadSeq int64  `json:"head_seq"`
	Head    Hex    `json:"head,omitempty"`
	BadSeq  int64  `json:"bad_seq,omitempty"`
	Problem string `json:"problem,omitempty"`
}

// Hex is bytes that JSON carries as a hex string: hashes and ids, which
// people compare by eye.
type Hex []byte

// MarshalText implements encoding.TextMarshaler.
func (h Hex) MarshalText() ([]byte, error) {
	return []byte(hex.EncodeToString(h)), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *Hex) UnmarshalText(b []byte) error {
	v, err := hex.DecodeString(string(b))
	*h = v
	return err
}

// SecretSet adds a version to a secret (making the secret if it is new),
// as the token's user. Expires is in seconds since 1970, 0 for never.
type SecretSet struct {
	Token       string `json:"token"`
	UserPIN     []byte `json:"user_pin"`
	Name        string `json:"name"`
	Value       []byte `json:"value"`
	ContentType string `json:"content_type,omitempty"`
	Expires     int64  `json:"expires,omitempty"`
	Disabled    bool   `json:"disabled,omitempty"`
}

// SecretGet reads a version of a secret: Version, or the newest when 0.
type SecretGet struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Name    string `json:"name"`
	Version int64  `json:"version,omitempty"`
}

// SecretRef names a secret, acting as the token's user.
type SecretRef struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Name    string `json:"name"`
}

// SecretList lists a token's secrets, or its deleted ones.
type SecretList struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Deleted bool   `json:"deleted,omitempty"`
}

// SecretPurge removes a deleted secret for good, with the SO PIN.
type SecretPurge struct {
	Token string `json:"token"`
	SOPIN []byte `json:"so_pin"`
	Name  string `json:"name"`
}

// SecretVersion describes a version of a secret, without its value.
type SecretVersion struct {
	Name        string     `json:"name"`
	Version     int64      `json:"version"`
	UUID        string     `json:"uuid"`
	Created     time.Time  `json:"created"`
	Enabled     bool       `json:"enabled"`
	Expires     *time.Time `json:"expires,omitempty"`
	ContentType string     `json:"content_type,omitempty"`
}

// SecretValue is a version with its value.
type SecretValue struct {
	SecretVersion
	Value []byte `json:"value"`
}

// Secret describes a secret by its newest version; a deleted one by when
// it was deleted and will be purged.
type Secret struct {
	Name string `json:"name"`
	// Current is the newest version; nil for a deleted secret.
	Current    *SecretVersion `json:"current"`
	Versions   int            `json:"versions"`
	DeletedAt  *time.Time     `json:"deleted_at,omitempty"`
	PurgeAfter *time.Time     `json:"purge_after,omitempty"`
}

// SecretDeleted is what a secret's delete, recover or purge did.
type SecretDeleted struct {
	Name       string    `json:"name"`
	Versions   int       `json:"versions"`
	Kept       bool      `json:"kept,omitempty"`
	PurgeAfter time.Time `json:"purge_after,omitempty"`
}

// KeyBackup is a key's backup: an opaque blob only a keystore of the same
// security domain opens.
type KeyBackup struct {
	Keys []Key  `json:"keys"`
	Blob []byte `json:"blob"`
}

// KeyRestore brings a key back from a backup blob, as the token's user.
type KeyRestore struct {
	Token   string `json:"token"`
	UserPIN []byte `json:"user_pin"`
	Blob    []byte `json:"blob"`
}

// RotateToken replaces a token's data key, with its SO PIN and, when the
// token has one, its user PIN (the new key is wrapped under both).
type RotateToken struct {
	Label   string `json:"label"`
	SOPIN   []byte `json:"so_pin"`
	UserPIN []byte `json:"user_pin,omitempty"`
}

// Rotated is what a rotation did.
type Rotated struct {
	Label          string `json:"token"`
	Resealed       int    `json:"resealed"`
	DataGeneration uint32 `json:"data_generation"`
}

// RotateMasterBegin makes a new master key in the TPM, split to these
// custodians when given (required for an escrowed domain).
type RotateMasterBegin struct {
	Custodians []CustodianKey `json:"custodians,omitempty"`
	Threshold  int            `json:"threshold,omitempty"`
}

// CustodianKey is a custodian's public key, PEM, as `hsmemu init` takes it.
type CustodianKey struct {
	Name string `json:"name"`
	PEM  []byte `json:"pem"`
}

// MasterBegun is the new master key's generation and its shares.
type MasterBegun struct {
	Generation uint32  `json:"generation"`
	Shares     []Share `json:"shares,omitempty"`
}

// Share is one custodian's encrypted share of a master key.
type Share struct {
	Custodian   string `json:"custodian"`
	Fingerprint string `json:"fingerprint"`
	Index       int    `json:"index"`
	File        []byte `json:"file"` // the PEM block to hand to the custodian
}

// MasterRotated is the generation of the master key now in force.
type MasterRotated struct {
	Generation uint32 `json:"generation"`
}
