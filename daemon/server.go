package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/unixfd"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/admin"
	"hsmemu/daemon/token"
)

// ServerConfig says who may connect.
type ServerConfig struct {
	// Group, when not negative, is the socket's group: the socket is then
	// 0660 and members of the group may connect. Otherwise it is 0600.
	Group int
	// AllowUIDs are the users allowed besides the daemon's own and root.
	AllowUIDs []uint32
}

// Server accepts connections on a Unix socket: the module's, served by the
// token engine, and the administrator's, served by the admin handler.
type Server struct {
	eng   *token.Engine
	admin *admin.Handler
	log   *slog.Logger
	cfg   ServerConfig

	mu       sync.Mutex
	stopping bool
	conns    map[*net.UnixConn]*fdConn // the raw side, once past the hello
	wg       sync.WaitGroup
}

// NewServer returns a server for eng and adm.
func NewServer(eng *token.Engine, adm *admin.Handler, log *slog.Logger, cfg ServerConfig) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{eng: eng, admin: adm, log: log, cfg: cfg, conns: map[*net.UnixConn]*fdConn{}}
}

// Listen creates the socket at path, owner-only (or group-shared). A stale
// socket from a daemon that died is replaced; a live one is an error.
func Listen(path string, cfg ServerConfig) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon is serving %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	// Create it with no access for anyone but the owner, then open it up
	// to the group if asked: there is no moment when it is wider.
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if cfg.Group >= 0 {
		if err := os.Chown(path, -1, cfg.Group); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket group: %w", err)
		}
		if err := os.Chmod(path, 0o660); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket mode: %w", err)
		}
	}
	return ln, nil
}

// Serve accepts connections until ctx ends, then stops accepting, lets the
// calls in flight finish, and returns once every connection is closed.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	go func() {
		<-ctx.Done()
		s.eng.Interrupt()
		ln.Close()
		s.mu.Lock()
		s.stopping = true
		for c, raw := range s.conns {
			// Wake a connection blocked reading its next request; one
			// in the middle of a call finishes it first.
			c.SetReadDeadline(time.Now())
			if raw != nil {
				raw.stopReading()
			}
		}
		s.mu.Unlock()
		// A client that does not read its replies must not hold the
		// daemon up: after a grace period, its connection is cut.
		time.Sleep(stopGrace)
		s.mu.Lock()
		for c, raw := range s.conns {
			if raw != nil {
				raw.cut()
			} else {
				// An admin connection, or one still in its hello.
				c.Close()
			}
		}
		s.mu.Unlock()
	}()
	defer s.wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if ctx.Err() != nil {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		if len(s.conns) >= maxConns {
			// Each connection holds a thread while it waits: refuse more
			// than the daemon can hold.
			s.mu.Unlock()
			s.log.Warn("connection refused: too many connections", "limit", maxConns)
			c.Close()
			continue
		}
		s.conns[c] = nil
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// peer returns the connecting process's credentials.
func peer(c *net.UnixConn) (*syscall.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

func (s *Server) allowed(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Getuid()) || slices.Contains(s.cfg.AllowUIDs, uid)
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	cred, err := peer(c)
	if err != nil {
		s.log.Warn("connection refused: no peer credentials", "err", err)
		return
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello, err := wire.ReadHello(c)
	if err != nil {
		s.log.Debug("connection closed before its hello", "pid", cred.Pid, "err", err)
		return
	}
	reply := wire.HelloReply{Version: wire.Version, Status: wire.StatusOK}
	if hello.Version >= wire.MinVersion && hello.Version <= wire.Version {
		reply.Version = hello.Version // the version this connection speaks
	}
	var app *token.App
	switch {
	case hello.Version < wire.MinVersion || hello.Version > wire.Version:
		reply.Status = wire.StatusVersion
	case hello.Flags == wire.FlagAdmin:
		if !adminAllowed(cred.Uid) {
			reply.Status = wire.StatusRefused
			s.log.Warn("admin connection refused: only the daemon's user and root administer it", "uid", cred.Uid, "pid", cred.Pid)
		}
		if _, err := c.Write(reply.Marshal()); err != nil || !reply.Accepted() {
			return
		}
		s.serveAdmin(ctx, c, cred)
		return
	case hello.Flags != 0:
		reply.Status = wire.StatusRefused
		s.log.Warn("connection refused: unknown hello flags", "flags", hello.Flags, "pid", cred.Pid)
	case !s.allowed(cred.Uid):
		reply.Status = wire.StatusRefused
		s.log.Warn("connection refused: user not allowed", "uid", cred.Uid, "pid", cred.Pid)
	default:
		var fresh, ok bool
		if app, fresh, ok = s.eng.AttachConn(token.AppID(hello.AppID), cred.Pid, cred.Uid); !ok {
			reply.Status = wire.StatusRefused
			s.log.Warn("connection refused: application id of another process", "pid", cred.Pid)
		} else if !fresh && hello.Version >= 2 {
			reply.Status = wire.StatusJoined
		}
	}
	if _, err := c.Write(reply.Marshal()); err != nil || !reply.Accepted() {
		if app != nil {
			s.eng.Detach(app)
		}
		return
	}
	defer s.eng.Detach(app)
	// A version 1 module has no idle flag in its replies.
	sayIdle := hello.Version >= 2
	c.SetReadDeadline(time.Time{})
	raw, err := newFdConn(c)
	if err != nil {
		s.log.Warn("connection dropped", "pid", cred.Pid, "err", err)
		return
	}
	defer raw.Close()
	// Close the poller's descriptor: its epoll registration follows the
	// socket, not the descriptor, and would otherwise wake an idle thread
	// of the runtime for every request that arrives.
	c.Close()
	s.mu.Lock()
	stopping := s.stopping
	s.conns[c] = raw
	s.mu.Unlock()
	if stopping || ctx.Err() != nil {
		return
	}

	connProcs.add(1)
	defer connProcs.add(-1)
	r := bufio.NewReaderSize(raw, 64<<10)
	w := bufio.NewWriterSize(raw, 64<<10)
	// A call in flight runs to its end when the daemon stops (the loop
	// checks ctx between calls), and a context that cannot be cancelled
	// spares database/sql a watcher goroutine per query.
	callCtx := context.WithoutCancel(ctx)
	var buf, out []byte
	var args wire.Args
	res := &wire.Results{}
	for n := 1; ; n++ {
		if n%yieldEvery == 0 {
			// A goroutine that only ever blocks in system calls never
			// passes through the scheduler, so after 10 ms the runtime
			// treats it as hogging its P and takes the P at every
			// syscall, moving the connection between threads on each
			// request. Yielding now and then resets that clock.
			runtime.Gosched()
		}
		req, b, err := wire.ReadRequest(r, buf)
		buf = b
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) && !isEOF(err) && !errors.Is(err, syscall.EPIPE) {
				s.log.Warn("closing connection: bad frame", "pid", cred.Pid, "err", err)
			}
			return
		}
		code, results, idle := s.call(callCtx, app, req, &args, res, sayIdle)
		out = wire.AppendReplyIdle(out[:0], req.ID, code, results, idle)
		if _, err := w.Write(out); err != nil {
			return
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
		if ctx.Err() != nil {
			w.Flush()
			return
		}
	}
}

// fdConn does a connection's request and reply I/O with blocking system
// calls on its own file descriptor. A call then costs the daemon one read
// that the kernel wakes directly when the request arrives, and one write,
// instead of a trip through the runtime's network poller: that trip is most
// of what a Go server adds to a Unix-socket round trip. A connection blocked
// in read holds an OS thread, which the module's small connection pools
// keep few.
//
// The descriptor is a raw duplicate that the runtime never sees
// (unixfd.DupBlocking says why that matters).
type fdConn struct {
	fd int

	mu     sync.Mutex // orders Close against shutdowns from the stopper
	closed bool
}

func newFdConn(c *net.UnixConn) (*fdConn, error) {
	fd, err := unixfd.DupBlocking(c)
	if err != nil {
		return nil, err
	}
	return &fdConn{fd: fd}, nil
}

func (c *fdConn) Read(p []byte) (int, error)  { return unixfd.FD(c.fd).Read(p) }
func (c *fdConn) Write(p []byte) (int, error) { return unixfd.FD(c.fd).Write(p) }

// stopReading ends a blocked read with EOF; replies still go out.
func (c *fdConn) stopReading() { c.shutdown(syscall.SHUT_RD) }

// cut ends a connection both ways, unblocking a stuck write.
func (c *fdConn) cut() { c.shutdown(syscall.SHUT_RDWR) }

// shutdown never touches a closed descriptor, whose number may already
// belong to another file.
func (c *fdConn) shutdown(how int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		syscall.Shutdown(c.fd, how)
	}
}

