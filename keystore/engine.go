package keystore

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"
)

// engine is what differs between the databases a keystore runs on. The
// logic (sealing, MACs, the anchor's folds, the audit chain, soft
// deletes, rotations) is written once, in SQL both understand (`?`
// placeholders, ON CONFLICT upserts, RETURNING); each engine brings its
// own schema and migrations, its driver's errors, its planner hints, and
// the one part of the anchor that runs inside the database (sqlite.go,
// postgres.go).
type engine interface {
	name() string
	// unique reports a unique constraint violation.
	unique(err error) bool
	// full reports a write refused for want of space.
	full(err error) bool
	// findIndex is what follows "objects o" in a find of a shape: an
	// index hint, or nothing where the planner needs none.
	findIndex(shape int) string
	// check runs the engine's own check of the database.
	check(ctx context.Context, w *sql.DB) error
	// scanRows calls f with every anchored row's key and term, in tx on
	// the writer connection.
	scanRows(ctx context.Context, tx *sql.Tx, a *anchor, f func(r *anchoredRow) error) error
	// objectTerm is one object row's term, read in tx on the writer as
	// scanRows reads every row, the row locked until tx ends where other
	// writers may run at once; sql.ErrNoRows without the row.
	objectTerm(ctx context.Context, tx *sql.Tx, a *anchor, id int64) ([]byte, error)
	// forUpdate is what follows a read, in a transaction of the writer,
	// of a row the transaction then writes: a row lock where other
	// writers may run at once (PostgreSQL, several daemons), nothing
	// where the one writer connection is the only writer (SQLite).
	forUpdate() string
	// forShare is what follows a read, in a transaction of the writer,
	// of a token row whose key generations a seal written in the
	// transaction was made under: a shared row lock where another Store
	// may rotate the token's keys at once (PostgreSQL), which takes the
	// row FOR UPDATE before it reads what it reseals (sealgate.go);
	// nothing where the Store's rotation locks order every seal against
	// every rotation (SQLite, one Store per file; tokenrot.go).
	forShare() string
	// lockAudit, in a transaction of the writer, takes the audit log's
	// append lock, held until the transaction ends: the head read next
	// is the newest, whichever writer moved it.
	lockAudit(ctx context.Context, tx *sql.Tx) error
	// lockNodes, in a transaction of the writer, takes the nodes' lock
	// until the transaction ends: shared by the writes of PIN records,
	// which make the other nodes' bindings from the nodes they read,
	// exclusive by the addition of a node, which then binds the records
	// it reads (pindup.go). Nothing where one writer is the only one.
	lockNodes(ctx context.Context, tx *sql.Tx, exclusive bool) error
	// lockTokens, likewise, takes the tokens' lock shared: the creation
	// of a token, which holdTokens orders against a master key
	// rotation's last steps. Nothing where one writer is the only one.
	lockTokens(ctx context.Context, tx *sql.Tx) error
	// holdTokens holds the tokens' lock exclusively, on a connection of
	// its own, until release: a master key rotation rekeys the tokens
	// created meanwhile and switches with no new one created under the
	// old master key. Nothing where the Store's rot lock, held
	// exclusively for those steps, orders it.
	holdTokens(ctx context.Context) (release func(), err error)
	// job holds the singleton job name for this Store: ok is false when
	// another Store holds it (wait false), and release gives it up. A
	// Store that dies gives it up with its connection (jobs.go).
	job(ctx context.Context, name string, wait bool) (release func(), ok bool, err error)
}

// OpenDB opens the keystore a --db value names: "sqlite:PATH" (the file
// at PATH), or a PostgreSQL connection string, as a URL
// ("postgres://..." or "postgresql://...") or as libpq's keyword=value
// pairs ("host=... dbname=..."). A connection string must not carry a
// password, which would be visible in the daemon's command line:
// PostgreSQL's own PGPASSFILE, or Options.PasswordFile, gives it.
func OpenDB(ctx context.Context, db string, opts Options) (*Store, error) {
	kind, target, err := ParseDB(db)
	if err != nil {
		return nil, err
	}
	if kind == EngineSQLite {
		return openSQLite(ctx, target, opts)
	}
	return openPostgres(ctx, target, opts)
}

// pgKeywordValue is the start of libpq's keyword=value form.
var pgKeywordValue = regexp.MustCompile(`^\s*[a-z_]+\s*=`)

// The engines a --db value can name.
const (
	EngineSQLite   = "sqlite"
	EnginePostgres = "postgres"
)

// BadDBError is a --db value ParseDB refuses: a mistake in how it is
// written (no engine named, a password in a connection string), not a
// failure to reach what it names. Commands report it as a usage error.
type BadDBError struct{ msg string }

func (e *BadDBError) Error() string { return e.msg }

func badDB(format string, args ...any) error { return &BadDBError{fmt.Sprintf(format, args...)} }

// ParseDB says which engine a --db value names and what it points at (a
// file path, or a connection string). It reads nothing; what it refuses
// is a *BadDBError.
func ParseDB(db string) (kind, target string, err error) {
	switch {
	case strings.HasPrefix(db, "sqlite:"):
		target = strings.TrimPrefix(db, "sqlite:")
		if target == "" {
			return "", "", badDB("keystore: --db sqlite: names no file")
		}
		if strings.HasPrefix(target, "file:") {
			// Taken as a path, a URI would name a file "file:...?..." and
			// its parameters (an _auth_pass among them) would be ignored:
			// hsmemu sets SQLite's parameters itself.
			return "", "", badDB("keystore: --db sqlite:PATH takes a file's path, not a file: URI (%s): hsmemu sets SQLite's parameters itself", RedactDB(target))
		}
		return EngineSQLite, target, nil
	case strings.HasPrefix(db, "postgres://"), strings.HasPrefix(db, "postgresql://"), pgKeywordValue.MatchString(db):
		if err := noPassword(db); err != nil {
			return "", "", err
		}
		return EnginePostgres, db, nil
	}
	return "", "", badDB("keystore: --db %q is neither sqlite:PATH nor a PostgreSQL connection string (postgres://... or host=... dbname=...)", RedactDB(db))
}

// StorageInfo says where a Store keeps its keystore, fit to show: the
// engine, and the file or the hosts, database and user (never a
// password).
type StorageInfo struct {
	Engine   string // EngineSQLite or EnginePostgres
	Location string
}

// Storage says where the Store keeps its keystore.
func (s *Store) Storage() StorageInfo { return s.storage }
