package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"syscall"

	"github.com/mattn/go-sqlite3" // also registers the "sqlite3" driver
)

// sqliteEngine is the embedded engine: one file, WAL, synchronous=FULL.
type sqliteEngine struct{}

// openSQLite opens (creating if needed) the keystore file at path.
func openSQLite(ctx context.Context, path string, opts Options) (*Store, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	// Create the file owner-only before SQLite does: its journal and WAL
	// files take the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	// WAL lets readers run beside the writer; synchronous=FULL makes a
	// commit durable before it returns; secure_delete overwrites freed
	// pages, so a deleted key's sealed blob does not linger in the file.
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	q.Set("_foreign_keys", "on")
	q.Set("_busy_timeout", "10000")
	q.Set("_secure_delete", "on")
	q.Set("_txlock", "immediate")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	anc := newAnchor()
	w := openWriter(dsn, anc)
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, err
	}
	if err := reinstallAnchorTriggers(ctx, w, anc); err != nil {
		w.Close()
		return nil, err
	}
	q.Set("_query_only", "true")
	q.Del("_txlock")
	r, err := sql.Open("sqlite3", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("keystore: open %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(opts.Readers)
	r.SetMaxIdleConns(opts.Readers)
	r.SetConnMaxLifetime(0)
	return assemble(ctx, sqliteEngine{}, StorageInfo{Engine: EngineSQLite, Location: RedactDB(path)}, w, r, anc, opts)
}

func (sqliteEngine) name() string { return "sqlite" }

// forUpdate: SQLite has one writer, the Store's one writer connection,
// whose transactions run one at a time.
func (sqliteEngine) forUpdate() string { return "" }

// forShare: the Store's rotation locks (tokenrot.go) order seals against
// rotations within the one Store on the file.
func (sqliteEngine) forShare() string { return "" }

// lockAudit: the one writer connection orders the appends itself.
func (sqliteEngine) lockAudit(context.Context, *sql.Tx) error { return nil }

// lockNodes: the one writer connection orders the writes itself.
func (sqliteEngine) lockNodes(context.Context, *sql.Tx, bool) error { return nil }

// lockTokens and holdTokens: the Store's rot lock, one Store per file.
func (sqliteEngine) lockTokens(context.Context, *sql.Tx) error { return nil }

func (sqliteEngine) holdTokens(context.Context) (func(), error) { return func() {}, nil }

// job: one daemon per SQLite file, so every job is this Store's; the
// Store's own callers order theirs (Anchor's op lock, the purger's one
// goroutine).
func (sqliteEngine) job(context.Context, string, bool) (func(), bool, error) {
	return func() {}, true, nil
}

func (sqliteEngine) unique(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && se.ExtendedCode == sqlite3.ErrConstraintUnique
}

// full reports an SQLite error that means the filesystem has no room:
// SQLITE_FULL (which SQLite returns for ENOSPC on a write), or an I/O
// error whose errno is ENOSPC, EDQUOT (a quota: SQLite reports it as
// SQLITE_IOERR_WRITE) or EFBIG (a file size limit).
func (sqliteEngine) full(err error) bool {
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.SystemErrno {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return true
	}
	return se.Code == sqlite3.ErrFull
}

// findIndex names the index a find of a shape walks. A label or an id
// picks out a few objects; SQLite, with no statistics to go on, may
// instead walk the class index over every object of the class (a search by
// class and label among 10,000 data objects: 250 us against 5).
func (sqliteEngine) findIndex(shape int) string {
	switch {
	case shape&4 != 0:
		return " INDEXED BY objects_live_by_label"
	case shape&8 != 0:
		return " INDEXED BY objects_live_by_ckaid"
	}
	return " INDEXED BY objects_live_by_class"
}

// check runs SQLite's integrity check and returns its verdict.
func (sqliteEngine) check(ctx context.Context, w *sql.DB) error {
	var res string
	if err := w.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&res); err != nil {
		return fmt.Errorf("keystore: integrity check: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("keystore: integrity check: %s", res)
	}
	return nil
}

// scanRows calls f with every anchored row's key and term, in a
// transaction on the writer connection (where the term function is).
func (sqliteEngine) scanRows(ctx context.Context, tx *sql.Tx, _ *anchor, f func(r *anchoredRow) error) error {
	tables, err := txStrings(ctx, tx, "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		return fmt.Errorf("keystore: list anchored tables: %w", err)
	}
	for _, t := range tables {
		if unanchored[t] {
			continue
		}
		cols, err := txStrings(ctx, tx, "SELECT name FROM pragma_table_info(?, 'main') ORDER BY cid", t)
		if err != nil || len(cols) == 0 {
			return fmt.Errorf("keystore: columns of %s: %v", t, err)
		}
		pk, err := txStrings(ctx, tx, "SELECT name FROM pragma_table_info(?, 'main') WHERE pk > 0 ORDER BY pk", t)
		if err != nil {
			return fmt.Errorf("keystore: primary key of %s: %w", t, err)
		}
		token := "NULL"
		switch {
		case t == "tokens":
			token = "id"
		case slices.Contains(cols, "token_id"):
			token = "token_id"
		}
		// A column edited to another type is no token's.
		token = fmt.Sprintf("CASE WHEN typeof(%[1]s) = 'integer' THEN %[1]s END", token)
		rows, err := tx.QueryContext(ctx, "SELECT "+keyExpr(pk, "")+", "+termExpr(t, cols)+", "+token+" FROM main."+quoteIdent(t))
		if err != nil {
			return fmt.Errorf("keystore: terms of %s: %w", t, err)
		}
		for rows.Next() {
			r := anchoredRow{table: t}
			if err := rows.Scan(&r.key, &r.term, &r.token); err != nil || len(r.term) != 32 {
				rows.Close()
				return fmt.Errorf("keystore: terms of %s: a term of %d bytes: %v", t, len(r.term), err)
			}
			if err := f(&r); err != nil {
				rows.Close()
				return err
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("keystore: terms of %s: %w", t, err)
		}
	}
	return nil
}

// objectTerm is one object row's term, as scanRows computes it, over the
// columns the triggers were made from (the term function takes no other).
func (sqliteEngine) objectTerm(ctx context.Context, tx *sql.Tx, a *anchor, id int64) ([]byte, error) {
	a.mu.Lock()
	cols := a.cols["objects"]
	a.mu.Unlock()
	if len(cols) == 0 {
		return nil, errors.New("keystore: the anchor's triggers are not installed")
	}
	var term []byte
	err := tx.QueryRowContext(ctx, "SELECT "+termExpr("objects", cols)+" FROM main.objects WHERE id = ?", id).Scan(&term)
	if err != nil {
		return nil, err
	}
	if len(term) != 32 {
		return nil, fmt.Errorf("keystore: term of object row %d: %d bytes", id, len(term))
	}
	return term, nil
}