const (
	// yieldEvery is how many requests a connection serves between
	// yields: about a millisecond at the fastest request rate.
	yieldEvery = 64
	// maxConns bounds the connections the daemon serves at once.
	maxConns = 1024
	// stopGrace is how long a stopping daemon waits for replies to be read.
	stopGrace = 5 * time.Second
)

func (c *fdConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return syscall.Close(c.fd)
}

// isEOF reports a peer that went away, which is how connections end.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// call decodes and serves one request, and with sayIdle says whether the
// session it named is idle after it. A panic in serving it is a bug: it
// is logged and answered CKR_GENERAL_ERROR, and the daemon goes on.
func (s *Server) call(ctx context.Context, app *token.App, req wire.Request, args *wire.Args, res *wire.Results, sayIdle bool) (code uint64, results []byte, idle bool) {
	c, ok := calls.ByID(req.Call)
	if !ok || c.Mode != calls.Forwarded {
		return ck.CKR_FUNCTION_NOT_SUPPORTED, nil, false
	}
	if err := args.Decode(c, req.Body); err != nil {
		return ck.CKR_ARGUMENTS_BAD, nil, false
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error serving a call", "call", c.Name, "panic", fmt.Sprint(p))
			code, results, idle = ck.CKR_GENERAL_ERROR, nil, false
		}
	}()
	res.Reset(c)
	code = s.eng.Dispatch(ctx, app, args, res)
	if wire.HasResults(c, code) {
		results = res.Finish()
	}
	if sayIdle && onSession[c.ID] {
		idle = app.SessionIdle(args.Ulong(0))
	}
	return code, results, idle
}

// onSession[id]: call id's first argument is a session.
var onSession = func() []bool {
	on := make([]bool, len(calls.Table)+1)
	for i := range calls.Table {
		on[calls.Table[i].ID] = calls.OnSession(&calls.Table[i])
	}
	return on
}()
