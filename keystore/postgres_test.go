package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hsmemu/internal/pgtest"
)

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

// TestPostgresFailover: a keystore on a primary with a synchronous
// streaming replica, the connection string naming both with
// target_session_attrs=read-write. The primary is crashed and the
// replica promoted while a writer stores keys: the writes during the
// switch fail and come back (none hangs), the Store finds the new primary
// by itself, and every write acknowledged before, during or after the
// switch is on the new primary.
func TestPostgresFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	pgServer.Get(t) // skips, or fails in CI, without PostgreSQL
	primary, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	replica, err := pgtest.StartReplica(primary)
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Stop()
	if err := primary.Psql("postgres", "CREATE DATABASE keys"); err != nil {
		t.Fatal(err)
	}
	both := fmt.Sprintf("host=%s,%s dbname=keys user=%s sslmode=disable target_session_attrs=read-write connect_timeout=5",
		primary.Dir, replica.Dir, pgtest.Superuser)
	s, _ := newStoreAt(t, both, Options{})
	if got, want := s.Storage().Location, primary.Dir+":5432,"+replica.Dir+":5432/keys as "+pgtest.Superuser; got != want {
		t.Errorf("location %q, want %q", got, want)
	}
	ti := newToken(t, s, "failover")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}

	acked := map[ObjectID][]byte{}
	failed := 0
	var slowest time.Duration
	put := func(i int) {
		c, cancel := context.WithTimeout(ctx, time.Minute) // a hang, not a slow call
		defer cancel()
		start := time.Now()
		defer func() { slowest = max(slowest, time.Since(start)) }()
		secret := []byte(fmt.Sprintf("secret of key %06d, 32 bytes...", i))
		obj, err := s.Put(c, ti.UUID, keyAttrs(t, fmt.Sprintf("k%d", i), true), secret)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("write %d hung", i)
		}
		if err != nil {
			failed++
			time.Sleep(20 * time.Millisecond)
			return
		}
		acked[obj.ID] = secret
	}
	i := 0
	for ; len(acked) < 40; i++ {
		put(i)
	}
	if err := primary.Crash(); err != nil {
		t.Fatal(err)
	}
	// Writes while no primary answers.
	for range 5 {
		put(i)
		i++
	}
	if err := replica.Promote(); err != nil {
		t.Fatal(err)
	}
	for before := len(acked); len(acked) < before+40 && i < 10000; i++ {
		put(i)
	}
	if failed == 0 {
		t.Fatal("no write failed while there was no primary: the switch was not seen")
	}
	s.Close()

	s2 := reopen(t, fmt.Sprintf("postgres:///keys?host=%s&user=%s&sslmode=disable", url.QueryEscape(replica.Dir), pgtest.Superuser), Options{})
	if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	for id, secret := range acked {
		obj, err := s2.Open(ctx, id)
		if err != nil || !bytes.Equal(obj.Secret, secret) {
			t.Fatalf("acknowledged object %d after the failover: %v", id, err)
		}
	}
	t.Logf("%d writes acknowledged across the failover, %d failed during it; the slowest call took %v", len(acked), failed, slowest)
}

// TestPostgresWriterConnectionLost: the writer's connection, ended by
// the server while it lay idle (its server process terminated, as a
// primary that goes leaves it), is found dead by the next write, which
// goes on a new connection instead of failing: the BEGIN that found it
// dead never reached a server. Through the daemons, it was the first
// write after a failover that failed.
func TestPostgresWriterConnectionLost(t *testing.T) {
	loc := pgServer.NewDatabase(t)
	s, _ := newStoreAt(t, loc, Options{})
	ti := newToken(t, s, "lost")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	eng := s.eng.(*postgresEngine)
	for i := range 3 {
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprintf("before-%d", i), true), []byte("0123456789abcdef")); err != nil {
			t.Fatal(err)
		}
		pid := eng.writerPID.Load()
		// Terminated, and waited for: its socket is closed before the
		// next write. The next write comes well within a second of the
		// last (database/sql pings a connection idle for longer before
		// it hands it out, and would find it dead that way).
		var gone bool
		if err := admin.QueryRow(ctx, "SELECT pg_terminate_backend($1, 5000)", int32(pid)).Scan(&gone); err != nil || !gone {
			t.Fatalf("terminate the writer's server process %d: %v %v", pid, gone, err)
		}
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprintf("after-%d", i), true), []byte("0123456789abcdef")); err != nil {
			t.Fatalf("the write after the writer's connection was lost: %v", err)
		}
		if now := eng.writerPID.Load(); now == pid {
			t.Fatalf("the write went on the terminated connection (server process %d)", pid)
		}
	}
}

// TestPostgresUnansweringHost: a host that takes the connection and never
// answers fails the open after the default connect timeout, instead of
// hanging it (and, after a failover, every call) for ever.
func TestPostgresUnansweringHost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, ".s.PGSQL.5432"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // listening, never accepting: the kernel's backlog takes the connection
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := OpenDB(context.Background(), "host="+dir+" dbname=keys user=nobody sslmode=disable", Options{Argon2: cheapArgon})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("opened a keystore on a host that never answered")
		}
		if took := time.Since(start); took < defaultConnectTimeout/2 {
			t.Fatalf("failed after %v, before the connect timeout: %v", took, err)
		}
	case <-time.After(6 * defaultConnectTimeout):
		t.Fatal("the open hangs on a host that never answers")
	}
}

// TestPostgresStatementDeadline: a server that stops answering while the
// keystore is open (every process of it stopped: the connections stay
// open, the kernel takes the bytes, nothing answers, as across a network
// partition) fails a write, a cold read and a find at the statement
// bound, with a deadline and not a cancellation (CKR_DEVICE_ERROR, not
// CKR_FUNCTION_CANCELED, to a client); once it answers again the same
// Store works, on connections made anew.
func TestPostgresStatementDeadline(t *testing.T) {
	srv := pgtest.StartT(t)
	loc, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const bound = 500 * time.Millisecond
	s, _ := newStoreAt(t, loc+"&connect_timeout=2", Options{StatementTimeout: bound, CacheEntries: -1})
	ti := newToken(t, s, "deadline")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func() error
	}{
		{"write", func() error {
			_, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k2", true), []byte("0123456789abcdef"))
			return err
		}},
		{"cold open", func() error { _, err := s.Open(ctx, obj.ID); return err }},
		{"find", func() error {
			_, err := s.Find(ctx, ti.UUID, Filter{Label: []byte("k"), IncludePrivate: true})
			return err
		}},
	}

	if err := srv.Freeze(); err != nil {
		t.Fatal(err)
	}
	frozen := true
	t.Cleanup(func() { // before the server's stop, which a frozen server would hold
		if frozen {
			srv.Thaw()
		}
	})
	for _, c := range calls {
		done := make(chan error, 1)
		go func() { done <- c.call() }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("%s: succeeded on a server that does not answer", c.name)
			}
			if errors.Is(err, context.Canceled) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s: %v, want a deadline", c.name, err)
			}
		case <-time.After(60 * bound): // far past the bound: hanging, not slow
			t.Fatalf("%s: still waiting on a server that does not answer", c.name)
		}
	}
	if err := srv.Thaw(); err != nil {
		t.Fatal(err)
	}
	frozen = false
	for _, c := range calls {
		if err := c.call(); err != nil {
			t.Fatalf("%s, once the server answers again: %v", c.name, err)
		}
	}
}
