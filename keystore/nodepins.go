package keystore

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"database/sql"
	"errors"
	"fmt"
)

// PIN records across nodes. A bound PIN record (pinbind.go) holds one
// seal: the PIN-bound secret s sealed in the TPM of the node that wrote
// it, behind the PIN's authorisation. Another node's TPM cannot load that
// object (fixedTPM), so each other node keeps a binding of its own: the
// same s, sealed in its TPM behind the same authorisation, in
// pin_bindings by (token, role, node), for the record with that salt (a
// record written anew has a new salt, and a binding of the old one is
// never used for it). A PIN check on a node uses its binding when it has
// one, the record's seal otherwise. Nothing here lets a TPM recover s
// without the PIN: each binding is a sealed data object of that node's
// TPM, not noDA, opened by TPM2_Unseal to the PIN's authorisation alone,
// so guesses on any node meet that node's dictionary-attack lockout.
//
// A node makes its bindings when it joins (BindNodePINs), from the
// records' recovery copies, opened with the recovery key the custodians'
// shares give, as domain recovery does. A record written later gets the
// other nodes' bindings from the node that writes it, as duplication
// blobs to their import keys (pindup.go).

// bindingSeal returns this node's seal for the record of token's role
// with that salt, if it has one, with the row's anchor entry, read in the
// same statement (the row and its entry are committed together).
func (s *Store) bindingSeal(ctx context.Context, tokenID int64, role Role, salt []byte) (seal, entry []byte, ok bool, err error) {
	node := s.LocalNode()
	if node == 0 {
		return nil, nil, false, nil
	}
	err = s.r.QueryRowContext(ctx, `SELECT seal, (SELECT term FROM anchor_rows WHERE tbl = 'pin_bindings' AND key = ?)
		FROM pin_bindings WHERE token_id = ? AND role = ? AND node_id = ? AND salt = ?`,
		bindingKey(tokenID, role, node), tokenID, int64(role), node, salt).Scan(&seal, &entry)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, nil, false, nil
	case err != nil:
		return nil, nil, false, s.dbErr("read PIN binding", err)
	case len(seal) == 0 || len(seal) > maxPINSealLen:
		return nil, nil, false, &TamperError{Kind: "token", ID: fmt.Sprintf("row %d", tokenID), What: "PIN binding"}
	}
	return seal, entry, true, nil
}

// bindingKey is a binding row's key among its table's rows, as quote()
// writes its primary key (the anchor's entries are found by it).
func bindingKey(tokenID int64, role Role, node int64) string {
	return fmt.Sprintf("%d,%d,%d", tokenID, int64(role), node)
}

// checkBindingRow checks this node's binding row of token's role, as
// read, against its anchor entry, before its seal is given to the TPM.
// A duplication blob has a MAC of its own; a binding this node sealed
// itself (at its join, or kept after a duplication blob checked) is a
// TPM object behind the PIN's authorisation, under no MAC of its own:
// another record's object of the same TPM moved into this row (another
// token's, the other role's) loads, and the right PIN, meeting the wrong
// object's authorisation, was counted as a wrong one, by the token's
// count shared by every node and by the TPM, until the role locked. The
// row's entry is bound to its table and key (token, role, node) and
// sealed under the anchor's key, so a row moved, or written by anyone
// else, does not match it: a TamperError (kind "pin binding", what
// "rows"), noted, before the PIN is presented, so nothing is counted. An
// older version of the row put back with its own entry is of this record
// (the same salt) or not used. Without the anchor attached (a tool's
// Store) there is nothing to check.
func (s *Store) checkBindingRow(ctx context.Context, ti *TokenInfo, role Role, salt, seal, entry []byte) error {
	node := s.LocalNode()
	return s.checkAnchoredRow(ctx, "pin_bindings", bindingKey(ti.ID, role, node), []any{ti.ID, int64(role), node, salt, seal}, entry, func() error {
		te := &TamperError{Kind: "pin binding", ID: fmt.Sprintf("token %s %s node %d", ti.UUID, role, node), What: "rows"}
		s.noteTamper(te)
		return te
	})
}

// nodeCheck is a PIN record as this node checks it.
type nodeCheck struct {
	rec []byte // the record, with this node's binding's seal in place of its own
	// bound: checked through this node's binding (its seal or its
	// duplication blob), not the record's own seal.
	bound bool
	// foreign: the record's own seal names another TPM than this node's
	// and this node has no binding of it.
	foreign bool
	dup     *dupSealer // the binding is a duplication blob
	salt    []byte
}

