package bench

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hsmemu/cryptoki/shmring"
	"hsmemu/cryptoki/unixfd"
)

// The socket-roundtrip benchmark's server is this same binary, re-executed
// with echoEnv set to the socket it is to listen on. It runs in its own
// process, as the daemon does for the module.
const (
	// echoEnv carries the socket path: its presence makes the process the
	// echo server (see MaybeServeEcho).
	echoEnv = "HSMEMU_BENCH_ECHO"
	// echoParentEnv carries the pid of the process that started the
	// server, which must still be its parent when it starts.
	echoParentEnv = "HSMEMU_BENCH_ECHO_PARENT"

	// Frame sizes of C_GenerateRandom(32), as in cryptoki/e2e's bare
	// round trip: the request (length, id, call, session, length) and the
	// reply (length, id, rv, has-results, bytes).
	echoRequest = 4 + 4 + 4 + 8 + 8
	echoReply   = 4 + 4 + 8 + 1 + 4 + 32

	// echoYieldEvery is how many round trips each end makes between
	// yields to the scheduler, as the daemon's connections do (see
	// daemon/server.go): a goroutine that only ever blocks in system
	// calls otherwise has its P taken at every call.
	echoYieldEvery = 64

	// echoAcceptTimeout bounds the server's wait for its one connection.
	echoAcceptTimeout = time.Minute
	// echoStartTimeout bounds the client's wait for the server's socket.
	echoStartTimeout = 30 * time.Second
	// echoStopTimeout is how long the client waits for the server to
	// exit on its own after closing the connection, before killing it.
	echoStopTimeout = 5 * time.Second
)

