// Package e2e holds the end-to-end tests: the built module
// (bin/hsmemu-pkcs11.so) loaded by real clients, talking to the built daemon
// (bin/hsmemu serve) on a managed swtpm and SQLite on disk, or, for the
// cluster tests, PostgreSQL (cluster_test.go). `make test`
// builds both first. Without them, or without swtpm, the tests skip on a
// developer's machine and fail under CI=true.
package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"hsmemu/internal/testenv"
)

// paths of the built artefacts, found from the repository root.
type artefacts struct {
	root, module, asanModule, daemon string
}

func findArtefacts() (artefacts, error) {
	dir, err := os.Getwd()
	if err != nil {
		return artefacts{}, err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return artefacts{}, errors.New("no go.mod above the test's directory")
		}
		dir = parent
	}
	a := artefacts{
		root:       dir,
		module:     filepath.Join(dir, "bin", "hsmemu-pkcs11.so"),
		asanModule: filepath.Join(dir, "bin", "hsmemu-pkcs11-asan.so"),
		daemon:     filepath.Join(dir, "bin", "hsmemu"),
	}
	for _, p := range []string{a.module, a.daemon} {
		if _, err := os.Stat(p); err != nil {
			return a, fmt.Errorf("%s not built (run make build): %w", p, err)
		}
	}
	if _, err := exec.LookPath("swtpm"); err != nil {
		return a, fmt.Errorf("swtpm not installed: %w", err)
	}
	return a, nil
}

var (
	built    artefacts
	builtErr error
	findOnce sync.Once
)

// need returns the artefacts, or skips (fails under CI) without them.
func need(t testing.TB) artefacts {
	t.Helper()
	findOnce.Do(func() { built, builtErr = findArtefacts() })
	if builtErr != nil {
		testenv.Missing(t, "end-to-end prerequisites: %v", builtErr)
	}
	return built
}

// daemonProc is a running `hsmemu serve`.
type daemonProc struct {
	t    testing.TB
	bin  string
	dir  string
	sock string
	args []string
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan error
	// logs are the logs of every start, the last one log.
	logs []*lockedBuffer
}

// lockedBuffer is a daemon's output: written by the copy of its stdout and
// stderr while a failed test reads it to log it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startDaemon starts `hsmemu serve` on a fresh state directory with cheap
// PIN hashing and no failure delay, and waits until it answers.
func startDaemon(t testing.TB, extra ...string) *daemonProc {
	t.Helper()
	d := newDaemon(t, extra...)
	d.start()
	return d
}

// newDaemon is startDaemon without the start: the state directory is
// there, for a command (init, domain join) to prepare it first. The
// daemon is stopped when the test ends, once started.
func newDaemon(t testing.TB, extra ...string) *daemonProc {
	t.Helper()
	a := need(t)
	// Unix socket paths are short: keep the directory short too.
	dir, err := os.MkdirTemp("", "hse")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemonProc{t: t, bin: a.daemon, dir: dir, sock: filepath.Join(dir, "s")}
	d.args = append([]string{"serve", "--state-dir", dir, "--tpm", "managed", "--socket", d.sock,
		"--pin-kdf-time", "1", "--pin-kdf-memory", "64", "--pin-failure-delay", "0"}, extra...)
	t.Cleanup(d.stop)
	return d
}

func (d *daemonProc) start() {
	d.t.Helper()
	if err := d.tryStart(); err != nil {
		d.t.Fatal(err)
	}
}

// tryStart starts the daemon and waits until its socket answers; a daemon
// that exits first is an error carrying its log.
func (d *daemonProc) tryStart() error {
	d.log = &lockedBuffer{}
	d.logs = append(d.logs, d.log)
	d.cmd = exec.Command(d.bin, d.args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		return err
	}
	d.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(d.cmd, d.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-d.done:
			d.cmd = nil
			return fmt.Errorf("hsmemu serve exited: %v\n%s", err, d.log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hsmemu serve did not start listening\n%s", d.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the daemon with SIGTERM, as an administrator would.
func (d *daemonProc) stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		d.t.Errorf("hsmemu serve ignored SIGTERM\n%s", d.log)
	}
	d.cmd = nil
}

// kill ends the daemon with SIGKILL, as a crash would. Its managed swtpm
// exits by itself when the daemon's connection drops.
func (d *daemonProc) kill() {
	d.cmd.Process.Kill()
	<-d.done
	d.cmd = nil
}

// restart kills the daemon and starts it again on the same state.
func (d *daemonProc) restart() {
	d.t.Helper()
	d.kill()
	d.startAgain()
}

// startAgain starts a killed daemon again on the same state. The old
// daemon's managed swtpm leaves when it sees its connection drop; until it
// has, the new daemon finds the TPM in use and exits, and is retried.
func (d *daemonProc) startAgain() {
	d.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := d.tryStart()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lastLog is the log of the daemon's last start.
func (d *daemonProc) lastLog() string {
	if d.log == nil {
		return ""
	}
	return d.log.String()
}

// env is the environment a client of this daemon runs with.
func (d *daemonProc) env() []string {
	return append(os.Environ(), "HSMEMU_SOCKET="+d.sock)
}
