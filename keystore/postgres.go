package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// The PostgreSQL engine. The keystore's SQL is written once, with `?`
// placeholders; the connections of this engine are a database/sql driver
// of their own over pgx's (pgConn), which numbers the placeholders,
// stores booleans as the integers the schema holds on both engines, and,
// on the writer, folds each transaction's row changes into the anchor
// record before it commits (pganchor.go): the part of the anchor that
// SQLite's temporary triggers do through Go functions, which PostgreSQL
// cannot call.
//
// As on SQLite there is one writer connection and a pool of readers. The
// writer sets synchronous_commit=on, so a write that returned is on the
// server's disk (and on its synchronous standbys, if it has any); the
// start refuses a server with fsync off. The readers are read-only
// sessions. A connection string with several hosts and
// target_session_attrs=read-write follows a failover: a connection lost
// is dropped and the next one finds the new primary.

// defaultConnectTimeout bounds each attempt to reach a host when the
// connection string gives no connect_timeout.
const defaultConnectTimeout = 10 * time.Second

// DefaultStatementTimeout bounds each statement, commit and rollback on
// PostgreSQL when Options.StatementTimeout is zero. A server that stops
// answering in the middle of a call (a network partition, a host frozen)
// would otherwise hold the call until the kernel gives the TCP connection
// up, a quarter of an hour on Linux's defaults, and over a Unix socket
// for ever. Past the bound the connection is closed under the call,
// which fails (CKR_DEVICE_ERROR to a PKCS#11 client); the next call
// connects anew. The keystore's statements are point reads and small
// writes: far below it on a server that answers.
const DefaultStatementTimeout = 10 * time.Second

// postgresEngine is the engine over a PostgreSQL server.
type postgresEngine struct {
	f   *pgFolder
	cfg *pgx.ConnConfig // for the connections of the listener and of jobs (pgcluster.go)
	// writerPID is the writer connection's server process: a change
	// notified by it is this Store's own.
	writerPID atomic.Uint32
}

// openPostgres opens the keystore in the PostgreSQL database dsn names,
// creating its tables on first use.
func openPostgres(ctx context.Context, dsn string, opts Options) (*Store, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	cfg, err := pgConnConfig(dsn, opts)
	if err != nil {
		return nil, err
	}
	wcfg := cfg.Copy()
	wcfg.RuntimeParams["synchronous_commit"] = "on"
	rcfg := cfg.Copy()

	anc := newAnchor()
	f := &pgFolder{a: anc}
	eng := &postgresEngine{f: f, cfg: cfg.Copy()}
	afterConnect := func(ctx context.Context, c *pgx.Conn) error {
		// The listener (pgcluster.go) knows the writer's own changes by
		// its server process.
		eng.writerPID.Store(c.PgConn().PID())
		if err := pgServing(ctx, c); err != nil {
			return err
		}
		return createPending(ctx, c)
	}
	timeout := opts.StatementTimeout
	if timeout == 0 {
		timeout = DefaultStatementTimeout
	}
	w := sql.OpenDB(&pgConnector{inner: stdlib.GetConnector(*wcfg, stdlib.OptionAfterConnect(afterConnect)), fold: f, timeout: timeout})
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	if err := pgServerDurable(ctx, w); err != nil {
		w.Close()
		return nil, err
	}
	if err := pgMigrate(ctx, w, f); err != nil {
		w.Close()
		return nil, err
	}
	if err := f.loadTables(ctx, w); err != nil {
		w.Close()
		return nil, err
	}
	// Read-only once connected: as a startup parameter it would make
	// target_session_attrs=read-write take the primary for a standby.
	readOnly := func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET default_transaction_read_only = on")
		return err
	}
	r := sql.OpenDB(&pgConnector{inner: stdlib.GetConnector(*rcfg, stdlib.OptionAfterConnect(readOnly)), timeout: timeout})
	r.SetMaxOpenConns(opts.Readers)
	r.SetMaxIdleConns(opts.Readers)
	r.SetConnMaxLifetime(0)
	s, err := assemble(ctx, eng, StorageInfo{Engine: EnginePostgres, Location: pgLocation(cfg)}, w, r, anc, opts)
	if err != nil {
		return nil, err
	}
	if s.sync, err = newSyncer(ctx, s, eng, opts.Invalidation); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// pgConnConfig is the connection configuration of dsn, with the