// MaybeServeEcho makes this process the echo server of `hsmemu bench
// hotpath`'s socket-roundtrip benchmark when HSMEMU_BENCH_ECHO is set, and
// otherwise returns at once. As the server it listens on the Unix socket
// the variable names, serves one connection (blocking reads of 28 bytes,
// each answered by a blocking write of 53) and exits when the connection
// closes, or when the process that started it dies; it never returns.
//
// Call it first thing in main (and in TestMain of a test binary that runs
// Hotpath): Hotpath re-executes its own binary as the server.
func MaybeServeEcho() {
	sock, ok := os.LookupEnv(echoEnv)
	if !ok {
		return
	}
	serve := serveEcho
	if sock == echoTLS {
		serve = serveEchoTLS
	} else if rest, ok := strings.CutPrefix(sock, echoRing); ok {
		serve = serveEchoRing
		sock = rest
	}
	if err := serve(sock); err != nil {
		fmt.Fprintf(os.Stderr, "hsmemu bench echo server: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveEcho serves one connection on sock until it closes.
func serveEcho(sock string) error {
	fd, err := acceptEcho(sock)
	if err != nil {
		return err
	}
	defer fd.Close()
	req, rep := make([]byte, echoRequest), make([]byte, echoReply)
	for n := 1; ; n++ {
		if n%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		if err := fd.readFull(req); err != nil {
			return nil // the client closed the connection: done
		}
		if err := fd.writeFull(rep); err != nil {
			return nil
		}
	}
}

// acceptEcho listens on sock for the one connection of the process that
// started this one, and returns it as a blocking descriptor.
func acceptEcho(sock string) (*echoFd, error) {
	// The parent asked for SIGKILL at its death (Pdeathsig), but a parent
	// that died before the request took effect is not signalled: then
	// this process has been re-parented already.
	if want, err := strconv.Atoi(os.Getenv(echoParentEnv)); err != nil || os.Getppid() != want {
		return nil, fmt.Errorf("started by process %q, now the child of %d: not serving", os.Getenv(echoParentEnv), os.Getppid())
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	defer ln.Close() // removes the socket file
	if err := ln.SetDeadline(time.Now().Add(echoAcceptTimeout)); err != nil {
		return nil, err
	}
	c, err := ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	fd, err := echoBlockingFd(c)
	c.Close()
	return fd, err
}

// echoFd is a blocking socket descriptor that the runtime's poller never
// sees: reads and writes are plain system calls that block their thread.
type echoFd struct {
	fd     int
	closed bool
}

// echoBlockingFd duplicates c's descriptor in blocking mode, out of the
// runtime's poller (unixfd.DupBlocking); the caller closes c next.
func echoBlockingFd(c *net.UnixConn) (*echoFd, error) {
	fd, err := unixfd.DupBlocking(c)
	if err != nil {
		return nil, err
	}
	return &echoFd{fd: fd}, nil
}

func (f *echoFd) readFull(p []byte) error {
	_, err := io.ReadFull(unixfd.FD(f.fd), p)
	return err
}

func (f *echoFd) writeFull(p []byte) error {
	_, err := unixfd.FD(f.fd).Write(p)
	return err
}

func (f *echoFd) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	return syscall.Close(f.fd)
}

// echoClient is a connection to an echo server in a child process.
type echoClient struct {
	fd   *echoFd
	ring *shmring.Ring // the rings, once offered (echoring.go)
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	errs *echoStderr
	once sync.Once
}

// startEcho starts this binary as an echo server listening on sock and
// connects to it. On error nothing is left running.
func startEcho(sock string) (*echoClient, error) { return startEchoAs(sock, sock) }

// startEchoAs starts the echo server with mode as echoEnv's value (the
// socket, or echoRing and the socket) and connects to it at sock.
func startEchoAs(mode, sock string) (_ *echoClient, err error) {
	if _, ok := os.LookupEnv(echoEnv); ok {
		// This process was started as a server but did not call
		// MaybeServeEcho; starting another would recurse.
		return nil, fmt.Errorf("%s is set but this binary did not call bench.MaybeServeEcho at startup", echoEnv)
	}
	exe, xerr := os.Executable()
	if xerr != nil {
		exe = os.Args[0]
	}
	var args []string
	if testing.Testing() {
		// A test binary without the TestMain that routes to
		// MaybeServeEcho must not run its tests again.
		args = []string{"-test.run=^$", "-test.bench=^$"}
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), echoEnv+"="+mode, echoParentEnv+"="+strconv.Itoa(os.Getpid()))
	errs := &echoStderr{}
	cmd.Stderr = errs
	// The server exits when the connection closes, which the kernel does
	// when this process dies; Pdeathsig also covers a death before the
	// connection is made. (It is sent when the thread that started the
	// child exits, which for a Go program is the process exiting, unless
	// the calling goroutine locked its thread and ends without unlocking.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start echo server: %w", err)
	}
	e := &echoClient{cmd: cmd, done: make(chan struct{}), errs: errs}
	go func() {
		cmd.Wait()
		close(e.done)
	}()
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	deadline := time.Now().Add(echoStartTimeout)
	for {
		c, derr := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if derr == nil {
			e.fd, err = echoBlockingFd(c)
			c.Close()
			if err != nil {
				return nil, err
			}
			return e, nil
		}
		select {
		case <-e.done:
			return nil, fmt.Errorf("echo server exited before listening (%v; does the binary call bench.MaybeServeEcho first thing?): %s", cmd.ProcessState, errs.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("echo server: no socket at %s after %v: %v", sock, echoStartTimeout, derr)
		}
	}
}

// roundTrips makes n request and reply round trips.
func (e *echoClient) roundTrips(n int, req, rep []byte) error {
	if e.ring != nil {
		return e.ringTrips(n, req, rep)
	}
	for i := 1; i <= n; i++ {
		if i%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		if err := e.fd.writeFull(req); err != nil {
			return fmt.Errorf("echo: write: %w", err)
		}
		if err := e.fd.readFull(rep); err != nil {
			return fmt.Errorf("echo: read: %w", err)
		}
	}
	return nil
}

// Close closes the connection, which ends the server, and waits for it to
// exit; a server that does not exit in time is killed. It returns an error
// when the server did not exit cleanly.
func (e *echoClient) Close() error {
	var err error
	e.once.Do(func() {
		if e.fd == nil {
			// Not connected: the server may be waiting to accept.
			e.cmd.Process.Kill()
			<-e.done
			return
		}
		e.fd.Close()
		if e.ring != nil {
			// The server, waiting on the ring, sees the socket's end
			// within one wait slice.
			defer e.ring.Close()
		}
		t := time.NewTimer(echoStopTimeout)
		defer t.Stop()
		select {
		case <-e.done:
		case <-t.C:
			e.cmd.Process.Kill()
			<-e.done
		}
		if st := e.cmd.ProcessState; !st.Success() {
			err = fmt.Errorf("echo server: %v: %s", st, e.errs.String())
		}
	})
	return err
}

// echoStderr keeps the start of the server's error output.
type echoStderr struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *echoStderr) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if room := 4096 - s.buf.Len(); room > 0 {
		s.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (s *echoStderr) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(bytes.TrimSpace(s.buf.Bytes()))
}
