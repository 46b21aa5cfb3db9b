package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/shmring"
	"hsmemu/cryptoki/unixfd"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/admin"
	"hsmemu/daemon/metrics"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// ServerConfig says who may connect, and how much memory they may hold.
type ServerConfig struct {
	// Group, when not negative, is the socket's group: the socket is then
	// 0660 and members of the group may connect. Otherwise it is 0600.
	Group int
	// AllowUIDs are the users allowed besides the daemon's own and root.
	AllowUIDs []uint32
	// Limits bound the memory connections hold (requests.go).
	Limits Limits
	// NoRings declines every module's ring offer (ring.go): the socket
	// carries all frames.
	NoRings bool
}

// Server accepts connections on a Unix socket: the module's, served by the
// token engine, and the administrator's, served by the admin handler.
type Server struct {
	eng   *token.Engine
	admin *admin.Handler
	log   *slog.Logger
	cfg   ServerConfig
	lim   *limits
	// metrics, when not nil, counts and times the calls (daemon.New sets it).
	metrics *metrics.Metrics

	mu       sync.Mutex
	stopping bool
	conns    map[*net.UnixConn]*fdConn // the raw side, once past the hello
	refused  map[uint32]int            // by uid, connections of users not allowed
	// strangers logs their refusals (refusalLog, server_tls.go).
	strangers refusalLog
	wg        sync.WaitGroup

	remote remoteConns // the TLS listener's (server_tls.go)
}

// NewServer returns a server for eng and adm.
func NewServer(eng *token.Engine, adm *admin.Handler, log *slog.Logger, cfg ServerConfig) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{eng: eng, admin: adm, log: log, cfg: cfg, lim: newLimits(cfg.Limits), conns: map[*net.UnixConn]*fdConn{},
		refused: map[uint32]int{}}
}

// connCount is how many connections the server holds.
func (s *Server) connCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
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
		// A user the daemon does not allow, who can reach the socket
		// all the same (its mode widened by hand), is
		// refused at its hello, which it may take 10 seconds to send:
		// it may hold maxRefusedConns connections meanwhile, not every
		// connection the daemon takes.
		stranger, uid := false, uint32(0)
		if cred, err := peer(c); err == nil && !s.allowed(c, cred) {
			stranger, uid = true, cred.Uid
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
		if stranger && s.refused[uid] >= maxRefusedConns {
			s.mu.Unlock()
			c.Close()
			continue
		}
		if stranger {
			s.refused[uid]++
		}
		s.conns[c] = nil
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			if stranger {
				if s.refused[uid]--; s.refused[uid] == 0 {
					delete(s.refused, uid)
				}
			}
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

// allowed says whether the peer may use the tokens: root, the daemon's
// own user, the users --allow-uid names, and the members of the socket's
// group (--socket-group), by the primary group SO_PEERCRED gives or a
// supplementary one, as they were when the peer connected.
func (s *Server) allowed(c *net.UnixConn, cred *syscall.Ucred) bool {
	if uid := cred.Uid; uid == 0 || uid == uint32(os.Getuid()) || slices.Contains(s.cfg.AllowUIDs, uid) {
		return true
	}
	if s.cfg.Group < 0 {
		return false
	}
	if cred.Gid == uint32(s.cfg.Group) {
		return true
	}
	groups, err := peerGroups(c)
	return err == nil && slices.Contains(groups, uint32(s.cfg.Group))
}

// peerGroups returns the connecting process's supplementary groups
// (SO_PEERGROUPS).
func peerGroups(c *net.UnixConn) ([]uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var groups []uint32
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		buf := make([]uint32, 32)
		for {
			n := uint32(len(buf) * 4)
			_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
				uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
			switch {
			case e == unix.ERANGE && n/4 > uint32(len(buf)) && n/4 <= maxPeerGroups:
				buf = make([]uint32, n/4) // n is the length needed
			case e != 0:
				gerr = e
				return
			default:
				groups = buf[:n/4]
				return
			}
		}
	}); err != nil {
		return nil, err
	}
	return groups, gerr
}

