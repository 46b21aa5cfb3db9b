package keystore

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrUserPINNeeded refuses a data key rotation without the user PIN of a
// token that has one: the new key must be wrapped under it.
var ErrUserPINNeeded = errors.New("keystore: the token's user PIN is needed to rotate its data key")

// RotateDataKey replaces a token's data key with a new random one, online.
// Every object sealed under the old key (private objects with secret
// material, deleted ones included) is opened and sealed again under the
// new one, and the key is wrapped anew under the SO PIN and, when set, the
// user PIN: both are needed, since the keystore never holds a PIN, only
// what each unwraps. Everything is one transaction, so an interruption
// leaves the old key in force and nothing half done.
//
// Applications keep working: reads go on during the rotation (a row read
// before the commit is read again);
// writes to the token (under its data key or not), its logins and PIN
// changes wait for it; writes to the other tokens do not. progress,
// when not nil, is told how many of the objects are done.
func (s *Store) RotateDataKey(ctx context.Context, token UUID, soPIN, userPIN []byte, progress func(done, total int)) (resealed int, err error) {
	// The token's lock exclusively: writes to the other tokens go on.
	defer s.rotating(token)()
	// One rotation of a token at a time in the domain: a second one,
	// begun on another daemon, starts from the key the first installed.
	release, _, err := s.eng.job(ctx, "rotate-data/"+token.String(), true)
	if err != nil {
		return 0, err
	}
	defer release()
	for try := 0; ; try++ {
		// The KEK moved under the rotation (a master key rotation on
		// another Store): the PIN records are wrapped again under it.
		resealed, err = s.rotateDataKeyOnce(ctx, token, soPIN, userPIN, progress)
		if !errors.Is(err, errTokenMoved) || try >= sealRetries || ctx.Err() != nil {
			return resealed, err
		}
	}
}

// rotateDataKeyOnce is RotateDataKey's one try; the token's rotation
// lock and the job are held.
func (s *Store) rotateDataKeyOnce(ctx context.Context, token UUID, soPIN, userPIN []byte, progress func(done, total int)) (int, error) {
	ti, st, dk, err := s.checkPIN(ctx, token, RoleSO, soPIN)
	if err != nil {
		return 0, err
	}
	defer wipe(dk)
	if ti.UserPINSet {
		if userPIN == nil {
			return 0, ErrUserPINNeeded
		}
		_, _, udk, err := s.checkPIN(ctx, token, RoleUser, userPIN)
		if err != nil {
			return 0, err
		}
		same := subtle.ConstantTimeCompare(udk, dk) == 1
		wipe(udk)
		if !same {
			return 0, ErrTampered
		}
	}
	fresh := make([]byte, 32)
	installed := false
	defer func() {
		if !installed {
			wipe(fresh)
		}
	}()
	if _, err := rand.Read(fresh); err != nil {
		return 0, err
	}
	oldData, err := newGCM(dk)
	if err != nil {
		return 0, err
	}
	newData, err := newGCM(fresh)
	if err != nil {
		return 0, err
	}
	gen := ti.DataGeneration + 1
	// The PIN records first: Argon2id is slow, and needs no lock on the
	// database.
	soRec, soDups, err := s.wrapPIN(st.keys, token, RoleSO, gen, soPIN, fresh)
	if err != nil {
		return 0, err
	}
	defer soDups.wipe()
	var userRec []byte
	var userDups *pinDupJob
	defer func() { userDups.wipe() }()
	if ti.UserPINSet {
		if userRec, userDups, err = s.wrapPIN(st.keys, token, RoleUser, gen, userPIN, fresh); err != nil {
			return 0, err
		}
	}

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// The token's row first, before the objects are read: a write that
	// seals on another Store holds it FOR SHARE until it commits, so
	// every object sealed under the old data key is read below, and none
	// is written under it after (sealgate.go).
	cur, _, err := s.token(ctx, tx, "uuid = ?"+s.eng.forUpdate(), token[:])
	if err != nil {
		return 0, err
	}
	if cur.DataGeneration != ti.DataGeneration || cur.KEKGeneration != ti.KEKGeneration {
		// Re-initialised, or rekeyed, on another Store since the PIN
		// check: the key opened, or the PIN records wrapped, are not
		// the row's.
		return 0, errTokenMoved
	}
	from := sealer{token: token, keys: st.keys, data: oldData, dgen: ti.DataGeneration}
	to := sealer{token: token, keys: st.keys, data: newData, dgen: gen}
	n, err := s.reseal(ctx, tx, ti.ID, func(kind byte) bool { return kind == kindData }, from, to, progress)
	if err != nil {
		return 0, err
	}
	cur.DataGeneration, cur.soPIN = gen, soRec
	if ti.UserPINSet {
		cur.userPIN = userRec
	}
	cur.SOFailures, cur.UserFailures = 0, 0
	cur.UserPINSet = cur.userPIN != nil
	pruneLegacy(&cur, st.keys.generation)
	cur.mac = tokenMAC(st.keys, &cur)
	if _, err := tx.ExecContext(ctx, `UPDATE tokens SET dk_generation = ?, so_pin = ?, user_pin = ?, so_failures = 0, user_failures = 0,
		legacy_pin_keys = ?, mac = ? WHERE id = ?`,
		cur.DataGeneration, cur.soPIN, cur.userPIN, cur.legacyPINKeys, cur.mac, cur.ID); err != nil {
		return 0, s.dbErr("update token", err)
	}
	if err := s.putPINDups(ctx, tx, cur.ID, soDups); err != nil {
		return 0, err
	}
	if err := s.putPINDups(ctx, tx, cur.ID, userDups); err != nil {
		return 0, err
	}
	s.mu.Lock()
	st.installing = gen
	s.mu.Unlock()
	if err := tx.Commit(); err != nil {
		s.mu.Lock()
		st.installing = 0
		s.mu.Unlock()
		return 0, s.dbErr("commit", err)
	}
	// The new key takes over where the old one was open. A reader that
	// fetched a row before the commit reads it again (Open).
	s.mu.Lock()
	if st.loggedIn() {
		wipe(st.dataKey)
		st.dataKey, st.data = fresh, newData
		st.open.Store(true)
		installed = true
	}
	st.dgen, st.installing = gen, 0
	s.mu.Unlock()
	return n, nil
}