// password from opts.PasswordFile and hsmemu's defaults.
func pgConnConfig(dsn string, opts Options) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("keystore: PostgreSQL connection string: %s", redactErr(err))
	}
	if opts.PasswordFile != "" {
		pw, err := readPasswordFile(opts.PasswordFile)
		if err != nil {
			return nil, err
		}
		cfg.Password = pw // whichever of the hosts answers
	}
	if cfg.ConnectTimeout == 0 {
		// libpq waits for ever for a host that does not answer (a dead
		// primary behind a firewall that drops): a failover would hang
		// every call. The connection string's connect_timeout overrides.
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "hsmemu"
	}
	return cfg, nil
}

// pgLocation is where a connection string points: its hosts in the
// order they are tried, the database and the user.
func pgLocation(cfg *pgx.ConnConfig) string {
	hosts := []string{fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)}
	for _, fb := range cfg.Fallbacks {
		h := fmt.Sprintf("%s:%d", fb.Host, fb.Port)
		if !slices.Contains(hosts, h) { // one per TLS attempt of the same host
			hosts = append(hosts, h)
		}
	}
	return fmt.Sprintf("%s/%s as %s", strings.Join(hosts, ","), cfg.Database, cfg.User)
}

// pgServerDurable refuses a server on which a commit is not durable.
func pgServerDurable(ctx context.Context, w *sql.DB) error {
	var fsync, sync, ro string
	err := w.QueryRowContext(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('transaction_read_only')").Scan(&fsync, &sync, &ro)
	if err != nil {
		return fmt.Errorf("keystore: connect to PostgreSQL: %s", redactErr(err))
	}
	switch {
	case fsync != "on":
		return errors.New("keystore: the PostgreSQL server runs with fsync off: a committed write could be lost, so hsmemu refuses it")
	case sync != "on":
		return fmt.Errorf("keystore: synchronous_commit is %q on the PostgreSQL server, and hsmemu could not set it on", sync)
	case ro != "off":
		return errors.New("keystore: the PostgreSQL server is read-only (a standby?): give every host of the cluster with target_session_attrs=read-write")
	}
	return nil
}

func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("keystore: database password file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" || strings.ContainsAny(pw, "\r\n") {
		return "", fmt.Errorf("keystore: database password file %s: one line, the password", path)
	}
	return pw, nil
}

var pgPasswordKeyword = regexp.MustCompile(`(^|\s)password\s*=`)

// noPassword refuses a connection string that carries a password: it
// would be in the daemon's command line, for every local user to read.
// A URL is read as pgx reads it, not as net/url does: a password that
// net/url refuses (a ^ or a { in it, several hosts with their ports)
// is still one pgx takes and connects with.
func noPassword(db string) error {
	refused := badDB("keystore: the PostgreSQL connection string carries a password, which anyone can read in the command line: give it in PGPASSFILE or --db-password-file")
	for _, prefix := range []string{"postgres://", "postgresql://"} {
		rest, ok := strings.CutPrefix(db, prefix)
		if !ok {
			continue
		}
		// The userinfo ends at the first @ before any /, as pgx finds it.
		if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' && strings.Contains(rest[:i], ":") {
			return refused
		}
		if _, query, ok := strings.Cut(rest, "?"); ok {
			for _, kv := range strings.Split(query, "&") {
				k, _, _ := strings.Cut(kv, "=")
				if uk, err := url.QueryUnescape(k); err == nil {
					k = uk
				}
				if k == "password" {
					return refused
				}
			}
		}
		return nil
	}
	if pgPasswordKeyword.MatchString(db) {
		return refused
	}
	return nil
}

// redactErr is a connection error's text fit for a log or an error
// message. pgx quotes the connection string in a ParseConfigError,
// redacted only as best it can (an unterminated quote leaves the end of
// a password in it): it is left out, and what pgx says is wrong is kept
// (its wrapped error is nil for some, an invalid port among them). Any
// other text passes RedactDB, wherever it came from.
func redactErr(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		msg := pe.Error()
		// "cannot parse `CONNSTRING`: WHAT (WRAPPED)"
		if i := strings.LastIndex(msg, "`: "); strings.HasPrefix(msg, "cannot parse `") && i > 0 {
			return "cannot parse it: " + RedactDB(msg[i+len("`: "):])
		}
		return "cannot parse it"
	}
	return RedactDB(err.Error())
}

