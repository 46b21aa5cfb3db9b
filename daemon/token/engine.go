package token

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
	"hsmemu/internal/budget"
	"hsmemu/keystore"
)

// Config tunes the token engine.
type Config struct {
	// DefaultTier is the tier of tokens created through C_InitToken.
	DefaultTier keystore.Tier
	// MaxSessions bounds one application's open sessions, read-only and
	// read-write alike; CK_TOKEN_INFO reports it. Zero means
	// DefaultMaxSessions.
	MaxSessions int
	// MaxPINFailures is where a role locks; it must match the keystore's
	// Options.MaxPINFailures. Zero means 10.
	MaxPINFailures int
	// FailureDelay is the delay after the first failed login of a role;
	// each further failure doubles it, up to MaxFailureDelay. Zero means
	// 200 ms; negative disables the delay (tests).
	FailureDelay    time.Duration
	MaxFailureDelay time.Duration
	// LegacyAlgorithms enables the legacy algorithms (single and triple
	// DES, DSA, RSA keys of 1024 bits, SHA-1 in new signatures) on tokens
	// that are not premium: `hsmemu serve --legacy-algorithms`.
	LegacyAlgorithms bool
	// MaxOpBuffer bounds the input one operation may hold between calls
	// for its Final: AES-GCM (and every cipher that must see all its
	// input before it gives any output) fed by C_EncryptUpdate or
	// C_DecryptUpdate. More is CKR_DATA_LEN_RANGE
	// (CKR_ENCRYPTED_DATA_LEN_RANGE to decrypt). Zero means
	// DefaultMaxOpBuffer.
	MaxOpBuffer int
	// OpBudget bounds the bytes all operations of all applications hold
	// between calls: such input, and outputs kept after a size query.
	// An operation that would take more gets CKR_DEVICE_MEMORY. Zero
	// means DefaultOpBudget.
	OpBudget int64
	// MaxAllSessions bounds the sessions of all applications together;
	// one more is CKR_SESSION_COUNT. Zero means DefaultMaxAllSessions.
	MaxAllSessions int
	// SessionBudget bounds the memory all applications' sessions hold
	// together besides themselves (sessmem.go): their session objects
	// and their searches' results. Past it an object or a search is
	// CKR_DEVICE_MEMORY. Zero means DefaultSessionBudget.
	SessionBudget int64
	// RefusalAuditEvery is how often a refused login that needs no PIN
	// (a locked role, the TPM in lockout) is recorded per token, role
	// and event, the first at once (refusals.go). Zero means
	// DefaultRefusalAuditEvery.
	RefusalAuditEvery time.Duration
}

// Memory bounds of operations (docs/mechanisms.md, "Operations in
// sessions"; docs/reliability.md, "Memory bounds").
const (
	// DefaultMaxOpBuffer, 16 MiB less 64 KiB, is what one reply can
	// carry (wire.MaxOutBytes) with room to spare for a tag: a Final
	// returns the whole output in one reply, so more input could never
	// be delivered.
	DefaultMaxOpBuffer = wire.MaxFrame - 64<<10
	// DefaultOpBudget holds eight operations at DefaultMaxOpBuffer.
	DefaultOpBudget = 128 << 20
)

// DefaultMaxSessions is how many sessions one application may have open
// at once, unless configured otherwise. Pools such as crypto11's open up
// to a thousand per context, and a process may hold several contexts; a
// session costs the daemon a few hundred bytes (BenchmarkSessionMemory).
const DefaultMaxSessions = 65536

// PIN lengths the tokens accept (CK_TOKEN_INFO ulMinPinLen, ulMaxPinLen).
const (
	MinPINLen = 4
	MaxPINLen = 255
)

