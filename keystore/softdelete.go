package keystore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Soft delete, as cloud key vaults have it: a deleted object is hidden
// from every lookup but kept, recoverable, for its token's retention
// period, then purged. Purge protection, once on, refuses every purge
// before that, and the token's deletion or re-initialisation while it
// holds any object, live or deleted.

// ErrPurgeProtected refuses a purge, or a token's deletion, that purge
// protection forbids.
var ErrPurgeProtected = errors.New("keystore: the token has purge protection")

// Deleted describes a deleted object awaiting its purge.
type Deleted struct {
	ID         ObjectID
	UUID       UUID
	Token      UUID
	Class      uint64
	KeyType    *uint64
	Label      []byte
	CKAID      []byte
	Private    bool
	DeletedAt  time.Time
	PurgeAfter time.Time
	// Attrs are the object's attributes as stored: not authenticated
	// until the object is recovered and opened, so good for choosing
	// among deleted objects, never for trusting one.
	Attrs Attributes
}

// SoftDelete hides an object, to be purged after the token's retention
// (at once when it is 0). It reports whether the object was kept.
func (s *Store) SoftDelete(ctx context.Context, id ObjectID) (kept bool, err error) {
	return s.softDelete(ctx, id, nil)
}

// SoftDeleteAudited is SoftDelete that appends the audit record note makes
// (told whether the object is kept) in the same transaction (AuditNote
// says why).
func (s *Store) SoftDeleteAudited(ctx context.Context, id ObjectID, note func(kept bool) AuditNote) (kept bool, err error) {
	return s.softDelete(ctx, id, note)
}

// errTokenChanged is a soft delete's one try finding the row's token_id
// changed since it read the token's retention (edited, then put back):
// tried again.
var errTokenChanged = errors.New("keystore: the object's token changed under its delete")

func (s *Store) softDelete(ctx context.Context, id ObjectID, note func(kept bool) AuditNote) (kept bool, err error) {
	for try := 0; ; try++ {
		kept, err = s.softDeleteOnce(ctx, id, note)
		if !errors.Is(err, errTokenChanged) {
			return kept, err
		}
		if try >= 3 {
			err := tampered("object", UUID{}, int64(id), "token_id")
			s.noteTamper(err)
			return false, err
		}
	}
}