func (*postgresEngine) name() string { return EnginePostgres }

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func (*postgresEngine) unique(err error) bool { return pgCode(err) == "23505" }

// full is PostgreSQL's disk_full: the server's filesystem, not ours.
func (*postgresEngine) full(err error) bool { return pgCode(err) == "53100" }

// findIndex: PostgreSQL's planner has statistics and picks the live
// object indexes itself (docs/performance.md has the plans).
func (*postgresEngine) findIndex(int) string { return "" }

// check is what PostgreSQL lets a client check of its durability: the
// server keeps its own pages (data checksums where the cluster has them).
func (*postgresEngine) check(ctx context.Context, w *sql.DB) error {
	if err := pgServerDurable(ctx, w); err != nil {
		return err
	}
	var v int
	if err := w.QueryRowContext(ctx, "SELECT version FROM hsmemu_schema").Scan(&v); err != nil {
		return fmt.Errorf("keystore: integrity check: %w", err)
	}
	if v != len(pgMigrations) {
		return fmt.Errorf("keystore: integrity check: schema version %d, this build's is %d", v, len(pgMigrations))
	}
	return nil
}

// The driver: pgx's stdlib connections, wrapped.

type pgConnector struct {
	inner   driver.Connector
	fold    *pgFolder     // the writer's: nil on readers
	timeout time.Duration // each statement's bound; zero or negative: none
}

func (c *pgConnector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	sc, ok := dc.(*stdlib.Conn)
	if !ok {
		dc.Close()
		return nil, fmt.Errorf("keystore: pgx connection of type %T", dc)
	}
	return &pgConn{c: sc, fold: c.fold, timeout: c.timeout}, nil
}

func (c *pgConnector) Driver() driver.Driver { return c.inner.Driver() }

// pgConn is one connection. On the writer, every transaction folds its
// row changes into the anchor record before it commits, and a statement
// outside a transaction runs in one of its own for that.
//
// Every exchange with the server is bounded by timeout: a statement and
// the reading of its rows, a BEGIN, a transaction's fold and its COMMIT
// or ROLLBACK. pgx closes the connection under a call whose context ends
// (its deadline handler), so a server that stops answering fails the
// call at the bound rather than holding it.
type pgConn struct {
	c       *stdlib.Conn
	fold    *pgFolder
	tx      driver.Tx // the transaction in progress
	timeout time.Duration
}

// bound is ctx with the statement deadline.
func (c *pgConn) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

var (
	_ driver.Conn               = (*pgConn)(nil)
	_ driver.ConnBeginTx        = (*pgConn)(nil)
	_ driver.ConnPrepareContext = (*pgConn)(nil)
	_ driver.ExecerContext      = (*pgConn)(nil)
	_ driver.QueryerContext     = (*pgConn)(nil)
	_ driver.NamedValueChecker  = (*pgConn)(nil)
	_ driver.Pinger             = (*pgConn)(nil)
	_ driver.SessionResetter    = (*pgConn)(nil)
)

func (c *pgConn) Prepare(q string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), q)
}

// PrepareContext prepares nothing on the server: pgx caches a prepared
// statement per connection for every query it runs.
func (c *pgConn) PrepareContext(_ context.Context, q string) (driver.Stmt, error) {
	return &pgStmt{c: c, q: q}, nil
}

func (c *pgConn) Close() error { return c.c.Close() }