// Engine is the token engine: slots, tokens, sessions, login state and
// objects, over one keystore. It is a value; several can run in one
// process (tests do).
//
// Locks, in the order they may nest: a token's login attempt lock, an
// App's mu, a session's mu, Engine.mu.
type Engine struct {
	store Store
	log   *slog.Logger
	cfg   Config
	// mechs is the modern mechanism table; legacy, with the legacy
	// policy, the legacy one (mech.Table.WithLegacy), which shares its
	// background work. A token's table is mechsFor(its tier).
	mechs  *mech.Table
	legacy *mech.Table
	// opMem is what operations hold between calls (Config.OpBudget).
	opMem *budget.Budget
	// sessMem is what sessions hold (Config.SessionBudget), allSessions
	// how many there are (Config.MaxAllSessions).
	sessMem     *budget.Budget
	allSessions atomic.Int64

	mu     sync.Mutex
	apps   map[AppID]*App
	logins map[keystore.UUID]*tokenLogin // per token: who holds its data key open
	// pinSpent is, per remote identity, its wrong PINs (pinspend.go).
	pinSpent map[string]*pinSpend

	ivs ivCounters // the IV counters of token keys (ivcounter.go)
	// ivBlock is how many IVs a counter reserves at a time: ivBlock but
	// in tests, which make it small to reserve many blocks.
	ivBlock uint64

	// quit ends the waits after wrong PINs when the daemon stops; calls
	// themselves run with contexts that are never cancelled.
	quit     chan struct{}
	quitOnce sync.Once

	full fullLog // writes refused for want of space (errors.go)

	refused refusals // refused logins recorded lately (refusals.go)
}

// Interrupt ends every wait after a wrong PIN (the call returns
// CKR_FUNCTION_CANCELED); the daemon calls it when it starts to stop.
func (e *Engine) Interrupt() { e.quitOnce.Do(func() { close(e.quit) }) }

// tokenLogin serialises PIN checks on one token and counts the
// applications logged in to it: the keystore's data key stays open while
// any is.
type tokenLogin struct {
	attempt  sync.Mutex // held across a PIN check and its delay
	apps     int        // guarded by Engine.mu
	lastFail [2]time.Time
	// ended counts the times every login on the token was ended
	// (countEnded, endLogins): a login whose PIN check began before one
	// is made again. Guarded by Engine.mu.
	ended uint64
}

