package keystore

import (
	"bytes"
	"context"
	"crypto/hmac"
	"database/sql"
	"errors"
	"strconv"
)

// A deleted object's row says so in its deleted_at column, which neither
// its seal nor any MAC of its own covers: the seal is made once, under
// keys a soft delete of a private object may not hold (its token logged
// out), and a MAC of the row alone would pass the row put back as it was
// at an earlier deletion, after a recovery. What authenticates a row's
// deleted state is its anchor entry (anchor.go): every write of the
// daemon's, the soft delete's and the recovery's included, gives the row
// an entry accounting for all its columns, deleted_at among them, and the
// entry is replaced at each write, so an earlier version of the row no
// longer matches it. Whoever sets deleted_at on a live row, moves it,
// swaps it between rows or clears it writes no entry.
//
// So the paths that act on a row's deletion first check the row against
// its entry: the purges, which remove it; a recovery, which brings it
// back; the listing of deleted objects, which offers it for either; the
// soft delete, whose row's token decides whether it is kept; a token's
// deletion, which takes its rows with it; an open that finds no live row
// (notLive), and an open or a find that finds live a row it knows deleted
// (tombstone.go). A row that does not match is tampering: recorded
// (tamper.detected, what "rows"), left in place and taken down as the
// check at start takes such a row down; every other row goes on. Putting
// deleted_at back as it was makes the row match again, and the next start
// takes it back.

// ErrNotAnchored refuses a purge on a keystore with no anchor record:
// nothing authenticates a deletion there. The daemon anchors every
// keystore at start (AttachAnchor).
var ErrNotAnchored = errors.New("keystore: the keystore has no anchor record: no deletion can be authenticated")

// objectAsWritten checks, in tx on the writer, that object row id is the
// row its anchor entry accounts for: as the daemon last wrote it,
// deleted_at included. A row that is not is a TamperError (noted, and the
// row taken down); a row gone is ErrNotFound. u names the row in the
// error (the zero UUID when unknown).
func (s *Store) objectAsWritten(ctx context.Context, tx *sql.Tx, id int64, u UUID) error {
	if err := s.anchoredTx(ctx, tx); err != nil {
		return err
	}
	return s.rowAsWritten(ctx, tx, id, u)
}

// anchoredTx is ErrNotAnchored on a keystore with no anchor record.
func (s *Store) anchoredTx(ctx context.Context, tx *sql.Tx) error {
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM anchor").Scan(&n); err != nil {
		return s.dbErr("read anchor record", err)
	}
	if n == 0 {
		return ErrNotAnchored
	}
	return nil
}

// rowAsWritten is objectAsWritten on a keystore known to have a record.
func (s *Store) rowAsWritten(ctx context.Context, tx *sql.Tx, id int64, u UUID) error {
	term, err := s.eng.objectTerm(ctx, tx, s.anc, id)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if errors.Is(err, errAnchorKeys) {
		return err
	}
	if err != nil {
		return s.dbErr("read object", err)
	}
	key := strconv.FormatInt(id, 10)
	var blob []byte
	err = tx.QueryRowContext(ctx, "SELECT term FROM anchor_rows WHERE tbl = 'objects' AND key = ?", key).Scan(&blob)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return s.dbErr("read anchor entry", err)
	}
	s.anc.mu.Lock()
	var entry []byte
	if blob != nil {
		entry, err = s.anc.openEntryLocked("objects", key, blob)
	}
	s.anc.mu.Unlock()
	if errors.Is(err, errAnchorKeys) {
		return err
	}
	if entry == nil || !hmac.Equal(entry, term) {
		return s.objectNotAsWritten(id, u)
	}
	return nil
}

// objectNotAsWritten takes down an object row found not to match its
// entry, notes it and returns its TamperError.
func (s *Store) objectNotAsWritten(id int64, u UUID) error {
	s.anc.mu.Lock()
	s.anc.changedLocked("objects", strconv.FormatInt(id, 10)) //nolint:errcheck // its error is the one made below, with the uuid
	s.anc.mu.Unlock()
	err := tampered("object", u, id, "rows")
	s.noteTamper(err)
	return err
}