func (c *pgConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *pgConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	t, err := c.begin(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.tx = t
	return &pgTx{c: c}, nil
}

// begin sends a BEGIN. One that never reached the server is
// driver.ErrBadConn, so database/sql takes another connection for the
// call: a connection the server ended while it lay idle in the pool (its
// host stopped, a failover) is found dead only when it is next written
// to, and the call that finds it would fail although nothing of it was
// sent. pgx's stdlib does this for statements, not for BEGIN.
func (c *pgConn) begin(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	t, err := c.c.BeginTx(ctx, opts)
	if err != nil && pgconn.SafeToRetry(err) {
		return nil, driver.ErrBadConn
	}
	return t, err
}

func (c *pgConn) Ping(ctx context.Context) error              { return c.c.Ping(ctx) }
func (c *pgConn) ResetSession(ctx context.Context) error      { return c.c.ResetSession(ctx) }
func (c *pgConn) CheckNamedValue(nv *driver.NamedValue) error { return checkPGValue(nv) }

// checkPGValue stores a bool as the integer the schema has (on SQLite
// too), and passes everything else to pgx as it is.
func checkPGValue(nv *driver.NamedValue) error {
	if b, ok := nv.Value.(bool); ok {
		nv.Value = int64(0)
		if b {
			nv.Value = int64(1)
		}
	}
	return nil
}

func (c *pgConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	q = rebind(q)
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if c.fold == nil || c.tx != nil {
		return c.c.ExecContext(ctx, q, args)
	}
	t, err := c.begin(ctx, driver.TxOptions{})
	if err != nil {
		return nil, err
	}
	res, err := c.c.ExecContext(ctx, q, args)
	if err == nil {
		err = c.fold.fold(ctx, c.c.Conn())
	}
	if err != nil {
		t.Rollback()
		return nil, err
	}
	return res, t.Commit()
}

func (c *pgConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	q = rebind(q)
	if c.fold == nil || c.tx != nil {
		// The bound runs again at each row: a long scan (the anchor's
		// check at start reads every row) goes on while rows come.
		qctx, cancel := context.WithCancel(ctx)
		r := &boundRows{cancel: cancel, d: c.timeout}
		if c.timeout > 0 {
			r.timer = time.AfterFunc(c.timeout, func() { r.fired.Store(true); cancel() })
		}
		rows, err := c.c.QueryContext(qctx, q, args)
		if err != nil {
			r.stop()
			return nil, r.why(err)
		}
		r.Rows = rows
		return r, nil
	}
	ctx, cancel := c.bound(ctx)
	defer cancel()
	// A statement of its own on the writer (UPDATE ... RETURNING): its
	// rows are read before the fold and the commit.
	t, err := c.begin(ctx, driver.TxOptions{})
	if err != nil {
		return nil, err
	}
	rows, err := c.c.QueryContext(ctx, q, args)
	var buf *bufRows
	if err == nil {
		buf, err = bufferRows(rows)
	}
	if err == nil {
		err = c.fold.fold(ctx, c.c.Conn())
	}
	if err != nil {
		t.Rollback()
		return nil, err
	}
	return buf, t.Commit()
}

// pgTx ends its transaction itself, as pgx's does (pgx.dbTx): pgx's
// keeps the context of the BEGIN for its COMMIT, where each exchange
// needs a bound of its own.
type pgTx struct {
	c *pgConn
}

func (t *pgTx) Commit() error {
	defer func() { t.c.tx = nil }()
	if t.c.fold != nil {
		ctx, cancel := t.c.bound(context.Background())
		err := t.c.fold.fold(ctx, t.c.c.Conn())
		cancel()
		if err != nil {
			t.rollback()
			return err
		}
	}
	ctx, cancel := t.c.bound(context.Background())
	defer cancel()
	conn := t.c.c.Conn()
	tag, err := conn.Exec(ctx, "commit")
	if err != nil {
		if conn.PgConn().TxStatus() != 'I' {
			conn.Close(ctx)
		}
		return err
	}
	if tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

func (t *pgTx) Rollback() error {
	defer func() { t.c.tx = nil }()
	return t.rollback()
}

func (t *pgTx) rollback() error {
	ctx, cancel := t.c.bound(context.Background())
	defer cancel()
	conn := t.c.c.Conn()
	if _, err := conn.Exec(ctx, "rollback"); err != nil {
		// The connection's state is unknown: it is not used again.
		conn.Close(ctx)
		return err
	}
	return nil
}

// boundRows are a query's rows, each read within the statement bound
// of the one before, released when they are closed.
type boundRows struct {
	driver.Rows
	cancel context.CancelFunc
	timer  *time.Timer // nil: no bound
	d      time.Duration
	fired  atomic.Bool
}

func (r *boundRows) Next(dest []driver.Value) error {
	if r.timer != nil {
		r.timer.Reset(r.d)
	}
	return r.why(r.Rows.Next(dest))
}

// why is a failure past the bound as the deadline it is, not as the
// cancellation that enforced it (which a PKCS#11 client would be told
// is its own: CKR_FUNCTION_CANCELED).
func (r *boundRows) why(err error) error {
	if err != nil && err != io.EOF && r.fired.Load() {
		return fmt.Errorf("keystore: PostgreSQL did not answer within %v: %w", r.d, context.DeadlineExceeded)
	}
	return err
}

func (r *boundRows) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
	r.cancel()
}

func (r *boundRows) Close() error {
	err := r.Rows.Close()
	r.stop()
	return err
}

// pgStmt is a query to run on its connection.
type pgStmt struct {
	c *pgConn
	q string
}

func (s *pgStmt) Close() error  { return nil }
func (s *pgStmt) NumInput() int { return -1 }

func (s *pgStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.q, named(args))
}

