package keystore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// The anchor on PostgreSQL. SQLite's writer has temporary triggers that
// call this package's Go functions (anchorsql.go); PostgreSQL runs
// triggers in the server, where the anchor's keys must never go. So the
// schema's trigger (hsmemu_anchor_note, pgschema.go) only notes each row
// change, as the row's JSON, in a temporary table of the writing session,
// and the writer connection folds the notes into the anchor record and
// the rows' entries just before each commit, in the same transaction,
// with the same functions SQLite's triggers call (entry, drop, apply,
// audit): the record, the entries and the terms are the same things on
// both engines, and AttachAnchor, Anchor and the check at start are one
// implementation. Nothing in the write paths knows about it here either:
// the driver (pgConn) folds on every commit of the writer.

// pgUnanchored are the tables the digest leaves out: SQLite's (the nodes
// among them), the schema version, which SQLite keeps outside any table,
// and the change generation (pgcluster.go), which only says when to look
// again.
var pgUnanchored = map[string]bool{"anchor": true, "anchor_rows": true, "audit_log": true, "hsmemu_schema": true, "hsmemu_changes": true, "nodes": true, "node_masters": true}

// createPending makes a writer session's table of notes.
func createPending(ctx context.Context, c *pgx.Conn) error {
	_, err := c.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS hsmemu_anchor_pending (
		seq     bigserial PRIMARY KEY,
		tbl     text NOT NULL,
		old_row jsonb,
		new_row jsonb)`)
	return err
}

// pgTable is an anchored table as the fold reads its rows.
type pgTable struct {
	name  string
	cols  []string
	types []string // each column's data_type
	pk    []int    // the primary key's columns, as indexes into cols
	token int      // the column naming the row's token (id of tokens, token_id), or -1
}

// pgFolder folds the notes into the anchor record.
type pgFolder struct {
	a      *anchor
	mu     sync.Mutex
	tables map[string]*pgTable
}

// loadTables reads the anchored tables' columns and primary keys.
func (f *pgFolder) loadTables(ctx context.Context, w *sql.DB) error {
	rows, err := w.QueryContext(ctx, `SELECT c.table_name, c.column_name, c.data_type,
		coalesce((SELECT k.ordinal_position FROM information_schema.table_constraints tc
			JOIN information_schema.key_column_usage k ON k.constraint_schema = tc.constraint_schema AND k.constraint_name = tc.constraint_name
			WHERE tc.table_schema = c.table_schema AND tc.table_name = c.table_name AND tc.constraint_type = 'PRIMARY KEY'
			AND k.column_name = c.column_name), 0)
		FROM information_schema.columns c JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
		ORDER BY c.table_name, c.ordinal_position`)
	if err != nil {
		return fmt.Errorf("keystore: list anchored tables: %w", err)
	}
	defer rows.Close()
	tables := map[string]*pgTable{}
	pkPos := map[string]map[int]int{}
	for rows.Next() {
		var tbl, col, typ string
		var pk int
		if err := rows.Scan(&tbl, &col, &typ, &pk); err != nil {
			return fmt.Errorf("keystore: list anchored tables: %w", err)
		}
		if pgUnanchored[tbl] {
			continue
		}
		t := tables[tbl]
		if t == nil {
			t = &pgTable{name: tbl, token: -1}
			tables[tbl] = t
			pkPos[tbl] = map[int]int{}
		}
		if pk > 0 {
			pkPos[tbl][pk] = len(t.cols)
		}
		t.cols = append(t.cols, col)
		t.types = append(t.types, typ)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("keystore: list anchored tables: %w", err)
	}
	for name, t := range tables {
		for i := 1; i <= len(pkPos[name]); i++ {
			t.pk = append(t.pk, pkPos[name][i])
		}
		if len(t.pk) == 0 {
			return fmt.Errorf("keystore: table %s has no primary key", name)
		}
		switch {
		case name == "tokens":
			t.token = slices.Index(t.cols, "id")
		default:
			t.token = slices.Index(t.cols, "token_id")
		}
	}
	f.mu.Lock()
	f.tables = tables
	f.mu.Unlock()
	f.a.mu.Lock()
	for name, t := range tables {
		f.a.cols[name] = t.cols
	}
	f.a.mu.Unlock()
	return nil
}

func (f *pgFolder) table(name string) (*pgTable, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[name]
	if !ok {
		return nil, fmt.Errorf("keystore: anchor: a change to table %s, which the keystore does not know", name)
	}
	return t, nil
}

// decode reads a row's JSON (to_jsonb) into the values SQLite's triggers
// pass for it: int64, string, []byte, or nil for NULL.
func (t *pgTable) decode(js string) ([]any, error) {
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("keystore: anchor: a row of %s: %w", t.name, err)
	}
	vals := make([]any, len(t.cols))
	for i, c := range t.cols {
		v := m[c]
		if v == nil {
			continue
		}
		bad := fmt.Errorf("keystore: anchor: column %s of %s holds %T for %s", c, t.name, v, t.types[i])
		switch t.types[i] {
		case "bigint", "integer", "smallint":
			n, ok := v.(json.Number)
			if !ok {
				return nil, bad
			}
			x, err := n.Int64()
			if err != nil {
				return nil, bad
			}
			vals[i] = x
		case "bytea":
			s, ok := v.(string)
			if !ok || !strings.HasPrefix(s, `\x`) {
				return nil, bad
			}
			b, err := hex.DecodeString(s[2:])
			if err != nil {
				return nil, bad
			}
			vals[i] = b
		case "text":
			s, ok := v.(string)
			if !ok {
				return nil, bad
			}
			vals[i] = s
		default:
			return nil, fmt.Errorf("keystore: anchor: column %s of %s is of type %s, which the anchor does not take", c, t.name, t.types[i])
		}
	}
	return vals, nil
}

// key is a row's key among its table's rows, as SQLite's quote() writes
// its primary key's columns: the same keys on both engines.
func (t *pgTable) key(vals []any) string {
	parts := make([]string, len(t.pk))
	for i, p := range t.pk {
		switch v := vals[p].(type) {
		case nil:
			parts[i] = "NULL"
		case int64:
			parts[i] = strconv.FormatInt(v, 10)
		case string:
			parts[i] = quoteString(v)
		case []byte:
			parts[i] = "X'" + strings.ToUpper(hex.EncodeToString(v)) + "'"
		}
	}
	return strings.Join(parts, ",")
}

// fold takes the notes of the transaction in progress on c and folds them
// into the anchor record and the rows' entries, as SQLite's triggers do
// row by row. Without a record (a keystore not anchored yet) the notes are
// dropped, as SQLite's triggers change nothing then.
func (f *pgFolder) fold(ctx context.Context, c *pgx.Conn) error {
	type note struct {
		seq      int64
		tbl      string
		old, new *string
	}
	rows, err := c.Query(ctx, "DELETE FROM pg_temp.hsmemu_anchor_pending RETURNING seq, tbl, old_row::text, new_row::text")
	if err != nil {
		return fmt.Errorf("keystore: anchor: read the transaction's changes: %w", err)
	}
	var notes []note
	for rows.Next() {
		var n note
		if err := rows.Scan(&n.seq, &n.tbl, &n.old, &n.new); err != nil {
			rows.Close()
			return fmt.Errorf("keystore: anchor: read the transaction's changes: %w", err)
		}
		notes = append(notes, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("keystore: anchor: read the transaction's changes: %w", err)
	}
	if len(notes) == 0 {
		return nil
	}
	sort.Slice(notes, func(i, j int) bool { return notes[i].seq < notes[j].seq })
	var blob []byte
	err = c.QueryRow(ctx, "SELECT state FROM anchor WHERE id = 1 FOR UPDATE").Scan(&blob)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("keystore: anchor: read the record: %w", err)
	}
	for _, n := range notes {
		if n.tbl == "audit_log" {
			if n.new == nil {
				continue
			}
			seq, hash, err := auditHead(*n.new)
			if err != nil {
				return err
			}
			if blob, err = f.a.audit(blob, seq, hash); err != nil {
				return err
			}
			continue
		}
		t, err := f.table(n.tbl)
		if err != nil {
			return err
		}
		row := n.new
		if row == nil {
			row = n.old
		}
		if row == nil {
			continue
		}
		vals, err := t.decode(*row)
		if err != nil {
			return err
		}
		key := t.key(vals)
		var old any
		var entry []byte
		err = c.QueryRow(ctx, "SELECT term FROM anchor_rows WHERE tbl = $1 AND key = $2", t.name, key).Scan(&entry)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("keystore: anchor: read an entry: %w", err)
		default:
			old = entry
		}
		if n.new != nil {
			if n.old != nil {
				// An update: the row as it was, for entry to check
				// against the entry it replaces.
				was, err := t.decode(*n.old)
				if err != nil {
					return err
				}
				vals = append(vals, was...)
			}
			e, err := f.a.entry(t.name, key, old, vals...)
			if err != nil {
				return err
			}
			if _, err := c.Exec(ctx, `INSERT INTO anchor_rows (tbl, key, term) VALUES ($1, $2, $3)
				ON CONFLICT (tbl, key) DO UPDATE SET term = excluded.term`, t.name, key, e); err != nil {
				return fmt.Errorf("keystore: anchor: write an entry: %w", err)
			}
		} else {
			if _, err := f.a.drop(t.name, key, old); err != nil {
				return err
			}
			if _, err := c.Exec(ctx, "DELETE FROM anchor_rows WHERE tbl = $1 AND key = $2", t.name, key); err != nil {
				return fmt.Errorf("keystore: anchor: drop an entry: %w", err)
			}
		}
		if blob, err = f.a.apply(blob); err != nil {
			return err
		}
	}
	if _, err := c.Exec(ctx, "UPDATE anchor SET state = $1 WHERE id = 1", blob); err != nil {
		return fmt.Errorf("keystore: anchor: write the record: %w", err)
	}
	return nil
}

// auditHead reads an audit record's sequence number and hash from its
// JSON.
func auditHead(js string) (int64, []byte, error) {
	var r struct {
		Seq  json.Number `json:"seq"`
		Hash string      `json:"hash"`
	}
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		return 0, nil, fmt.Errorf("keystore: anchor: an audit record: %w", err)
	}
	seq, err := r.Seq.Int64()
	if err != nil || !strings.HasPrefix(r.Hash, `\x`) {
		return 0, nil, errors.New("keystore: anchor: an audit record without sequence number or hash")
	}
	hash, err := hex.DecodeString(r.Hash[2:])
	if err != nil {
		return 0, nil, errors.New("keystore: anchor: an audit record's hash is not hex")
	}
	return seq, hash, nil
}

// scanRows reads every anchored row as the fold does (its JSON) and gives
// its key and term.
func (e *postgresEngine) scanRows(ctx context.Context, tx *sql.Tx, a *anchor, f func(r *anchoredRow) error) error {
	e.f.mu.Lock()
	tables := make([]*pgTable, 0, len(e.f.tables))
	for _, t := range e.f.tables {
		tables = append(tables, t)
	}
	e.f.mu.Unlock()
	sort.Slice(tables, func(i, j int) bool { return tables[i].name < tables[j].name })
	for _, t := range tables {
		rows, err := tx.QueryContext(ctx, "SELECT to_jsonb(t)::text FROM "+quoteIdent(t.name)+" t")
		if err != nil {
			return fmt.Errorf("keystore: terms of %s: %w", t.name, err)
		}
		for rows.Next() {
			var js string
			if err := rows.Scan(&js); err != nil {
				rows.Close()
				return fmt.Errorf("keystore: terms of %s: %w", t.name, err)
			}
			vals, err := t.decode(js)
			if err != nil {
				rows.Close()
				return err
			}
			r := anchoredRow{table: t.name, key: t.key(vals)}
			if r.term, err = a.term(t.name, vals...); err != nil {
				rows.Close()
				return err
			}
			if t.token >= 0 {
				if id, ok := vals[t.token].(int64); ok {
					r.token = sql.NullInt64{Int64: id, Valid: true}
				}
			}
			if err := f(&r); err != nil {
				rows.Close()
				return err
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("keystore: terms of %s: %w", t.name, err)
		}
	}
	return nil
}

// objectTerm is one object row's term, as scanRows computes it, the row
// locked: another daemon's write of it, and of its entry, commits before
// or after the caller's transaction, never in between.
func (e *postgresEngine) objectTerm(ctx context.Context, tx *sql.Tx, a *anchor, id int64) ([]byte, error) {
	t, err := e.f.table("objects")
	if err != nil {
		return nil, err
	}
	var js string
	if err := tx.QueryRowContext(ctx, "SELECT to_jsonb(t)::text FROM objects t WHERE id = ? FOR UPDATE", id).Scan(&js); err != nil {
		return nil, err
	}
	vals, err := t.decode(js)
	if err != nil {
		return nil, err
	}
	return a.term("objects", vals...)
}
