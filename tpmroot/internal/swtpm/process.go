// Package swtpm starts and stops swtpm, the software TPM, and talks to it
// over its Unix socket. It is shared by tpmroot (the managed TPM) and
// tpmroot/tpmtest (swtpm for tests).
package swtpm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrMissing means no swtpm binary was found.
var ErrMissing = errors.New("swtpm not found")

// missingHint is wrapped around ErrMissing: the one thing the reader needs
// to do about it.
const missingHint = "install the Debian packages swtpm and swtpm-tools (apt-get install swtpm swtpm-tools)"

// ErrInUse means the state directory is already being served by a swtpm.
var ErrInUse = errors.New("swtpm state directory is in use")

// File names inside the state directory.
const (
	SocketName = "swtpm.sock" // data channel: TPM commands
	CtrlName   = "swtpm.ctrl" // swtpm's control channel (swtpm_ioctl); unused by hsmemu
	LogName    = "swtpm.log"  // swtpm's stdout and stderr
	lockName   = "hsmemu.lock"
	// swtpmLockName is the file swtpm itself locks (with a POSIX record
	// lock) while it owns the state directory.
	swtpmLockName = ".lock"
)

const (
	// maxSocketPath is the longest path a Unix socket address holds
	// (sun_path is 108 bytes with its terminating NUL).
	maxSocketPath = 107
	// maxLog is the size past which the log is truncated at the next start.
	maxLog = 1 << 20
	// defaultStartTimeout bounds the wait for swtpm's socket to appear.
	defaultStartTimeout = 10 * time.Second
)

// Config says where and how to run swtpm.
type Config struct {
	// Dir holds the TPM state, the sockets and the log. It is created 0700.
	Dir string
	// SearchPath is a PATH-style list of directories to look for swtpm in.
	// Empty means the process's PATH.
	SearchPath string
	// ExitOnDisconnect runs swtpm with --terminate: it exits when the first
	// client's connection closes. A managed TPM uses this so that swtpm
	// never outlives the process that started it, even one killed with
	// SIGKILL.
	ExitOnDisconnect bool
	// StartTimeout bounds the wait for the socket; zero means 10 s.
	StartTimeout time.Duration
	// KeyFile, when set, is the state key (statekey.go): swtpm keeps its
	// state encrypted under it. A state is opened with the key it was
	// encrypted under, and an unencrypted one with none.
	KeyFile string
}

// A Process is a running swtpm.
type Process struct {
	// SocketPath is the data channel's Unix socket.
	SocketPath string

	cmd     *exec.Cmd
	logPath string
	lock    *os.File
	done    chan struct{} // closed when the process has been waited for
	waitErr error         // valid after done is closed

	stopOnce sync.Once
	stopErr  error
}