func (s *pgStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.q, named(args))
}

func (s *pgStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.q, args)
}

func (s *pgStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.q, args)
}

func named(args []driver.Value) []driver.NamedValue {
	nv := make([]driver.NamedValue, len(args))
	for i, a := range args {
		nv[i] = driver.NamedValue{Ordinal: i + 1, Value: a}
	}
	return nv
}

// bufRows are rows read in full.
type bufRows struct {
	cols []string
	rows [][]driver.Value
}

func bufferRows(r driver.Rows) (*bufRows, error) {
	defer r.Close()
	b := &bufRows{cols: r.Columns()}
	for {
		row := make([]driver.Value, len(b.cols))
		err := r.Next(row)
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		for i, v := range row {
			if p, ok := v.([]byte); ok {
				row[i] = append([]byte(nil), p...)
			}
		}
		b.rows = append(b.rows, row)
	}
}

func (b *bufRows) Columns() []string { return b.cols }
func (b *bufRows) Close() error      { b.rows = nil; return nil }

func (b *bufRows) Next(dest []driver.Value) error {
	if len(b.rows) == 0 {
		return io.EOF
	}
	copy(dest, b.rows[0])
	b.rows = b.rows[1:]
	return nil
}

var rebound sync.Map // query -> its PostgreSQL form

// rebind numbers a query's `?` placeholders as PostgreSQL's $1, $2...,
// leaving those in string literals, quoted identifiers and comments.
func rebind(q string) string {
	if v, ok := rebound.Load(q); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		ch := q[i]
		switch {
		case ch == '\'' || ch == '"':
			j := strings.IndexByte(q[i+1:], ch)
			if j < 0 {
				b.WriteString(q[i:])
				i = len(q)
				continue
			}
			b.WriteString(q[i : i+j+2])
			i += j + 1
		case ch == '-' && i+1 < len(q) && q[i+1] == '-':
			j := strings.IndexByte(q[i:], '\n')
			if j < 0 {
				j = len(q) - i
			}
			b.WriteString(q[i : i+j])
			i += j - 1
		case ch == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
		default:
			b.WriteByte(ch)
		}
	}
	out := b.String()
	rebound.Store(q, out)
	return out
}

// pgServing takes, on a writer connection, the shared form of the lock a
// restore takes exclusively (pgWriterLock): any number of daemons serve
// one database together, none beside a restore. Session-scoped, it goes
// with the connection, and is taken again on each reconnect.
func pgServing(ctx context.Context, c *pgx.Conn) error {
	return pgTryLock(ctx, c, "SELECT pg_try_advisory_lock_shared(hashtextextended('hsmemu/writer', 0))")
}

// pgLockGrace is how long pgTryLock tries again. A session's advisory
// locks go when its server process ends, which is after the client has
// closed the connection: a daemon stopped or a restore finished a moment
// ago may still hold the lock for a few milliseconds.
const pgLockGrace = 2 * time.Second

// pgTryLock takes the advisory lock of query (a pg_try_advisory_lock
// form), trying again for pgLockGrace before it answers ErrDatabaseInUse.
func pgTryLock(ctx context.Context, c *pgx.Conn, query string) error {
	deadline := time.Now().Add(pgLockGrace)
	for {
		var ok bool
		if err := c.QueryRow(ctx, query).Scan(&ok); err != nil {
			return fmt.Errorf("keystore: lock the database: %s", redactErr(err))
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return ErrDatabaseInUse
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
