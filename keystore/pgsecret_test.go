package keystore

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestNoPasswordAsPgxReads: every connection string from which pgx
// would take a password is refused, net/url's opinion of it aside (it
// rejects a ^ in a password, and a list of hosts with their ports, that
// pgx takes and connects with).
func TestNoPasswordAsPgxReads(t *testing.T) {
	t.Setenv("PGPASSWORD", "")
	t.Setenv("PGPASSFILE", "/nonexistent")
	for _, db := range []string{
		"postgres://hsm:s3cret@db1/keys",
		"postgresql://hsm:s3cr^et@db1:5432/keys",
		"postgres://hsm:s3cr{et@db1/keys",
		`postgres://hsm:s3cr"et@db1/keys`,
		"postgres://hsm:s3cret@db1:5432,db2/keys",
		"postgres://hsm@db1/keys?sslmode=disable&password=s3cret",
		"postgres://hsm@db1/keys?pass%77ord=s3cret",
		"host=db1 dbname=keys password=s3cret",
	} {
		cfg, err := pgx.ParseConfig(db)
		if err != nil || cfg.Password == "" {
			t.Fatalf("%q: pgx takes no password from it (%v): the case tests nothing", db, err)
		}
		if err := noPassword(db); err == nil || !strings.Contains(err.Error(), "carries a password") {
			t.Errorf("noPassword(%q) = %v, want the refusal", db, err)
		}
	}
	for _, db := range []string{
		"postgres://hsm@db1:5432,db2:5432/keys?target_session_attrs=read-write",
		"postgres://hsm@db1/keys?sslpassword=s3cret&sslkey=/k.pem",
		"host=db1 dbname=keys user=hsm",
	} {
		if err := noPassword(db); err != nil {
			t.Errorf("noPassword(%q) = %v, want none", db, err)
		}
	}
}

// TestConnStringErrorsRedacted: pgx's errors for a connection string it
// cannot parse, or cannot connect with, become messages with no
// password in them, and those pgx gives without a wrapped error (an
// invalid port) are messages too, not a crash.
func TestConnStringErrorsRedacted(t *testing.T) {
	for _, tc := range []struct{ db, want string }{
		{"postgres://hsm@127.0.0.1:bad/keys?sslpassword=s3cret", "invalid port"},
		{"postgres://hsm@127.0.0.1:1,127.0.0.1:2,127.0.0.1/keys?port=1,2&sslpassword=s3cret", "cannot parse it"},
		{"postgres://hsm@127.0.0.1:1/keys?target_session_attrs=nope&sslpassword=s3cret", "target_session_attrs"},
		{"host=127.0.0.1 port=1 dbname=keys sslpassword='s3cret pw", "unterminated quoted string"},
		{"postgres://hsm@127.0.0.1:1/keys?sslpassword=s3c%zzret", "invalid percent-encoded"},
	} {
		_, err := pgConnConfig(tc.db, Options{})
		if err == nil || strings.Contains(err.Error(), "s3c") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pgConnConfig(%q) = %v, want an error naming %q without the password", tc.db, err, tc.want)
		}
	}
	// Nothing listens on port 1: pgx's connect error, as OpenDB returns it.
	_, err := OpenDB(context.Background(), "postgres://hsm@127.0.0.1:1/keys?sslmode=disable&sslpassword=s3cret", Options{Argon2: cheapArgon})
	if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), "connect") {
		t.Errorf("OpenDB on a port where nothing listens: %v, want a connect error without the password", err)
	}
}