// nodeRecord is the PIN record as this node checks it: with its own
// binding's seal, or its duplication blob, in place of the record's seal
// when it has one.
func (s *Store) nodeRecord(ctx context.Context, ti *TokenInfo, role Role, rec []byte) (nodeCheck, error) {
	if len(rec) == 0 || rec[0] != pinRecordBound || s.LocalNode() == 0 {
		return nodeCheck{rec: rec}, nil
	}
	r, err := parsePINRecord(rec)
	if err != nil {
		return nodeCheck{}, err
	}
	seal, entry, ok, err := s.bindingSeal(ctx, ti.ID, role, r.salt)
	if err != nil {
		return nodeCheck{}, err
	}
	if !ok {
		s.nodes.mu.Lock()
		tpmID := s.nodes.tpmID
		s.nodes.mu.Unlock()
		// A seal names the SRK it was made under (tpmroot's encoding).
		return nodeCheck{rec: rec, foreign: len(tpmID) > 0 && !bytes.Contains(r.seal, tpmID), salt: r.salt}, nil
	}
	if !isPINDupEnvelope(seal) { // a blob has a MAC of its own (openPINDup)
		if err := s.checkBindingRow(ctx, ti, role, r.salt, seal, entry); err != nil {
			return nodeCheck{}, err
		}
	}
	nc := nodeCheck{bound: true, salt: r.salt}
	if isPINDupEnvelope(seal) {
		if seal, nc.dup, err = s.openPINDup(ctx, ti, role, r.salt, seal); err != nil {
			return nodeCheck{}, err
		}
	}
	r.seal = seal
	nc.rec = r.marshal()
	return nc, nil
}

// BindNodePINs makes this node's binding of every bound PIN record of
// the keystore, from the records' recovery copies: it opens each with the
// recovery private key of the master key it was made under (keys, from
// that master key's shares), seals the same secret behind the same
// authorisation in this node's TPM, and stores it for this node. The
// records themselves are not touched: the nodes that wrote them still
// use their seals. Records it cannot bind are listed, as RebindPINs
// lists them; used[i] counts the records keys[i] opened.
func (s *Store) BindNodePINs(ctx context.Context, keys []*ecdh.PrivateKey) (bound int, left []UnboundPIN, used []int, err error) {
	node := s.LocalNode()
	if node == 0 {
		return 0, nil, nil, errors.New("keystore: no node attached")
	}
	ps := s.sealerFor()
	if ps == nil {
		return 0, nil, nil, errNoPINSealer
	}
	rk := newRecoveryKeys(keys)
	used = make([]int, len(keys))
	tokens, err := s.Tokens(ctx)
	if err != nil {
		return 0, nil, nil, err
	}
	for _, ti := range tokens {
		if ti.Tampered != nil {
			left = append(left, UnboundPIN{Token: ti.UUID, Label: ti.Label, Role: RoleSO, Why: ti.Tampered.Error()})
			continue
		}
		for _, f := range []struct {
			role Role
			rec  []byte
		}{{RoleSO, ti.soPIN}, {RoleUser, ti.userPIN}} {
			if f.rec == nil {
				continue
			}
			r, err := parsePINRecord(f.rec)
			if err != nil {
				return bound, left, used, err
			}
			if r.version != pinRecordBound {
				continue // behind Argon2id alone: every node checks it as it is
			}
			seal, ki, why, err := rk.reseal(ps, r, ti.UUID, ti.Label, f.role, ti.DataGeneration)
			if err != nil {
				return bound, left, used, err
			}
			if why != nil {
				left = append(left, *why)
				continue
			}
			// A binding this node already holds is of a record written
			// since this one was read (another node's duplication blob,
			// pindup.go): newer, and kept.
			_, err = s.w.ExecContext(ctx, `INSERT INTO pin_bindings (token_id, role, node_id, salt, seal) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (token_id, role, node_id) DO NOTHING`,
				ti.ID, int64(f.role), node, r.salt, seal)
			if err != nil {
				return bound, left, used, s.dbErr("write PIN binding", err)
			}
			bound++
			used[ki]++
		}
	}
	return bound, left, used, nil
}
