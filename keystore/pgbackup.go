package keystore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backup and restore of a keystore in PostgreSQL, at the SQL level: a
// backup is every keystore table read in one REPEATABLE READ, read-only
// transaction (one snapshot: the writer commits each row with its
// anchor entry and the anchor record, so the snapshot's record accounts
// for exactly its rows), written as a Dump. A restore makes this
// build's schema afresh and copies the rows in, in one transaction; the
// keystore it replaces is moved aside whole, into a schema of its own,
// so that it can be put back. Nothing is run from the file but data, and
// nothing needs pg_dump's version to match the server's: the same
// connection string as the daemon's (several hosts, TLS, the password
// file) reaches the server.

// pgWriterLock is a restore's hold on the database: the exclusive form of
// the lock every serving Store's writer holds shared (pgServing), so that
// a restore never runs beside a daemon on any machine, and no daemon
// starts while one runs.
const pgWriterLock = "SELECT pg_try_advisory_lock(hashtextextended('hsmemu/writer', 0))"

// PostgresServed answers ErrDatabaseInUse when a Store serves the
// PostgreSQL database db: a daemon, on any machine, or a command with the
// keystore open, holds the writer's lock (pgServing). It takes the lock a
// restore takes, and lets it go at once: nothing waits on it after.
func PostgresServed(ctx context.Context, db string, opts Options) error {
	c, err := pgConnect(ctx, db, opts)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if err := pgTryLock(ctx, c, pgWriterLock); err != nil {
		return err
	}
	if _, err := c.Exec(ctx, "SELECT pg_advisory_unlock(hashtextextended('hsmemu/writer', 0))"); err != nil {
		return fmt.Errorf("keystore: unlock the database: %s", redactErr(err))
	}
	return nil
}

// DomainMismatchError is RestorePostgres's refusal of a backup of another
// domain than the keystore it would replace.
type DomainMismatchError struct{ Backup, Current []byte }

func (e *DomainMismatchError) Error() string {
	return fmt.Sprintf("keystore: the backup is of domain %x, the database's keystore of %x", e.Backup[:min(8, len(e.Backup))], e.Current[:min(8, len(e.Current))])
}

// pgConnect opens one plain session on the PostgreSQL database db names.
func pgConnect(ctx context.Context, db string, opts Options) (*pgx.Conn, error) {
	kind, target, err := ParseDB(db)
	if err != nil {
		return nil, err
	}
	if kind != EnginePostgres {
		return nil, fmt.Errorf("keystore: %s is not a PostgreSQL database", RedactDB(db))
	}
	cfg, err := pgConnConfig(target, opts)
	if err != nil {
		return nil, err
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("keystore: connect to PostgreSQL: %s", redactErr(err))
	}
	return c, nil
}

// pgTables lists the base tables of the session's current schema: the
// keystore's, which has the schema to itself.
func pgTables(ctx context.Context, q pgx.Tx) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT relname FROM pg_class
		WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' ORDER BY relname`)
	if err != nil {
		return nil, fmt.Errorf("keystore: list tables: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("keystore: list tables: %w", err)
	}
	return names, nil
}

// pgDomain is the domain of the keystore in tx's current schema:
// ErrNotProvisioned when it has no root record (or no tables).
func pgDomain(ctx context.Context, tx pgx.Tx, tables []string) ([]byte, error) {
	if !slices.Contains(tables, "root") {
		return nil, ErrNotProvisioned
	}
	var domain []byte
	err := tx.QueryRow(ctx, "SELECT domain_id FROM root WHERE id = 1").Scan(&domain)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotProvisioned
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: read the root record: %w", err)
	}
	return domain, nil
}

// pgCurrentSchema is the session's current schema, where the keystore
// is ("public" if it cannot be read: the statement using it then fails).
func pgCurrentSchema(ctx context.Context, tx pgx.Tx) string {
	var cur string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&cur); err != nil {
		return "public"
	}
	return cur
}

