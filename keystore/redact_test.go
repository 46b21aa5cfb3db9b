package keystore

import (
	"strings"
	"testing"
)

// TestRedactDB: a password is taken out of every kind of --db value and
// address, and out of a message quoting one; what names the database is
// kept.
func TestRedactDB(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://hsm:s3cret@db1,db2/keys?sslmode=verify-full", "postgres://hsm:xxxxx@db1,db2/keys?sslmode=verify-full"},
		{"postgres://hsm@db1/keys?password=s3cret&sslmode=require", "postgres://hsm@db1/keys?password=xxxxx&sslmode=require"},
		{"postgres://hsm@db1/keys?sslpassword=s3cret", "postgres://hsm@db1/keys?sslpassword=xxxxx"},
		{"host=db1 user=hsm password=s3cret dbname=keys", "host=db1 user=hsm password=xxxxx dbname=keys"},
		{"host=db1 password = 'se cret\\'s' dbname=keys", "host=db1 password = xxxxx dbname=keys"},
		// A quote never closed: the whole rest is the password.
		{"host=db1 dbname=keys password='se cret", "host=db1 dbname=keys password=xxxxx"},
		{"mysql://u@h/db?password=s3cret", "mysql://u@h/db?password=xxxxx"},
		{"sqlite://u:s3cret@host/x.db", "sqlite://u:xxxxx@host/x.db"},
		{"sqlite:file:/var/lib/k.db?_auth_user=u&_auth_pass=s3cret", "sqlite:file:/var/lib/k.db?_auth_user=u&_auth_pass=xxxxx"},
		{"tls://admin:s3cret@hsm1:7443", "tls://admin:xxxxx@hsm1:7443"},
		{`keystore: stat //u:s3cret@host/x.db: no such file or directory`, `keystore: stat //u:xxxxx@host/x.db: no such file or directory`},
		{`--server "tls://a:s3cret@h:1,tls://b:s3cret@h:2": want tls://HOST:PORT`, `--server "tls://a:xxxxx@h:1,tls://b:xxxxx@h:2": want tls://HOST:PORT`},
		// Nothing secret: unchanged.
		{"sqlite:/var/lib/hsmemu/keystore.db", "sqlite:/var/lib/hsmemu/keystore.db"},
		{"postgres://hsm@db1:5432/keys?target_session_attrs=read-write", "postgres://hsm@db1:5432/keys?target_session_attrs=read-write"},
		{"db1:5432/keys as hsm", "db1:5432/keys as hsm"},
		{"hsmemu secret set: give --in or a value on stdin", "hsmemu secret set: give --in or a value on stdin"},
		{"hsmemu token set: --so-pin-file: no such file", "hsmemu token set: --so-pin-file: no such file"},
	} {
		got := RedactDB(tc.in)
		if got != tc.want || strings.Contains(got, "s3cret") || strings.Contains(got, "se cret") {
			t.Errorf("RedactDB(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
