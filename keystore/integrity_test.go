package keystore

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// legacyMAC rewrites a token row's MAC in the form rows had before
// tokenMACInput's (tokenMACv2), as an earlier version wrote it.
func legacyMAC(t *testing.T, s *Store, db *sql.DB, ti TokenInfo) {
	t.Helper()
	cur, st, err := s.token(ctx, s.r, "uuid = ?", ti.UUID[:])
	if err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, "UPDATE tokens SET mac = ? WHERE id = ?", tokenMACv2(st.keys, &cur), cur.ID)
	if _, err := s.Token(ctx, ti.UUID); err != nil {
		t.Fatalf("a row under the earlier MAC: %v, want it accepted", err)
	}
}

// TestCounterWrap moves a failure counter or the retention by 2^32: the
// earlier MAC covered them as 32 bits, so the edit kept it valid, and a
// negative count never locked. Both MAC forms must refuse the row.
func TestCounterWrap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, set string
		legacy    bool
	}{
		{name: "user failures", set: "user_failures = user_failures - 4294967296"},
		{name: "user failures, earlier MAC", set: "user_failures = user_failures - 4294967296", legacy: true},
		{name: "SO failures", set: "so_failures = so_failures + 4294967296"},
		{name: "retention", set: "retention_days = 30 - 4294967296"},
		{name: "retention, earlier MAC", set: "retention_days = 30 - 4294967296", legacy: true},
		{name: "retention up", set: "retention_days = 30 + 4294967296", legacy: true},
		{name: "master generation", set: "master_generation = master_generation + 4294967296", legacy: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{MaxPINFailures: 3})
			ti := newToken(t, s, "tok")
			victim := newToken(t, s, "other")
			thirty := 30
			if err := s.SetPolicy(ctx, ti.UUID, &thirty, nil); err != nil {
				t.Fatal(err)
			}
			if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			if tc.legacy {
				legacyMAC(t, s, db, ti)
			}
			s.Close()
			execSQL(t, db, "UPDATE tokens SET "+tc.set+" WHERE id = ?", ti.ID)

			s2 := reopen(t, path, Options{MaxPINFailures: 3})
			if _, err := s2.Token(ctx, ti.UUID); !errors.Is(err, ErrTampered) {
				t.Fatalf("Token: %v, want ErrTampered", err)
			}
			// No guess is tried, right or wrong.
			for i := 0; i < 12; i++ {
				if err := s2.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrTampered) {
					t.Fatalf("wrong PIN %d: %v, want ErrTampered", i, err)
				}
			}
			if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrTampered) {
				t.Fatalf("right PIN: %v, want ErrTampered", err)
			}
			// The other token is untouched.
			if err := s2.Login(ctx, victim.UUID, RoleUser, userPIN); err != nil {
				t.Fatalf("the other token: %v", err)
			}
		})
	}
}

// TestRetentionWrapKeepsObjects: a retention moved by 2^32 must not turn a
// soft delete into a hard one, nor let the expiry purge.
func TestRetentionWrapKeepsObjects(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "tok")
	thirty := 30
	if err := s.SetPolicy(ctx, ti.UUID, &thirty, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	a, err := s.Put(ctx, ti.UUID, keyAttrs(t, "a", false), bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Put(ctx, ti.UUID, keyAttrs(t, "b", false), bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := s.SoftDelete(ctx, b.ID); err != nil || !kept {
		t.Fatalf("SoftDelete: %v %v", kept, err)
	}
	s.Close()
	db := rawDB(t, path)
	execSQL(t, db, "UPDATE tokens SET retention_days = 30 - 4294967296 WHERE id = ?", ti.ID)

	s2 := reopen(t, path, Options{})
	if _, err := s2.SoftDelete(ctx, a.ID); !errors.Is(err, ErrTampered) {
		t.Fatalf("SoftDelete: %v, want ErrTampered", err)
	}
	if _, err := s2.DeletedObjects(ctx, ti.UUID); !errors.Is(err, ErrTampered) {
		t.Fatalf("DeletedObjects: %v, want ErrTampered", err)
	}
	if purged, err := s2.PurgeExpired(ctx, time.Now().AddDate(100, 0, 0)); err != nil || len(purged) != 0 {
		t.Fatalf("PurgeExpired: %v %v, want nothing purged", purged, err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM objects").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d objects left (%v), want both", n, err)
	}
}

// TestObjectRowClone copies a key's row under a new id and uuid column,
// record and all: a second handle on one key. The copy is refused on open
// and left out of finds; the original keeps working.
func TestObjectRowClone(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "tok")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := rawDB(t, path)
	clone := int64(obj.ID) + 100
	execSQL(t, db, `INSERT INTO objects (id, uuid, token_id, class, key_type, label, ckaid, private, record, created_at, updated_at)
		SELECT ?, ?, token_id, class, key_type, label, ckaid, private, record, created_at, updated_at FROM objects WHERE id = ?`,
		clone, bytes.Repeat([]byte{0x5a}, 16), int64(obj.ID))

	s2 := reopen(t, path, Options{})
	if _, err := s2.Open(ctx, ObjectID(clone)); !errors.Is(err, ErrTampered) {
		t.Fatalf("Open of the copy: %v, want ErrTampered", err)
	}
	var te *TamperError
	if _, err := s2.Open(ctx, ObjectID(clone)); !errors.As(err, &te) || te.What != "uuid column" || te.ID != obj.UUID.String() {
		t.Fatalf("Open of the copy: %v, want a uuid column failure naming %s", err, obj.UUID)
	}
	ids, err := s2.Find(ctx, ti.UUID, Filter{})
	if err != nil || len(ids) != 1 || ids[0] != obj.ID {
		t.Fatalf("Find: %v %v, want the original alone", ids, err)
	}
	if got, err := s2.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, obj.Secret) {
		t.Fatalf("Open of the original: %v", err)
	}
}

