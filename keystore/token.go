package keystore

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// Tier is a token's service level, as cloud key vaults have them.
type Tier uint8

const (
	// TierStandard holds secrets and software-protected keys.
	TierStandard Tier = 1
	// TierPremium also holds HSM-protected keys, which never leave in clear.
	TierPremium Tier = 2
)

func (t Tier) String() string {
	switch t {
	case TierStandard:
		return "standard"
	case TierPremium:
		return "premium"
	}
	return fmt.Sprintf("tier(%d)", uint8(t))
}

// ParseTier reads "standard" or "premium".
func ParseTier(s string) (Tier, error) {
	switch strings.ToLower(s) {
	case "standard":
		return TierStandard, nil
	case "premium":
		return TierPremium, nil
	}
	return 0, fmt.Errorf("unknown tier %q: want standard or premium", s)
}

// TokenSpec describes a token to create.
type TokenSpec struct {
	Label   string
	Tier    Tier
	SOPIN   []byte
	UserPIN []byte // optional: without it the user PIN awaits C_InitPIN
}

// TokenInfo describes a stored token. It holds nothing secret.
type TokenInfo struct {
	UUID           UUID
	Label          string
	Serial         string
	Tier           Tier
	UserPINSet     bool
	SOFailures     int
	UserFailures   int
	KEKGeneration  uint32
	DataGeneration uint32
	Created        time.Time

	rowID          int64
	soPIN, userPIN []byte
	mac            []byte
}

// tokenState is what the Store holds in memory for a token it has touched:
// the keys derived from its KEK and, while someone is logged in, the token
// data key.
type tokenState struct {
	rowID   int64
	uuid    UUID
	keys    *tokenKeys
	dataKey []byte
	data    cipher.AEAD
	dgen    uint32
	role    Role
}

func (t *tokenState) loggedIn() bool { return t.data != nil }

func (t *tokenState) logout() {
	wipe(t.dataKey)
	t.dataKey, t.data = nil, nil
}

func (t *tokenState) wipe() {
	t.logout()
	t.keys.wipe()
}

func (t *tokenState) sealer() sealer {
	return sealer{token: t.uuid, keys: t.keys, data: t.data, dgen: t.dgen}
}

func kekLabel(token UUID, generation uint32) []byte {
	l := append([]byte("hsmemu/kek/v1"), token[:]...)
	return binary.BigEndian.AppendUint32(l, generation)
}

// tokenMAC authenticates the policy-bearing columns of a token row: moving a
// token to another tier or generation in the database is detected.
func tokenMAC(keys *tokenKeys, uuid UUID, label, serial string, tier Tier, kekGen, dataGen uint32) []byte {
	m := hmac.New(sha256.New, keys.macKey)
	m.Write([]byte("hsmemu/token/v1"))
	m.Write(uuid[:])
	var b []byte
	b = append(b, byte(tier))
	b = binary.BigEndian.AppendUint32(b, kekGen)
	b = binary.BigEndian.AppendUint32(b, dataGen)
	b = binary.BigEndian.AppendUint32(b, uint32(len(label)))
	b = append(b, label...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(serial)))
	b = append(b, serial...)
	m.Write(b)
	return m.Sum(nil)
}

func (s *Store) rootOrErr() (Root, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.root == nil {
		return nil, ErrNoRoot
	}
	return s.root, nil
}

func (s *Store) deriveKeys(uuid UUID, gen uint32) (*tokenKeys, error) {
	root, err := s.rootOrErr()
	if err != nil {
		return nil, err
	}
	kek, err := root.DeriveKEK(kekLabel(uuid, gen))
	if err != nil {
		return nil, fmt.Errorf("keystore: derive KEK: %w", err)
	}
	defer wipe(kek)
	return newTokenKeys(kek, gen)
}

