package keystore

import (
	"context"
	"crypto/hmac"
	"database/sql"
	"encoding/binary"
	"errors"
	"strings"
)

// The root row as read, against its anchor entry. The root row holds a
// master key rotation's state (the next master key's sealed form, proof
// and escrow, from the rotation's beginning to its switch) under no MAC:
// the TPM and the proof authenticate the key, not that the rotation is
// the one under way. An abandoned rotation's next key stays loadable by
// the TPM that made it, so its state, kept by whoever writes the database
// and put back after the abort (with the other nodes' copies, whose MACs
// name only the node and the generation), made a rotation that the
// administrator's `rotate master --resume` moved every token to, and the
// switch, a write of the daemon's, gave the row a fresh entry. The row is
// anchored: RotateMaster checks it against its entry before it moves
// anything, and every write of the root row checks the row it replaces
// (anchor.entry), as token and object rows are checked.

// checkAnchoredRow checks a row of table whose key (as quote() writes its
// primary key) is key against its anchor entry: vals are the row's
// columns in the table's order, and entry its entry (nil: none), read in
// one statement, since the writer commits a row and its entry together.
// A row that does not match is what mismatch returns. Without the anchor
// attached there is nothing to check.
func (s *Store) checkAnchoredRow(ctx context.Context, table, key string, vals []any, entry []byte, mismatch func() error) error {
	s.anc.mu.Lock()
	active := s.anc.termKey != nil
	s.anc.mu.Unlock()
	if !active {
		return nil
	}
	if entry == nil {
		return mismatch()
	}
	if len(entry) == anchorEntryLen && binary.BigEndian.Uint32(entry[1:5]) > s.anchorEpoch() {
		// Sealed under an epoch a rotation made elsewhere: this node
		// takes its key first, and is no judge of the entry before.
		if ferr := s.follow(ctx); ferr != nil && !errors.Is(ferr, ErrNoRoot) {
			return ferr
		}
		if e := binary.BigEndian.Uint32(entry[1:5]); e > s.anchorEpoch() {
			var gen int64
			if err := s.r.QueryRowContext(ctx, "SELECT master_generation FROM root WHERE id = 1").Scan(&gen); err != nil {
				return s.dbErr("read master generation", err)
			}
			if int64(e) > gen {
				return mismatch() // an epoch the domain never had
			}
			s.signalMaster()
			return errMasterMoved
		}
	}
	s.anc.mu.Lock()
	defer s.anc.mu.Unlock()
	term, err := s.anc.openEntryLocked(table, key, entry)
	if err != nil {
		return mismatch()
	}
	want, err := s.anc.termLocked(table, vals)
	if err != nil {
		return mismatch() // a value of a type the row cannot hold
	}
	if !hmac.Equal(term, want) {
		return mismatch()
	}
	return nil
}

// checkRootRow checks the root row against its anchor entry: a
// TamperError (kind "keystore", what "rows"), noted, when it does not
// match.
func (s *Store) checkRootRow(ctx context.Context) error {
	s.anc.mu.Lock()
	names := s.anc.cols["root"]
	active := s.anc.termKey != nil
	s.anc.mu.Unlock()
	if !active || len(names) == 0 {
		return nil
	}
	cols := make([]string, len(names))
	for i, n := range names {
		cols[i] = quoteIdent(n)
	}
	vals := make([]any, len(names))
	ptrs := make([]any, len(names)+1)
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var entry []byte
	ptrs[len(names)] = &entry
	err := s.r.QueryRowContext(ctx, "SELECT "+strings.Join(cols, ", ")+
		", (SELECT term FROM anchor_rows WHERE tbl = 'root' AND key = '1') FROM root WHERE id = 1").Scan(ptrs...)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return s.dbErr("read root", err)
	}
	if _, ok := s.eng.(sqliteEngine); ok {
		// SQLite hands the anchor's function a NULL as an empty blob:
		// the term its triggers made is of that.
		for i, v := range vals {
			if v == nil {
				vals[i] = []byte{}
			}
		}
	}
	return s.checkAnchoredRow(ctx, "root", "1", vals, entry, func() error {
		te := &TamperError{Kind: "keystore", ID: "root", What: "rows"}
		s.noteTamper(te)
		return te
	})
}

// anchorEpoch is the newest epoch whose anchor keys the Store holds.
func (s *Store) anchorEpoch() uint32 {
	s.anc.mu.Lock()
	defer s.anc.mu.Unlock()
	return s.anc.epoch
}