// BackupPostgres writes a backup of the keystore in the PostgreSQL
// database db to w: every row of every keystore table as stored, from one
// snapshot, while a daemon serves. It returns the keystore's domain and
// the bytes written. A database with no domain is ErrNotProvisioned.
func BackupPostgres(ctx context.Context, db string, opts Options, w io.Writer) (domain []byte, n int64, err error) {
	c, err := pgConnect(ctx, db, opts)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close(context.Background())
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, fmt.Errorf("keystore: begin the backup's snapshot: %w", err)
	}
	defer tx.Rollback(context.Background())
	tables, err := pgTables(ctx, tx)
	if err != nil {
		return nil, 0, err
	}
	if domain, err = pgDomain(ctx, tx, tables); err != nil {
		return nil, 0, err
	}
	d := &Dump{Engine: EnginePostgres, DomainID: domain, Created: time.Now().Unix()}
	if err := tx.QueryRow(ctx, "SELECT version FROM hsmemu_schema WHERE id = 1").Scan(&d.SchemaVersion); err != nil {
		return nil, 0, fmt.Errorf("keystore: read the schema version: %w", err)
	}
	tables = slices.DeleteFunc(tables, pgNotBackedUp)
	cw := &countWriter{w: w}
	dw := newDumpWriter(cw)
	dw.header(d)
	dw.u32(uint32(len(tables)))
	for _, t := range tables {
		if err := dumpPGTable(ctx, tx, t, dw); err != nil {
			return nil, cw.n, err
		}
	}
	if err := dw.finish(); err != nil {
		return nil, cw.n, fmt.Errorf("keystore: write the backup: %w", err)
	}
	return domain, cw.n, nil
}

