package pgtest

import (
	"context"
	"database/sql"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"
)

var shared Shared

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Stop()
	os.Exit(code)
}

// A server that the tests start answers on its socket, gives each caller
// a database of its own, and commits durably.
func TestServer(t *testing.T) {
	a, b := shared.NewDatabase(t), shared.NewDatabase(t)
	if a == b {
		t.Fatalf("one database for two callers: %s", a)
	}
	db, err := sql.Open("pgx", a)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var fsync, sync string
	if err := db.QueryRowContext(context.Background(), "SELECT current_setting('fsync'), current_setting('synchronous_commit')").Scan(&fsync, &sync); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" || sync != "on" {
		t.Fatalf("fsync %s, synchronous_commit %s", fsync, sync)
	}
	if _, err := os.Stat(shared.Get(t).Dir + "/.s.PGSQL.5432"); err != nil {
		t.Fatalf("no socket in the server's directory: %v", err)
	}
}
