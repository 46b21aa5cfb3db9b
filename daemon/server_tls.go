package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/remote"
	"hsmemu/daemon/token"
	"hsmemu/internal/budget"
	"hsmemu/keystore"
)

// Remote clients: the module on another host reaches the daemon over TCP
// with mutual TLS 1.3 (docs/remote.md). After the handshake a connection
// speaks the same hello and frames as on the Unix socket; what differs is
// who the peer is (its certificate's identity, not a uid), what it sees
// (its identity's token.Scope), what it may hold (its identity's limits),
// and that a peer that stops half way is cut off.

// RemoteConfig is how the TLS listener serves.
type RemoteConfig struct {
	Certs *remote.Certs
	// Policy returns the policy in force (it may be reloaded).
	Policy func() *remote.Policy
	// Handshake bounds the TLS handshake and the hello together; Stall
	// how long a request or reply, once begun, may make no progress;
	// Idle how long a connection may wait between requests. Zero means
	// the defaults below.
	Handshake, Stall, Idle time.Duration
}

const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultStallTimeout     = 10 * time.Second
	// DefaultIdleTimeout: the module checks an idle connection before it
	// uses it (docs/protocol.md), so closing one costs it a dial.
	DefaultIdleTimeout = 10 * time.Minute
	// RemoteUID is the uid an application of a remote client is recorded
	// with (its audit records name its identity).
	RemoteUID = ^uint32(0)
)

// identState is what the daemon holds for one identity while it has
// connections: its scope (shared by its applications), its connection
// count and its share of the memory budget.
type identState struct {
	scope *token.Scope
	conns int
	mem   *budget.Budget
}

// remoteConns are the TLS connections being served, for Serve's stop.
type remoteConns struct {
	mu       sync.Mutex
	conns    map[*timedConn]struct{}
	idents   map[string]*identState
	refusals refusalLog
}

// refusalLog says in the daemon's log that connections of a kind were
// refused: at once for the first, then at most once every
// refusalLogEvery with the count in between ("refused"). Anyone who can
// reach the port can fail a handshake, a few thousand a second (and a
// user not allowed who reaches the socket, a hello), and a line each
// would flood the log (and journald, past its rate limit, would drop the
// daemon's other lines).
type refusalLog struct {
	last    atomic.Int64 // unix nanoseconds of the last line; 0 before the first
	pending atomic.Int64 // refusals since it
}

const refusalLogEvery = time.Minute

// note counts a refusal, and logs it with args when a line is due.
func (r *refusalLog) note(log *slog.Logger, level slog.Level, msg string, args ...any) {
	r.pending.Add(1)
	now := time.Now().UnixNano()
	last := r.last.Load()
	if last != 0 && now-last < int64(refusalLogEvery) || !r.last.CompareAndSwap(last, now) {
		return
	}
	log.Log(context.Background(), level, msg, append(args, "refused", r.pending.Swap(0))...)
}

// ServeTLS serves the TLS listener ln until ctx ends, as Serve serves the
// Unix socket: calls in flight finish, and after the grace period every
// connection is cut.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener, rc RemoteConfig) error {
	if rc.Handshake <= 0 {
		rc.Handshake = DefaultHandshakeTimeout
	}
	if rc.Stall <= 0 {
		rc.Stall = DefaultStallTimeout
	}
	if rc.Idle <= 0 {
		rc.Idle = DefaultIdleTimeout
	}
	rs := &s.remote
	rs.mu.Lock()
	if rs.conns == nil {
		rs.conns, rs.idents = map[*timedConn]struct{}{}, map[string]*identState{}
	}
	rs.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
		rs.mu.Lock()
		for c := range rs.conns {
			c.stop()
		}
		rs.mu.Unlock()
		time.Sleep(stopGrace)
		rs.mu.Lock()
		for c := range rs.conns {
			c.Close()
		}
		rs.mu.Unlock()
	}()
	var open atomic.Int64
	shaking := handshakes{byHost: map[string]int{}}
	for {
		c, err := ln.Accept()
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
		if open.Load() >= maxConns {
			s.log.Warn("remote connection refused: too many connections", "limit", maxConns, "from", c.RemoteAddr().String())
			c.Close()
			continue
		}
		host := hostOf(c.RemoteAddr())
		if !shaking.enter(host) {
			// Not logged at Warn: a flood would flood the log too.
			s.log.Debug("remote connection refused: too many handshakes under way", "from", c.RemoteAddr().String())
			c.Close()
			continue
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetKeepAlive(true)
			tc.SetKeepAlivePeriod(30 * time.Second)
			tc.SetNoDelay(true)
		}
		tc := &timedConn{Conn: tls.Server(c, rc.Certs.Config()), stall: rc.Stall, idle: rc.Idle}
		rs.mu.Lock()
		if ctx.Err() != nil {
			rs.mu.Unlock()
			c.Close()
			return nil
		}
		rs.conns[tc] = struct{}{}
		rs.mu.Unlock()
		open.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			var once sync.Once
			shaken := func() { once.Do(func() { shaking.leave(host) }) }
			defer shaken()
			s.serveTLSConn(ctx, tc, rc, shaken)
			tc.Close()
			rs.mu.Lock()
			delete(rs.conns, tc)
			rs.mu.Unlock()
		}()
	}
}