// CreateToken creates a token with a fresh data key wrapped under its PINs.
func (s *Store) CreateToken(ctx context.Context, spec TokenSpec) (TokenInfo, error) {
	if spec.Label == "" || len(spec.Label) > 32 {
		return TokenInfo{}, fmt.Errorf("keystore: token label must be 1..32 bytes, got %d", len(spec.Label))
	}
	if spec.Tier != TierStandard && spec.Tier != TierPremium {
		return TokenInfo{}, fmt.Errorf("keystore: unknown tier %d", spec.Tier)
	}
	uuid, err := newUUID()
	if err != nil {
		return TokenInfo{}, err
	}
	const kekGen, dataGen = 1, 1
	keys, err := s.deriveKeys(uuid, kekGen)
	if err != nil {
		return TokenInfo{}, err
	}
	defer keys.wipe()
	dataKey := make([]byte, 32)
	defer wipe(dataKey)
	if _, err := rand.Read(dataKey); err != nil {
		return TokenInfo{}, err
	}
	soRec, err := wrapDataKey(keys, uuid, RoleSO, dataGen, spec.SOPIN, dataKey, s.opts.Argon2)
	if err != nil {
		return TokenInfo{}, err
	}
	var userRec []byte
	if spec.UserPIN != nil {
		if userRec, err = wrapDataKey(keys, uuid, RoleUser, dataGen, spec.UserPIN, dataKey, s.opts.Argon2); err != nil {
			return TokenInfo{}, err
		}
	}
	// The serial is 16 characters, the width of CK_TOKEN_INFO.serialNumber.
	serial := strings.ToUpper(uuid.String()[:16])
	mac := tokenMAC(keys, uuid, spec.Label, serial, spec.Tier, kekGen, dataGen)
	now := time.Now()
	res, err := s.w.ExecContext(ctx, `INSERT INTO tokens
		(uuid, label, serial, tier, kek_generation, dk_generation, so_pin, user_pin, mac, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		uuid[:], spec.Label, serial, int(spec.Tier), kekGen, dataGen, soRec, userRec, mac, now.Unix())
	if err != nil {
		var se sqlite3.Error
		if errors.As(err, &se) && se.ExtendedCode == sqlite3.ErrConstraintUnique {
			return TokenInfo{}, ErrTokenExists
		}
		return TokenInfo{}, fmt.Errorf("keystore: insert token: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return TokenInfo{}, err
	}
	return TokenInfo{UUID: uuid, Label: spec.Label, Serial: serial, Tier: spec.Tier, UserPINSet: userRec != nil,
		KEKGeneration: kekGen, DataGeneration: dataGen, Created: time.Unix(now.Unix(), 0), rowID: id}, nil
}

const selectToken = `SELECT id, uuid, label, serial, tier, kek_generation, dk_generation,
	so_pin, user_pin, so_failures, user_failures, mac, created_at FROM tokens`

func scanToken(row interface{ Scan(...any) error }) (TokenInfo, error) {
	var ti TokenInfo
	var uuid []byte
	var tier int
	var created int64
	err := row.Scan(&ti.rowID, &uuid, &ti.Label, &ti.Serial, &tier, &ti.KEKGeneration, &ti.DataGeneration,
		&ti.soPIN, &ti.userPIN, &ti.SOFailures, &ti.UserFailures, &ti.mac, &created)
	if err != nil {
		return ti, err
	}
	if len(uuid) != 16 {
		return ti, ErrTampered
	}
	copy(ti.UUID[:], uuid)
	ti.Tier = Tier(tier)
	ti.UserPINSet = ti.userPIN != nil
	ti.Created = time.Unix(created, 0)
	return ti, nil
}

// Tokens lists every token, in creation order.
func (s *Store) Tokens(ctx context.Context) ([]TokenInfo, error) {
	rows, err := s.r.QueryContext(ctx, selectToken+" ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("keystore: list tokens: %w", err)
	}
	defer rows.Close()
	var out []TokenInfo
	for rows.Next() {
		ti, err := scanToken(rows)
		if err != nil {
			return nil, fmt.Errorf("keystore: list tokens: %w", err)
		}
		out = append(out, ti)
	}
	return out, rows.Err()
}

// Token returns the token with the given UUID.
func (s *Store) Token(ctx context.Context, uuid UUID) (TokenInfo, error) {
	return s.tokenWhere(ctx, s.r, "uuid = ?", uuid[:])
}

// TokenByLabel returns the token with the given label.
func (s *Store) TokenByLabel(ctx context.Context, label string) (TokenInfo, error) {
	return s.tokenWhere(ctx, s.r, "label = ?", label)
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) tokenWhere(ctx context.Context, q querier, where string, arg any) (TokenInfo, error) {
	ti, err := scanToken(q.QueryRowContext(ctx, selectToken+" WHERE "+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return ti, ErrNotFound
	}
	if err != nil {
		return ti, fmt.Errorf("keystore: read token: %w", err)
	}
	return ti, nil
}

// state returns the in-memory state of a token, deriving its keys through
// the root and authenticating its row the first time.
func (s *Store) state(ctx context.Context, rowID int64) (*tokenState, error) {
	s.mu.RLock()
	t, ok := s.tokens[rowID]
	s.mu.RUnlock()
	if ok {
		return t, nil
	}
	ti, err := s.tokenWhere(ctx, s.r, "id = ?", rowID)
	if err != nil {
		return nil, err
	}
	return s.stateFor(ti)
}

func (s *Store) stateFor(ti TokenInfo) (*tokenState, error) {
	s.mu.RLock()
	t, ok := s.tokens[ti.rowID]
	s.mu.RUnlock()
	if ok {
		return t, nil
	}
	keys, err := s.deriveKeys(ti.UUID, ti.KEKGeneration)
	if err != nil {
		return nil, err
	}
	want := tokenMAC(keys, ti.UUID, ti.Label, ti.Serial, ti.Tier, ti.KEKGeneration, ti.DataGeneration)
	if !hmac.Equal(want, ti.mac) {
		keys.wipe()
		return nil, ErrTampered
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[ti.rowID]; ok {
		keys.wipe()
		return t, nil
	}
	t = &tokenState{rowID: ti.rowID, uuid: ti.UUID, keys: keys, dgen: ti.DataGeneration}
	s.tokens[ti.rowID] = t
	return t, nil
}

func pinColumn(role Role) (string, string, error) {
	switch role {
	case RoleSO:
		return "so_pin", "so_failures", nil
	case RoleUser:
		return "user_pin", "user_failures", nil
	}
	return "", "", fmt.Errorf("keystore: unknown role %d", role)
}

// Login opens the token data key with pin. On success the token's private
// objects become usable until Logout; a wrong PIN counts a failure.
func (s *Store) Login(ctx context.Context, token UUID, role Role, pin []byte) error {
	_, failCol, err := pinColumn(role)
	if err != nil {
		return err
	}
	ti, err := s.Token(ctx, token)
	if err != nil {
		return err
	}
	st, err := s.stateFor(ti)
	if err != nil {
		return err
	}
	rec, failures := ti.soPIN, ti.SOFailures
	if role == RoleUser {
		rec, failures = ti.userPIN, ti.UserFailures
	}
	if rec == nil {
		return ErrPINNotInitialized
	}
	dk, err := unwrapDataKey(st.keys, token, role, ti.DataGeneration, pin, rec)
	if errors.Is(err, ErrPINIncorrect) {
		if _, uerr := s.w.ExecContext(ctx, "UPDATE tokens SET "+failCol+" = "+failCol+" + 1 WHERE id = ?", ti.rowID); uerr != nil {
			return fmt.Errorf("keystore: count failed login: %w", uerr)
		}
		return err
	}
	if err != nil {
		return err
	}
	aead, err := newGCM(dk)
	if err != nil {
		wipe(dk)
		return err
	}
	if failures != 0 {
		if _, err := s.w.ExecContext(ctx, "UPDATE tokens SET "+failCol+" = 0 WHERE id = ?", ti.rowID); err != nil {
			wipe(dk)
			return fmt.Errorf("keystore: reset failure count: %w", err)
		}
	}
	s.mu.Lock()
	st.logout()
	st.dataKey, st.data, st.dgen, st.role = dk, aead, ti.DataGeneration, role
	s.mu.Unlock()
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

// LoggedIn reports whether the token's data key is open, and for which role.
func (s *Store) LoggedIn(token UUID) (Role, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, st := range s.tokens {
		if st.uuid == token && st.loggedIn() {
			return st.role, true
		}
	}
	return 0, false
}

// SetPIN changes role's PIN from oldPIN to newPIN (C_SetPIN).
func (s *Store) SetPIN(ctx context.Context, token UUID, role Role, oldPIN, newPIN []byte) error {
	col, _, err := pinColumn(role)
	if err != nil {
		return err
	}
	ti, err := s.Token(ctx, token)
	if err != nil {
		return err
	}
	st, err := s.stateFor(ti)
	if err != nil {
		return err
	}
	rec := ti.soPIN
	if role == RoleUser {
		rec = ti.userPIN
	}
	if rec == nil {
		return ErrPINNotInitialized
	}
	dk, err := unwrapDataKey(st.keys, token, role, ti.DataGeneration, oldPIN, rec)
	if err != nil {
		return err
	}
	defer wipe(dk)
	return s.writePIN(ctx, st, ti, col, role, newPIN, dk)
}

// InitPIN sets a new user PIN (C_InitPIN). The SO must be logged in: the
// data key it opened is wrapped anew under the user PIN.
func (s *Store) InitPIN(ctx context.Context, token UUID, newUserPIN []byte) error {
	ti, err := s.Token(ctx, token)
	if err != nil {
		return err
	}
	st, err := s.stateFor(ti)
	if err != nil {
		return err
	}
	s.mu.RLock()
	dk := append([]byte(nil), st.dataKey...)
	ok := st.loggedIn() && st.role == RoleSO
	s.mu.RUnlock()
	defer wipe(dk)
	if !ok {
		return ErrNotLoggedIn
	}
	return s.writePIN(ctx, st, ti, "user_pin", RoleUser, newUserPIN, dk)
}

func (s *Store) writePIN(ctx context.Context, st *tokenState, ti TokenInfo, col string, role Role, pin, dk []byte) error {
	params := s.opts.Argon2
	rec, err := wrapDataKey(st.keys, ti.UUID, role, ti.DataGeneration, pin, dk, params)
	if err != nil {
		return err
	}
	failCol := "so_failures"
	if role == RoleUser {
		failCol = "user_failures"
	}
	_, err = s.w.ExecContext(ctx, "UPDATE tokens SET "+col+" = ?, "+failCol+" = 0 WHERE id = ? AND dk_generation = ?", rec, ti.rowID, ti.DataGeneration)
	if err != nil {
		return fmt.Errorf("keystore: write PIN record: %w", err)
	}
	return nil
}

// DeleteToken removes a token and every object on it.
func (s *Store) DeleteToken(ctx context.Context, token UUID) error {
	res, err := s.w.ExecContext(ctx, "DELETE FROM tokens WHERE uuid = ?", token[:])
	if err != nil {
		return fmt.Errorf("keystore: delete token: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	s.mu.Lock()
	for id, st := range s.tokens {
		if st.uuid == token {
			st.wipe()
			delete(s.tokens, id)
		}
	}
	s.mu.Unlock()
	s.cache.purge(func(o *Object) bool { return o.Token == token })
	return nil
}
