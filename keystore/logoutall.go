package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
)

// A logout of every daemon: the token row's login epoch (schema.go,
// migration 9; pgschema.go, migration 5), under the row's MAC. LogoutAll
// moves it in one transaction; each Store ends a login it holds under an
// older epoch as soon as it learns of the newer one: its own at once; on
// PostgreSQL, another Store's when the change is notified (revalidateToken),
// when a lost notification makes it check every token (changedAll), or,
// when its listener is stuck, at the first use of the token's private
// objects past the lease (loginCurrent). A login being made meanwhile is
// made again after the logout (Login).

// loginRetries bounds how often Login is made again because a logout of
// every daemon came between its PIN check and its taking effect.
const loginRetries = 3

// ErrEpochExhausted is LogoutAll's error for a token whose login epoch
// has reached its largest value (four billion logouts).
var ErrEpochExhausted = errors.New("keystore: the token's login epoch is exhausted")

// LogoutAll ends every login of the token on every Store of the keystore:
// it moves the token's login epoch, in one transaction, and ends this
// Store's own login at once; other Stores end theirs within the
// invalidation bound (docs/cluster.md). It returns the new epoch. The
// Store's OnLoginsEnded functions are not called for this Store's own
// logins: the caller, which asked, ends what it built on them.
func (s *Store) LogoutAll(ctx context.Context, token UUID) (uint32, error) {
	defer s.writing(token)()
	var epoch uint32
	var rowID int64
	err := s.updateToken(ctx, token, func(ti *TokenInfo) error {
		if ti.LoginEpoch == math.MaxUint32 {
			return fmt.Errorf("%w (token %q)", ErrEpochExhausted, ti.Label)
		}
		ti.LoginEpoch++
		epoch, rowID = ti.LoginEpoch, ti.ID
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.endLogin(rowID, epoch, false)
	return epoch, nil
}

// OnLoginsEnded registers f, called with a token whose login the Store
// ended on its own: another Store's logout of every daemon, a data key or
// KEK another Store replaced, the token deleted elsewhere, or a change the
// Store could not check. The daemon ends its sessions' logins on the
// token in turn. f runs on the Store's listener or on a caller's
// goroutine, with no lock of the Store held; it must not block.
func (s *Store) OnLoginsEnded(f func(token UUID)) {
	s.mu.Lock()
	s.ended = append(s.ended, f)
	s.mu.Unlock()
}

// tellEnded calls the OnLoginsEnded functions. s.mu is not held.
func (s *Store) tellEnded(token UUID) {
	s.mu.RLock()
	fs := s.ended
	s.mu.RUnlock()
	for _, f := range fs {
		f(token)
	}
}

// endLogin notes that the token's row has login epoch epoch and, when the
// Store's login on it was made under an older one, ends that login and
// drops the token's cached objects; tell says whether to call the
// OnLoginsEnded functions then. It reports whether a login ended.
func (s *Store) endLogin(rowID int64, epoch uint32, tell bool) bool {
	s.mu.Lock()
	st, ok := s.tokens[rowID]
	ended := false
	if ok {
		st.epoch = max(st.epoch, epoch)
		if st.loggedIn() && st.lepoch < epoch {
			st.logout()
			ended = true
		}
	}
	s.mu.Unlock()
	if ended {
		s.cache.purge(func(o *Object) bool { return o.Token == st.uuid })
		if tell {
			s.tellEnded(st.uuid)
		}
	}
	return ended
}

// loginCurrent checks, once the lease on other Stores' changes has
// lapsed (a listener that stopped hearing them), that the login a private
// object is opened under was not ended elsewhere: the token row's login
// epoch is read, and a login under an older one is ended (ErrNotLoggedIn).
// While the lease holds, notifications end such a login within the bound
// and nothing is read.
func (s *Store) loginCurrent(ctx context.Context, st *tokenState) error {
	if s.cacheFresh() {
		return nil
	}
	var epoch int64
	err := s.r.QueryRowContext(ctx, "SELECT COALESCE(login_epoch, 0) FROM tokens WHERE id = ?", st.rowID).Scan(&epoch)
	if errors.Is(err, sql.ErrNoRows) {
		s.dropToken(st.rowID, true)
		return ErrNotFound
	}
	if err != nil {
		return s.dbErr("read token", err)
	}
	if epoch < 0 || epoch > math.MaxUint32 {
		epoch = math.MaxUint32 // out of range, edited: end the login
	}
	if s.endLogin(st.rowID, uint32(epoch), true) {
		return ErrNotLoggedIn
	}
	return nil
}