// serveTLSConn runs a connection's handshake and hello, then serves it;
// shaken is called once the handshake is over.
func (s *Server) serveTLSConn(ctx context.Context, tc *timedConn, rc RemoteConfig, shaken func()) {
	conn := tc.Conn.(*tls.Conn)
	from := conn.RemoteAddr().String()
	deadline := time.Now().Add(rc.Handshake)
	conn.SetDeadline(deadline)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	err := conn.HandshakeContext(hctx)
	cancel()
	shaken()
	if err != nil {
		// A refused certificate is the client's to fix: the module logs
		// the alert it got; the daemon says why at Info.
		s.remote.refusals.note(s.log, slog.LevelInfo, "remote connection refused at the TLS handshake", "from", from, "err", err)
		return
	}
	cs := conn.ConnectionState()
	ids := remote.Identities(cs.PeerCertificates[0])
	grant := rc.Policy().Lookup(ids)
	s.log.Debug("remote connection", "remote", grant.Identity, "from", from, "resumed", cs.DidResume)
	id, release, ok := s.remote.join(grant)
	if !ok {
		s.log.Warn("remote connection refused: the identity holds its limit of connections", "remote", grant.Identity, "limit", grant.Entry.Limits.Connections)
		// The hello is read, so that the refusal reaches the client as a
		// status rather than a reset.
		if h, err := wire.ReadHello(conn); err == nil {
			conn.Write(wire.HelloReply{Version: h.Version, Status: wire.StatusRefused}.Marshal())
		}
		return
	}
	defer release()
	hello, err := wire.ReadHello(conn)
	if err != nil {
		s.log.Info("remote connection closed before its hello", "remote", grant.Identity, "from", from, "err", err)
		return
	}
	reply := wire.HelloReply{Version: wire.Version, Status: wire.StatusOK}
	if hello.Version >= wire.MinVersion && hello.Version <= wire.Version {
		reply.Version = hello.Version
	}
	pid := int32(hello.PID)
	var app *token.App
	switch {
	case hello.Version < wire.MinVersion || hello.Version > wire.Version:
		reply.Status = wire.StatusVersion
	case hello.Flags == wire.FlagAdmin:
		if !grant.Entry.Admin {
			reply.Status = wire.StatusRefused
			s.log.Warn("remote admin connection refused: the identity is not an administrator", "remote", grant.Identity, "from", from)
		}
		if _, err := conn.Write(reply.Marshal()); err != nil || !reply.Accepted() {
			return
		}
		conn.SetDeadline(time.Time{})
		s.serveAdmin(ctx, tc, keystore.AuditActor{UID: RemoteUID, PID: pid, Remote: grant.Identity})
		return
	case hello.Flags != 0:
		reply.Status = wire.StatusRefused
		s.log.Warn("remote connection refused: unknown hello flags", "flags", hello.Flags, "remote", grant.Identity)
	default:
		var fresh bool
		if app, fresh, ok = s.eng.AttachScoped(token.AppID(hello.AppID), pid, RemoteUID, id.scope, hello.Epoch); !ok {
			reply.Status = wire.StatusRefused
			s.log.Warn("remote connection refused: application id of another process or identity", "remote", grant.Identity)
		} else if !fresh && hello.Version >= 2 {
			reply.Status = wire.StatusJoined
		}
	}
	if _, err := conn.Write(reply.Marshal()); err != nil || !reply.Accepted() {
		if app != nil {
			s.eng.Detach(app)
		}
		return
	}
	defer s.eng.Detach(app)
	conn.SetDeadline(time.Time{})
	if tc.stopped.Load() || ctx.Err() != nil {
		return
	}
	s.serveModule(ctx, &moduleConn{s: s, app: app, pid: pid, sayIdle: hello.Version >= 2,
		r: newReader(tc), w: newWriter(tc), ident: id.mem, tc: tc})
}

