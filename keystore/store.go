package keystore

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	// also registers the "sqlite3" driver
)

// Root derives key-encryption keys from the master key. tpmroot.Root is the
// real one: TPM2_HMAC under a key that never leaves the TPM.
type Root interface {
	DeriveKEK(label []byte) ([]byte, error)
}

// Sentinel errors with a contract the daemon maps onto PKCS#11 return codes.
var (
	ErrNotProvisioned = errors.New("keystore: not provisioned (no master key recorded)")
	ErrNoRoot         = errors.New("keystore: the TPM root is not attached")
	ErrWrongDomain    = errors.New("keystore: the master key belongs to a different security domain than this keystore")
	ErrNotFound       = errors.New("keystore: not found")
	ErrNotLoggedIn    = errors.New("keystore: token not logged in")
	ErrTokenExists    = errors.New("keystore: a token with that label exists")
	ErrPINLocked      = errors.New("keystore: PIN locked after too many failed attempts")
	ErrClosed         = errors.New("keystore: closed")
	// ErrFull is a write refused for want of space: the keystore's
	// filesystem is full (SQLite's SQLITE_FULL; ENOSPC, EDQUOT or EFBIG
	// under one of its writes). Nothing of the write was made. Reads go
	// on, and writes succeed again once space is freed.
	ErrFull = errors.New("keystore: no space left on the keystore's filesystem")
	// ErrDatabaseInUse is a restore into a PostgreSQL database that a
	// daemon serves, or a daemon's start on a database a restore is
	// rewriting (pgServing).
	ErrDatabaseInUse = errors.New("keystore: the PostgreSQL database is in use (a daemon serves it, or a restore rewrites it)")
)

// UUID identifies a token or an object for as long as it exists, across
// backups and restores; handles and row ids are local.
type UUID [16]byte

func (u UUID) String() string { return hex.EncodeToString(u[:]) }

func newUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, err
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u, nil
}

// Options tune a Store. The zero value is the production setting.
type Options struct {
	// Argon2 is used for PIN records of tokens created by this Store.
	// Zero means DefaultArgon2.
	Argon2 Argon2Params
	// CacheEntries bounds the cache of opened objects. Zero means 4096;
	// negative disables the cache.
	CacheEntries int
	// Readers is the size of the reader connection pool. Zero means
	// GOMAXPROCS + 2.
	Readers int
	// MaxPINFailures locks a role after that many failed PIN checks in a
	// row. Zero means 10.
	MaxPINFailures int
	// PINCacheTTL is how long a PIN that opened its record is remembered
	// after its last use, sparing the next login with it the Argon2id
	// stretch (see stretchCache). Zero means 15 minutes; negative, never.
	PINCacheTTL time.Duration
	// Invalidation, on PostgreSQL, is the bound on how long after a
	// change committed by another Store (another daemon on the same
	// database) this Store may still use what it cached before it: a
	// destroyed key, a token's data key replaced (pgcluster.go). Zero
	// means DefaultInvalidation.
	Invalidation time.Duration
	// PasswordFile, on PostgreSQL, is a file whose one line is the
	// database password (PGPASSFILE is read too, as libpq does).
	PasswordFile string
	// StatementTimeout, on PostgreSQL, bounds each statement, commit and
	// rollback: a server that stops answering fails the call then. Zero
	// means DefaultStatementTimeout; negative, no bound.
	StatementTimeout time.Duration
}

