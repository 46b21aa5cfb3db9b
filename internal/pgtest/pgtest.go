// Package pgtest starts a real PostgreSQL server for tests: Debian's
// binaries, a cluster made by initdb in a temporary directory, reachable
// only through a Unix socket in that directory, stopped and removed at the
// end. PostgreSQL refuses to run as root, so under root (as CI runs) the
// server runs as the postgres user the Debian package creates; otherwise
// as the tests' own user.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"hsmemu/internal/testenv"
)

// ErrMissing is Start's error when PostgreSQL is not installed.
var ErrMissing = errors.New("pgtest: PostgreSQL not found: install the Debian package postgresql")

// Superuser is the role initdb makes; the socket trusts it (the socket's
// directory is private to the server's user).
const Superuser = "hsmemu"

// Server is a running PostgreSQL cluster.
type Server struct {
	Dir    string // the temporary directory: data/, the socket, the log
	bin    string
	cred   *syscall.Credential // nil: run as ourselves
	n      atomic.Int64
	mu     sync.Mutex
	closed bool
}

// binDir finds the newest PostgreSQL installed under /usr/lib/postgresql,
// or initdb on PATH.
func binDir() (string, error) {
	vs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(vs, func(i, j int) bool {
		a, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(vs[i]))))
		b, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(vs[j]))))
		return a > b
	})
	if len(vs) > 0 {
		return filepath.Dir(vs[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrMissing
}

// Start makes a cluster in a new temporary directory and starts it.
func Start() (*Server, error) { return start("") }

// StartReplica starts a streaming replica of primary (pg_basebackup), in
// a temporary directory of its own; primary then commits only once the
// replica has the commit too (synchronous_standby_names), so that what a
// client saw committed survives a failover to it.
func StartReplica(primary *Server) (*Server, error) {
	if err := primary.Psql("postgres", "ALTER SYSTEM SET synchronous_standby_names = '*'"); err != nil {
		return nil, err
	}
	if err := primary.run("pg_ctl", "reload", "-D", primary.data()); err != nil {
		return nil, err
	}
	return start(primary.Dir)
}

// start makes a cluster (initdb, or a base backup of the primary whose
// directory is given) and starts it.
func start(primary string) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hsmemu-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: running as root, and there is no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if primary == "" {
		err = s.run("initdb", "-D", s.data(), "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	} else {
		// -R writes the replica's standby.signal and its primary_conninfo.
		err = s.run("pg_basebackup", "-h", primary, "-U", Superuser, "-D", s.data(), "-R", "-X", "stream", "--no-sync")
		if err == nil {
			// The copy has the primary's synchronous_standby_names: once
			// promoted, with no standby of its own, every commit would
			// wait for one for ever.
			err = s.runCmd(exec.Command("sh", "-c", "echo \"synchronous_standby_names = ''\" >> "+filepath.Join(s.data(), "postgresql.auto.conf")))
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// Only the socket: no TCP port to collide with other test binaries.
	opts := fmt.Sprintf("-k %s -c listen_addresses='' -c max_connections=200 -c shared_buffers=32MB", dir)
	if err := s.run("pg_ctl", "start", "-w", "-t", "120", "-D", s.data(), "-l", filepath.Join(dir, "server.log"), "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	return s, nil
}

// Crash stops the server at once, as a power cut would (pg_ctl stop -m
// immediate): no shutdown checkpoint, connections cut.
func (s *Server) Crash() error {
	return s.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", s.data())
}

// Freeze stops every process of the server with SIGSTOP, the postmaster
// first (so it starts no other): connections stay open and the kernel
// keeps accepting bytes, but nothing answers, as across a network
// partition. Thaw undoes it.
func (s *Server) Freeze() error { return s.signalAll(syscall.SIGSTOP) }

// Thaw lets a frozen server run again.
func (s *Server) Thaw() error { return s.signalAll(syscall.SIGCONT) }

func (s *Server) signalAll(sig syscall.Signal) error {
	b, err := os.ReadFile(filepath.Join(s.data(), "postmaster.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return fmt.Errorf("pgtest: postmaster.pid: %w", err)
	}
	pids := []int{pid}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so after ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(st)))
			pids = append(pids, child)
		}
	}
	if sig == syscall.SIGCONT {
		slices.Reverse(pids) // the children first, the postmaster last
	}
	var errs []error
	for _, p := range pids {
		if err := syscall.Kill(p, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Promote makes a replica the primary, and waits until it is.
func (s *Server) Promote() error {
	return s.run("pg_ctl", "promote", "-w", "-D", s.data())
}

func (s *Server) data() string { return filepath.Join(s.Dir, "data") }

func (s *Server) run(prog string, args ...string) error {
	return s.runCmd(exec.Command(filepath.Join(s.bin, prog), args...))
}

func (s *Server) runCmd(cmd *exec.Cmd) error {
	prog := filepath.Base(cmd.Path)
	cmd.Dir = s.Dir
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: %s: %w\n%s", prog, err, out)
	}
	return nil
}

// Stop stops the server and removes its directory.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if _, serr := os.Stat(filepath.Join(s.data(), "postmaster.pid")); serr == nil {
		err = s.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", s.data())
	}
	return errors.Join(err, os.RemoveAll(s.Dir))
}

// DSN is the connection string of database db on the server.
func (s *Server) DSN(db string) string {
	q := url.Values{}
	q.Set("host", s.Dir)
	q.Set("user", Superuser)
	q.Set("sslmode", "disable")
	return "postgres:///" + url.PathEscape(db) + "?" + q.Encode()
}

// NewDatabase creates an empty database and returns its connection string.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d", s.n.Add(1))
	if err := s.run("psql", "-X", "-q", "-h", s.Dir, "-U", Superuser, "-d", "postgres", "-c", "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return s.DSN(name), nil
}

// CopyDatabase copies the database dsn names into a new one, as a dump
// restored elsewhere would (pg_dump piped into psql), and returns the
// copy's connection string. The source may be in use.
func (s *Server) CopyDatabase(ctx context.Context, dsn string) (string, error) {
	dst, err := s.NewDatabase(ctx)
	if err != nil {
		return "", err
	}
	return dst, s.copy(ctx, dbName(dsn), dbName(dst))
}

// PutBack replaces the content of database dst (not in use) with a copy
// of database src, as someone restoring an older dump over it would.
func (s *Server) PutBack(ctx context.Context, src, dst string) error {
	if err := s.Psql(dbName(dst), "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		return err
	}
	return s.copy(ctx, dbName(src), dbName(dst))
}

// DBName is the name of the database a connection string of this
// package names, for Psql.
func DBName(dsn string) string { return dbName(dsn) }

func dbName(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}

func (s *Server) copy(ctx context.Context, src, dst string) error {
	pipe := fmt.Sprintf("set -o pipefail; %q -h %q -U %s -d %q | %q -X -q -v ON_ERROR_STOP=1 -h %q -U %s -d %q >/dev/null",
		filepath.Join(s.bin, "pg_dump"), s.Dir, Superuser, src, filepath.Join(s.bin, "psql"), s.Dir, Superuser, dst)
	return s.runCmd(exec.CommandContext(ctx, "bash", "-c", pipe))
}

// Psql runs statements on database db as the superuser.
func (s *Server) Psql(db, sql string) error {
	return s.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", s.Dir, "-U", Superuser, "-d", db, "-c", sql)
}

// StartT starts a server for one test, stopped when it ends; without
// PostgreSQL the test skips (fails under CI=true).
func StartT(t testing.TB) *Server {
	t.Helper()
	s, err := Start()
	if errors.Is(err, ErrMissing) {
		testenv.Missing(t, "%v", err)
	}
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// Shared is a server for a whole test binary, started on first use:
// call Shared.Stop from TestMain.
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Get returns the shared server, starting it on first use; without
// PostgreSQL the test skips (fails under CI=true).
func (sh *Shared) Get(t testing.TB) *Server {
	t.Helper()
	sh.once.Do(func() { sh.srv, sh.err = Start() })
	if errors.Is(sh.err, ErrMissing) {
		testenv.Missing(t, "%v", sh.err)
	}
	if sh.err != nil {
		t.Fatalf("PostgreSQL: %v", sh.err)
	}
	return sh.srv
}

// NewDatabase is Get followed by the server's NewDatabase.
func (sh *Shared) NewDatabase(t testing.TB) string {
	t.Helper()
	dsn, err := sh.Get(t).NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// Stop stops the server if it was started.
func (sh *Shared) Stop() {
	if sh.srv != nil {
		sh.srv.Stop()
	}
}