// NewEngine returns an engine over store.
func New(store Store, log *slog.Logger, cfg Config) *Engine {
	if cfg.DefaultTier == 0 {
		cfg.DefaultTier = keystore.TierStandard
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.MaxPINFailures <= 0 {
		cfg.MaxPINFailures = 10
	}
	if cfg.FailureDelay == 0 {
		cfg.FailureDelay = 200 * time.Millisecond
	}
	if cfg.RefusalAuditEvery <= 0 {
		cfg.RefusalAuditEvery = DefaultRefusalAuditEvery
	}
	if cfg.MaxFailureDelay <= 0 {
		cfg.MaxFailureDelay = 5 * time.Second
	}
	if cfg.MaxOpBuffer <= 0 || cfg.MaxOpBuffer > DefaultMaxOpBuffer {
		cfg.MaxOpBuffer = DefaultMaxOpBuffer
	}
	if cfg.OpBudget <= 0 {
		cfg.OpBudget = DefaultOpBudget
	}
	if cfg.MaxAllSessions <= 0 {
		cfg.MaxAllSessions = DefaultMaxAllSessions
	}
	if cfg.SessionBudget <= 0 {
		cfg.SessionBudget = DefaultSessionBudget
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{store: store, log: log, cfg: cfg, mechs: mech.New(), opMem: budget.New(cfg.OpBudget), sessMem: budget.New(cfg.SessionBudget),
		apps: map[AppID]*App{}, logins: map[keystore.UUID]*tokenLogin{}, pinSpent: map[string]*pinSpend{}, quit: make(chan struct{}), ivBlock: ivBlock}
	if cfg.LegacyAlgorithms {
		e.legacy = e.mechs.WithLegacy()
	}
	// A login the keystore ended on its own (another daemon's logout of
	// every daemon, a data key replaced elsewhere) ends the sessions'
	// logins on the token, as C_Logout would. The keystore may tell it
	// from inside a call the engine is making, with an application's
	// lock held: the end is counted at once, so that the logins begun
	// from then on are left alone, and the sessions are logged out on a
	// goroutine of their own.
	store.OnLoginsEnded(func(token keystore.UUID) {
		n := e.countEnded(token)
		go e.endLogins(token, n)
	})
	return e
}

// Close stops the engine's background work (the mechanisms' nonce
// fillers, which the legacy table shares). The daemon closes it after its
// server has stopped.
func (e *Engine) Close() { e.mechs.Close() }

// AppID identifies an application: every connection of one initialised
// PKCS#11 client carries the same id.
type AppID [16]byte

// App is one application's state: its sessions, its object handles, and
// its login state per token, shared by all its sessions.
type App struct {
	ID  AppID
	PID int32
	UID uint32
	// Scope, for a remote client, is what its certificate's identity may
	// see; nil for a local one, which sees everything.
	Scope *Scope

	conns int // guarded by Engine.mu

	mu          sync.Mutex
	sessions    map[uint64]*session
	nextSession uint64
	handles     map[uint64]*handle
	memHandles  map[uint64]*handle // the session objects' entries of handles, which find and close walk
	byObject    map[keystore.ObjectID]uint64
	nextHandle  uint64
	login       map[keystore.UUID]keystore.Role // the role logged in, per token
	// loginAfter is, per token logged in, the count of the token's ended
	// logins (tokenLogin.ended) when the login began: a later end of
	// every login does not spare it, an earlier one does not touch it.
	loginAfter map[keystore.UUID]uint64
}

// handle is what an object handle refers to: a token object in the
// keystore, or a session object held here.
type handle struct {
	token keystore.UUID
	id    keystore.ObjectID // token objects
	mem   *sessionObject    // session objects
	// private says a token object is private: its handle ends with the
	// login (noteLogout). A token object's CKA_PRIVATE never changes.
	private bool
}

type sessionObject struct {
	obj     *Object
	owner   uint64 // the session that created it
	private bool
	ivs     *ivCounter // an AES key's IV counter, from its first use (ivcounter.go)
	// mem is where it is charged, charged its charge (sessmem.go);
	// both guarded by App.mu.
	mem     sessCharge
	charged int64
}

// Attach registers a connection of application id from the given process.
// A known id from another process is refused.
func (e *Engine) Attach(id AppID, pid int32, uid uint32) (*App, bool) {
	app, _, ok := e.AttachConn(id, pid, uid)
	return app, ok
}

// AttachConn is Attach, and says whether the application is new: it had
// no connection, so no sessions or logins (those of an earlier life of the
// same id ended with its last connection).
func (e *Engine) AttachConn(id AppID, pid int32, uid uint32) (app *App, fresh, ok bool) {
	return e.AttachScoped(id, pid, uid, nil, 0)
}

// AttachScoped is AttachConn for a client whose identity sees scope (nil:
// everything). An id is bound to its first connection's scope as to its
// process: a connection of another identity is refused it. An application
// started afresh numbers its session and object handles from epoch<<32
// (the hello's, wire.Hello.Epoch); one that goes on keeps its own.
func (e *Engine) AttachScoped(id AppID, pid int32, uid uint32, scope *Scope, epoch uint32) (app *App, fresh, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	app, found := e.apps[id]
	if found {
		if app.PID != pid || app.UID != uid || app.Scope != scope {
			return nil, false, false
		}
	} else {
		base := uint64(epoch) << 32
		app = &App{ID: id, PID: pid, UID: uid, Scope: scope, nextSession: base, nextHandle: base,
			sessions: map[uint64]*session{}, handles: map[uint64]*handle{}, memHandles: map[uint64]*handle{},
			byObject: map[keystore.ObjectID]uint64{}, login: map[keystore.UUID]keystore.Role{},
			loginAfter: map[keystore.UUID]uint64{}}
		e.apps[id] = app
	}
	app.conns++
	return app, !found, true
}

// Detach drops a connection; the application ends with its last one, as if
// it had called C_Finalize: its sessions close and its logins end.
func (e *Engine) Detach(app *App) {
	e.mu.Lock()
	app.conns--
	last := app.conns == 0
	if last && e.apps[app.ID] == app {
		delete(e.apps, app.ID)
	}
	e.mu.Unlock()
	if !last {
		return
	}
	app.mu.Lock()
	var ids []uint64
	for h := range app.sessions {
		ids = append(ids, h)
	}
	app.mu.Unlock()
	for _, h := range ids {
		e.closeSession(context.Background(), app, h)
	}
}

// reserveLogin counts an application in on a token before its PIN is
// checked: a logout racing with the check then cannot close the data key
// the check is about to open. It returns the count of the token's ended
// logins (endLogins) as the check begins.
func (e *Engine) reserveLogin(token keystore.UUID) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	tl := e.loginOf(token)
	tl.apps++
	return tl.ended
}

// loginsEnded returns the count of the token's ended logins.
func (e *Engine) loginsEnded(token keystore.UUID) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.loginOf(token).ended
}

