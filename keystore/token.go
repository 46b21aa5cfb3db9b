package keystore

import (
	"cmp"
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
	"sync/atomic"
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

// tokenState is what the Store holds in memory for a token it has touched:
// the keys derived from its KEK and, while someone is logged in, the token
// data key.
type tokenState struct {
	rowID   int64
	uuid    UUID
	keys    *tokenKeys
	dataKey []byte      // guarded by Store.mu
	data    cipher.AEAD // guarded by Store.mu
	dgen    uint32      // guarded by Store.mu
	// installing is the data key generation this Store's own rotation
	// is committing (0: none): its notification is not another's change.
	installing uint32 // guarded by Store.mu
	// open mirrors data != nil for the cache's lock-free check that a
	// cached private object's token is still logged in.
	open atomic.Bool
}

func (t *tokenState) loggedIn() bool { return t.data != nil }

func (t *tokenState) logout() {
	wipe(t.dataKey)
	t.dataKey, t.data = nil, nil
	t.open.Store(false)
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

// tokenMAC authenticates every column of a token row but its row id: the
// uuid, tier, generations (data key, KEK, master key), label, serial, the
// failure counters, both PIN records, the legacy PIN keys, the deletion
// policy and the creation time. Editing any of them alone is detected;
// replaying a whole earlier row is not (see docs/keychain.md). The row id
// is the key objects refer to their token by: changing it hides the
// token's objects, which whoever holds the file can do by deleting them,
// and puts another token's objects under it, whose seals name their own
// token and fail.
func tokenMAC(keys *tokenKeys, ti *TokenInfo) []byte {
	m := hmac.New(sha256.New, keys.macKey)
	m.Write(tokenMACInput(ti))
	return m.Sum(nil)
}

// tokenMACInput is what a token row's MAC covers: every field that carries
// policy or keys, each at its column's full width (64 bits, signed where
// the column is), byte strings with their 64-bit length, nothing optional.
// A row written by an earlier version, under tokenMACv2, still verifies
// (tokenMACOK); every write uses this form.
func tokenMACInput(ti *TokenInfo) []byte {
	b := []byte("hsmemu/token/v3")
	b = append(b, ti.UUID[:]...)
	for _, v := range []int64{int64(ti.Tier), int64(ti.KEKGeneration), int64(ti.DataGeneration),
		int64(ti.MasterGeneration), int64(ti.SOFailures), int64(ti.UserFailures), int64(ti.RetentionDays),
		ti.Created.Unix()} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	if ti.PurgeProtection {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	for _, f := range [][]byte{[]byte(ti.Label), []byte(ti.Serial), ti.soPIN} {
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	for _, f := range [][]byte{ti.userPIN, ti.legacyPINKeys} {
		if f == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// tokenMACOK checks a row's MAC: the current form, or the form rows had
// before it. The earlier form covered the counters and the retention as 32
// bits, so values 2^32 apart shared a MAC; it is accepted only for rows
// whose values scanToken found in range, where no two such values exist.
func tokenMACOK(keys *tokenKeys, ti *TokenInfo) bool {
	return hmac.Equal(tokenMAC(keys, ti), ti.mac) || hmac.Equal(tokenMACv2(keys, ti), ti.mac)
}

// tokenMACv2 is the MAC rows had before tokenMACInput's form.
func tokenMACv2(keys *tokenKeys, ti *TokenInfo) []byte {
	m := hmac.New(sha256.New, keys.macKey)
	m.Write([]byte("hsmemu/token/v2"))
	m.Write(ti.UUID[:])
	var b []byte
	b = append(b, byte(ti.Tier))
	b = binary.BigEndian.AppendUint32(b, ti.KEKGeneration)
	b = binary.BigEndian.AppendUint32(b, ti.DataGeneration)
	b = binary.BigEndian.AppendUint32(b, uint32(ti.SOFailures))
	b = binary.BigEndian.AppendUint32(b, uint32(ti.UserFailures))
	for _, f := range [][]byte{[]byte(ti.Label), []byte(ti.Serial), ti.soPIN} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	if ti.userPIN == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ti.userPIN)))
		b = append(b, ti.userPIN...)
	}
	if ti.RetentionDays != DefaultRetentionDays || ti.PurgeProtection {
		b = append(b, "policy"...)
		b = binary.BigEndian.AppendUint32(b, uint32(ti.RetentionDays))
		if ti.PurgeProtection {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	if ti.MasterGeneration > 1 {
		b = append(b, "master"...)
		b = binary.BigEndian.AppendUint32(b, ti.MasterGeneration)
	}
	if ti.legacyPINKeys != nil {
		b = append(b, "legacy"...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ti.legacyPINKeys)))
		b = append(b, ti.legacyPINKeys...)
	}
	m.Write(b)
	return m.Sum(nil)
}

// MaxStoredFailures bounds a role's failure count in a token row: it
// stops counting at the lock, far below this.
const MaxStoredFailures = 1 << 20

// checkTokenRange range-checks a row's decoded values, before its MAC is
// tried: a value no write of ours makes is tampering, whatever the MAC.
func checkTokenRange(ti *TokenInfo, tier int64) error {
	switch {
	case tier != int64(TierStandard) && tier != int64(TierPremium),
		ti.SOFailures < 0 || ti.SOFailures > MaxStoredFailures,
		ti.UserFailures < 0 || ti.UserFailures > MaxStoredFailures,
		ti.RetentionDays < 0 || ti.RetentionDays > MaxRetentionDays,
		ti.KEKGeneration < 1, ti.DataGeneration < 1, ti.MasterGeneration < 1,
		len(ti.Label) == 0 || len(ti.Label) > 32:
		return tampered("token", ti.UUID, ti.ID, "range")
	}
	return nil
}

// DefaultRetentionDays is a new token's retention of deleted objects.
const DefaultRetentionDays = 90

func (s *Store) rootOrErr() (Root, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rootLocked(s.masterGen)
}

// rootLocked returns the master key of a generation. s.mu is held.
func (s *Store) rootLocked(gen uint32) (Root, error) {
	if s.closed {
		return nil, ErrClosed
	}
	r, ok := s.roots[gen]
	if !ok {
		return nil, ErrNoRoot
	}
	return r, nil
}

// deriveKeys derives a token's keys from its KEK of generation gen, which
// the master key of generation masterGen derives.
func (s *Store) deriveKeys(uuid UUID, gen, masterGen uint32) (*tokenKeys, error) {
	s.mu.RLock()
	root, err := s.rootLocked(masterGen)
	s.mu.RUnlock()
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
	keys, err := s.deriveKeys(uuid, kekGen, masterGen)
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

const selectToken = `SELECT id, uuid, label, serial, tier, kek_generation, dk_generation,
	so_pin, user_pin, so_failures, user_failures, mac, created_at, retention_days, purge_protection,
	master_generation, legacy_pin_keys FROM tokens`

// scanToken reads a token row. Every column is read as whatever SQLite
// holds (a file edited by hand need not keep the schema's types), at its
// full width, and range-checked (checkTokenRange); a row that fails is a
// TamperError, with what could be read of it (its row id, and its uuid
// and label when they are well formed) for the listing that reports it.
func scanToken(row interface{ Scan(...any) error }) (TokenInfo, error) {
	var ti TokenInfo
	var c [17]any
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
		_, err := s.verify(&out[i])
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
		st, err := s.verify(&ti)
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

// verify checks a token row's MAC, deriving the token's keys through the
// root the first time the token is seen. Only a row that passes makes the
// token's state known to the Store.
func (s *Store) verify(ti *TokenInfo) (*tokenState, error) {
	if err := s.anc.tokenRows(ti); err != nil {
		return nil, err // its rows are not the ones the anchor record accounts for
	}
	s.mu.RLock()
	st, ok := s.tokens[ti.ID]
	var keys *tokenKeys
	if ok {
		keys = st.keys
	}
	s.mu.RUnlock()
	if ok {
		switch {
		case st.uuid != ti.UUID:
			return nil, tampered("token", ti.UUID, ti.ID, "uuid column")
		case ti.KEKGeneration < keys.generation:
			return nil, errStaleRow // read before a master key rotation rekeyed it
		case ti.KEKGeneration > keys.generation:
			// Rekeyed, the new keys not yet installed; or a generation
			// edited by hand, which its MAC under the keys it names tells.
			if k, err := s.deriveKeys(ti.UUID, ti.KEKGeneration, ti.MasterGeneration); err == nil {
				ok := tokenMACOK(k, ti)
				k.wipe()
				if !ok {
					return nil, tampered("token", ti.UUID, ti.ID, "mac")
				}
			}
			return nil, errNewerKeys
		case !tokenMACOK(keys, ti):
			return nil, tampered("token", ti.UUID, ti.ID, "mac")
		}
		return st, nil
	}
	keys, err := s.deriveKeys(ti.UUID, ti.KEKGeneration, ti.MasterGeneration)
	if err != nil {
		return nil, err
	}
	if !tokenMACOK(keys, ti) {
		keys.wipe()
		return nil, tampered("token", ti.UUID, ti.ID, "mac")
	}
	if err := keys.openLegacy(ti.UUID, ti.legacyPINKeys); err != nil {
		keys.wipe()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		keys.wipe()
		return nil, ErrClosed
	}
	if st, ok := s.tokens[ti.ID]; ok {
		keys.wipe()
		return st, nil
	}
	st = &tokenState{rowID: ti.ID, uuid: ti.UUID, keys: keys, dgen: ti.DataGeneration}
	s.tokens[ti.ID] = st
	return st, nil
}

// state returns the in-memory state of the token with the given row id,
// reading and authenticating its row the first time.
func (s *Store) state(ctx context.Context, rowID int64) (*tokenState, error) {
	s.mu.RLock()
	t, ok := s.tokens[rowID]
	s.mu.RUnlock()
	if ok {
		return t, nil
	}
	_, st, err := s.token(ctx, s.r, "id = ?", rowID)
	return st, err
}

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
	_, err = tx.ExecContext(ctx, `UPDATE tokens SET label = ?, tier = ?, dk_generation = ?, so_pin = ?, user_pin = ?,
		so_failures = ?, user_failures = ?, mac = ?, retention_days = ?, purge_protection = ?, legacy_pin_keys = ? WHERE id = ?`,
		ti.Label, int(ti.Tier), ti.DataGeneration, ti.soPIN, ti.userPIN, ti.SOFailures, ti.UserFailures, ti.mac,
		ti.RetentionDays, ti.PurgeProtection, ti.legacyPINKeys, ti.ID)
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

// UpgradeMACs rewrites, under the current form, the MAC of every token
// row still under the earlier one (tokenMACv2), which left the creation
// time and a missing legacy key list uncovered. The daemon calls it once
// attached, so an earlier form lasts no longer than the first start of
// this version. Tampered rows are left as they are. It returns how many
// rows it rewrote.
func (s *Store) UpgradeMACs(ctx context.Context) (int, error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
	list, err := s.Tokens(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ti := range list {
		if ti.Tampered != nil {
			continue
		}
		st, err := s.state(ctx, ti.ID)
		if err != nil {
			return n, err
		}
		if hmac.Equal(tokenMAC(st.keys, &ti), ti.mac) {
			continue
		}
		err = s.updateToken(ctx, ti.UUID, func(cur *TokenInfo) error { return nil })
		if errors.Is(err, ErrTampered) {
			continue // edited since the listing: noted by the read
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

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
	s.rot.RLock()
	defer s.rot.RUnlock()
	ti, st, dk, err := s.checkPIN(ctx, token, role, pin)
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
	st.logout()
	st.dataKey, st.data, st.dgen = dk, aead, ti.DataGeneration
	st.open.Store(true)
	s.mu.Unlock()
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
	s.rot.RLock()
	defer s.rot.RUnlock()
	ti, st, dk, err := s.checkPIN(ctx, token, role, oldPIN)
	if err != nil {
		return err
	}
	defer wipe(dk)
	return s.writePIN(ctx, st, ti, role, newPIN, dk)
}

// InitPIN sets a new user PIN (C_InitPIN), which also unlocks a locked user
// PIN. The token must be logged in, so that its data key can be wrapped
// under the new PIN; that it is the SO who is logged in is the daemon's rule.
func (s *Store) InitPIN(ctx context.Context, token UUID, newUserPIN []byte) error {
	s.rot.RLock()
	defer s.rot.RUnlock()
	ti, st, err := s.token(ctx, s.r, "uuid = ?", token[:])
	if err != nil {
		return err
	}
	s.mu.RLock()
	dk := append([]byte(nil), st.dataKey...)
	ok := st.loggedIn()
	s.mu.RUnlock()
	defer wipe(dk)
	if !ok {
		return ErrNotLoggedIn
	}
	return s.writePIN(ctx, st, ti, RoleUser, newUserPIN, dk)
}

func (s *Store) writePIN(ctx context.Context, st *tokenState, ti TokenInfo, role Role, pin, dk []byte) error {
	rec, dups, err := s.wrapPIN(st.keys, ti.UUID, role, ti.DataGeneration, pin, dk)
	if err != nil {
		return err
	}
	defer dups.wipe()
	pruned := false
	err = s.updateTokenThen(ctx, ti.UUID, func(cur *TokenInfo) error {
		if cur.DataGeneration != ti.DataGeneration {
			return ErrTampered
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

// Reinit re-initialises a token (C_InitToken on an initialised token): the
// SO PIN must be right; every object is destroyed, the user PIN removed,
// the label replaced, and a new data key, wrapped under the same SO PIN,
// replaces the old one, so nothing sealed before can be opened again.
func (s *Store) Reinit(ctx context.Context, token UUID, soPIN []byte, label string) error {
	s.rot.RLock()
	defer s.rot.RUnlock()
	if label == "" || len(label) > 32 {
		return fmt.Errorf("keystore: token label must be 1..32 bytes, got %d", len(label))
	}
	ti, st, dk, err := s.checkPIN(ctx, token, RoleSO, soPIN)
	if err != nil {
		return err
	}
	wipe(dk)
	fresh := make([]byte, 32)
	defer wipe(fresh)
	if _, err := rand.Read(fresh); err != nil {
		return err
	}
	rec, dups, err := s.wrapPIN(st.keys, token, RoleSO, ti.DataGeneration+1, soPIN, fresh)
	if err != nil {
		return err
	}
	defer dups.wipe()
	s.Logout(token)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if ti.PurgeProtection {
		if held, err := holdsObjects(ctx, tx, ti.ID); err != nil || held {
			return cmp.Or(s.dbErr("count objects", err), ErrPurgeProtected)
		}
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM objects WHERE token_id = ?", ti.ID); err != nil {
		return s.dbErr("delete objects", err)
	}
	cur, _, err := s.token(ctx, tx, "uuid = ?"+s.eng.forUpdate(), token[:])
	if err != nil {
		return err
	}
	if cur.DataGeneration != ti.DataGeneration {
		return ErrTampered
	}
	cur.Label, cur.DataGeneration = label, ti.DataGeneration+1
	cur.soPIN, cur.userPIN, cur.SOFailures, cur.UserFailures, cur.legacyPINKeys = rec, nil, 0, 0, nil
	cur.mac = tokenMAC(st.keys, &cur)
	_, err = tx.ExecContext(ctx, `UPDATE tokens SET label = ?, dk_generation = ?, so_pin = ?, user_pin = NULL,
		so_failures = 0, user_failures = 0, legacy_pin_keys = NULL, mac = ? WHERE id = ?`, cur.Label, cur.DataGeneration, cur.soPIN, cur.mac, cur.ID)
	if err != nil {
		if s.eng.unique(err) {
			return ErrTokenExists
		}
		return s.dbErr("reinit token", err)
	}
	if err := s.putPINDups(ctx, tx, cur.ID, dups); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
	}
	s.mu.Lock()
	st.dgen = cur.DataGeneration
	s.mu.Unlock()
	s.cache.purge(func(o *Object) bool { return o.Token == token })
	return nil
}

// DeleteToken removes a token and every object on it. A token with purge
// protection is removed only once it holds no object, live or deleted.
func (s *Store) DeleteToken(ctx context.Context, token UUID) error {
	s.rot.RLock()
	defer s.rot.RUnlock()
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