// dumpPGTable writes one table's rows, as the snapshot has them.
func dumpPGTable(ctx context.Context, tx pgx.Tx, name string, dw *dumpWriter) error {
	t := DumpTable{Name: name}
	rows, err := tx.Query(ctx, `SELECT attname, attidentity <> '' FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, quoteIdent(name))
	if err != nil {
		return fmt.Errorf("keystore: columns of %s: %w", name, err)
	}
	for rows.Next() {
		var col string
		var identity bool
		if err := rows.Scan(&col, &identity); err != nil {
			rows.Close()
			return fmt.Errorf("keystore: columns of %s: %w", name, err)
		}
		t.Columns = append(t.Columns, col)
		if identity {
			t.Identity = col
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("keystore: columns of %s: %w", name, err)
	}
	if t.Identity != "" {
		// A sequence is outside the snapshot: its last value is at least
		// the snapshot's highest id, so a restore hands out none again
		// that the backup's keystore had handed out.
		var last *int64
		if err := tx.QueryRow(ctx, "SELECT pg_sequence_last_value(pg_get_serial_sequence($1, $2))", quoteIdent(name), t.Identity).Scan(&last); err != nil {
			return fmt.Errorf("keystore: sequence of %s: %w", name, err)
		}
		if last != nil {
			t.IdentityLast = *last
		}
	}
	var count uint64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+quoteIdent(name)).Scan(&count); err != nil {
		return fmt.Errorf("keystore: count the rows of %s: %w", name, err)
	}
	dw.tableHead(&t, count)
	cols := ""
	for i, c := range t.Columns {
		if i > 0 {
			cols += ", "
		}
		cols += quoteIdent(c)
	}
	rows, err = tx.Query(ctx, "SELECT "+cols+" FROM "+quoteIdent(name))
	if err != nil {
		return fmt.Errorf("keystore: read %s: %w", name, err)
	}
	defer rows.Close()
	var seen uint64
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return fmt.Errorf("keystore: read %s: %w", name, err)
		}
		for i, v := range vals {
			switch x := v.(type) {
			case nil, int64, []byte, string:
			case int32:
				v = int64(x)
			case int16:
				v = int64(x)
			default:
				return fmt.Errorf("keystore: %s.%s holds a %T, which a backup does not carry", name, t.Columns[i], v)
			}
			dw.value(v)
		}
		seen++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("keystore: read %s: %w", name, err)
	}
	if seen != count {
		// The snapshot makes this impossible; a backup that miscounts
		// would not read back.
		return fmt.Errorf("keystore: read %s: %d rows, counted %d", name, seen, count)
	}
	return dw.err
}

// RestorePostgres puts the backup d in place of the keystore in the
// PostgreSQL database db, in one transaction: the keystore there, if
// any, is moved whole into a new schema named aside (its tables, with
// their indexes, sequences and triggers, and the anchor's trigger
// function), this build's schema is made afresh, and the backup's rows
// are copied in, as they are. It returns the schema the replaced
// keystore is in, or "" when there was none. It refuses a database a
// daemon holds (ErrDatabaseInUse) and a backup of another domain than
// the keystore there (*DomainMismatchError), changing nothing.
//
// The rows are not checked here: opening the restored keystore does
// that (its seals, MACs and anchor), and UndoRestorePostgres puts the
// replaced keystore back if it fails.
func RestorePostgres(ctx context.Context, db string, opts Options, d *Dump, aside string) (replaced string, err error) {
	if d.Engine != EnginePostgres {
		return "", fmt.Errorf("keystore: a backup of a keystore in %s does not restore into PostgreSQL", d.Engine)
	}
	if d.SchemaVersion > len(pgMigrations) {
		return "", fmt.Errorf("keystore: the backup's schema version %d is newer than this build's %d; restore it with a newer hsmemu", d.SchemaVersion, len(pgMigrations))
	}
	c, err := pgConnect(ctx, db, opts)
	if err != nil {
		return "", err
	}
	// The session's lock goes with the connection.
	defer c.Close(context.Background())
	if err := pgTryLock(ctx, c, pgWriterLock); err != nil {
		return "", err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("keystore: begin the restore: %w", err)
	}
	defer tx.Rollback(context.Background())
	tables, err := pgTables(ctx, tx)
	if err != nil {
		return "", err
	}
	current, err := pgDomain(ctx, tx, tables)
	switch {
	case err == nil && !slices.Equal(current, d.DomainID):
		return "", &DomainMismatchError{Backup: d.DomainID, Current: current}
	case err != nil && !errors.Is(err, ErrNotProvisioned):
		return "", err
	}
	if len(tables) > 0 {
		if err := pgMoveKeystore(ctx, tx, "", aside, tables); err != nil {
			return "", err
		}
		replaced = aside
	} else if err := pgDropFunctions(ctx, tx, pgCurrentSchema(ctx, tx)); err != nil {
		// Tables gone, their functions left: nothing depends on them.
		return "", err
	}
	if err := pgMigrateTx(ctx, tx); err != nil {
		return "", err
	}
	if err := pgLoad(ctx, tx, d); err != nil {
		return "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("keystore: commit the restore: %w", err)
	}
	return replaced, nil
}

// UndoRestorePostgres drops the keystore RestorePostgres put in the
// database db and moves the one it replaced back from schema replaced
// (none when replaced is ""), in one transaction.
func UndoRestorePostgres(ctx context.Context, db string, opts Options, replaced string) error {
	c, err := pgConnect(ctx, db, opts)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if err := pgTryLock(ctx, c, pgWriterLock); err != nil {
		return err
	}
	tx, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	var cur string
	if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&cur); err != nil {
		return err
	}
	tables, err := pgTables(ctx, tx)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+quoteIdent(t)+" CASCADE"); err != nil {
			return fmt.Errorf("keystore: drop the restored %s: %w", t, err)
		}
	}
	if err := pgDropFunctions(ctx, tx, cur); err != nil {
		return err
	}
	if replaced != "" {
		rows, err := tx.Query(ctx, `SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'r'`, quoteIdent(replaced))
		if err != nil {
			return fmt.Errorf("keystore: list the replaced keystore's tables: %w", err)
		}
		old, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("keystore: list the replaced keystore's tables: %w", err)
		}
		if err := pgMoveKeystore(ctx, tx, replaced, cur, old); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DROP SCHEMA "+quoteIdent(replaced)); err != nil {
			return fmt.Errorf("keystore: drop schema %s: %w", replaced, err)
		}
	}
	return tx.Commit(ctx)
}

// pgMoveKeystore moves the keystore's tables and its trigger function
// from schema from ("": the current one) into schema to, which is made
// when from is the current one.
func pgMoveKeystore(ctx context.Context, tx pgx.Tx, from, to string, tables []string) error {
	prefix := ""
	if from == "" {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+quoteIdent(to)); err != nil {
			return fmt.Errorf("keystore: make schema %s for the replaced keystore: %w", to, err)
		}
		if err := tx.QueryRow(ctx, "SELECT current_schema()").Scan(&from); err != nil {
			return err
		}
	} else {
		prefix = quoteIdent(from) + "."
	}
	for _, t := range tables {
		if _, err := tx.Exec(ctx, "ALTER TABLE "+prefix+quoteIdent(t)+" SET SCHEMA "+quoteIdent(to)); err != nil {
			return fmt.Errorf("keystore: move table %s to schema %s: %w", t, to, err)
		}
	}
	for _, f := range pgTriggerFunctions {
		var has bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1 AND pronamespace = $2::regnamespace)`,
			f, quoteIdent(from)).Scan(&has); err != nil {
			return err
		}
		if has {
			if _, err := tx.Exec(ctx, "ALTER FUNCTION "+quoteIdent(from)+"."+f+"() SET SCHEMA "+quoteIdent(to)); err != nil {
				return fmt.Errorf("keystore: move the trigger function %s to schema %s: %w", f, to, err)
			}
		}
	}
	return nil
}

