package keystore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// The anchor's SQL side: the writer connection's functions and temporary
// triggers, and the sums of the rows' terms that the start checks the
// anchor record against.

// unanchored are the tables the digest leaves out: the anchor's own, the
// audit log, a hash chain whose head the record holds instead, and the
// nodes, each row under a MAC of its own and holding its node's anchor
// point (nodes.go): a node's heartbeat is no change to anchor, and a node
// rolled back is caught by that node's own counter; and the nodes' copies
// of a rotation's master key (nodemasters.go), each MACed with its node
// and generation, so that one rolled back is an older generation's, which
// no node takes.
var unanchored = map[string]bool{"anchor": true, "anchor_rows": true, "audit_log": true, "nodes": true, "node_masters": true}

// keyExpr is the SQL expression of a row's key among its table's rows:
// its primary key's columns, each as an SQL literal (quote()), or its
// rowid for a table without one. Not the rowid where there is a primary
// key: VACUUM (and so a backup) may renumber those.
func keyExpr(pk []string, prefix string) string {
	if len(pk) == 0 {
		return "quote(" + prefix + "rowid)"
	}
	parts := make([]string, len(pk))
	for i, c := range pk {
		parts[i] = "quote(" + prefix + quoteIdent(c) + ")"
	}
	return strings.Join(parts, " || ',' || ")
}

// The writer connection is opened through a driver of its own, whose hook
// registers the anchor's SQL functions on every connection it makes and
// installs the triggers.

type writerConnector struct {
	drv *sqlite3.SQLiteDriver
	dsn string
}

func (c writerConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c writerConnector) Driver() driver.Driver                        { return c.drv }

// openWriter opens the writer pool on dsn with a's functions.
func openWriter(dsn string, a *anchor) *sql.DB {
	drv := &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		for name, fn := range map[string]any{
			"hsmemu_anchor_entry": a.entry,
			"hsmemu_anchor_drop":  a.drop,
			"hsmemu_anchor_apply": a.apply,
			"hsmemu_anchor_term":  a.term,
			"hsmemu_anchor_audit": a.audit,
		} {
			if err := c.RegisterFunc(name, fn, false); err != nil {
				return fmt.Errorf("keystore: register %s: %w", name, err)
			}
		}
		// A row that INSERT OR REPLACE deletes fires its DELETE trigger
		// only with recursive triggers on. Ours write only the anchor
		// tables, which have none, so nothing recurses.
		if _, err := c.Exec("PRAGMA recursive_triggers = ON", nil); err != nil {
			return err
		}
		return installAnchorTriggers(c, a)
	}}
	return sql.OpenDB(writerConnector{drv: drv, dsn: dsn})
}

// installAnchorTriggers (re)creates the writer connection's temporary
// triggers from the schema as it is: for every anchored table an insert,
// an update and a delete trigger folding the row's term into the record
// and keeping its entry; for the audit log, an insert trigger recording
// the head. Before the migration that makes the anchor tables
// there is nothing to install, and while the keystore has no record the
// triggers change nothing.
func installAnchorTriggers(c *sqlite3.SQLiteConn, a *anchor) error {
	tables, err := driverStrings(c, "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		return fmt.Errorf("keystore: list tables: %w", err)
	}
	var stmts []string
	old, err := driverStrings(c, "SELECT name FROM temp.sqlite_schema WHERE type = 'trigger' AND name LIKE 'hsmemu_anchor_%'")
	if err != nil {
		return fmt.Errorf("keystore: list triggers: %w", err)
	}
	for _, t := range old {
		stmts = append(stmts, "DROP TRIGGER temp."+quoteIdent(t))
	}
	has := map[string]bool{}
	for _, t := range tables {
		has[t] = true
	}
	if has["anchor"] && has["anchor_rows"] {
		stmts = append(stmts, `CREATE TEMP TRIGGER hsmemu_anchor_audit_log_insert AFTER INSERT ON main.audit_log BEGIN
	UPDATE anchor SET state = hsmemu_anchor_audit(state, NEW.seq, NEW.hash) WHERE id = 1;
END`)
		for _, t := range tables {
			if unanchored[t] {
				continue
			}
			cols, err := tableColumns(c, t)
			if err != nil {
				return err
			}
			pk, err := driverStrings(c, "SELECT name FROM pragma_table_info("+quoteString(t)+", 'main') WHERE pk > 0 ORDER BY pk")
			if err != nil {
				return fmt.Errorf("keystore: primary key of %s: %w", t, err)
			}
			a.mu.Lock()
			a.cols[t] = cols
			a.mu.Unlock()
			stmts = append(stmts, tableTriggers(t, cols, pk)...)
		}
	}
	for _, s := range stmts {
		if _, err := c.Exec(s, nil); err != nil {
			return fmt.Errorf("keystore: install anchor triggers: %w", err)
		}
	}
	return nil
}