// releaseLogin undoes reserveLogin, or ends a login; the last one out
// closes the token's data key.
func (e *Engine) releaseLogin(token keystore.UUID) {
	e.mu.Lock()
	tl := e.loginOf(token)
	tl.apps--
	last := tl.apps <= 0
	e.mu.Unlock()
	if last {
		e.store.Logout(token)
	}
}

// noteLogout ends app's login to token; the last one out closes the token.
func (e *Engine) noteLogout(app *App, token keystore.UUID) {
	if _, ok := app.login[token]; !ok {
		return
	}
	delete(app.login, token)
	delete(app.loginAfter, token)
	// Operations on private keys and private session objects end with the
	// login that made them usable.
	for _, s := range app.sessions {
		if s.token == token {
			s.endPrivateOps()
		}
	}
	for h, ref := range app.memHandles {
		if ref.token == token && ref.mem.private {
			app.dropHandle(h)
		}
	}
	// The application's handles to private token objects end too, and
	// stay invalid after a new login (PKCS#11 v3.0, C_Logout): a find
	// then gives new ones.
	for h, ref := range app.handles {
		if ref.token == token && ref.mem == nil && ref.private {
			app.dropHandle(h)
		}
	}
	e.releaseLogin(token)
}

// loginOf returns a token's login record. Engine.mu is held.
func (e *Engine) loginOf(token keystore.UUID) *tokenLogin {
	tl, ok := e.logins[token]
	if !ok {
		tl = &tokenLogin{}
		e.logins[token] = tl
	}
	return tl
}

// failureDelay is how long a role waits after n failures in a row.
func (e *Engine) failureDelay(n int) time.Duration {
	if e.cfg.FailureDelay < 0 || n <= 0 {
		return 0
	}
	d := e.cfg.FailureDelay
	for i := 1; i < n && d < e.cfg.MaxFailureDelay; i++ {
		d *= 2
	}
	return min(d, e.cfg.MaxFailureDelay)
}

// pinFlags are CK_TOKEN_INFO's PIN counter flags for a token's failures.
func (e *Engine) pinFlags(ti keystore.TokenInfo) uint64 {
	var f uint64
	max := e.cfg.MaxPINFailures
	switch n := ti.UserFailures; {
	case n >= max:
		f |= ck.CKF_USER_PIN_LOCKED
	case n == max-1:
		f |= ck.CKF_USER_PIN_FINAL_TRY | ck.CKF_USER_PIN_COUNT_LOW
	case n > 0:
		f |= ck.CKF_USER_PIN_COUNT_LOW
	}
	switch n := ti.SOFailures; {
	case n >= max:
		f |= ck.CKF_SO_PIN_LOCKED
	case n == max-1:
		f |= ck.CKF_SO_PIN_FINAL_TRY | ck.CKF_SO_PIN_COUNT_LOW
	case n > 0:
		f |= ck.CKF_SO_PIN_COUNT_LOW
	}
	return f
}
