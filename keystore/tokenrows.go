package keystore

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// Reading and writing token rows: every read authenticated (verify),
// every write under a new MAC, in one transaction.

const selectToken = `SELECT id, uuid, label, serial, tier, kek_generation, dk_generation,
	so_pin, user_pin, so_failures, user_failures, mac, created_at, retention_days, purge_protection,
	master_generation, legacy_pin_keys, login_epoch FROM tokens`

// scanToken reads a token row. Every column is read as whatever SQLite
// holds (a file edited by hand need not keep the schema's types), at its
// full width, and range-checked (checkTokenRange); a row that fails is a
// TamperError, with what could be read of it (its row id, and its uuid
// and label when they are well formed) for the listing that reports it.
func scanToken(row interface{ Scan(...any) error }) (TokenInfo, error) {
	var ti TokenInfo
	var c [18]any
	ptrs := make([]any, len(c))
	for i := range c {
		ptrs[i] = &c[i]
	}
	if err := row.Scan(ptrs...); err != nil {
		return ti, err
	}
	bad := ""
	num := func(i int, name string) int64 {
		v, ok := c[i].(int64)
		if !ok && bad == "" {
			bad = name
		}
		return v
	}
	blob := func(i int, name string, null bool) []byte {
		v, ok := c[i].([]byte)
		if !ok && !(null && c[i] == nil) && bad == "" {
			bad = name
		}
		return v
	}
	text := func(i int, name string) string {
		v, ok := c[i].(string)
		if !ok && bad == "" {
			bad = name
		}
		return v
	}
	ti.ID = num(0, "id")
	uuid := blob(1, "uuid column", false)
	if len(uuid) != 16 {
		return ti, tampered("token", UUID{}, ti.ID, "uuid column")
	}
	copy(ti.UUID[:], uuid)
	ti.Label, ti.Serial = text(2, "label"), text(3, "serial")
	tier, kekGen, dataGen := num(4, "tier"), num(5, "kek_generation"), num(6, "dk_generation")
	ti.soPIN, ti.userPIN = blob(7, "so_pin", false), blob(8, "user_pin", true)
	soFail, userFail := num(9, "so_failures"), num(10, "user_failures")
	ti.mac = blob(11, "mac", false)
	created, retention, purge := num(12, "created_at"), num(13, "retention_days"), num(14, "purge_protection")
	masterGen := num(15, "master_generation")
	ti.legacyPINKeys = blob(16, "legacy_pin_keys", true)
	// NULL until the first logout of every daemon (LogoutAll).
	var epoch int64
	if c[17] != nil {
		if epoch = num(17, "login_epoch"); epoch < 1 {
			epoch = -1 // stored only from 1 on: out of range
		}
	}
	if bad != "" {
		return ti, tampered("token", ti.UUID, ti.ID, "type of "+bad)
	}
	// Values outside a field's type are out of range: clamp to a value
	// the check refuses, never wrap into one it accepts.
	gen := func(v int64) uint32 {
		if v < 0 || v > 1<<32-1 {
			return 0
		}
		return uint32(v)
	}
	count := func(v int64) int {
		if v < 0 || v > MaxStoredFailures {
			return -1
		}
		return int(v)
	}
	ti.KEKGeneration, ti.DataGeneration, ti.MasterGeneration = gen(kekGen), gen(dataGen), gen(masterGen)
	if epoch != 0 {
		if ti.LoginEpoch = gen(epoch); ti.LoginEpoch == 0 {
			return ti, tampered("token", ti.UUID, ti.ID, "range")
		}
	}
	ti.SOFailures, ti.UserFailures = count(soFail), count(userFail)
	ti.RetentionDays = -1
	if retention >= 0 && retention <= MaxRetentionDays {
		ti.RetentionDays = int(retention)
	}
	ti.Tier = Tier(0)
	if tier > 0 && tier < 256 {
		ti.Tier = Tier(tier)
	}
	ti.UserPINSet = ti.userPIN != nil
	ti.Created = time.Unix(created, 0)
	if purge != 0 && purge != 1 {
		return ti, tampered("token", ti.UUID, ti.ID, "range")
	}
	ti.PurgeProtection = purge == 1
	return ti, checkTokenRange(&ti, tier)
}

// Tokens lists every token, in creation order. Each row is authenticated:
// one that fails is listed with Tampered set, and only its row id (and,
// marked so, what else could be read) is to be believed; every other read
// of that token is ErrTampered. The rest of the list is good.
func (s *Store) Tokens(ctx context.Context) ([]TokenInfo, error) {
	for try := 0; ; try++ {
		out, raced, err := s.tokens1(ctx, try)
		if err == nil && raced && try < rekeyRetries && ctx.Err() == nil {
			// A token was rekeyed under the listing: list again.
			time.Sleep(time.Millisecond)
			continue
		}
		return out, err
	}
}