// maxPeerGroups is the kernel's NGROUPS_MAX.
const maxPeerGroups = 65536

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
		s.serveAdmin(ctx, c, keystore.AuditActor{UID: cred.Uid, PID: cred.Pid})
		return
	case hello.Flags != 0:
		reply.Status = wire.StatusRefused
		s.log.Warn("connection refused: unknown hello flags", "flags", hello.Flags, "pid", cred.Pid)
	case !s.allowed(c, cred):
		reply.Status = wire.StatusRefused
		s.strangers.note(s.log, slog.LevelWarn, "connection refused: user not allowed", "uid", cred.Uid, "pid", cred.Pid)
	default:
		var fresh, ok bool
		if app, fresh, ok = s.eng.AttachScoped(token.AppID(hello.AppID), cred.Pid, cred.Uid, nil, hello.Epoch); !ok {
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
	var ring *shmring.Ring
	var release func()
	if hello.Ring {
		if ring, release, err = s.takeRing(c, cred.Pid); err != nil {
			s.log.Debug("connection closed in its ring offer", "pid", cred.Pid, "err", err)
			return
		}
	}
	c.SetReadDeadline(time.Time{})
	raw, err := newFdConn(c)
	if err != nil {
		if ring != nil {
			ring.Close()
			release()
		}
		s.log.Warn("connection dropped", "pid", cred.Pid, "err", err)
		return
	}
	if ring != nil {
		ring.Watch(raw.fd)
		raw.ring, raw.release = ring, release
		// A page of the ring that faults (the module cannot shrink it,
		// but the kernel may still refuse a page) ends this connection,
		// not the daemon.
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if p := recover(); p != nil {
				s.log.Warn("closing connection: fault in its ring", "pid", cred.Pid, "err", fmt.Sprint(p))
			}
		}()
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
	s.serveRequests(ctx, raw, app, cred.Pid, hello.Version >= 2)
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
	// ring, when not nil, carries the frames (ring.go); release gives
	// its memory back to the budgets.
	ring    *shmring.Ring
	release func()

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

func (c *fdConn) Read(p []byte) (int, error) {
	if c.ring != nil {
		return c.ring.Read(p)
	}
	return unixfd.FD(c.fd).Read(p)
}

func (c *fdConn) Write(p []byte) (int, error) {
	if c.ring != nil {
		return c.ring.Write(p)
	}
	return unixfd.FD(c.fd).Write(p)
}

// stopReading ends a blocked read with EOF; replies still go out.
func (c *fdConn) stopReading() { c.shutdown(syscall.SHUT_RD) }

// cut ends a connection both ways, unblocking a stuck write.
func (c *fdConn) cut() { c.shutdown(syscall.SHUT_RDWR) }

// shutdown never touches a closed descriptor, whose number may already
// belong to another file, nor a ring already unmapped.
func (c *fdConn) shutdown(how int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	syscall.Shutdown(c.fd, how)
	if c.ring != nil {
		if how == syscall.SHUT_RD {
			c.ring.StopReading()
		} else {
			c.ring.Cut()
		}
	}
}

const (
	// A connection yields (requests.go) once yieldAfter has passed
	// since its last yield, well within the runtime's 10 ms, looking at
	// the clock every yieldCheck requests. A yield is not free: the
	// scheduler looks for other work and wakes an idle thread to spin
	// (the daemon keeps a P per connection besides the cores', so some
	// are idle), about 15 us, which yielding every 64 requests (a
	// millisecond at the fastest rate) made 9% of the daemon's CPU.
	yieldAfter = 3 * time.Millisecond
	yieldCheck = 16
	// maxConns bounds the connections the daemon serves at once.
	maxConns = 1024
	// maxRefusedConns bounds the connections of one user not allowed,
	// each on its way to be refused.
	maxRefusedConns = 16
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
	if c.ring != nil {
		c.ring.Close()
		c.release()
	}
	return syscall.Close(c.fd)
}

// isEOF reports a peer that went away, which is how connections end.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
