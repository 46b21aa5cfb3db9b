package keystore

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
)

// PIN records written after the other nodes joined. A node that writes a
// bound PIN record (a PIN change, an SO setting the user PIN, a record
// rewritten at login, a new token, a data key rotation, a
// re-initialisation) has the record's secret s and authorisation at hand.
// Besides sealing s in its own TPM, it makes for every other node of the
// domain that published an import key a TPM2_Import duplication blob of
// the same sealed data object (tpmroot.DuplicatePINSecret: the same s and
// authorisation, fixedTPM and fixedParent clear, not noDA), encrypted to
// that node's import key, and stores it as that node's binding of the
// record, in the transaction that writes the record. A node checking the
// record imports its blob under its import key, unseals it to the PIN's
// authorisation (counted by its TPM when wrong), and then seals s in its
// own TPM as its own binding of the record, so later checks are as any
// other binding's.
//
// A blob in pin_bindings is kept as
//
//	"HSPB" | version u8 (1) | HMAC-SHA256 (32) | blob
//
// the HMAC, under a key of the domain's life (the nodes' MAC key, HKDF),
// over the token's uuid, the role, the node, the record's salt and the
// blob. A blob is public-key encrypted to a published key, so anyone who
// writes the database could make one; the MAC refuses such a blob before
// any TPM sees it, and no PIN is tried against it. A blob that fails its
// MAC, or that the TPM refuses, takes down that node's binding alone: the
// check fails closed (ErrTampered, a tamper.detected record of kind
// "pin binding"), no failure is counted, and the token, its other role
// and the other nodes are untouched.

// PINDuplicator is a PINSealer that can make a PIN-bound secret for
// another node's import key and take one made for this node's:
// tpmroot.Root. The refusal of a blob (not for this import key, altered)
// comes as an error with a method PINDupRefused().
type PINDuplicator interface {
	DuplicatePINSecret(importKey, auth, secret []byte) ([]byte, error)
	UnsealPINDup(importKey, blob, auth []byte) ([]byte, error)
}

// ErrPINNotOnNode: a bound PIN record that this node cannot check: its
// seal is another node's TPM's and this node holds no binding of it (it
// was written while this node was joining, or by a node that did not know
// this one's import key, or the binding was removed). No PIN was tried
// and no failure counted; the node joins again (`domain leave`, then
// `domain join`) to bind it from its recovery copy.
var ErrPINNotOnNode = errors.New("keystore: the PIN record is bound to another node's TPM and this node holds no binding of it")

const (
	pinDupMagic   = "HSPB"
	pinDupVersion = 1
	pinDupMACInfo = "hsmemu/pin-dup/mac/v1"
	pinDupMACLbl  = "hsmemu/pin-dup/v1"
	pinDupHead    = len(pinDupMagic) + 1 + sha256.Size
)

// pinDupJob is what the other nodes' bindings of a record being written
// are made from, in the transaction that writes it: copies of the
// record's salt, secret and authorisation, wiped by the caller once the
// transaction is over.
type pinDupJob struct {
	dup                PINDuplicator
	token              UUID
	role               Role
	salt, auth, secret []byte
}

func (j *pinDupJob) wipe() {
	if j != nil {
		wipe(j.auth)
		wipe(j.secret)
	}
}

// isPINDupEnvelope says whether a binding's seal is a duplication blob.
func isPINDupEnvelope(b []byte) bool {
	return len(b) > len(pinDupMagic) && string(b[:len(pinDupMagic)]) == pinDupMagic
}

func (s *Store) pinDupKey(ctx context.Context) ([]byte, error) {
	base, err := s.nodeKey(ctx)
	if err != nil {
		return nil, err
	}
	return hkdf.Expand(sha256.New, base, pinDupMACInfo, 32)
}

func pinDupMAC(key []byte, token UUID, role Role, node int64, salt, blob []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(pinDupMACLbl))
	m.Write(token[:])
	m.Write([]byte{byte(role)})
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(node)))
	m.Write(binary.BigEndian.AppendUint16(nil, uint16(len(salt))))
	m.Write(salt)
	m.Write(blob)
	return m.Sum(nil)
}

// pinDupper returns, for a record about to be written, the function
// wrapBound gives its salt, authorisation and secret to, and the job it
// fills: nil when no other node can be given a binding (no node
// attached, a root that cannot duplicate).
func (s *Store) pinDupper(ps PINSealer, token UUID, role Role) (func(salt, auth, secret []byte) error, *pinDupJob) {
	dup, ok := ps.(PINDuplicator)
	if s.LocalNode() == 0 || !ok {
		return nil, nil
	}
	job := &pinDupJob{dup: dup, token: token, role: role}
	return func(salt, auth, secret []byte) error {
		job.salt, job.auth, job.secret = bytes.Clone(salt), bytes.Clone(auth), bytes.Clone(secret)
		return nil
	}, job
}