// tokenColumns are a token row's columns, each with the edits tried on it.
// Every column but the row id (see tokenMAC) is authenticated.
var tokenColumns = []string{"uuid", "label", "serial", "tier", "kek_generation", "dk_generation",
	"so_pin", "user_pin", "so_failures", "user_failures", "mac", "created_at", "retention_days",
	"purge_protection", "master_generation", "legacy_pin_keys", "login_epoch"}

// tokenEdit is an edit of one column, as SQL over its current value.
type tokenEdit struct {
	column int
	expr   string
}

// intEdits and blobEdits are the edits tried on integer and byte columns:
// small steps, steps of 2^32 (the width an earlier MAC used), the sign
// bit, and values of another type (a table rebuilt without its types).
var (
	intEdits = []string{"%s + 1", "%s - 1", "%s + 4294967296", "%s - 4294967296", "%s + 18446744073709551616",
		"-%s", "%s | -9223372036854775808", "0", "1", "2", "NULL", "'1'", "CAST(%s AS BLOB)", "%s + 0.5"}
	blobEdits = []string{"substr(%s, 1, length(%s) - 1)", "%s || x'00'", "x''", "NULL", "CAST(%s AS TEXT)",
		"randomblob(length(%s))", "zeroblob(16)", "1"}
)

func tokenEditSeeds() []tokenEdit {
	var out []tokenEdit
	for i, c := range tokenColumns {
		edits := blobEdits
		switch c {
		case "tier", "kek_generation", "dk_generation", "so_failures", "user_failures", "created_at",
			"retention_days", "purge_protection", "master_generation", "login_epoch":
			edits = intEdits
		case "label", "serial":
			edits = append([]string{"%s || 'x'", "substr(%s, 2)", "upper(%s)", "lower(%s)", "''"}, blobEdits...)
		}
		for _, e := range edits {
			out = append(out, tokenEdit{column: i, expr: e})
		}
	}
	return out
}