// softDeleteOnce is softDelete's one try.
func (s *Store) softDeleteOnce(ctx context.Context, id ObjectID, note func(kept bool) AuditNote) (kept bool, err error) {
	var tokenID int64
	err = s.r.QueryRowContext(ctx, `SELECT token_id FROM objects WHERE id = ? AND deleted_at IS NULL`, int64(id)).Scan(&tokenID)
	if errors.Is(err, sql.ErrNoRows) {
		return false, ErrNotFound
	}
	if err != nil {
		return false, s.dbErr("read object", err)
	}
	// The retention is policy: read from the authenticated token row,
	// never from the column alone.
	ti, err := s.TokenByID(ctx, tokenID)
	if err != nil {
		return false, err
	}
	kept = ti.RetentionDays > 0
	if kept && s.anc.objectBad(int64(id)) {
		// Kept, the row would get a fresh anchor entry, and the version
		// put back would pass the next start: only deleting it ends it.
		err := tampered("object", UUID{}, int64(id), "rows")
		s.noteTamper(err)
		return false, err
	}
	var n *AuditNote
	if note != nil {
		nn := note(kept)
		n = &nn
	}
	err = s.writeTx(ctx, n, func(q *sql.Tx) error {
		// The token the row names decides whether it is kept: a token_id
		// moved behind the daemon's back, to a token that keeps nothing,
		// would destroy an object its token keeps (under purge
		// protection, too) with no trace, the delete dropping its anchor
		// entry. The row must be as written (deletion.go), and name the
		// token its retention was read from. (An update checks the row
		// against its entry anyway, in the anchor's trigger.) A row the
		// start took down is deleted as it is: that ends it, and it is
		// recorded already.
		if !s.anc.objectBad(int64(id)) {
			if err := s.objectAsWritten(ctx, q, int64(id), UUID{}); err != nil && !errors.Is(err, ErrNotAnchored) {
				return err
			}
		}
		var now int64
		err := q.QueryRowContext(ctx, "SELECT token_id FROM objects WHERE id = ? AND deleted_at IS NULL", int64(id)).Scan(&now)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return s.dbErr("read object", err)
		}
		if now != tokenID {
			return errTokenChanged
		}
		var res sql.Result
		if kept {
			res, err = q.ExecContext(ctx, "UPDATE objects SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", time.Now().Unix(), int64(id))
		} else {
			res, err = q.ExecContext(ctx, "DELETE FROM objects WHERE id = ?", int64(id))
		}
		if err != nil {
			return s.dbErr("delete object", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
	s.cache.remove(id)
	if err != nil {
		return false, err
	}
	if kept {
		s.tomb.add(int64(id))
	}
	return kept, nil
}

// DeletedObjects lists a token's deleted objects, oldest deletion first.
// Only rows whose deletion is authenticated are listed (deletion.go):
// one marked deleted behind the daemon's back is left out, recorded as
// tampering, and offered neither for recovery nor for purge.
func (s *Store) DeletedObjects(ctx context.Context, token UUID) ([]Deleted, error) {
	ti, err := s.Token(ctx, token) // its retention, authenticated
	if err != nil {
		return nil, err
	}
	del, err := s.listDeleted(ctx, ti)
	if err != nil {
		return nil, err
	}
	return s.deletedAsWritten(ctx, del)
}

// maxDeletedAt bounds a deletion time: the last second of year 9999,
// far from where a time's arithmetic (the retention added) overflows.
const maxDeletedAt = 253402300799

// listDeleted lists token ti's deleted objects, oldest deletion first,
// leaving out the rows that fail a check of their own; whether each
// deletion is authenticated is the caller's to check.
func (s *Store) listDeleted(ctx context.Context, ti TokenInfo) ([]Deleted, error) {
	token := ti.UUID
	rows, err := s.r.QueryContext(ctx, `SELECT o.id, o.uuid, o.class, o.key_type, o.label, o.ckaid, o.private, o.deleted_at, o.record
		FROM objects o WHERE o.token_id = ? AND o.deleted_at IS NOT NULL ORDER BY o.deleted_at, o.id`, ti.ID)
	if err != nil {
		return nil, s.dbErr("list deleted objects", err)
	}
	defer rows.Close()
	var out []Deleted
	for rows.Next() {
		var d Deleted
		var c indexColumns
		var class, keyType, label, ckaid, private, deletedAt any
		var uuid []byte
		var rec []byte
		if err := rows.Scan(&c.id, &uuid, &class, &keyType, &label, &ckaid, &private, &deletedAt, &rec); err != nil {
			return nil, s.dbErr("list deleted objects", err)
		}
		// A row that fails is left out, and noted, as Find does.
		id := c.id
		at, ok := deletedAt.(int64)
		bad := c.set(class, keyType, label, ckaid, private)
		if bad == "" && !ok {
			bad = "deleted_at"
		}
		if bad != "" {
			s.noteTamper(tampered("object", UUID{}, id, "type of "+bad))
			continue
		}
		var r objectRow
		if err := r.parseRecord(rec); err != nil {
			s.noteTamper(tampered("object", UUID{}, id, "record"))
			continue
		}
		if !bytes.Equal(uuid, r.uuid[:]) {
			s.noteTamper(tampered("object", r.uuid, id, "uuid column"))
			continue
		}
		if at < 1 || at > maxDeletedAt {
			// No soft delete wrote it; and added to, it would overflow
			// into a purge time already past.
			s.noteTamper(tampered("object", r.uuid, id, "range"))
			continue
		}
		if s.anc.objectBad(id) {
			s.noteTamper(tampered("object", r.uuid, id, "rows"))
			continue
		}
		if d.Attrs, err = DecodeAttributes(r.attrs); err != nil {
			s.noteTamper(tampered("object", r.uuid, id, "record"))
			continue
		}
		d.ID, d.Token, d.Class = ObjectID(id), token, uint64(c.class)
		d.Label, d.CKAID, d.Private = c.label, c.ckaid, c.private != 0
		copy(d.UUID[:], uuid)
		if c.keyType.Valid {
			v := uint64(c.keyType.Int64)
			d.KeyType = &v
		}
		d.DeletedAt = time.Unix(at, 0)
		d.PurgeAfter = d.DeletedAt.Add(time.Duration(ti.RetentionDays) * 24 * time.Hour)
		out = append(out, d)
	}
	return out, s.dbErr("list deleted objects", rows.Err())
}

// Recover brings a deleted object back, once its deletion is
// authenticated (deletion.go): a live row marked deleted behind the
// daemon's back is tampering, and stays as it is.
func (s *Store) Recover(ctx context.Context, token UUID, object UUID) (ObjectID, error) {
	var id int64
	// A row that failed the check at start stays as it is (anchor.go,
	// rewriteLocked): say which.
	err := s.r.QueryRowContext(ctx, "SELECT id FROM objects WHERE uuid = ?", object[:]).Scan(&id)
	if err == nil && s.anc.objectBad(id) {
		err := tampered("object", object, id, "rows")
		s.noteTamper(err)
		return 0, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	err = tx.QueryRowContext(ctx, `SELECT id FROM objects
		WHERE uuid = ? AND deleted_at IS NOT NULL AND token_id = (SELECT id FROM tokens WHERE uuid = ?)`,
		object[:], token[:]).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, s.dbErr("recover object", err)
	}
	switch err := s.objectAsWritten(ctx, tx, id, object); {
	case errors.Is(err, ErrNotAnchored):
		// Nothing to check against; nothing is removed either.
	case err != nil:
		return 0, err
	}
	res, err := tx.ExecContext(ctx, "UPDATE objects SET deleted_at = NULL WHERE id = ? AND deleted_at IS NOT NULL", id)
	if err != nil {
		return 0, s.dbErr("recover object", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, ErrNotFound
	}
	if err := tx.Commit(); err != nil {
		return 0, s.dbErr("commit", err)
	}
	s.tomb.remove(id)
	return ObjectID(id), nil
}

// Purge removes a deleted object for good, unless the token has purge
// protection.
func (s *Store) Purge(ctx context.Context, token UUID, object UUID) error {
	ti, err := s.Token(ctx, token)
	if err != nil {
		return err
	}
	if ti.PurgeProtection {
		return ErrPurgeProtected
	}
	var id int64
	err = s.r.QueryRowContext(ctx, "SELECT id FROM objects WHERE uuid = ? AND token_id = ? AND deleted_at IS NOT NULL", object[:], ti.ID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return s.dbErr("purge object", err)
	}
	return s.purgeObject(ctx, id, object, nil, nil)
}

// PurgeExpired removes every deleted object whose retention ended before
// now, and returns what it removed. It is a job of the domain's: with
// several daemons on one PostgreSQL database one purges at a time, and
// while another does, this one returns nothing. Each object goes in a
// commit of its own, so a purger that dies leaves the rest for the next
// run, on whichever daemon.
func (s *Store) PurgeExpired(ctx context.Context, now time.Time) ([]Deleted, error) {
	return s.purgeExpired(ctx, now, nil)
}

// PurgeExpiredAudited is PurgeExpired that appends the audit record note
// makes for each object in the transaction that removes it: a purger
// killed half way leaves every object it removed recorded, and no record
// of one it did not.
func (s *Store) PurgeExpiredAudited(ctx context.Context, now time.Time, note func(Deleted) AuditNote) ([]Deleted, error) {
	return s.purgeExpired(ctx, now, note)
}

func (s *Store) purgeExpired(ctx context.Context, now time.Time, note func(Deleted) AuditNote) ([]Deleted, error) {
	release, ok, err := s.eng.job(ctx, "purge", false)
	if err != nil || !ok {
		return nil, err
	}
	defer release()
	// The rows it met tampered with are recorded before it returns: the
	// purger is no call whose end records them.
	defer s.AuditTamper(ctx) //nolint:errcheck // noted again for the next try
	tokens, err := s.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	var purged []Deleted
	for _, ti := range tokens {
		if ti.Tampered != nil {
			continue // its retention cannot be trusted: nothing of it is purged
		}
		// Each row's deletion is checked as it is purged (purgeObject),
		// in the transaction that removes it: checked any earlier, the
		// row could be edited in between.
		del, err := s.listDeleted(ctx, ti)
		if err != nil {
			return purged, err
		}
		for _, d := range del {
			if d.PurgeAfter.After(now) {
				break // oldest first: the rest are younger
			}
			var n *AuditNote
			if note != nil {
				nn := note(d)
				n = &nn
			}
			// Gone already (purged by the administrator, or recovered,
			// meanwhile): nothing done, nothing recorded. A deletion
			// not authenticated: the row stays, recorded as tampering,
			// and the purge goes on with the others.
			err := s.purgeObject(ctx, int64(d.ID), d.UUID, n, &d)
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrTampered) || errors.Is(err, errListingStale) {
				continue // a row changed since listed: the next run decides again
			}
			if err != nil {
				return purged, err
			}
			purged = append(purged, d)
			if s.purgeStep != nil {
				s.purgeStep()
			}
		}
	}
	return purged, nil
}

// MaxRetentionDays bounds a token's retention.
const MaxRetentionDays = 3650

// SetPolicy sets a token's retention and purge protection. Purge
// protection cannot be turned off, nor the retention shortened while it
// is on; it needs a retention of at least MinProtectedRetentionDays.
func (s *Store) SetPolicy(ctx context.Context, token UUID, retentionDays *int, purgeProtection *bool) error {
	defer s.writing(token)()
	return s.updateToken(ctx, token, func(ti *TokenInfo) error {
		days, protect := ti.RetentionDays, ti.PurgeProtection
		if retentionDays != nil {
			days = *retentionDays
		}
		if purgeProtection != nil {
			protect = *purgeProtection
		}
		switch {
		case days < 0 || days > MaxRetentionDays:
			return &PolicyError{fmt.Sprintf("retention must be 0 to %d days", MaxRetentionDays)}
		case ti.PurgeProtection && !protect:
			return &PolicyError{"purge protection, once on, cannot be turned off"}
		case ti.PurgeProtection && days < ti.RetentionDays:
			return &PolicyError{fmt.Sprintf("under purge protection the retention can only grow (it is %d days)", ti.RetentionDays)}
		case protect && days < MinProtectedRetentionDays:
			return &PolicyError{fmt.Sprintf("purge protection needs a retention of at least %d days", MinProtectedRetentionDays)}
		}
		ti.RetentionDays, ti.PurgeProtection = days, protect
		return nil
	})
}

// MinProtectedRetentionDays is the shortest retention purge protection
// accepts.
const MinProtectedRetentionDays = 7

// PolicyError is a policy change the rules refuse; Reason says which rule.
type PolicyError struct{ Reason string }

func (e *PolicyError) Error() string { return "keystore: policy refused: " + e.Reason }

// holdsObjects reports whether a token holds any object, live or deleted.
func holdsObjects(ctx context.Context, q querier, tokenID int64) (bool, error) {
	var n int
	err := q.QueryRowContext(ctx, "SELECT count(*) FROM (SELECT 1 FROM objects WHERE token_id = ? LIMIT 1) AS held", tokenID).Scan(&n)
	return n > 0, err
}
