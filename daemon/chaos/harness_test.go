package chaos

import (
	"bufio"
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3" // the keystore's driver, for integrity_check

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/internal/testenv"
)

// chaosOnly skips a test unless HSMEMU_CHAOS is set: these tests take
// minutes and run from `make test-chaos`, not from `go test ./...`.
func chaosOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("HSMEMU_CHAOS") == "" {
		t.Skip("a chaos test: run with make test-chaos (HSMEMU_CHAOS=1)")
	}
}

// envInt reads a positive integer knob, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// daemonBin returns bin/hsmemu, or ends the test as testenv.Missing says
// when it is not built or swtpm is not installed.
func daemonBin(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			binErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				binErr = errors.New("no go.mod above the test's directory")
				return
			}
			dir = parent
		}
		binPath = filepath.Join(dir, "bin", "hsmemu")
		if _, err := os.Stat(binPath); err != nil {
			binErr = fmt.Errorf("%s not built (run make build): %w", binPath, err)
		}
	})
	if binErr != nil {
		testenv.Missing(t, "the built daemon: %v", binErr)
	}
	testenv.Command(t, "swtpm", "swtpm and swtpm-tools")
	return binPath
}

// daemon is a `hsmemu serve` process, started, killed and started again
// on one state directory. Its output from every start goes to one log
// file outside the state directory.
type daemon struct {
	t       *testing.T
	bin     string
	dir     string // the state directory
	sock    string
	logPath string
	args    []string
	env     []string // added to the test's environment

	cmd  *exec.Cmd
	done chan error
	// starts counts successful starts; retries, the starts that found the
	// managed swtpm of the killed daemon still leaving and were made again.
	starts, retries int
}

// newDaemon prepares a daemon on dir (a new short temporary directory
// when empty: Unix socket paths are short) with cheap PIN hashing and no
// failure delay. It is stopped when the test ends.
func newDaemon(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	bin := daemonBin(t)
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "hsc"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	d := &daemon{t: t, bin: bin, dir: dir, sock: filepath.Join(dir, "s"), logPath: filepath.Join(t.TempDir(), "daemon.log")}
	d.args = append([]string{"serve", "--state-dir", dir, "--tpm", "managed", "--socket", d.sock,
		"--pin-kdf-time", "1", "--pin-kdf-memory", "64", "--pin-failure-delay", "0"}, extra...)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("the end of the daemon's log:\n%s", d.logTail(60))
		}
	})
	return d
}