// putPINDups makes and stores the other nodes' bindings of role's record,
// in tx, the transaction that writes it. The nodes are read under the
// nodes' shared lock, which a node being added takes exclusively before
// it binds the records it reads: so every node gets the record, either
// from this write (added before the read) or from its own binding
// (added after this transaction). A tampered node row, or one without an
// import key, gets nothing, and says so at its PIN check (pin.unbound).
func (s *Store) putPINDups(ctx context.Context, tx *sql.Tx, tokenID int64, job *pinDupJob) error {
	if job == nil || job.secret == nil {
		return nil
	}
	if err := s.eng.lockNodes(ctx, tx, false); err != nil {
		return s.dbErr("lock nodes", err)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil {
		return err
	}
	local := s.LocalNode()
	var key []byte
	for _, n := range nodes {
		if n.ID == local || n.Tampered != nil || len(n.ImportKey) == 0 {
			continue
		}
		if key == nil {
			if key, err = s.pinDupKey(ctx); err != nil {
				return err
			}
		}
		blob, err := job.dup.DuplicatePINSecret(n.ImportKey, job.auth, job.secret)
		if err != nil {
			// An import key that is no key (its row is MACed, so only a
			// node's own fault): that node goes without, rather than
			// every PIN write of the domain failing for it.
			continue
		}
		env := append([]byte(pinDupMagic), pinDupVersion)
		env = append(env, pinDupMAC(key, job.token, job.role, n.ID, job.salt, blob)...)
		env = append(env, blob...)
		if len(env) > maxPINSealLen {
			return fmt.Errorf("keystore: a %d-byte PIN duplication blob", len(env))
		}
		// Under the lock no node leaves (RemoveNode, ForgetNode take it
		// exclusively); the SELECT is one more guard against a write
		// failing for a node that is gone.
		_, err = tx.ExecContext(ctx, `INSERT INTO pin_bindings (token_id, role, node_id, salt, seal)
			SELECT ?, ?, id, ?, ? FROM nodes WHERE id = ?
			ON CONFLICT (token_id, role, node_id) DO UPDATE SET salt = excluded.salt, seal = excluded.seal`,
			tokenID, int64(job.role), job.salt, env, n.ID)
		if err != nil {
			return s.dbErr("write PIN binding", err)
		}
	}
	return nil
}

// dupSealer checks a record through this node's duplication blob: it is
// the node's PINSealer with UnsealPINSecret importing the blob (given as
// the record's seal) under the node's import key. After a successful
// unseal it seals the secret in this TPM, behind the same authorisation,
// for the caller to keep as the node's own binding once the record opens.
type dupSealer struct {
	PINSealer
	dup       PINDuplicator
	importKey []byte
	refused   error  // the TPM's refusal of the blob
	resealed  []byte // the node's own seal of the secret
}

func (d *dupSealer) UnsealPINSecret(blob, auth []byte) ([]byte, error) {
	secret, err := d.dup.UnsealPINDup(d.importKey, blob, auth)
	if err != nil {
		var refused interface{ PINDupRefused() }
		if errors.As(err, &refused) {
			d.refused = err
		}
		return nil, err
	}
	// Best effort: without it, the next check imports the blob again.
	if seal, err := d.PINSealer.ResealPINSecret(auth, secret); err == nil && len(seal) <= maxPINSealLen {
		d.resealed = seal
	}
	return secret, nil
}

// openPINDup checks a duplication blob's envelope and returns the blob
// and a dupSealer for it, or a TamperError naming the binding.
func (s *Store) openPINDup(ctx context.Context, ti *TokenInfo, role Role, salt, env []byte) ([]byte, *dupSealer, error) {
	node := s.LocalNode()
	bad := func(what string) error {
		te := &TamperError{Kind: "pin binding", ID: ti.UUID.String(), What: fmt.Sprintf("%s (node %d, %s PIN)", what, node, role)}
		s.noteTamper(te)
		return te
	}
	ps := s.sealerFor()
	dup, ok := ps.(PINDuplicator)
	if !ok {
		return nil, nil, errNoPINSealer
	}
	if len(env) <= pinDupHead || env[len(pinDupMagic)] != pinDupVersion {
		return nil, nil, bad("duplication blob malformed")
	}
	key, err := s.pinDupKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	blob := env[pinDupHead:]
	if !hmac.Equal(env[len(pinDupMagic)+1:pinDupHead], pinDupMAC(key, ti.UUID, role, node, salt, blob)) {
		return nil, nil, bad("duplication blob mac")
	}
	self, err := s.readNode(ctx, s.r, node)
	if err != nil {
		return nil, nil, err
	}
	if len(self.ImportKey) == 0 {
		return nil, nil, fmt.Errorf("%w: this node (node %d) has no import key for its duplication blob", ErrPINNotOnNode, node)
	}
	return blob, &dupSealer{PINSealer: ps, dup: dup, importKey: self.ImportKey}, nil
}

// refusedDup turns the TPM's refusal of this node's blob into the
// binding's TamperError.
func (s *Store) refusedDup(ti *TokenInfo, role Role, err error) error {
	te := &TamperError{Kind: "pin binding", ID: ti.UUID.String(), What: fmt.Sprintf("duplication blob refused by the TPM (node %d, %s PIN)", s.LocalNode(), role)}
	s.noteTamper(te)
	return fmt.Errorf("%w: %v", te, err)
}

// keepPINDup replaces this node's duplication blob of the record with
// salt by its own seal of the same secret. Best effort: a blob kept is
// imported again at the next check. Only the row for that record is
// replaced, never a newer record's blob written meanwhile.
func (s *Store) keepPINDup(ctx context.Context, tokenID int64, role Role, salt, seal []byte) {
	_, _ = s.w.ExecContext(ctx, "UPDATE pin_bindings SET seal = ? WHERE token_id = ? AND role = ? AND node_id = ? AND salt = ?",
		seal, tokenID, int64(role), s.LocalNode(), salt)
}
