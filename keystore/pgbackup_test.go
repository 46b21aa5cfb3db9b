package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
)

// backupKey stores a token and an AES key in s, for the backup tests.
func backupKey(t *testing.T, s *Store, label string, secret []byte) UUID {
	t.Helper()
	pin := []byte("user-pin-1234")
	ti, err := s.CreateToken(ctx, TokenSpec{Label: label, Tier: TierStandard, SOPIN: []byte("so-pin-12345678"), UserPIN: pin})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, pin); err != nil {
		t.Fatal(err)
	}
	attrs, err := NewAttributes(
		Attribute{Type: AttrClass, Value: Ulong(4)},
		Attribute{Type: AttrKeyType, Value: Ulong(0x1f)},
		Attribute{Type: AttrToken, Value: Bool(true)},
		Attribute{Type: AttrPrivate, Value: Bool(true)},
		Attribute{Type: AttrLabel, Value: []byte("k")},
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, ti.UUID, attrs, secret); err != nil {
		t.Fatal(err)
	}
	return ti.UUID
}

// openBackupKey opens the keystore at loc and returns the value of the
// key backupKey stored in token label.
func openBackupKey(t *testing.T, loc, label string) []byte {
	t.Helper()
	root, _ := testRoot(t)
	s, err := OpenDB(ctx, loc, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	ti, err := s.TokenByLabel(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("user-pin-1234")); err != nil {
		t.Fatal(err)
	}
	ids, err := s.Find(ctx, ti.UUID, Filter{IncludePrivate: true, Label: []byte("k")})
	if err != nil || len(ids) != 1 {
		t.Fatalf("find: %v, %d keys", err, len(ids))
	}
	obj, err := s.Open(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	return obj.Secret
}

// backupOf backs the keystore at loc up and reads the backup back.
func backupOf(t *testing.T, loc string) *Dump {
	t.Helper()
	var buf bytes.Buffer
	domain, n, err := BackupPostgres(ctx, loc, Options{}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("BackupPostgres reports %d bytes, wrote %d", n, buf.Len())
	}
	d, err := ParseDump(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(d.DomainID, domain) {
		t.Fatalf("the backup names domain %x, BackupPostgres %x", d.DomainID, domain)
	}
	return d
}

// sortedRows is a table's rows in an order of their own, to compare.
func sortedRows(t *DumpTable) []string {
	var out []string
	for _, r := range t.Rows {
		out = append(out, fmt.Sprintf("%#v", r))
	}
	slices.Sort(out)
	return out
}

// TestPostgresBackupRestore: a backup holds every table of the keystore's
// schema, restores into an empty database as the same rows (a second
// backup of it holds what the first did) whose key opens; a restore over
// a keystore moves it aside, and the undo puts it back; a database a
// daemon holds and a backup of another domain are refused, changing
// nothing.
func TestPostgresBackupRestore(t *testing.T) {
	root, _ := testRoot(t)
	s, loc := newStoreAt(t, pgServer.NewDatabase(t), Options{})
	secret := []byte("0123456789abcdef0123456789abcdef")
	backupKey(t, s, "first", secret)
	d := backupOf(t, loc)
	if d.Engine != EnginePostgres || d.SchemaVersion != len(pgMigrations) || !bytes.Equal(d.DomainID, root.DomainID()) {
		t.Fatalf("backup header: %s, version %d, domain %x", d.Engine, d.SchemaVersion, d.DomainID)
	}

	// Every table of the schema but its own bookkeeping is in it.
	c, err := pgConnect(ctx, loc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := c.Query(ctx, `SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r' AND relname <> 'hsmemu_schema' ORDER BY relname`)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	c.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want = slices.DeleteFunc(want, pgNotBackedUp)
	var got []string
	for _, tb := range d.Tables {
		got = append(got, tb.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("backup tables %v, schema's %v", got, want)
	}
	if tk := d.Table("tokens"); tk == nil || len(tk.Rows) != 1 || tk.Identity != "id" || tk.IdentityLast < 1 {
		t.Fatalf("tokens in the backup: %+v", tk)
	}

	// Into an empty database: nothing replaced, the same rows, the key opens.
	dst := pgServer.NewDatabase(t)
	replaced, err := RestorePostgres(ctx, dst, Options{}, d, "aside1")
	if err != nil || replaced != "" {
		t.Fatalf("restore into an empty database: %q, %v", replaced, err)
	}
	again := backupOf(t, dst)
	for _, tb := range d.Tables {
		tb2 := again.Table(tb.Name)
		if tb2 == nil || !slices.Equal(tb2.Columns, tb.Columns) || !slices.Equal(sortedRows(tb2), sortedRows(&tb)) {
			t.Fatalf("table %s differs after the restore", tb.Name)
		}
	}
	if got := openBackupKey(t, dst, "first"); !bytes.Equal(got, secret) {
		t.Fatal("the restored key's value differs")
	}

	// A daemon holds the database: refused.
	held, err := OpenDB(ctx, dst, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RestorePostgres(ctx, dst, Options{}, d, "aside2"); !errors.Is(err, ErrDatabaseInUse) {
		t.Fatalf("restore under a daemon: %v", err)
	}
	held.Close()

	// Another domain's backup: refused.
	other := *d
	other.DomainID = bytes.Repeat([]byte{7}, 32)
	var dm *DomainMismatchError
	if _, err := RestorePostgres(ctx, dst, Options{}, &other, "aside3"); !errors.As(err, &dm) {
		t.Fatalf("restore of another domain: %v", err)
	}

	// Over a keystore: it is moved aside, and the undo brings it back.
	s2, err := OpenDB(ctx, dst, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	backupKey(t, s2, "second", secret)
	s2.Close()
	if replaced, err = RestorePostgres(ctx, dst, Options{}, d, "aside4"); err != nil || replaced != "aside4" {
		t.Fatalf("restore over a keystore: %q, %v", replaced, err)
	}
	if tk := backupOf(t, dst).Table("tokens"); len(tk.Rows) != 1 {
		t.Fatalf("%d tokens after the restore, want the backup's 1", len(tk.Rows))
	}
	if err := UndoRestorePostgres(ctx, dst, Options{}, replaced); err != nil {
		t.Fatal(err)
	}
	if tk := backupOf(t, dst).Table("tokens"); len(tk.Rows) != 2 {
		t.Fatalf("%d tokens after the undo, want 2", len(tk.Rows))
	}
	if got := openBackupKey(t, dst, "second"); !bytes.Equal(got, secret) {
		t.Fatal("the replaced keystore's key differs after the undo")
	}
	if _, err := PostgresDomain(ctx, pgServer.NewDatabase(t), Options{}); !errors.Is(err, ErrNotProvisioned) {
		t.Fatalf("domain of an empty database: %v", err)
	}
}