// Start runs swtpm on cfg.Dir and returns it with an open connection to its
// data channel (the first one, which with ExitOnDisconnect decides swtpm's
// lifetime).
//
// Two swtpm processes must never share a state directory. swtpm's own lock
// refuses the second one, but only after it has set up its sockets, and on
// its way out the loser removes the socket files, leaving the running
// swtpm unreachable (seen with swtpm 0.7.1). So Start checks first: it
// holds a lock of its own (inherited by swtpm, so it is held for as long as
// either process lives) and looks for a holder of swtpm's lock; either one
// held gives ErrInUse and leaves everything as it was.
func Start(ctx context.Context, cfg Config) (_ *Process, _ *Conn, err error) {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, nil, fmt.Errorf("swtpm state directory: %w", err)
	}
	// swtpm's option syntax is key=value pairs separated by commas.
	if strings.ContainsAny(dir, ",\n") {
		return nil, nil, fmt.Errorf("swtpm state directory %q: swtpm cannot take a path with a comma", dir)
	}
	sock := filepath.Join(dir, SocketName)
	if len(filepath.Join(dir, CtrlName)) > maxSocketPath {
		return nil, nil, fmt.Errorf("swtpm state directory %s: path too long for a Unix socket (%d bytes at most); use a shorter state directory", dir, maxSocketPath-len("/"+CtrlName))
	}
	bin, err := lookPath(cfg.SearchPath)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating swtpm state directory: %w", err)
	}

	lock, err := lockDir(dir)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	if pid, held := swtpmLockHolder(dir); held {
		return nil, nil, fmt.Errorf("%w: swtpm process %d is serving %s; stop it, or use it with --tpm swtpm:unix:%s", ErrInUse, pid, dir, sock)
	}
	if cfg.KeyFile != "" {
		if err := CheckKeyFile(cfg.KeyFile, filepath.Dir(dir)); err != nil {
			return nil, nil, err
		}
	}
	if err := checkStateKey(dir, cfg.KeyFile); err != nil {
		return nil, nil, err
	}
	// No swtpm owns the directory, so socket files here are leftovers.
	for _, name := range []string{SocketName, CtrlName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("removing stale swtpm socket: %w", err)
		}
	}

	logPath := filepath.Join(dir, LogName)
	logf, err := openLog(logPath)
	if err != nil {
		return nil, nil, err
	}
	defer logf.Close() // the child has its own descriptor

	args := []string{"socket", "--tpm2",
		"--tpmstate", "dir=" + dir + ",mode=0600",
		"--server", "type=unixio,path=" + sock + ",mode=0600",
		"--ctrl", "type=unixio,path=" + filepath.Join(dir, CtrlName) + ",mode=0600",
		// The TPM is usable as soon as the socket is: no CMD_INIT on the
		// control channel, and swtpm sends TPM2_Startup(CLEAR) itself.
		"--flags", "not-need-init,startup-clear",
	}
	if cfg.ExitOnDisconnect {
		args = append(args, "--terminate")
	}
	if cfg.KeyFile != "" {
		args = append(args, keyArgs(cfg.KeyFile)...)
	}
	fmt.Fprintf(logf, "--- %s hsmemu: starting %s %s\n", time.Now().UTC().Format(time.RFC3339), bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// fd 3 in the child: our lock's open file description, so the lock
	// lasts as long as swtpm does, whatever happens to us.
	cmd.ExtraFiles = []*os.File{lock}
	// Its own process group: a Ctrl-C meant for us must not kill swtpm
	// before we have shut the TPM down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting swtpm: %w", err)
	}
	p := &Process{SocketPath: sock, cmd: cmd, logPath: logPath, lock: lock, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()

	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	conn, err := p.connect(ctx, timeout)
	if err != nil {
		p.Stop(2 * time.Second)
		return nil, nil, err
	}
	return p, conn, nil
}