// purgeObject removes deleted object row id for good, with note's audit
// record when note is not nil, once the row's deletion is authenticated
// (objectAsWritten). A row gone, or recovered, meanwhile is ErrNotFound.
// listed, when not nil, is the row as a listing read it, before this
// transaction: the row must still be as listed, or the purge is left to
// the next run (errListingStale).
func (s *Store) purgeObject(ctx context.Context, id int64, u UUID, note *AuditNote, listed *Deleted) error {
	defer s.tomb.remove(id) // gone, or not to be purged: either way no more this Store's to watch
	write := func(tx *sql.Tx) error {
		if err := s.objectAsWritten(ctx, tx, id, u); err != nil {
			return err
		}
		if listed != nil {
			if err := s.stillAsListed(ctx, tx, listed); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM objects WHERE id = ? AND deleted_at IS NOT NULL", id)
		if err != nil {
			return s.dbErr("purge object", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	}
	return s.writeTx(ctx, note, write)
}

// errListingStale is a purge's row no longer as its listing read it.
var errListingStale = errors.New("keystore: the deleted object changed since it was listed")

// stillAsListed checks, after objectAsWritten, that the row is as the
// listing read it: the expiry purge chose it by a deletion time read
// before its transaction, and its audit record names what the listing
// read. A deletion time edited for the listing (to a time long past)
// and put back before the purge's transaction would otherwise have an
// authentic row purged before its retention ended. A row rewritten since
// by the daemon (a rotation reseals deleted objects too) is left for the
// next run, as one edited is.
func (s *Store) stillAsListed(ctx context.Context, tx *sql.Tx, d *Deleted) error {
	var class, keyType, label, ckaid, private, at any
	err := tx.QueryRowContext(ctx, "SELECT class, key_type, label, ckaid, private, deleted_at FROM objects WHERE id = ?", int64(d.ID)).
		Scan(&class, &keyType, &label, &ckaid, &private, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return s.dbErr("read object", err)
	}
	var c indexColumns
	if c.set(class, keyType, label, ckaid, private) != "" {
		return errListingStale
	}
	v, ok := at.(int64)
	same := ok && v == d.DeletedAt.Unix() && uint64(c.class) == d.Class &&
		c.keyType.Valid == (d.KeyType != nil) && (d.KeyType == nil || uint64(c.keyType.Int64) == *d.KeyType) &&
		bytes.Equal(c.label, d.Label) && bytes.Equal(c.ckaid, d.CKAID) && (c.private != 0) == d.Private
	if !same {
		return errListingStale
	}
	return nil
}

// writeTx runs write in a transaction of the writer, with note's audit
// record when note is not nil, and commits.
func (s *Store) writeTx(ctx context.Context, note *AuditNote, write func(tx *sql.Tx) error) error {
	if note != nil {
		return s.writeAuditedTx(ctx, note, write)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := write(tx); err != nil {
		return err
	}
	return s.dbErr("commit", tx.Commit())
}

// deletedAsWritten keeps of a listing of deleted objects those whose rows
// match their entries, noting the others. The rows are checked in short
// transactions of the writer (where SQLite's term function is), a batch
// each, so a long listing holds up no write for long. On a keystore with
// no anchor record nothing is checked: nothing can be, and the listing
// removes nothing (the purges refuse such a keystore).
func (s *Store) deletedAsWritten(ctx context.Context, del []Deleted) ([]Deleted, error) {
	all := del
	out := make([]Deleted, 0, len(del))
	for len(del) > 0 {
		batch := del[:min(len(del), deletedBatch)]
		del = del[len(batch):]
		ok, err := s.checkDeleted(ctx, batch)
		if errors.Is(err, ErrNotAnchored) {
			return all, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, ok...)
	}
	return out, nil
}

// deletedBatch is how many listed rows one transaction checks.
const deletedBatch = 64

// checkDeleted returns those of batch whose rows are as written, checked
// in one transaction, rolled back.
func (s *Store) checkDeleted(ctx context.Context, batch []Deleted) ([]Deleted, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := s.anchoredTx(ctx, tx); err != nil {
		return nil, err
	}
	var ok []Deleted
	for _, d := range batch {
		err := s.rowAsWritten(ctx, tx, int64(d.ID), d.UUID)
		switch {
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrTampered):
			continue
		case err != nil:
			return nil, err
		}
		ok = append(ok, d)
	}
	return ok, nil
}

// notLive is an open's answer for object row id, which no live row is:
// ErrNotFound, unless the row is there, marked deleted, and not as
// written (a live row marked deleted behind the daemon's back): that is
// tampering, and an open that met it says so rather than that the object
// is gone. Only opens that find nothing pay for it.
func (s *Store) notLive(ctx context.Context, id ObjectID) error {
	var rec []byte
	err := s.r.QueryRowContext(ctx, "SELECT record FROM objects WHERE id = ? AND deleted_at IS NOT NULL", int64(id)).Scan(&rec)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	if err != nil {
		return s.dbErr("read object", err)
	}
	var r objectRow
	if r.parseRecord(rec) != nil {
		r.uuid = UUID{}
	}
	if s.anc.objectBad(int64(id)) {
		return tampered("object", r.uuid, int64(id), "rows")
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	switch err := s.objectAsWritten(ctx, tx, int64(id), r.uuid); {
	case err == nil, errors.Is(err, ErrNotAnchored), errors.Is(err, ErrNotFound):
		return ErrNotFound
	default:
		return err
	}
}

// tokenObjectsAsWritten checks, before a token's objects go with it
// (DeleteToken, Reinit), that each row naming the token is as written: a
// row whose token_id was moved to it behind the daemon's back (another
// token's key, under purge protection or not) would go too, its anchor
// entry with it, and no start would find it missing. Such a row refuses
// the token's deletion, recorded, and stays. Rows the start took down
// are recorded already, and go. Nothing is checked on a keystore with no
// anchor record.
func (s *Store) tokenObjectsAsWritten(ctx context.Context, tx *sql.Tx, tokenID int64) error {
	switch err := s.anchoredTx(ctx, tx); {
	case errors.Is(err, ErrNotAnchored):
		return nil
	case err != nil:
		return err
	}
	rows, err := tx.QueryContext(ctx, "SELECT id FROM objects WHERE token_id = ?", tokenID)
	if err != nil {
		return s.dbErr("list objects", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return s.dbErr("list objects", err)
		}
		ids = append(ids, id)
	}
	err = rows.Err()
	rows.Close() // before the checks: a transaction's connection runs one query at a time
	if err != nil {
		return s.dbErr("list objects", err)
	}
	for _, id := range ids {
		if s.anc.objectBad(id) {
			continue
		}
		if err := s.rowAsWritten(ctx, tx, id, UUID{}); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}