// start starts the daemon and waits until its socket answers. A daemon
// that exits at once because the managed swtpm of a killed one is still
// on its way out (the TPM is in use) is started again, within a generous
// deadline: a hang guard, not a measure.
func (d *daemon) start() {
	d.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := d.tryStart()
		if err == nil {
			d.starts++
			return
		}
		if !strings.Contains(err.Error(), "in use") || time.Now().After(deadline) {
			d.t.Fatalf("start %d: %v\nthe end of the daemon's log:\n%s", d.starts+1, err, d.logTail(40))
		}
		d.retries++
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *daemon) tryStart() error {
	logf, err := os.OpenFile(d.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- chaos: start %d\n", d.starts+1)
	cmd := exec.Command(d.bin, d.args...)
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The socket of a killed daemon stays on disk: only an answer
		// to a hello says this daemon is up.
		if s, _, err := wiretest.Dial(d.sock, wiretest.NewApp(), wire.Version); err == nil {
			s.Close()
			d.cmd, d.done = cmd, done
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("hsmemu serve exited: %v: %s", err, d.lastLine())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			return errors.New("hsmemu serve did not answer within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends the daemon with SIGKILL, as a crash does.
func (d *daemon) kill() {
	d.t.Helper()
	if d.cmd == nil {
		d.t.Fatal("kill of a daemon not running")
	}
	d.cmd.Process.Kill()
	<-d.done
	d.cmd = nil
}

// stop ends the daemon with SIGTERM, as an administrator does.
func (d *daemon) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("hsmemu serve ignored SIGTERM for 30 s")
	}
	d.cmd = nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// rssKiB reads the daemon's resident set from /proc/PID/status, which
// stays readable while the daemon is not dumpable.
func (d *daemon) rssKiB() int64 {
	d.t.Helper()
	v, err := procStatus(d.pid(), "VmRSS")
	if err != nil {
		d.t.Fatal(err)
	}
	return v
}

// procStatus reads a "kB" or count field of /proc/PID/status.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// swtpmPID finds the daemon's managed swtpm: its child named swtpm.
func (d *daemon) swtpmPID() (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.HasSuffix(s[:i], "(swtpm") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[0] != "Z" && f[1] == strconv.Itoa(d.pid()) {
			return pid, nil
		}
	}
	return 0, errors.New("the daemon has no swtpm child")
}

// log returns the daemon's log, every start of it.
func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

func (d *daemon) logTail(lines int) string {
	l := strings.Split(strings.TrimRight(d.log(), "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}

func (d *daemon) lastLine() string { return d.logTail(1) }

// logLines returns the log's lines that contain every one of words.
func (d *daemon) logLines(words ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(d.log()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(sc.Text(), w)
		}
		if ok {
			out = append(out, sc.Text())
		}
	}
	return out
}

// integrityCheck runs SQLite's integrity and foreign key checks on the
// keystore through a read-only connection: between a kill and the next
// start, it sees the file exactly as the crash left it (its WAL
// included), and changes nothing.
func integrityCheck(path string) error {
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	var res []string
	rows, err := db.Query("PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return err
		}
		res = append(res, s)
	}
	rows.Close()
	if len(res) != 1 || res[0] != "ok" {
		return fmt.Errorf("integrity_check: %q", res)
	}
	rows, err = db.Query("PRAGMA foreign_key_check")
	if err != nil {
		return fmt.Errorf("foreign_key_check: %w", err)
	}
	defer rows.Close()
	if rows.Next() {
		return errors.New("foreign_key_check: rows that refer to nothing")
	}
	return rows.Err()
}

// conn is a client application of the daemon that reports broken
// exchanges as errors instead of failing the test: the daemon may be
// killed under it.
type conn struct {
	s *wiretest.Socket
	*wiretest.Conn
}

func dial(sock string) (*conn, error) {
	s, _, err := wiretest.Dial(sock, wiretest.NewApp(), wire.Version)
	if err != nil {
		return nil, err
	}
	return &conn{s: s, Conn: wiretest.NewConn(s)}, nil
}

func (c *conn) Close() { c.s.Close() }

// rvErr is a call's CK_RV other than CKR_OK, as an error.
type rvErr struct {
	call string
	rv   uint64
}

func (e rvErr) Error() string { return fmt.Sprintf("%s: %v", e.call, ck.Error(e.rv)) }

// isRV reports whether err is the CK_RV rv (not a broken exchange).
func isRV(err error, rv uint64) bool {
	var e rvErr
	return errors.As(err, &e) && e.rv == rv
}

// do makes a call that must return CKR_OK: another CK_RV is an rvErr, a
// broken exchange any other error.
func (c *conn) do(name string, vals ...wire.Value) ([]wire.Value, error) {
	rv, out, err := c.Call(name, vals...)
	if err != nil {
		return nil, err
	}
	if rv != ck.CKR_OK {
		return nil, rvErr{name, rv}
	}
	return out, nil
}

// session opens a read-write session on slot and logs the user in (the
// application may be logged in already).
func (c *conn) session(slot uint64) (uint64, error) {
	out, err := c.do("C_OpenSession", wiretest.U(slot), wiretest.U(ck.CKF_SERIAL_SESSION|ck.CKF_RW_SESSION),
		wiretest.None(), wiretest.None(), wiretest.None())
	if err != nil {
		return 0, err
	}
	h := out[4].Ulong
	if _, err := c.do("C_Login", wiretest.U(h), wiretest.U(ck.CKU_USER), wiretest.S(wiretest.UserPIN)); err != nil && !isRV(err, ck.CKR_USER_ALREADY_LOGGED_IN) {
		return 0, err
	}
	return h, nil
}

// find returns every object of the session's view matching attrs.
func (c *conn) find(h uint64, attrs ...wire.Attribute) ([]uint64, error) {
	if _, err := c.do("C_FindObjectsInit", wiretest.U(h), wiretest.T(attrs...)); err != nil {
		return nil, err
	}
	var all []uint64
	for {
		out, err := c.do("C_FindObjects", wiretest.U(h), wiretest.U(256))
		if err != nil {
			return nil, err
		}
		if len(out[1].Ulongs) == 0 {
			break
		}
		all = append(all, out[1].Ulongs...)
	}
	_, err := c.do("C_FindObjectsFinal", wiretest.U(h))
	return all, err
}

// get reads attributes of an object; each must be there. The values are
// copies: a reply's bytes live in the socket's buffer until the next call.
func (c *conn) get(h, obj uint64, types ...uint64) ([][]byte, error) {
	qs := make([]wire.Query, len(types))
	for i, t := range types {
		qs[i] = wire.Query{Type: t, Present: true, Capacity: 4096}
	}
	out, err := c.do("C_GetAttributeValue", wiretest.U(h), wiretest.U(obj), wiretest.Q(qs...))
	if err != nil {
		return nil, err
	}
	vals := make([][]byte, len(types))
	for i, a := range out[2].Answers {
		vals[i] = bytes.Clone(a.Value)
	}
	return vals, nil
}

// hmacSign signs data with CKM_SHA256_HMAC.
func (c *conn) hmacSign(h, key uint64, data []byte) ([]byte, error) {
	if _, err := c.do("C_SignInit", wiretest.U(h), wiretest.M(ck.CKM_SHA256_HMAC), wiretest.U(key)); err != nil {
		return nil, err
	}
	out, err := c.do("C_Sign", wiretest.U(h), wiretest.B(data), wiretest.Out(64))
	if err != nil {
		return nil, err
	}
	return bytes.Clone(out[2].Bytes), nil
}

// newToken makes a token with the user PIN wiretest.UserPIN through a
// client that must not fail, and returns its slot.
func newToken(t *testing.T, sock, label string) uint64 {
	t.Helper()
	cl := wiretest.DialClient(t, sock)
	return cl.NewToken(label)
}

// unaudited lists the objects of the keystore at path (live or deleted)
// that have no audit record of their creation: the audit log is appended
// with the write it records, so none should be missing, whatever a crash
// or a full disk interrupted. It reads through a read-only connection.
func unaudited(path string) ([]string, error) {
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	created := map[string]bool{}
	rows, err := db.Query(`SELECT coalesce(json_extract(detail, '$.object'), '') FROM audit_log
		WHERE event IN ('key.import', 'key.generate', 'object.create')`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var uuid string
		if err := rows.Scan(&uuid); err != nil {
			rows.Close()
			return nil, err
		}
		created[uuid] = true
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	rows, err = db.Query(`SELECT lower(hex(uuid)), coalesce(label, '') FROM objects`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var uuid, label string
		if err := rows.Scan(&uuid, &label); err != nil {
			return nil, err
		}
		if !created[uuid] {
			out = append(out, label+" ("+uuid+")")
		}
	}
	return out, rows.Err()
}