// connect dials the data socket until swtpm has opened it, swtpm exits,
// the context ends or the timeout passes.
func (p *Process) connect(ctx context.Context, timeout time.Duration) (*Conn, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	delay := 5 * time.Millisecond
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", p.SocketPath)
		if err == nil {
			return NewConn(c, 0), nil
		}
		select {
		case <-p.done:
			if why := p.ExitReason(0); errors.Is(why, ErrWrongStateKey) {
				return nil, why
			}
			return nil, fmt.Errorf("swtpm exited before opening its socket (%v); the end of %s:\n%s", p.waitErr, p.logPath, p.LogTail())
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for swtpm's socket: %w", ctx.Err())
		case <-deadline.C:
			return nil, fmt.Errorf("swtpm did not open %s within %v: %w; the end of %s:\n%s", p.SocketPath, timeout, err, p.logPath, p.LogTail())
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// ExitReason waits up to wait for swtpm to exit and says why it did: nil
// while it runs; ErrWrongStateKey when it could not authenticate its
// encrypted state; otherwise its exit status and the end of its log.
func (p *Process) ExitReason(wait time.Duration) error {
	select {
	case <-p.done:
	default:
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			return nil
		}
	}
	tail := p.LogTail()
	this := tail // this start's lines: after the last line Start wrote
	if i := strings.LastIndex(tail, " hsmemu: starting "); i >= 0 {
		this = tail[i:]
	}
	if strings.Contains(this, "Verification of HMAC failed") {
		return ErrWrongStateKey
	}
	return fmt.Errorf("swtpm exited (%v); the end of %s:\n%s", p.waitErr, p.logPath, tail)
}

// Exited is closed once swtpm has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Pid is swtpm's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Kill kills swtpm with SIGKILL, as a crash would; nothing is saved.
// Tests use it.
func (p *Process) Kill() error { return p.cmd.Process.Kill() }

// ExitStatus says how swtpm exited ("signal: killed", "exit status 1"),
// once Exited is closed.
func (p *Process) ExitStatus() string {
	select {
	case <-p.done:
	default:
		return "running"
	}
	if p.waitErr == nil {
		return "exit status 0"
	}
	return p.waitErr.Error()
}

// Stop ends swtpm: SIGTERM, then SIGKILL if it has not exited within
// timeout. swtpm saves nothing on SIGTERM that it has not already saved;
// callers that want the TPM's state saved cleanly send TPM2_Shutdown first.
// Stop is idempotent and returns nil if swtpm had already exited.
func (p *Process) Stop(timeout time.Duration) error {
	p.stopOnce.Do(func() {
		defer p.lock.Close()
		select {
		case <-p.done:
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.stopErr = fmt.Errorf("stopping swtpm: %w", err)
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			p.stopErr = fmt.Errorf("swtpm did not exit within %v of SIGTERM and was killed", timeout)
		}
	})
	return p.stopErr
}

// LogTail returns the last lines of swtpm's log, for error messages.
func (p *Process) LogTail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	const tail = 2048
	if fi, err := f.Stat(); err == nil && fi.Size() > tail {
		if _, err := f.Seek(-tail, io.SeekEnd); err != nil {
			return "(log unreadable: " + err.Error() + ")"
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, tail))
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	return string(bytes.TrimSpace(b))
}

// lookPath finds the swtpm binary in search (PATH syntax), or in $PATH when
// search is empty.
func lookPath(search string) (string, error) {
	if search == "" {
		p, err := exec.LookPath("swtpm")
		if err != nil {
			return "", fmt.Errorf("%w: %s", ErrMissing, missingHint)
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(search) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, "swtpm")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrMissing, missingHint)
}

// lockDir takes hsmemu's lock on dir. The descriptor is close-on-exec as
// all Go descriptors are; Start hands it to swtpm explicitly.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening swtpm lock: %w", err)
	}
	// A swtpm that was just stopped may hold the lock a moment longer
	// (its exit and the release race with the caller's next start): give
	// it that moment before calling the directory in use.
	deadline := time.Now().Add(lockGrace)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("%w: a swtpm started by hsmemu is already serving %s", ErrInUse, dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// InUse reports whether a swtpm serves dir: hsmemu's lock on it is held
// (by the process that started one, and the swtpm itself) or swtpm's own
// lock is. It takes nothing for longer than the test of the lock.
func InUse(dir string) bool {
	if _, held := swtpmLockHolder(dir); held {
		return true
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// lockGrace is how long lockDir waits for a lock held by a swtpm that is
// on its way out.
const lockGrace = 2 * time.Second

// swtpmLockHolder reports whether a process holds swtpm's own lock on dir,
// and which. swtpm takes a POSIX write lock on dir/.lock; F_GETLK asks
// without taking anything.
func swtpmLockHolder(dir string) (pid int, held bool) {
	f, err := os.Open(filepath.Join(dir, swtpmLockName))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return 0, false
	}
	if lk.Type == syscall.F_UNLCK {
		return 0, false
	}
	return int(lk.Pid), true
}

// openLog opens swtpm's log for appending, starting it afresh once it has
// grown past maxLog.
func openLog(path string) (*os.File, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if fi, err := os.Stat(path); err == nil && fi.Size() > maxLog {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening swtpm log: %w", err)
	}
	return f, nil
}