// Store is a keystore: one database (an SQLite file, or PostgreSQL) with
// one writer connection and a pool of readers. All methods are safe for concurrent use.
type Store struct {
	eng     engine // what differs between SQLite and PostgreSQL
	storage StorageInfo
	w, r    *sql.DB
	opts    Options

	openStmt *sql.Stmt // the hot path's point read, prepared once
	finds    sync.Map  // find queries by shape (Find): int -> *sql.Stmt

	mu        sync.RWMutex
	closed    bool
	roots     map[uint32]Root       // by master generation: the current one, and the next during a rotation
	masterGen uint32                // the current master's generation
	escrowed  bool                  // the current master is split to custodians (pinbind.go)
	tokens    map[int64]*tokenState // by token row id
	ended     []func(token UUID)    // told of logins the Store ended on its own (OnLoginsEnded)

	cache *cache
	pins  *stretchCache
	stats stats // Stats

	// rot and tokRot order rotations against everything that seals,
	// writes a token row or installs a key: a seal made with an old key
	// must not land after the rotation resealed the rest. A rotation holds
	// the token it moves exclusively (its tokRot entry) and rot read-held;
	// a write to a token holds both read-held (tokenrot.go). rot is held
	// exclusively only by a master key rotation's last pass and switch,
	// and an abort: no token is created under the old master key after
	// the last pass listed the tokens. Reads take neither: they retry a
	// row that raced with a rotation.
	rot    sync.RWMutex
	tokRot sync.Map // by token uuid: *sync.RWMutex
	// masterMu orders this Store's master key rotations and aborts (the
	// domain's job orders those of Stores on one database).
	masterMu sync.Mutex

	auditMu       sync.Mutex // orders appends to the audit log against a master key rotation's switch
	auditK        []byte     // the current epoch's audit key, once used; guarded by mu
	auditEpoch    uint32     // its epoch; guarded by mu
	auditHead     int64      // the newest audit record this Store wrote; guarded by mu
	auditHeadHash []byte     // and its hash; guarded by mu
	auditLost     string     // the first loss at the end of the log seen on an append; guarded by mu

	tamper tamperLog // integrity failures met, to audit once each

	anc *anchor // the anchor record's keys and counter (anchor.go)

	// sync, on PostgreSQL, follows the changes other Stores commit to the
	// same database and drops what they make stale (pgcluster.go); nil
	// on SQLite, which has one Store per file.
	sync *syncer
	// purgeStep, in tests, is called after each object PurgeExpired
	// removes.
	purgeStep func()

	tomb tombstones // objects known deleted (tombstone.go)
	// rekeyHold, in tests, is called by a master key rotation with the
	// token's lock held, before it rekeys the token.
	rekeyHold func(token UUID)
	// ungated, in benchmarks, makes writes as they were before the seal
	// gate (sealgate.go), to measure what it costs them.
	ungated bool

	nodes nodeState // this Store's node and the nodes' MAC key (nodes.go)

	// follower and masterCh follow master key rotations made by other
	// Stores on the database (follow.go).
	follower     MasterFollower // guarded by mu
	followFailed time.Time      // when it last failed; guarded by mu
	followErr    error          // and how; guarded by mu
	masterCh     chan struct{}
}

// Open opens (creating if needed) the SQLite keystore at path and brings
// its schema up to date. No key is usable until Attach is given the TPM
// root. OpenDB opens a keystore on either engine.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	return openSQLite(ctx, path, opts)
}

// defaults fills in the zero values of opts.
func (opts *Options) defaults() error {
	if opts.Argon2 == (Argon2Params{}) {
		opts.Argon2 = DefaultArgon2
	}
	if err := opts.Argon2.validate(); err != nil {
		return err
	}
	if opts.CacheEntries == 0 {
		opts.CacheEntries = 4096
	}
	if opts.MaxPINFailures <= 0 {
		opts.MaxPINFailures = 10
	}
	if opts.PINCacheTTL == 0 {
		opts.PINCacheTTL = 15 * time.Minute
	}
	if opts.Readers <= 0 {
		opts.Readers = runtime.GOMAXPROCS(0) + 2
	}
	if opts.Invalidation <= 0 {
		opts.Invalidation = DefaultInvalidation
	}
	return nil
}

// assemble is the Store over an engine's writer and reader pools.
func assemble(ctx context.Context, eng engine, where StorageInfo, w, r *sql.DB, anc *anchor, opts Options) (*Store, error) {
	s := &Store{eng: eng, storage: where, w: w, r: r, anc: anc, opts: opts, tokens: map[int64]*tokenState{}, roots: map[uint32]Root{}, masterCh: make(chan struct{}, 1), cache: newCache(opts.CacheEntries), pins: newStretchCache(opts.PINCacheTTL)}
	var err error
	s.openStmt, err = r.PrepareContext(ctx, selectObject)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("keystore: prepare: %w", err)
	}
	return s, nil
}

