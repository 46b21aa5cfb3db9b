package keystore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Tombstones: the objects this Store knows to be deleted. A deleted row
// made live again behind the daemon's back (deleted_at cleared) opens:
// its seal does not cover the deleted state, and an open checks no anchor
// entry (the hot path pays nothing for the anchor). The next start finds
// it, as any row changed while the daemon serves; until then the Store
// remembers which rows were deleted when the start checked them, and
// which it deleted itself since, and an open or a find that meets one of
// them live checks it against its entry (deletion.go): a recovery, here
// or by another daemon on the database, matches, and the id is forgotten;
// a row brought back behind the daemon's back is tampering. A deletion by
// another daemon on the database is not in this Store's tombstones until
// its next start.

// tombstones is a set of object row ids. any makes the check a single
// atomic load while the set is empty.
type tombstones struct {
	mu  sync.RWMutex
	ids map[int64]struct{}
	any atomic.Bool
}

func (t *tombstones) add(id int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ids == nil {
		t.ids = map[int64]struct{}{}
	}
	t.ids[id] = struct{}{}
	t.any.Store(true)
}

func (t *tombstones) remove(id int64) {
	if !t.any.Load() {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.ids, id)
	t.any.Store(len(t.ids) > 0)
}

func (t *tombstones) has(id int64) bool {
	if !t.any.Load() {
		return false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	_, ok := t.ids[id]
	return ok
}

// loadTombstones takes the rows deleted as the start checked them:
// AttachAnchor calls it once the rows are checked against their entries.
func (s *Store) loadTombstones(ctx context.Context) error {
	rows, err := s.r.QueryContext(ctx, "SELECT id FROM objects WHERE deleted_at IS NOT NULL")
	if err != nil {
		return s.dbErr("list deleted objects", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return s.dbErr("list deleted objects", err)
		}
		s.tomb.add(id)
	}
	return s.dbErr("list deleted objects", rows.Err())
}

// resurrected checks a live row of object id that was deleted when this
// Store last knew it: nil when it is as written (recovered), and the id
// forgotten; a TamperError, noted, when it is not.
func (s *Store) resurrected(ctx context.Context, id int64, u UUID) error {
	if !s.tomb.has(id) {
		return nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	switch err := s.objectAsWritten(ctx, tx, id, u); {
	case err == nil, errors.Is(err, ErrNotAnchored): // as written, or nothing to check it against
		s.tomb.remove(id)
		return nil
	case errors.Is(err, ErrNotFound):
		s.tomb.remove(id)
		return ErrNotFound
	default:
		return err
	}
}
