package keystore

import (
	"context"
	"database/sql"
	"errors"
)

// The administrator's token operations: what `hsmemu token` and `hsmemu
// pin` do through the daemon, beside the PKCS#11 calls.

// CheckPIN checks role's PIN without logging in, counting the outcome as
// a login would.
func (s *Store) CheckPIN(ctx context.Context, token UUID, role Role, pin []byte) error {
	defer s.writing(token)()
	_, _, dk, err := s.checkPIN(ctx, token, role, pin)
	wipe(dk)
	return err
}

// ResetUserPIN sets a new user PIN with the SO PIN, which also unlocks a
// locked user PIN. A wrong SO PIN counts as an SO failure.
func (s *Store) ResetUserPIN(ctx context.Context, token UUID, soPIN, newUserPIN []byte) error {
	defer s.writing(token)()
	return s.retryPINWrite(ctx, func() (TokenInfo, error) {
		ti, st, dk, err := s.checkPIN(ctx, token, RoleSO, soPIN)
		if err != nil {
			return ti, err
		}
		defer wipe(dk)
		return ti, s.writePIN(ctx, st, ti, RoleUser, newUserPIN, dk)
	})
}

// ClearFailures sets role's count of failed PIN checks to zero, unlocking
// a locked role without changing its PIN.
func (s *Store) ClearFailures(ctx context.Context, token UUID, role Role) error {
	defer s.writing(token)()
	return s.updateToken(ctx, token, func(ti *TokenInfo) error {
		if role == RoleSO {
			ti.SOFailures = 0
		} else {
			ti.UserFailures = 0
		}
		return nil
	})
}

// Locked reports whether role is locked on the token.
func (s *Store) Locked(ti TokenInfo, role Role) bool {
	if role == RoleSO {
		return ti.SOFailures >= s.opts.MaxPINFailures
	}
	return ti.UserFailures >= s.opts.MaxPINFailures
}

// ObjectCounts returns how many live objects each token holds, by token
// row id.
func (s *Store) ObjectCounts(ctx context.Context) (map[int64]int64, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT token_id, count(*) FROM objects WHERE deleted_at IS NULL GROUP BY token_id")
	if err != nil {
		return nil, s.dbErr("count objects", err)
	}
	defer rows.Close()
	out := map[int64]int64{}
	for rows.Next() {
		var id, n int64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, s.dbErr("count objects", err)
		}
		out[id] = n
	}
	return out, s.dbErr("count objects", rows.Err())
}

// AuditHead returns the newest audit record's sequence number and hash
// (0 and nil for an empty log).
func (s *Store) AuditHead(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.r.QueryRowContext(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	return seq, hash, s.dbErr("read audit head", err)
}
