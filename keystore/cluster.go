package keystore

import (
	"context"
	"database/sql"
	"errors"
	"math"
)

// What a Store drops when another Store on the same database changed
// something (pgcluster.go tells it what). Dropping is always safe: a
// dropped object is read again, a token's keys derived again, and a
// token whose data key was replaced is logged out here, its sessions
// answering CKR_USER_NOT_LOGGED_IN until they log in again.

// cacheFresh reports whether a cached object may be used as it is: on
// SQLite always (one Store per file); on PostgreSQL while the lease on
// other Stores' changes holds (pgcluster.go).
func (s *Store) cacheFresh() bool { return s.sync == nil || s.sync.fresh() }

// revalidateToken drops what the Store holds of a token whose row
// changed: everything, when the row is gone; its data key (a logout),
// when its data key generation moved (a data key rotation, a
// re-initialisation) or its login epoch moved past the login's (a
// logout of every daemon). A KEK generation moved forward (a master key
// rotation, which leaves the data key as it was) drops nothing: the next
// read of the row installs the keys it names once its MAC checks under
// them (installNewer); one moved back is no rotation's, and drops it all.
// The row's columns are read without their MAC: an edited one can only
// make the Store drop more, or read the row again, never keep a key the
// row does not authenticate.
func (s *Store) revalidateToken(ctx context.Context, rowID int64) error {
	var dgen, kgen, epoch int64
	err := s.r.QueryRowContext(ctx, "SELECT dk_generation, kek_generation, COALESCE(login_epoch, 0) FROM tokens WHERE id = ?", rowID).Scan(&dgen, &kgen, &epoch)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		// Unknown: drop it all, to be safe.
		s.dropToken(rowID, true)
		return s.dbErr("read token", err)
	}
	s.mu.RLock()
	st, ok := s.tokens[rowID]
	var keep, keepData bool
	if ok {
		keep = err == nil && int64(st.keys.generation) <= kgen
		// This Store's own rotation, between its commit and installing
		// the new key, is no other's change.
		keepData = keep && (int64(st.dgen) == dgen || (st.installing != 0 && int64(st.installing) == dgen))
	}
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	if keepData {
		if epoch < 0 || epoch > math.MaxUint32 {
			epoch = math.MaxUint32 // out of range, edited: end the login
		}
		s.endLogin(rowID, uint32(epoch), true)
		return nil
	}
	s.dropToken(rowID, !keep)
	if keep && epoch >= 0 && epoch <= math.MaxUint32 {
		s.endLogin(rowID, uint32(epoch), false) // the logins made from now on
	}
	return nil
}

// dropToken logs a token out and drops its cached objects; all drops its
// keys too, to be derived again from its row. A login it ends is told
// (OnLoginsEnded).
func (s *Store) dropToken(rowID int64, all bool) {
	s.mu.Lock()
	st, ok := s.tokens[rowID]
	was := false
	if ok {
		was = st.loggedIn()
		st.logout()
		if all {
			// Dropped, not wiped: a reader may hold the keys.
			delete(s.tokens, rowID)
		}
	}
	s.mu.Unlock()
	if ok {
		s.cache.purge(func(o *Object) bool { return o.Token == st.uuid })
	}
	if was {
		s.tellEnded(st.uuid)
	}
}

// changedAll drops every cached object and checks every token the Store
// holds against its row.
func (s *Store) changedAll(ctx context.Context) error {
	s.cache.purge(func(*Object) bool { return true })
	s.mu.RLock()
	ids := make([]int64, 0, len(s.tokens))
	for id := range s.tokens {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	var first error
	for _, id := range ids {
		if err := s.revalidateToken(ctx, id); err != nil && first == nil {
			first = err
		}
	}
	return first
}