// FuzzTokenRow edits one column of a token row at a time, the schema's
// types and constraints out of the way: every edit that changes the row
// is caught by the MAC or the range checks, and the token beside it keeps
// working. The seeds try each column with every edit above; fuzzing adds
// arbitrary values.
func FuzzTokenRow(f *testing.F) {
	sqliteOnly(f, "rebuilds the table without types, as only a hand edit of SQLite's file can")
	for _, e := range tokenEditSeeds() {
		f.Add(uint8(e.column), e.expr, int64(0), []byte(nil))
	}
	for i := range tokenColumns {
		f.Add(uint8(i), "?", int64(1)<<32, []byte(nil))
		f.Add(uint8(i), "?", int64(-1), []byte{0})
	}
	s, path := newStore(f, Options{})
	ti := newToken(f, s, "tok")
	other := newToken(f, s, "other")
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
		f.Fatal(err)
	}
	// An epoch set (a logout of every daemon), so that every edit of it
	// changes a value the MAC covers.
	if _, err := s.LogoutAll(ctx, ti.UUID); err != nil {
		f.Fatal(err)
	}
	db, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	// Rebuild the table as a hand edit could: no types, no constraints.
	if _, err := db.Exec(`PRAGMA foreign_keys = OFF;
		CREATE TABLE loose AS SELECT * FROM tokens; DROP TABLE tokens; ALTER TABLE loose RENAME TO tokens;`); err != nil {
		f.Fatal(err)
	}
	original := func() []any {
		row := make([]any, len(tokenColumns))
		ptrs := make([]any, len(row))
		for i := range row {
			ptrs[i] = &row[i]
		}
		q := fmt.Sprintf("SELECT %s FROM tokens WHERE id = ?", strings.Join(tokenColumns, ", "))
		if err := db.QueryRow(q, ti.ID).Scan(ptrs...); err != nil {
			f.Fatal(err)
		}
		return row
	}()
	f.Fuzz(func(t *testing.T, column uint8, expr string, n int64, b []byte) {
		if int(column) >= len(tokenColumns) {
			return
		}
		c := tokenColumns[column]
		if expr != "?" && !knownEdit(int(column), expr) {
			return // arbitrary SQL is not the point: values are
		}
		// Put the row back, then edit it.
		set := make([]string, len(tokenColumns))
		for i, col := range tokenColumns {
			set[i] = col + " = ?"
		}
		if _, err := db.Exec("UPDATE tokens SET "+strings.Join(set, ", ")+" WHERE id = ?", append(original, ti.ID)...); err != nil {
			t.Fatal(err)
		}
		var arg any
		if expr == "?" {
			arg = n
			if b != nil {
				arg = b
			}
		}
		q := "UPDATE tokens SET " + c + " = " + strings.ReplaceAll(expr, "%s", c) + " WHERE id = ?"
		args := []any{ti.ID}
		if arg != nil {
			args = []any{arg, ti.ID}
		}
		if _, err := db.Exec(q, args...); err != nil {
			t.Skipf("%s: %v", q, err)
		}
		var changed bool
		if err := db.QueryRow("SELECT "+c+" IS NOT ? OR typeof("+c+") != typeof(?) FROM tokens WHERE id = ?",
			original[column], original[column], ti.ID).Scan(&changed); err != nil {
			t.Fatal(err)
		}
		_, err := s.TokenByID(ctx, ti.ID)
		switch {
		case changed && !errors.Is(err, ErrTampered):
			t.Fatalf("%s: TokenByID = %v, want ErrTampered", q, err)
		case !changed && err != nil:
			t.Fatalf("%s (no change): TokenByID = %v", q, err)
		}
		list, err := s.Tokens(ctx)
		if err != nil || len(list) != 2 {
			t.Fatalf("%s: Tokens = %d, %v; want both listed", q, len(list), err)
		}
		if got, err := s.Token(ctx, other.UUID); err != nil || got.Tampered != nil {
			t.Fatalf("%s: the other token: %v", q, err)
		}
	})
}

func knownEdit(column int, expr string) bool {
	for _, e := range tokenEditSeeds() {
		if e.column == column && e.expr == expr {
			return true
		}
	}
	return false
}

// TestMigrateTokenChecks takes a keystore back to schema 3 (the token row
// without CHECKs), with a deleted token and a row out of range, and opens
// it: the rebuild keeps every row, every object and the id sequence, and
// the CHECKs hold afterwards.
func TestMigrateTokenChecks(t *testing.T) {
	sqliteOnly(t, "a keystore of schema 3, which PostgreSQL keystores never had")
	t.Parallel()
	s, path := newStore(t, Options{})
	a := newToken(t, s, "a")
	b := newToken(t, s, "b")
	c := newToken(t, s, "c")
	if err := s.Login(ctx, a.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, a.UUID, keyAttrs(t, "k", false), bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteToken(ctx, c.UUID); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := rawDB(t, path)
	execSQL(t, db, `PRAGMA foreign_keys = OFF`)
	execSQL(t, db, `CREATE TABLE v3 (
		id INTEGER PRIMARY KEY AUTOINCREMENT, uuid BLOB NOT NULL UNIQUE CHECK (length(uuid) = 16),
		label TEXT NOT NULL UNIQUE, serial TEXT NOT NULL UNIQUE, tier INTEGER NOT NULL,
		kek_generation INTEGER NOT NULL, dk_generation INTEGER NOT NULL, so_pin BLOB NOT NULL, user_pin BLOB,
		so_failures INTEGER NOT NULL DEFAULT 0, user_failures INTEGER NOT NULL DEFAULT 0, mac BLOB NOT NULL,
		created_at INTEGER NOT NULL, retention_days INTEGER NOT NULL DEFAULT 90,
		purge_protection INTEGER NOT NULL DEFAULT 0, master_generation INTEGER NOT NULL DEFAULT 1,
		legacy_pin_keys BLOB) STRICT`)
	execSQL(t, db, `INSERT INTO v3 SELECT id, `+strings.Join(tokenColumns[:len(tokenColumns)-1], ", ")+` FROM tokens`)
	execSQL(t, db, `DROP TABLE tokens`)
	execSQL(t, db, `ALTER TABLE v3 RENAME TO tokens`)
	execSQL(t, db, `UPDATE sqlite_sequence SET seq = 3 WHERE name = 'tokens'`)
	execSQL(t, db, `UPDATE tokens SET user_failures = -4294967295 WHERE id = ?`, b.ID)
	execSQL(t, db, `DROP TABLE anchor; DROP TABLE anchor_rows`) // schema 5's
	execSQL(t, db, `DROP TABLE node_masters`)                   // schema 8's
	execSQL(t, db, `DROP TABLE pin_bindings; DROP TABLE nodes`) // schema 7's
	execSQL(t, db, `ALTER TABLE root DROP COLUMN nodes_left`)   // schema 10's
	execSQL(t, db, `PRAGMA user_version = 3`)

	s2 := reopen(t, path, Options{})
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != SchemaVersion {
		t.Fatalf("schema version %d (%v), want %d", v, err, SchemaVersion)
	}
	list, err := s2.Tokens(ctx)
	if err != nil || len(list) != 2 || list[0].Tampered != nil || !errors.Is(list[1].Tampered, ErrTampered) {
		t.Fatalf("Tokens after migration: %+v %v; want a good, b tampered", list, err)
	}
	if got, err := s2.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, obj.Secret) {
		t.Fatalf("the object after migration: %v", err)
	}
	d := newToken(t, s2, "d")
	if d.ID != c.ID+1 {
		t.Fatalf("new token id %d, want %d: a deleted token's id was reused", d.ID, c.ID+1)
	}
	// The CHECKs hold for a connection that does not turn them off.
	strict, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	for _, set := range []string{"user_failures = -1", "so_failures = 1048577", "tier = 3", "retention_days = 3651",
		"purge_protection = 2", "kek_generation = 0", "master_generation = 4294967296", "label = ''", "mac = x'00'"} {
		if _, err := strict.Exec("UPDATE tokens SET "+set+" WHERE id = ?", a.ID); err == nil || !strings.Contains(err.Error(), "CHECK") {
			t.Errorf("UPDATE tokens SET %s: %v, want a CHECK failure", set, err)
		}
	}
}

