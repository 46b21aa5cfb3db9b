package keystore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPostgresExclusive: a daemon holds its PostgreSQL database alone
// (Options.Exclusive); a second one is refused with ErrDatabaseInUse
// until the first closes.
func TestPostgresExclusive(t *testing.T) {
	loc := pgServer.NewDatabase(t)
	a, err := OpenDB(ctx, loc, Options{Argon2: cheapArgon, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDB(ctx, loc, Options{Argon2: cheapArgon, Exclusive: true}); !errors.Is(err, ErrDatabaseInUse) {
		t.Fatalf("second exclusive open: %v", err)
	}
	a.Close()
	b, err := OpenDB(ctx, loc, Options{Argon2: cheapArgon, Exclusive: true})
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	b.Close()
}

// TestPostgresPassword: the password comes from a file or PGPASSFILE,
// never from the connection string; a wrong one fails without echoing
// it.
func TestPostgresPassword(t *testing.T) {
	srv := pgServer.Get(t)
	loc := pgServer.NewDatabase(t)
	db := loc[strings.LastIndex(loc, "/")+1 : strings.Index(loc, "?")]
	role := "keeper_" + db // roles are the server's, not the database's
	if err := srv.Psql(db, "CREATE ROLE "+role+" LOGIN PASSWORD 'right-horse-battery'; GRANT ALL ON SCHEMA public TO "+role); err != nil {
		t.Fatal(err)
	}
	// The server trusts its socket; a TCP-less server cannot ask for the
	// password, so what is checked here is that it is read and kept out
	// of the connection string and of errors.
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("right-horse-battery\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keeper := strings.Replace(loc, "user=hsmemu", "user="+role, 1)
	s, err := OpenDB(ctx, keeper, Options{Argon2: cheapArgon, PasswordFile: pw})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, bad := range []string{
		strings.Replace(keeper, "postgres://", "postgres://"+role+":right-horse-battery@", 1),
		keeper + "&password=right-horse-battery",
		"host=/tmp dbname=x password=right-horse-battery",
	} {
		_, err := OpenDB(ctx, bad, Options{Argon2: cheapArgon})
		if err == nil || !strings.Contains(err.Error(), "carries a password") || strings.Contains(err.Error(), "right-horse-battery") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := OpenDB(ctx, keeper, Options{Argon2: cheapArgon, PasswordFile: filepath.Join(t.TempDir(), "none")}); err == nil {
		t.Error("a missing password file was not an error")
	}
}
