package keystore

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"
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
	// RetentionDays is how long a deleted object is kept, recoverable,
	// before it is purged; 0 deletes at once. PurgeProtection, once on,
	// refuses every purge before the retention ends, and cannot be
	// turned off.
	RetentionDays   int
	PurgeProtection bool
	// MasterGeneration says which master key derives the token's KEK.
	MasterGeneration uint32
	// LoginEpoch counts the logouts of every daemon (LogoutAll): a login
	// made under an earlier epoch is ended wherever it is held. 0 until
	// the first.
	LoginEpoch uint32
	// Tampered is set, by Tokens alone, on a row that failed its MAC or
	// its range checks (a TamperError). The token is unusable; of the
	// fields above, only ID is to be believed.
	Tampered error
	// ID is the token's row id: stable for the token's life and never
	// reused, so the daemon can use it as the token's slot id.
	ID int64

	soPIN, userPIN []byte
	legacyPINKeys  []byte // sealed PIN keys of earlier KEKs (legacyPINKeys), or nil
	mac            []byte
}

// DefaultRetentionDays is a new token's retention of deleted objects.
const DefaultRetentionDays = 90

// CreateToken creates a token with a fresh data key wrapped under its PINs.
func (s *Store) CreateToken(ctx context.Context, spec TokenSpec) (TokenInfo, error) {
	var ti TokenInfo
	// Made again under the new master key should another Store's
	// rotation have switched to it meanwhile.
	err := s.afterFollow(ctx, func() (err error) {
		ti, err = s.createToken(ctx, spec)
		return err
	})
	return ti, err
}