// TestUpgradeMACs: a row under the earlier MAC form is rewritten under the
// current one, once; after that, the creation time it left out is covered.
func TestUpgradeMACs(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	a := newToken(t, s, "a")
	b := newToken(t, s, "b")
	db := rawDB(t, path)
	legacyMAC(t, s, db, a)
	if n, err := s.UpgradeMACs(ctx); err != nil || n != 1 {
		t.Fatalf("UpgradeMACs = %d, %v; want 1 row", n, err)
	}
	if n, err := s.UpgradeMACs(ctx); err != nil || n != 0 {
		t.Fatalf("UpgradeMACs again = %d, %v; want none", n, err)
	}
	for _, ti := range []TokenInfo{a, b} {
		execSQL(t, db, "UPDATE tokens SET created_at = created_at - 86400 WHERE id = ?", ti.ID)
		if _, err := s.Token(ctx, ti.UUID); !errors.Is(err, ErrTampered) {
			t.Fatalf("token %s with its creation time edited: %v, want ErrTampered", ti.Label, err)
		}
	}
}

// TestTamperAudited: each integrity failure is written to the audit log
// once, as tamper.detected naming the row and what failed, however often
// it is met, and the chain stays intact.
func TestTamperAudited(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "tok")
	other := newToken(t, s, "other")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), bytes.Repeat([]byte{5}, 32))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := rawDB(t, path)
	editAttr(t, db, obj.ID, 0x162, Bool(false))
	execSQL(t, db, "UPDATE tokens SET user_failures = user_failures - 4294967296 WHERE id = ?", other.ID)

	s2 := reopen(t, path, Options{})
	if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := s2.Open(ctx, obj.ID); !errors.Is(err, ErrTampered) {
			t.Fatalf("Open: %v, want ErrTampered", err)
		}
		if _, err := s2.Tokens(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s2.AuditTamper(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s2.TamperCount(ctx); err != nil || n != 2 {
		t.Fatalf("TamperCount = %d, %v; want 2", n, err)
	}
	got := map[string]string{}
	rows, err := db.Query("SELECT detail FROM audit_log WHERE event = 'tamper.detected'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		for _, u := range []UUID{obj.UUID, other.UUID} {
			if strings.Contains(d, u.String()) {
				got[u.String()] = d
			}
		}
	}
	if !strings.Contains(got[obj.UUID.String()], `"what":"seal"`) || !strings.Contains(got[other.UUID.String()], `"what":"range"`) {
		t.Fatalf("tamper records %v, want the object's seal and the token's range", got)
	}
	if rep, err := s2.VerifyAudit(ctx); err != nil || !rep.OK || rep.Records < 2 {
		t.Fatalf("audit chain: %+v %v", rep, err)
	}
}
