package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Login and PINs: a role's PIN opens the token data key; failures are
// counted in the token row, and a PIN change rewraps the data key.

// pinRecord returns role's PIN record and failure count, and refuses a
// locked role before any PIN is tried.
func (s *Store) pinFor(ti *TokenInfo, role Role) ([]byte, error) {
	var rec []byte
	switch role {
	case RoleSO:
		rec = ti.soPIN
	case RoleUser:
		rec = ti.userPIN
	default:
		return nil, fmt.Errorf("keystore: unknown role %d", role)
	}
	if rec == nil {
		return nil, ErrPINNotInitialized
	}
	if s.Locked(*ti, role) {
		return nil, ErrPINLocked
	}
	return rec, nil
}

// countFailure records the outcome of a PIN check for role: a failure adds
// one, a success after failures clears them.
func (s *Store) countFailure(ctx context.Context, token UUID, role Role, failed bool) error {
	return s.updateToken(ctx, token, func(ti *TokenInfo) error {
		n := &ti.UserFailures
		if role == RoleSO {
			n = &ti.SOFailures
		}
		if failed {
			*n++
		} else {
			*n = 0
		}
		return nil
	})
}

// checkPIN opens the data key with pin for role, counting the outcome.
func (s *Store) checkPIN(ctx context.Context, token UUID, role Role, pin []byte) (TokenInfo, *tokenState, []byte, error) {
	for try := 0; ; try++ {
		ti, st, dk, err := s.checkPINOnce(ctx, token, role, pin)
		if !errors.Is(err, errTokenMoved) || try >= sealRetries || ctx.Err() != nil {
			return ti, st, dk, err
		}
		// The record's rewrite met a rotation on another Store: the
		// record it replaced may be gone, and the data key with it.
		// The check is made again on the row as it is now.
		s.tokenMoved(ctx, ti.ID)
	}
}

// checkPINOnce is checkPIN's one try.
func (s *Store) checkPINOnce(ctx context.Context, token UUID, role Role, pin []byte) (TokenInfo, *tokenState, []byte, error) {
	ti, st, err := s.token(ctx, s.r, "uuid = ?", token[:])
	if err != nil {
		return ti, nil, nil, err
	}
	rec, err := s.pinFor(&ti, role)
	if err != nil {
		return ti, nil, nil, err
	}
	// On a node that did not write the record, its own binding's seal.
	nc, err := s.nodeRecord(ctx, &ti, role, rec)
	if err != nil {
		return ti, nil, nil, err
	}
	rec, bound := nc.rec, nc.bound
	ps := s.sealerFor()
	if nc.dup != nil {
		ps = nc.dup
	}
	dk, err := unwrapDataKey(st.keys, token, role, ti.DataGeneration, pin, rec, s.pins, ps)
	switch {
	case err == nil, errors.Is(err, ErrPINIncorrect), errors.Is(err, ErrPINLenRange), errors.Is(err, ErrTPMLockout):
	case nc.dup != nil && nc.dup.refused != nil:
		// No PIN was presented: the TPM refused the blob itself.
		return ti, nil, nil, s.refusedDup(&ti, role, err)
	case nc.foreign:
		s.noteUnbound(&ti, role, nc.salt)
		return ti, nil, nil, fmt.Errorf("%w: token %q's %s PIN record (docs/cluster.md, \"PINs across nodes\"): %w", ErrPINNotOnNode, ti.Label, role, err)
	}
	if errors.Is(err, ErrPINIncorrect) || errors.Is(err, ErrPINLenRange) {
		if cerr := s.countFailure(ctx, token, role, true); cerr != nil {
			return ti, nil, nil, cerr
		}
		return ti, nil, nil, ErrPINIncorrect
	}
	if err != nil {
		return ti, nil, nil, err
	}
	if nc.dup != nil && nc.dup.resealed != nil {
		s.keepPINDup(ctx, ti.ID, role, nc.salt, nc.dup.resealed)
	}
	// A record checked through this node's binding is not rewritten here:
	// the record's own seal is another node's.
	if g, ok := recordGen(rec); !bound && ((ok && g != st.keys.generation) || pinRecordStale(rec, s.binding())) {
		// The record is still under the PIN key of a KEK a master key
		// rotation replaced, or not bound to the TPM (written before
		// PINs were), or its recovery copy is under an earlier master
		// key's recovery key: now that the PIN is at hand, write it anew
		// (which also clears the count).
		if err := s.writePIN(ctx, st, ti, role, pin, dk); err != nil {
			wipe(dk)
			return ti, nil, nil, err
		}
		return ti, st, dk, nil
	}
	failures := ti.UserFailures
	if role == RoleSO {
		failures = ti.SOFailures
	}
	if failures != 0 {
		if err := s.countFailure(ctx, token, role, false); err != nil {
			wipe(dk)
			return ti, nil, nil, err
		}
	}
	return ti, st, dk, nil
}