func (s *Store) createToken(ctx context.Context, spec TokenSpec) (TokenInfo, error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
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
	s.mu.RLock()
	masterGen := s.masterGen
	s.mu.RUnlock()
	keys, err := s.deriveKeys(ctx, uuid, kekGen, masterGen)
	if err != nil {
		return TokenInfo{}, err
	}
	defer keys.wipe()
	dataKey := make([]byte, 32)
	defer wipe(dataKey)
	if _, err := rand.Read(dataKey); err != nil {
		return TokenInfo{}, err
	}
	ti := TokenInfo{UUID: uuid, Label: spec.Label, Tier: spec.Tier, KEKGeneration: kekGen, DataGeneration: dataGen, RetentionDays: DefaultRetentionDays, MasterGeneration: masterGen}
	var soDups, userDups *pinDupJob
	defer func() { soDups.wipe(); userDups.wipe() }()
	if ti.soPIN, soDups, err = s.wrapPIN(keys, uuid, RoleSO, dataGen, spec.SOPIN, dataKey); err != nil {
		return TokenInfo{}, err
	}
	if spec.UserPIN != nil {
		if ti.userPIN, userDups, err = s.wrapPIN(keys, uuid, RoleUser, dataGen, spec.UserPIN, dataKey); err != nil {
			return TokenInfo{}, err
		}
	}
	// The serial is 16 characters, the width of CK_TOKEN_INFO.serialNumber.
	ti.Serial = strings.ToUpper(uuid.String()[:16])
	ti.UserPINSet = ti.userPIN != nil
	now := time.Now()
	ti.Created = time.Unix(now.Unix(), 0)
	ti.mac = tokenMAC(keys, &ti)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return TokenInfo{}, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// Another Store's master key rotation either sees this token before
	// its switch (and rekeys it), or has switched already: then the
	// token is made again, under the new master key (holdTokens).
	if err := s.eng.lockTokens(ctx, tx); err != nil {
		return TokenInfo{}, s.dbErr("lock tokens", err)
	}
	if err := s.checkEpoch(ctx, tx, masterGen); err != nil {
		return TokenInfo{}, err
	}
	err = tx.QueryRowContext(ctx, `INSERT INTO tokens
		(uuid, label, serial, tier, kek_generation, dk_generation, so_pin, user_pin, mac, created_at, retention_days, master_generation)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		uuid[:], ti.Label, ti.Serial, int(ti.Tier), kekGen, dataGen, ti.soPIN, ti.userPIN, ti.mac, now.Unix(), ti.RetentionDays, masterGen).Scan(&ti.ID)
	if err != nil {
		if s.eng.unique(err) {
			return TokenInfo{}, ErrTokenExists
		}
		return TokenInfo{}, s.dbErr("insert token", err)
	}
	if err := s.putPINDups(ctx, tx, ti.ID, soDups); err != nil {
		return TokenInfo{}, err
	}
	if err := s.putPINDups(ctx, tx, ti.ID, userDups); err != nil {
		return TokenInfo{}, err
	}
	if err := tx.Commit(); err != nil {
		return TokenInfo{}, s.dbErr("commit", err)
	}
	return ti, nil
}

// Reinit re-initialises a token (C_InitToken on an initialised token): the
// SO PIN must be right; every object is destroyed, the user PIN removed,
// the label replaced, and a new data key, wrapped under the same SO PIN,
// replaces the old one, so nothing sealed before can be opened again.
func (s *Store) Reinit(ctx context.Context, token UUID, soPIN []byte, label string) error {
	defer s.writing(token)()
	if label == "" || len(label) > 32 {
		return fmt.Errorf("keystore: token label must be 1..32 bytes, got %d", len(label))
	}
	return s.retryPINWrite(ctx, func() (TokenInfo, error) { return s.reinitOnce(ctx, token, soPIN, label) })
}

// reinitOnce is Reinit's one try.
func (s *Store) reinitOnce(ctx context.Context, token UUID, soPIN []byte, label string) (TokenInfo, error) {
	ti, st, dk, err := s.checkPIN(ctx, token, RoleSO, soPIN)
	if err != nil {
		return ti, err
	}
	wipe(dk)
	fresh := make([]byte, 32)
	defer wipe(fresh)
	if _, err := rand.Read(fresh); err != nil {
		return ti, err
	}
	rec, dups, err := s.wrapPIN(st.keys, token, RoleSO, ti.DataGeneration+1, soPIN, fresh)
	if err != nil {
		return ti, err
	}
	defer dups.wipe()
	s.Logout(token)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return ti, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// The token's row first, as a rotation locks it (sealgate.go).
	cur, _, err := s.token(ctx, tx, "uuid = ?"+s.eng.forUpdate(), token[:])
	if err != nil {
		return ti, err
	}
	if cur.DataGeneration != ti.DataGeneration || cur.KEKGeneration != ti.KEKGeneration {
		// Rotated on another Store since the PIN check: the SO PIN's
		// new record is made again, under the row's KEK.
		return ti, errTokenMoved
	}
	if ti.PurgeProtection {
		if held, err := holdsObjects(ctx, tx, ti.ID); err != nil || held {
			return ti, cmp.Or(s.dbErr("count objects", err), ErrPurgeProtected)
		}
	}
	if err := s.tokenObjectsAsWritten(ctx, tx, ti.ID); err != nil {
		return ti, err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM objects WHERE token_id = ?", ti.ID); err != nil {
		return ti, s.dbErr("delete objects", err)
	}
	cur.Label, cur.DataGeneration = label, ti.DataGeneration+1
	cur.soPIN, cur.userPIN, cur.SOFailures, cur.UserFailures, cur.legacyPINKeys = rec, nil, 0, 0, nil
	cur.mac = tokenMAC(st.keys, &cur)
	_, err = tx.ExecContext(ctx, `UPDATE tokens SET label = ?, dk_generation = ?, so_pin = ?, user_pin = NULL,
		so_failures = 0, user_failures = 0, legacy_pin_keys = NULL, mac = ? WHERE id = ?`, cur.Label, cur.DataGeneration, cur.soPIN, cur.mac, cur.ID)
	if err != nil {
		if s.eng.unique(err) {
			return ti, ErrTokenExists
		}
		return ti, s.dbErr("reinit token", err)
	}
	if err := s.putPINDups(ctx, tx, cur.ID, dups); err != nil {
		return ti, err
	}
	if err := tx.Commit(); err != nil {
		return ti, s.dbErr("commit", err)
	}
	s.mu.Lock()
	st.dgen = cur.DataGeneration
	s.mu.Unlock()
	s.cache.purge(func(o *Object) bool { return o.Token == token })
	return ti, nil
}

// DeleteToken removes a token and every object on it. A token with purge
// protection is removed only once it holds no object, live or deleted.
func (s *Store) DeleteToken(ctx context.Context, token UUID) error {
	defer s.writing(token)()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	ti, _, err := s.token(ctx, tx, "uuid = ?"+s.eng.forUpdate(), token[:])
	if err != nil {
		return err
	}
	if ti.PurgeProtection {
		if held, err := holdsObjects(ctx, tx, ti.ID); err != nil || held {
			return cmp.Or(s.dbErr("count objects", err), ErrPurgeProtected)
		}
	}
	if err := s.tokenObjectsAsWritten(ctx, tx, ti.ID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM tokens WHERE id = ?", ti.ID); err != nil {
		return s.dbErr("delete token", err)
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
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