// tableTriggers are the three triggers of an anchored table. Each is two
// or three short statements: SQLite compiles a table's triggers into
// every statement that writes it, each time it is prepared, so their
// size is paid on every write. The row's columns go to Go as they are;
// entry or drop, then apply, make one fold of the record. A row's key
// (its primary key) is taken to stay what it was: no write of ours
// changes one (a row whose key changed would leave its old entry, which
// the next start reports as a row deleted).
func tableTriggers(table string, cols, pk []string) []string {
	t := quoteString(table)
	kn, ko := keyExpr(pk, "NEW."), keyExpr(pk, "OLD.")
	newCols, oldCols := make([]string, len(cols)), make([]string, len(cols))
	for i, c := range cols {
		newCols[i], oldCols[i] = "NEW."+quoteIdent(c), "OLD."+quoteIdent(c)
	}
	// An update also passes the row as it was, which entry checks against
	// the entry it replaces.
	entry := func(cols string) string {
		return fmt.Sprintf(`
	INSERT OR REPLACE INTO anchor_rows (tbl, key, term) SELECT %[1]s, %[2]s,
		hsmemu_anchor_entry(%[1]s, %[2]s, (SELECT term FROM anchor_rows WHERE tbl = %[1]s AND key = %[2]s), %[3]s)
		WHERE EXISTS (SELECT 1 FROM anchor);`, t, kn, cols)
	}
	in := entry(strings.Join(newCols, ", "))
	upd := entry(strings.Join(newCols, ", ") + ", " + strings.Join(oldCols, ", "))
	out := fmt.Sprintf(`
	SELECT hsmemu_anchor_drop(%[1]s, %[2]s, term) FROM anchor_rows WHERE tbl = %[1]s AND key = %[2]s;
	DELETE FROM anchor_rows WHERE tbl = %[1]s AND key = %[2]s;`, t, ko)
	apply := "\n\tUPDATE anchor SET state = hsmemu_anchor_apply(state) WHERE id = 1;"
	var trig []string
	for _, ev := range []struct{ event, body string }{
		{"INSERT", in + apply},
		{"UPDATE", upd + apply},
		{"DELETE", out + apply},
	} {
		trig = append(trig, fmt.Sprintf("CREATE TEMP TRIGGER %s AFTER %s ON main.%s BEGIN%s\nEND",
			quoteIdent("hsmemu_anchor_"+table+"_"+strings.ToLower(ev.event)), ev.event, quoteIdent(table), ev.body))
	}
	return trig
}

// reinstallAnchorTriggers installs the triggers on db's one connection
// (after a migration changed the schema).
func reinstallAnchorTriggers(ctx context.Context, db *sql.DB, a *anchor) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("keystore: install anchor triggers: %w", err)
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*sqlite3.SQLiteConn)
		if !ok {
			return fmt.Errorf("keystore: install anchor triggers: connection of type %T", dc)
		}
		return installAnchorTriggers(c, a)
	})
}

// termExpr is the SQL expression of a row's term in a SELECT over its
// table.
func termExpr(table string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = quoteIdent(c)
	}
	return "hsmemu_anchor_term(" + quoteString(table) + ", " + strings.Join(q, ", ") + ")"
}

func quoteIdent(s string) string  { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteString(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }

// tableColumns lists a table's columns in order.
func tableColumns(c *sqlite3.SQLiteConn, table string) ([]string, error) {
	cols, err := driverStrings(c, "SELECT name FROM pragma_table_info("+quoteString(table)+", 'main') ORDER BY cid")
	if err != nil {
		return nil, fmt.Errorf("keystore: columns of %s: %w", table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("keystore: table %s has no columns", table)
	}
	return cols, nil
}

// driverStrings runs a query of one text column on a driver connection.
func driverStrings(c *sqlite3.SQLiteConn, query string) ([]string, error) {
	rows, err := c.Query(query, nil)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	dest := make([]driver.Value, 1)
	for {
		err := rows.Next(dest)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		switch v := dest[0].(type) {
		case string:
			out = append(out, v)
		case []byte:
			out = append(out, string(v))
		default:
			return nil, fmt.Errorf("unexpected %T", v)
		}
	}
}

func txStrings(ctx context.Context, tx *sql.Tx, query string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// anchoredRow is a row as the check at start sees it.
type anchoredRow struct {
	table, key string
	term       []byte
	token      sql.NullInt64 // the token it belongs to: its own id for a token row, its token_id
}
