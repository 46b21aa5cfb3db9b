package keystore

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"hsmemu/internal/pgtest"
)

// The tests run as a matrix over the engines, one engine per run of the
// test binary: SQLite by default, PostgreSQL with HSMEMU_TEST_DB=postgres
// (`make test-postgres`), against a server the tests start themselves
// (internal/pgtest), one database per keystore. The tests are the same;
// the few that test something only one engine has (SQLite's pragmas, its
// file) say so and skip on the other.

// testEngine is the engine this run tests.
var testEngine = func() string {
	if os.Getenv("HSMEMU_TEST_DB") == EnginePostgres {
		return EnginePostgres
	}
	return EngineSQLite
}()

var pgServer pgtest.Shared

// newLocation is a fresh keystore's location on the engine under test: a
// file path, or a new database's connection string.
func newLocation(t testing.TB) string {
	t.Helper()
	if testEngine == EnginePostgres {
		return pgServer.NewDatabase(t)
	}
	return filepath.Join(t.TempDir(), "keystore.db")
}

// openAt opens the keystore at a location newLocation gave.
func openAt(ctx context.Context, loc string, opts Options) (*Store, error) {
	if kind, _, err := ParseDB(loc); err == nil && kind == EnginePostgres {
		return OpenDB(ctx, loc, opts)
	}
	return Open(ctx, loc, opts)
}

// sqliteOnly skips a test of something only SQLite has.
func sqliteOnly(t testing.TB, what string) {
	t.Helper()
	if testEngine != EngineSQLite {
		t.Skip("SQLite only: " + what)
	}
}

// copyKeystore copies a keystore as someone keeping an older copy to put
// back would: SQLite's CopyFile, or pg_dump into a new database.
func copyKeystore(t *testing.T, loc string) string {
	t.Helper()
	if testEngine == EnginePostgres {
		dst, err := pgServer.Get(t).CopyDatabase(context.Background(), loc)
		if err != nil {
			t.Fatal(err)
		}
		return dst
	}
	dst := filepath.Join(t.TempDir(), "copy.db")
	if err := CopyFile(context.Background(), loc, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// rawDB opens the keystore's database behind the Store's back, as an
// attacker with write access to it would: the schema's CHECKs are no
// obstacle to them (SQLite's file can be written with them off; a
// PostgreSQL superuser drops them), so they are not enforced. Its SQL
// takes `?` placeholders on both engines.
func rawDB(t *testing.T, loc string) *sql.DB {
	t.Helper()
	if testEngine == EnginePostgres {
		cfg, err := pgx.ParseConfig(loc)
		if err != nil {
			t.Fatal(err)
		}
		// A superuser's session can also turn the foreign keys off, as
		// SQLite's raw connection has them.
		cfg.RuntimeParams["session_replication_role"] = "replica"
		db := sql.OpenDB(&pgConnector{inner: stdlib.GetConnector(*cfg)})
		t.Cleanup(func() { db.Close() })
		execSQL(t, db, `DO $$ DECLARE c record; BEGIN
			FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint WHERE contype = 'c' AND connamespace = current_schema()::regnamespace LOOP
				EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
			END LOOP; END $$`)
		return db
	}
	db, err := sql.Open("sqlite3", "file:"+loc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1) // the pragma is the connection's
	if _, err := db.Exec("PRAGMA ignore_check_constraints = ON"); err != nil {
		t.Fatal(err)
	}
	return db
}

func TestParseDB(t *testing.T) {
	for _, tc := range []struct{ db, kind, target string }{
		{"sqlite:/var/lib/hsmemu/keystore.db", EngineSQLite, "/var/lib/hsmemu/keystore.db"},
		{"sqlite:/tmp/a=b/keystore.db", EngineSQLite, "/tmp/a=b/keystore.db"},
		{"postgres://db1,db2/keys?target_session_attrs=read-write", EnginePostgres, "postgres://db1,db2/keys?target_session_attrs=read-write"},
		{"postgresql:///keys?host=/run/postgresql", EnginePostgres, "postgresql:///keys?host=/run/postgresql"},
		{"host=db1,db2 dbname=keys sslmode=verify-full", EnginePostgres, "host=db1,db2 dbname=keys sslmode=verify-full"},
		{"/tmp/a=b/keystore.db", "", ""},
		{"keystore.db", "", ""},
		{"sqlite:", "", ""},
		{"mysql://db/keys", "", ""},
		{"postgres://u:pw@db/keys", "", ""},
		{"host=db password=pw", "", ""},
		{"mysql://u@db/keys?password=pw", "", ""},
		{"mysql://u:pw@db/keys", "", ""},
		{"sqlite:file:/var/lib/hsmemu/keystore.db?_auth_user=u&_auth_pass=pw", "", ""},
	} {
		kind, target, err := ParseDB(tc.db)
		if kind != tc.kind || target != tc.target || (err == nil) != (tc.kind != "") {
			t.Errorf("%q: %q %q %v", tc.db, kind, target, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("%q: the error shows the password: %v", tc.db, err)
		}
	}
}