// Close logs every token out, wipes the keys held in memory and closes the
// database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.sync != nil {
		s.sync.close()
	}
	s.mu.Lock()
	for id, t := range s.tokens {
		t.wipe()
		delete(s.tokens, id)
	}
	clear(s.roots)
	s.nodes.mu.Lock()
	wipe(s.nodes.key)
	s.nodes.key = nil
	s.nodes.mu.Unlock()
	wipe(s.auditK)
	s.auditK = nil
	s.mu.Unlock()
	s.anc.wipe()
	s.cache.purge(func(*Object) bool { return true })
	s.pins.clear()
	s.finds.Range(func(_, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
	if s.openStmt != nil {
		s.openStmt.Close()
	}
	return errors.Join(s.r.Close(), s.w.Close())
}

// RootRecord is what the keystore keeps of the TPM root: the TPM-wrapped
// master key and, when it was escrowed, the escrow metadata. Neither is
// secret without the TPM.
type RootRecord struct {
	Sealed []byte
	// DomainID names the security domain for life: the first master key's
	// TPM2_HMAC(master, "hsmemu/domain/v1").
	DomainID []byte
	// Proof is the current master key's own TPM2_HMAC(master,
	// "hsmemu/domain/v1"): DomainID until the first rotation.
	Proof            []byte
	MasterGeneration uint32
	Escrow           []byte // nil when not escrowed
	// Next is the master key a rotation in progress moves to.
	Next    *NextMaster
	Created time.Time
	Updated time.Time
}

// NextMaster is the master key a rotation in progress moves to.
type NextMaster struct {
	Sealed []byte
	Proof  []byte
	Escrow []byte // nil when not escrowed
	// NodeMasters are, by node id, the other nodes' duplication blobs
	// of the next master key (nodemasters.go), written with it; not read
	// back by RootRecord.
	NodeMasters map[int64][]byte
	// NodesUpTo is the newest node the caller made blobs for (or found
	// it could not): a node added after it, which would get none, makes
	// BeginMasterRotation fail with ErrNodesChanged. 0 checks nothing.
	NodesUpTo int64
}

// RootRecord returns the stored root, or ErrNotProvisioned.
func (s *Store) RootRecord(ctx context.Context) (*RootRecord, error) {
	var rec RootRecord
	var created, updated int64
	var next NextMaster
	err := s.r.QueryRowContext(ctx, `SELECT sealed, domain_id, escrow, created_at, updated_at, master_generation, master_proof,
		next_sealed, next_proof, next_escrow FROM root WHERE id = 1`).
		Scan(&rec.Sealed, &rec.DomainID, &rec.Escrow, &created, &updated, &rec.MasterGeneration, &rec.Proof, &next.Sealed, &next.Proof, &next.Escrow)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotProvisioned
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: read root: %w", err)
	}
	if rec.Proof == nil {
		rec.Proof = rec.DomainID
	}
	if next.Sealed != nil {
		rec.Next = &next
	}
	rec.Created, rec.Updated = time.Unix(created, 0), time.Unix(updated, 0)
	return &rec, nil
}

// SetRootRecord records the root of a freshly provisioned keystore. It never
// overwrites a root of another domain: a keystore provisioned once keeps its
// domain for life. A root of the same domain (recovery into a new TPM, or a
// re-wrap) replaces the TPM blobs; its Proof must be the stored one (the
// same master key), or nil for the first.
func (s *Store) SetRootRecord(ctx context.Context, rec *RootRecord) error {
	if len(rec.Sealed) == 0 || len(rec.DomainID) == 0 {
		return errors.New("keystore: root record without sealed key or domain id")
	}
	now := time.Now().Unix()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("keystore: begin: %w", err)
	}
	defer tx.Rollback()
	var domain, proof []byte
	err = tx.QueryRowContext(ctx, "SELECT domain_id, coalesce(master_proof, domain_id) FROM root WHERE id = 1").Scan(&domain, &proof)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, "INSERT INTO root (id, sealed, domain_id, escrow, created_at, updated_at) VALUES (1, ?, ?, ?, ?, ?)",
			rec.Sealed, rec.DomainID, rec.Escrow, now, now)
	case err != nil:
	case subtle.ConstantTimeCompare(domain, rec.DomainID) != 1:
		return ErrWrongDomain
	case rec.Proof != nil && subtle.ConstantTimeCompare(proof, rec.Proof) != 1:
		return ErrWrongDomain
	default:
		_, err = tx.ExecContext(ctx, "UPDATE root SET sealed = ?, escrow = ?, updated_at = ? WHERE id = 1", rec.Sealed, rec.Escrow, now)
	}
	if err != nil {
		return s.dbErr("write root", err)
	}
	return s.dbErr("commit root", tx.Commit())
}

// Attach makes the keys usable: root, the current master key, derives
// every token's KEK. proof is the root's own report of its domain
// (TPM2_HMAC(master, "hsmemu/domain/v1")) and must match the stored one.
func (s *Store) Attach(ctx context.Context, root Root, proof []byte) error {
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(rec.Proof, proof) != 1 {
		return ErrWrongDomain
	}
	s.mu.Lock()
	s.roots[rec.MasterGeneration] = root
	s.masterGen = rec.MasterGeneration
	s.escrowed = rec.Escrow != nil
	s.mu.Unlock()
	return s.attachAnchorKeys(ctx)
}

// dbErr wraps a database error, reporting ErrClosed for a closed Store.
func (s *Store) dbErr(what string, err error) error {
	if err == nil {
		return nil
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if refused := s.anchorRefused(); refused != nil {
		// The driver keeps only the text of the trigger's error.
		return fmt.Errorf("keystore: %s: %w", what, refused)
	}
	if s.eng.full(err) {
		return fmt.Errorf("%w (%s: %w)", ErrFull, what, err)
	}
	return fmt.Errorf("keystore: %s: %w", what, err)
}

// HasTokens reports whether any token exists: a keystore with tokens but no
// root record has lost its root, and must not be provisioned anew.
func (s *Store) HasTokens(ctx context.Context) (bool, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM tokens").Scan(&n); err != nil {
		return false, s.dbErr("count tokens", err)
	}
	return n > 0, nil
}

// Check runs the engine's own integrity check of the database.
func (s *Store) Check(ctx context.Context) error {
	return s.eng.check(ctx, s.w)
}