// join counts a connection of the granted identity in, updating what its
// scope sees from the policy in force, or refuses it over the identity's
// limit. release counts it out; the identity's state goes with its last
// connection (its applications, and so its sessions, went before).
func (rs *remoteConns) join(g remote.Grant) (_ *identState, release func(), ok bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	st := rs.idents[g.Identity]
	if st == nil {
		st = &identState{scope: token.NewScope(g.Identity), mem: budget.New(max(g.Entry.Limits.BytesInFlight, connKeep))}
		rs.idents[g.Identity] = st
	}
	tokens := g.Entry.Tokens
	if !g.Listed {
		tokens = nil // no entry: no tokens
	}
	st.scope.Grant(tokens, g.Entry.Admin, g.Entry.Limits.Sessions)
	if st.conns >= g.Entry.Limits.Connections {
		if st.conns == 0 {
			delete(rs.idents, g.Identity)
		}
		return nil, nil, false
	}
	st.conns++
	return st, func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		st.conns--
		if st.conns == 0 && rs.idents[g.Identity] == st {
			delete(rs.idents, g.Identity)
		}
	}, true
}

// timedConn is a remote connection's socket with deadlines: between
// requests it may wait up to idle; once a request has begun, each read
// and each write must make progress within stall, so a peer that stops
// half way through a frame (or stops reading its replies) is cut off, and
// what its call held of the budgets is given back.
type timedConn struct {
	net.Conn
	stall, idle time.Duration
	framing     atomic.Bool
	stopped     atomic.Bool
}

func (c *timedConn) between() { c.framing.Store(false) }
func (c *timedConn) inFrame() { c.framing.Store(true) }

func (c *timedConn) Read(p []byte) (int, error) {
	if c.stopped.Load() {
		return 0, net.ErrClosed
	}
	d := c.idle
	if c.framing.Load() {
		d = c.stall
	}
	c.SetReadDeadline(time.Now().Add(d))
	return c.Conn.Read(p)
}

func (c *timedConn) Write(p []byte) (int, error) {
	c.SetWriteDeadline(time.Now().Add(c.stall))
	return c.Conn.Write(p)
}

// stop ends a wait for the next request; a call in flight finishes and
// its reply goes out.
func (c *timedConn) stop() {
	c.stopped.Store(true)
	if !c.framing.Load() {
		c.SetReadDeadline(time.Now())
	}
}

// Connections in their TLS handshake have shown no certificate yet, so
// nothing but their address tells them apart: a host (an IPv4 address,
// or an IPv6 /64, which one machine usually holds whole) may have
// maxHandshakesPerHost under way, and all hosts together maxHandshakes,
// so that one that opens connections and never finishes them (each may
// take the handshake timeout) neither holds every slot of the listener
// nor keeps other hosts' clients out; past its share its connections are
// closed at once. A client's module dials one connection per thread that
// needs one, far below the share.
const (
	maxHandshakesPerHost = 64
	maxHandshakes        = maxConns / 2
)

// handshakes counts the connections in their handshake, by host.
type handshakes struct {
	mu     sync.Mutex
	all    int
	byHost map[string]int
}

func (h *handshakes) enter(host string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.all >= maxHandshakes || h.byHost[host] >= maxHandshakesPerHost {
		return false
	}
	h.all++
	h.byHost[host]++
	return true
}

func (h *handshakes) leave(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.all--
	if h.byHost[host]--; h.byHost[host] <= 0 {
		delete(h.byHost, host)
	}
}

// hostOf is the host a connection's handshake is counted against.
func hostOf(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String()
}