// tokens1 lists the tokens once; raced says a row raced with a rotation
// and the listing is to be made again. try is how many were made before.
func (s *Store) tokens1(ctx context.Context, try int) (out []TokenInfo, raced bool, err error) {
	rows, err := s.r.QueryContext(ctx, selectToken+" ORDER BY id")
	if err != nil {
		return nil, false, s.dbErr("list tokens", err)
	}
	for rows.Next() {
		ti, err := scanToken(rows)
		if err != nil && !errors.Is(err, ErrTampered) {
			rows.Close()
			return nil, false, s.dbErr("list tokens", err)
		}
		ti.Tampered = err
		out = append(out, ti)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, false, s.dbErr("list tokens", err)
	}
	for i := range out {
		if out[i].Tampered != nil {
			s.noteTamper(out[i].Tampered)
			continue
		}
		_, err := s.verify(ctx, &out[i])
		switch {
		case err == nil:
			continue
		case errors.Is(err, errStaleRow) && try >= staleRetries:
			err = tampered("token", out[i].UUID, out[i].ID, "generation")
		case errors.Is(err, errStaleRow) || errors.Is(err, errNewerKeys):
			if try < rekeyRetries {
				raced = true
				continue
			}
			return nil, false, err
		case !errors.Is(err, ErrTampered):
			return nil, false, err
		}
		s.noteTamper(err)
		out[i].Tampered = err
	}
	return out, raced, nil
}

// Token returns the token with the given UUID, authenticated.
func (s *Store) Token(ctx context.Context, uuid UUID) (TokenInfo, error) {
	ti, _, err := s.token(ctx, s.r, "uuid = ?", uuid[:])
	return ti, err
}

// TokenByLabel returns the token with the given label, authenticated.
func (s *Store) TokenByLabel(ctx context.Context, label string) (TokenInfo, error) {
	ti, _, err := s.token(ctx, s.r, "label = ?", label)
	return ti, err
}

// TokenByID returns the token with the given row id, authenticated.
func (s *Store) TokenByID(ctx context.Context, id int64) (TokenInfo, error) {
	ti, _, err := s.token(ctx, s.r, "id = ?", id)
	return ti, err
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// token reads one token row and authenticates it. A row that raced with
// a master key rotation (read before it rekeyed the token, or verified
// before its new keys were installed) is read again, a little later.
func (s *Store) token(ctx context.Context, q querier, where string, arg any) (TokenInfo, *tokenState, error) {
	for try := 0; ; try++ {
		ti, err := scanToken(q.QueryRowContext(ctx, selectToken+" WHERE "+where, arg))
		if errors.Is(err, sql.ErrNoRows) {
			return ti, nil, ErrNotFound
		}
		if errors.Is(err, ErrTampered) {
			s.noteTamper(err)
			return ti, nil, err
		}
		if err != nil {
			return ti, nil, s.dbErr("read token", err)
		}
		st, err := s.verify(ctx, &ti)
		if errors.Is(err, errStaleRow) && try >= staleRetries {
			err = tampered("token", ti.UUID, ti.ID, "generation")
		}
		if try < rekeyRetries && ctx.Err() == nil && (errors.Is(err, errStaleRow) || errors.Is(err, errNewerKeys)) {
			time.Sleep(time.Millisecond)
			continue
		}
		s.noteTamper(err)
		return ti, st, err
	}
}

// rekeyRetries bounds how often a read that raced with a rotation is
// made again: a token is rekeyed in milliseconds.
const rekeyRetries = 2000

// staleRetries bounds how often a row older than the token's installed
// keys is read again. A rotation installs keys only after its commit, so
// a read made after that sees the rekeyed row: a row still older is one
// put back by hand (an earlier copy of it), not a race.
const staleRetries = 3

// updateToken changes a token row in one transaction: it reads the row,
// authenticates it, lets change edit it, and writes it back with a new MAC.
func (s *Store) updateToken(ctx context.Context, token UUID, change func(ti *TokenInfo) error) error {
	return s.updateTokenThen(ctx, token, change, nil)
}

// updateTokenThen is updateToken with then, when not nil, run in the same
// transaction after the row is written.
func (s *Store) updateTokenThen(ctx context.Context, token UUID, change func(ti *TokenInfo) error, then func(tx *sql.Tx, ti *TokenInfo) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	ti, st, err := s.token(ctx, tx, "uuid = ?"+s.eng.forUpdate(), token[:])
	if err != nil {
		return err
	}
	if err := change(&ti); err != nil {
		return err
	}
	ti.UserPINSet = ti.userPIN != nil
	ti.mac = tokenMAC(st.keys, &ti)
	// A login epoch never set stays NULL (schema.go, migration 9).
	epoch := sql.NullInt64{Int64: int64(ti.LoginEpoch), Valid: ti.LoginEpoch != 0}
	_, err = tx.ExecContext(ctx, `UPDATE tokens SET label = ?, tier = ?, dk_generation = ?, so_pin = ?, user_pin = ?,
		so_failures = ?, user_failures = ?, mac = ?, retention_days = ?, purge_protection = ?, legacy_pin_keys = ?, login_epoch = ? WHERE id = ?`,
		ti.Label, int(ti.Tier), ti.DataGeneration, ti.soPIN, ti.userPIN, ti.SOFailures, ti.UserFailures, ti.mac,
		ti.RetentionDays, ti.PurgeProtection, ti.legacyPINKeys, epoch, ti.ID)
	if err != nil {
		return s.dbErr("update token", err)
	}
	if then != nil {
		if err := then(tx, &ti); err != nil {
			return err
		}
	}
	return s.dbErr("commit", tx.Commit())
}