// reseal opens, in tx, every object of a token sealed with a kind that
// kinds picks, with from, and seals it again with to: a rotation's one
// pass over the token's objects, deleted ones included. progress, when
// not nil, is told how many are done.
func (s *Store) reseal(ctx context.Context, tx *sql.Tx, tokenID int64, kinds func(kind byte) bool, from, to sealer, progress func(done, total int)) (int, error) {
	rows, err := tx.QueryContext(ctx, "SELECT id, record FROM objects WHERE token_id = ?", tokenID)
	if err != nil {
		return 0, s.dbErr("read objects", err)
	}
	var todo []objectRow
	for rows.Next() {
		var r objectRow
		var rec []byte
		if err := rows.Scan(&r.id, &rec); err != nil {
			rows.Close()
			return 0, s.dbErr("read objects", err)
		}
		if err := r.parseRecord(rec); err != nil {
			rows.Close()
			return 0, err
		}
		if len(r.sealed) > 1 && kinds(r.sealed[1]) {
			todo = append(todo, r)
		}
	}
	if err := rows.Close(); err != nil {
		return 0, s.dbErr("read objects", err)
	}
	now := time.Now().Unix()
	for i := range todo {
		r := &todo[i]
		if s.anc.objectBad(r.id) {
			// Resealed, the row put back would get a fresh anchor entry
			// and pass the next start: the rotation waits for it to be
			// deleted, as for a seal that fails.
			err := tampered("object", r.uuid, r.id, "rows")
			s.noteTamper(err)
			return 0, err
		}
		_, ix, err := r.decode()
		if err != nil {
			return 0, err
		}
		secret, err := from.open(r.uuid, ix.private, r.attrs, r.sealed, nil, nil)
		if err != nil {
			return 0, fmt.Errorf("keystore: reseal object %s: %w", r.uuid, err)
		}
		sealed, err := to.seal(r.uuid, ix.private, r.attrs, secret)
		wipe(secret)
		if err != nil {
			return 0, err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE objects SET record = ?, updated_at = ? WHERE id = ?", record(r.uuid, r.attrs, sealed), now, r.id); err != nil {
			return 0, s.dbErr("reseal object", err)
		}
		if progress != nil {
			progress(i+1, len(todo))
		}
	}
	return len(todo), nil
}