// pgTriggerFunctions are the functions the schema's triggers call (the
// anchor's notes, pgschema.go migration 1; the change notifications,
// migration 2): they move and go with the tables.
var pgTriggerFunctions = []string{"hsmemu_anchor_note", "hsmemu_changed"}

// pgDropFunctions drops the trigger functions of schema.
func pgDropFunctions(ctx context.Context, tx pgx.Tx, schema string) error {
	for _, f := range pgTriggerFunctions {
		if _, err := tx.Exec(ctx, "DROP FUNCTION IF EXISTS "+quoteIdent(schema)+"."+f+"()"); err != nil {
			return fmt.Errorf("keystore: drop the trigger function %s: %w", f, err)
		}
	}
	return nil
}

// pgNotBackedUp says which tables a backup leaves out: the schema's own
// bookkeeping, which every restore makes afresh (the schema version; the
// change generation other daemons follow, which means nothing to a
// keystore restored with no daemon serving it).
func pgNotBackedUp(table string) bool { return table == "hsmemu_schema" || table == "hsmemu_changes" }

// pgLoad copies the backup's rows into the fresh schema, tables referred
// to before those that refer to them, and sets each identity past every
// id the backup's keystore had handed out. The anchor's trigger notes
// nothing: this session has no table of notes, and the rows come with
// their own entries and record.
func pgLoad(ctx context.Context, tx pgx.Tx, d *Dump) error {
	tables, err := pgTables(ctx, tx)
	if err != nil {
		return err
	}
	refs := map[string][]string{}
	rows, err := tx.Query(ctx, `SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint
		WHERE contype = 'f' AND connamespace = current_schema()::regnamespace`)
	if err != nil {
		return fmt.Errorf("keystore: list foreign keys: %w", err)
	}
	for rows.Next() {
		var from, to string
		if err := rows.Scan(&from, &to); err != nil {
			rows.Close()
			return err
		}
		refs[from] = append(refs[from], to)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(t string) error
	visit = func(t string) error {
		switch state[t] {
		case 1:
			return fmt.Errorf("keystore: the schema's foreign keys make a cycle through %s", t)
		case 2:
			return nil
		}
		state[t] = 1
		for _, r := range refs[t] {
			if r != t {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		state[t] = 2
		order = append(order, t)
		return nil
	}
	for _, t := range d.Tables {
		if pgNotBackedUp(t.Name) {
			continue
		}
		if !slices.Contains(tables, t.Name) {
			return fmt.Errorf("keystore: the backup has a table %q, which this build's keystore does not", t.Name)
		}
		if err := visit(t.Name); err != nil {
			return err
		}
	}
	for _, name := range order {
		t := d.Table(name)
		if t == nil || pgNotBackedUp(name) { // a table the backup's keystore did not have yet, or the schema's own
			continue
		}
		if len(t.Rows) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{name}, t.Columns, pgx.CopyFromRows(t.Rows)); err != nil {
				return fmt.Errorf("keystore: restore the rows of %s: %w", name, err)
			}
		}
		if t.Identity == "" {
			continue
		}
		var next int64
		if err := tx.QueryRow(ctx, "SELECT greatest(coalesce(max("+quoteIdent(t.Identity)+"), 0), $1) FROM "+quoteIdent(name), t.IdentityLast).Scan(&next); err != nil {
			return fmt.Errorf("keystore: the highest id of %s: %w", name, err)
		}
		if next > 0 {
			if _, err := tx.Exec(ctx, "SELECT setval(pg_get_serial_sequence($1, $2), $3)", quoteIdent(name), t.Identity, next); err != nil {
				return fmt.Errorf("keystore: set the sequence of %s: %w", name, err)
			}
		}
	}
	return nil
}

// PostgresDomain reads the domain id of the keystore in the PostgreSQL
// database db, writing nothing: ErrNotProvisioned when it holds none.
func PostgresDomain(ctx context.Context, db string, opts Options) ([]byte, error) {
	c, err := pgConnect(ctx, db, opts)
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	tx, err := c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	tables, err := pgTables(ctx, tx)
	if err != nil {
		return nil, err
	}
	return pgDomain(ctx, tx, tables)
}