// Login opens the token data key with role's PIN. On success the token's
// private objects become usable until Logout. A wrong PIN counts a failure;
// after Options.MaxPINFailures of them the role is locked (ErrPINLocked)
// until the SO sets a new user PIN, or, for the SO, the administrator
// recovers the token. Which roles may log in together is the daemon's rule:
// the keystore only holds the data key, the same for both.
func (s *Store) Login(ctx context.Context, token UUID, role Role, pin []byte) error {
	defer s.writing(token)()
	var ti TokenInfo
	var st *tokenState
	for try := 0; ; try++ {
		var dk []byte
		var err error
		ti, st, dk, err = s.checkPIN(ctx, token, role, pin)
		if err != nil {
			return err
		}
		aead, err := newGCM(dk)
		if err != nil {
			wipe(dk)
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			wipe(dk)
			return ErrClosed
		}
		if st.epoch > ti.LoginEpoch || s.tokens[st.rowID] != st {
			// The row was read before a logout of every daemon this Store
			// has heard of since, or the token's state was dropped under
			// the check: the login would be ended as soon as made. The
			// PIN is at hand: log in again, after it.
			s.mu.Unlock()
			wipe(dk)
			if try < loginRetries && ctx.Err() == nil {
				continue
			}
			return fmt.Errorf("%w: the token's logins were ended on every daemon while logging in", ErrNotLoggedIn)
		}
		st.logout()
		st.dataKey, st.data, st.dgen, st.lepoch = dk, aead, ti.DataGeneration, ti.LoginEpoch
		st.open.Store(true)
		s.mu.Unlock()
		break
	}
	if ti.Tier == TierPremium {
		// Best effort: a key left public is resealed at the next login.
		s.privatizeHSMKeys(ctx, st)
	}
	return nil
}

// Logout forgets the token data key and drops the token's private objects
// from the cache.
func (s *Store) Logout(token UUID) {
	s.mu.Lock()
	for _, st := range s.tokens {
		if st.uuid == token {
			st.logout()
		}
	}
	s.mu.Unlock()
	s.cache.purge(func(o *Object) bool { return o.Token == token && o.Private })
}

// LoggedIn reports whether the token's data key is open.
func (s *Store) LoggedIn(token UUID) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, st := range s.tokens {
		if st.uuid == token && st.loggedIn() {
			return true
		}
	}
	return false
}

// SetPIN changes role's PIN from oldPIN to newPIN (C_SetPIN). A wrong old
// PIN counts as a failed login.
func (s *Store) SetPIN(ctx context.Context, token UUID, role Role, oldPIN, newPIN []byte) error {
	defer s.writing(token)()
	return s.retryPINWrite(ctx, func() (TokenInfo, error) {
		ti, st, dk, err := s.checkPIN(ctx, token, role, oldPIN)
		if err != nil {
			return ti, err
		}
		defer wipe(dk)
		return ti, s.writePIN(ctx, st, ti, role, newPIN, dk)
	})
}

// retryPINWrite makes a PIN record's write (write: check, wrap, write)
// again while it meets a rotation on another Store (errTokenMoved): the
// data key it wrapped, or the KEK it wrapped under, was replaced. A data
// key replaced under a login makes the next try ErrNotLoggedIn.
func (s *Store) retryPINWrite(ctx context.Context, write func() (TokenInfo, error)) error {
	for try := 0; ; try++ {
		ti, err := write()
		if !errors.Is(err, errTokenMoved) || try >= sealRetries || ctx.Err() != nil {
			return err
		}
		s.tokenMoved(ctx, ti.ID)
	}
}

// InitPIN sets a new user PIN (C_InitPIN), which also unlocks a locked user
// PIN. The token must be logged in, so that its data key can be wrapped
// under the new PIN; that it is the SO who is logged in is the daemon's rule.
func (s *Store) InitPIN(ctx context.Context, token UUID, newUserPIN []byte) error {
	defer s.writing(token)()
	return s.retryPINWrite(ctx, func() (TokenInfo, error) {
		ti, st, err := s.token(ctx, s.r, "uuid = ?", token[:])
		if err != nil {
			return ti, err
		}
		s.mu.RLock()
		dk := append([]byte(nil), st.dataKey...)
		ok := st.loggedIn() && st.dgen == ti.DataGeneration
		s.mu.RUnlock()
		defer wipe(dk)
		if !ok {
			if st.loggedIn() {
				// Logged in under a data key replaced on another
				// Store: out, here too.
				return ti, errTokenMoved
			}
			return ti, ErrNotLoggedIn
		}
		return ti, s.writePIN(ctx, st, ti, RoleUser, newUserPIN, dk)
	})
}

func (s *Store) writePIN(ctx context.Context, st *tokenState, ti TokenInfo, role Role, pin, dk []byte) error {
	rec, dups, err := s.wrapPIN(st.keys, ti.UUID, role, ti.DataGeneration, pin, dk)
	if err != nil {
		return err
	}
	defer dups.wipe()
	pruned := false
	g, _ := recordGen(rec)
	err = s.updateTokenThen(ctx, ti.UUID, func(cur *TokenInfo) error {
		if cur.DataGeneration != ti.DataGeneration || cur.KEKGeneration != g {
			// The row, locked, is past a rotation on another Store
			// since it was read: the data key wrapped is not its, or
			// the PIN key wrapped under is one its legacy keys may not
			// keep. The write is made again (retryPINWrite).
			return errTokenMoved
		}
		if role == RoleSO {
			cur.soPIN, cur.SOFailures = rec, 0
		} else {
			cur.userPIN, cur.UserFailures = rec, 0
		}
		had := cur.legacyPINKeys != nil
		pruneLegacy(cur, st.keys.generation)
		pruned = had && cur.legacyPINKeys == nil
		return nil
	}, func(tx *sql.Tx, cur *TokenInfo) error {
		return s.putPINDups(ctx, tx, cur.ID, dups)
	})
	if err == nil && pruned {
		// The keys stop serving: keys without them take their place (a
		// reader may still hold the old ones, so they are dropped, not
		// wiped).
		s.mu.Lock()
		k := *st.keys
		k.legacy = nil
		st.keys = &k
		s.mu.Unlock()
	}
	return err
}

// pruneLegacy drops the legacy PIN keys once no PIN record is under one.
func pruneLegacy(ti *TokenInfo, gen uint32) {
	for _, rec := range [][]byte{ti.soPIN, ti.userPIN} {
		if g, ok := recordGen(rec); rec != nil && (!ok || g != gen) {
			return
		}
	}
	ti.legacyPINKeys = nil
}
