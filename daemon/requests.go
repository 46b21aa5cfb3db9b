package daemon

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/token"
	"hsmemu/internal/budget"
	"hsmemu/internal/reqid"
)

// Limits bound the memory the module's connections hold
// (docs/reliability.md, "Memory bounds").
//
// Each connection keeps buffers of connKeep bytes between calls, and
// serves requests and replies up to that size in them. A larger request
// first takes its length from the requests' half of the budget, then is
// read into a buffer of its own. A larger reply takes twice the longest
// results the request allows (wire.ResultsBound: the call's output, and
// its copy in the reply) from the replies' half before the call is
// served. Both are given back, and the buffers dropped, once the reply is
// written. A request longer than its call can need (wire.RequestBound) is
// refused before it is read. The two halves make waiting safe: a request
// that holds room in the one and waits for the other waits for replies,
// which are being written and never wait for anything.
type Limits struct {
	// MaxRequestData bounds the variable-length arguments of one request
	// together: the data of C_Encrypt, C_Sign, C_DigestUpdate and their
	// kin, templates, mechanism parameters. A longer request is skipped
	// unread and answered with its call's CK_RV for it
	// (token.Engine.Refuse). Zero means the protocol's own bound, a
	// frame of 16 MiB.
	MaxRequestData int
	// Budget is what the requests and replies of all connections may
	// hold in flight, half for each. Zero means DefaultBudget. A request
	// or reply larger than half of it is never served.
	Budget int64
	// BudgetWait is how long a request waits for room before it is
	// answered CKR_DEVICE_MEMORY. Zero means DefaultBudgetWait.
	BudgetWait time.Duration
}

const (
	// DefaultBudget holds four of the largest requests and four of the
	// largest replies at once.
	DefaultBudget = 128 << 20
	// DefaultBudgetWait is well within the module's call timeout (60 s).
	DefaultBudgetWait = 10 * time.Second
	// connKeep is what a connection keeps between calls for its requests
	// and its replies, besides its socket buffers (64 KiB each way).
	connKeep = 64 << 10
)

// limits are the server's bounds and budgets, shared by its connections.
type limits struct {
	bound    []int // by call id: the longest request body it can need
	requests *budget.Budget
	replies  *budget.Budget
	wait     time.Duration
}

func newLimits(l Limits) *limits {
	if l.Budget <= 0 {
		l.Budget = DefaultBudget
	}
	if l.BudgetWait <= 0 {
		l.BudgetWait = DefaultBudgetWait
	}
	half := l.Budget / 2
	if half < connKeep {
		half = connKeep
	}
	// A request the budget could never hold is refused for its size,
	// with its call's answer, rather than for want of memory.
	maxData := l.MaxRequestData
	if maxData <= 0 || maxData > wire.MaxFrame {
		maxData = wire.MaxFrame
	}
	if int64(maxData) > half {
		maxData = int(half)
	}
	lim := &limits{
		bound:    make([]int, len(calls.Table)+1),
		requests: budget.New(half),
		replies:  budget.New(half),
		wait:     l.BudgetWait,
	}
	for i := range calls.Table {
		c := &calls.Table[i]
		lim.bound[c.ID] = min(wire.RequestBound(c, maxData), int(half))
	}
	return lim
}

// boundOf returns the longest request body call id can need: 0 for a call
// the daemon does not serve, which takes no arguments.
func (l *limits) boundOf(id uint32) int {
	if int64(id) >= int64(len(l.bound)) {
		return 0
	}
	return l.bound[id]
}

// reserve takes n bytes of b for a connection, waiting at most the
// budget's wait; an error means the connection must close (the daemon is
// stopping), and ok false that the call is to be refused for want of
// memory.
func (l *limits) reserve(ctx context.Context, b *budget.Budget, n int) (ok bool, err error) {
	wctx, cancel := context.WithTimeout(ctx, l.wait)
	defer cancel()
	switch err := b.Acquire(wctx, int64(n)); {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	}
	return false, nil
}

// reserve takes n bytes of b, and first of the connection's identity's
// share when it has one; a call its identity's share could never hold is
// refused at once.
func (mc *moduleConn) reserve(ctx context.Context, b *budget.Budget, n int) (ok bool, err error) {
	l := mc.s.lim
	if mc.ident != nil {
		if int64(n) > mc.ident.Size() {
			return false, nil
		}
		if ok, err := l.reserve(ctx, mc.ident, n); !ok || err != nil {
			return ok, err
		}
	}
	ok, err = l.reserve(ctx, b, n)
	if !ok && mc.ident != nil {
		mc.ident.Release(int64(n))
	}
	return ok, err
}

// moduleConn is a module connection past its hello: the buffers it keeps
// between calls, and what it holds of the budgets during one.
type moduleConn struct {
	s       *Server
	app     *token.App
	pid     int32
	sayIdle bool // a version 1 module has no idle flag in its replies
	r       *bufio.Reader
	w       *bufio.Writer

	buf  []byte // request bodies up to connKeep, grown as needed
	out  []byte // reply headers
	args wire.Args
	res  *wire.Results

	// During a call: the request's and the reply's charges.
	reqHeld, repHeld int
	rid              *reqid.Slot // the call's request id, once it needs one

	// A remote connection's: its identity's share of the budget (nil:
	// none of its own), and the deadlines of its socket.
	ident *budget.Budget
	tc    *timedConn
}

// serveRequests serves a module connection's requests until it closes or
// the daemon stops.
func (s *Server) serveRequests(ctx context.Context, raw io.ReadWriter, app *token.App, pid int32, sayIdle bool) {
	s.serveModule(ctx, &moduleConn{s: s, app: app, pid: pid, sayIdle: sayIdle,
		r: newReader(raw), w: newWriter(raw)})
}

func newReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, connKeep) }
func newWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, connKeep) }

// serveModule is serveRequests for a connection made by its caller.
func (s *Server) serveModule(ctx context.Context, mc *moduleConn) {
	mc.res = &wire.Results{}
	defer mc.release()
	// A panic outside a call (in reading, decoding or answering a frame;
	// Server.call recovers its own) is a bug: it ends this connection,
	// not the daemon and every other client with it. A fault in a ring's
	// page goes on to serveConn, which says so.
	defer func() {
		if p := recover(); p != nil {
			if _, fault := p.(interface{ Addr() uintptr }); fault {
				panic(p)
			}
			s.log.Error("closing connection: internal error outside a call", "pid", mc.pid, "panic", fmt.Sprint(p))
		}
	}()
	// A call in flight runs to its end when the daemon stops (the loop
	// checks ctx between calls), and a context that cannot be cancelled
	// spares database/sql a watcher goroutine per query.
	// Its request id slot is cleared before each call and filled only by
	// a call that writes an audit record (internal/reqid).
	callCtx, rid := reqid.WithSlot(context.WithoutCancel(ctx))
	mc.rid = rid
	yielded := time.Now()
	for n := 1; ; n++ {
		if n%yieldCheck == 0 {
			// A goroutine that only ever blocks in system calls never
			// passes through the scheduler, so after 10 ms the runtime
			// treats it as hogging its P and takes the P at every
			// syscall, moving the connection between threads on each
			// request. Yielding now and then resets that clock.
			if now := time.Now(); now.Sub(yielded) >= yieldAfter {
				runtime.Gosched()
				yielded = now
			}
		}
		if mc.tc != nil {
			// Idle between requests; once one begins, it must keep
			// coming (timedConn).
			mc.tc.between()
			if _, err := mc.r.Peek(1); err != nil {
				mc.closing(err)
				return
			}
			mc.tc.inFrame()
		}
		if err := mc.serveNext(ctx, callCtx); err != nil {
			if !errors.Is(err, errReplyWrite) {
				mc.closing(err)
			}
			return
		}
		if ctx.Err() != nil {
			mc.w.Flush()
			return
		}
	}
}

// errReplyWrite wraps a failure to write a reply: the connection ends
// without a word, as the peer that stopped reading knows.
var errReplyWrite = errors.New("reply not written")

// serveNext reads one request, serves it and writes its reply, flushed
// when no other request is already buffered behind it (a deferred Init
// and its call come in one write, and their replies go out in one). An
// error ends the connection.
func (mc *moduleConn) serveNext(ctx, callCtx context.Context) error {
	head, err := wire.ReadRequestHead(mc.r)
	if err != nil {
		return err
	}
	code, results, idle, err := mc.serve(ctx, callCtx, head)
	if err != nil {
		return err
	}
	var rest []byte
	mc.out, rest = wire.AppendReplyHead(mc.out[:0], head.ID, code, results, idle)
	_, err = mc.w.Write(mc.out)
	if err == nil && rest != nil {
		_, err = mc.w.Write(rest)
	}
	if err == nil && mc.r.Buffered() == 0 {
		err = mc.w.Flush()
	}
	mc.release()
	if err != nil {
		return fmt.Errorf("%w: %w", errReplyWrite, err)
	}
	return nil
}

// closing logs why a connection closes, unless it is the usual end.
func (mc *moduleConn) closing(err error) {
	if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) && !isEOF(err) &&
		!errors.Is(err, syscall.EPIPE) && !errors.Is(err, context.Canceled) {
		mc.s.log.Warn("closing connection: bad frame", "pid", mc.pid, "err", err)
	}
}

// release gives back what the last call held of the budgets and drops the
// buffers that grew past what a connection keeps.
func (mc *moduleConn) release() {
	mc.args.Reset() // its values alias the request's body
	mc.res.Shrink(connKeep)
	if cap(mc.out) > connKeep {
		mc.out = nil
	}
	mc.s.lim.requests.Release(int64(mc.reqHeld))
	mc.s.lim.replies.Release(int64(mc.repHeld))
	mc.ident.Release(int64(mc.reqHeld + mc.repHeld))
	mc.reqHeld, mc.repHeld = 0, 0
}

// serve reads the body of the request whose head was read and serves it.
// An error means the connection must close.
func (mc *moduleConn) serve(ctx, callCtx context.Context, head wire.RequestHead) (code uint64, results []byte, idle bool, err error) {
	lim := mc.s.lim
	c, ok := calls.ByID(head.Call)
	if !ok || c.Mode != calls.Forwarded {
		c = nil
	}
	if head.BodyLen > lim.boundOf(head.Call) {
		mc.s.log.Debug("request refused: longer than its call can need", "pid", mc.pid, "call", head.Call, "bytes", head.BodyLen, "bound", lim.boundOf(head.Call))
		return mc.refuse(c, head, token.TooLarge)
	}
	body := mc.buf
	switch {
	case head.BodyLen > connKeep:
		ok, err := mc.reserve(ctx, lim.requests, head.BodyLen)
		if err != nil {
			return 0, nil, false, err
		}
		if !ok {
			mc.s.log.Debug("request refused: no memory for it", "pid", mc.pid, "call", head.Call, "bytes", head.BodyLen)
			return mc.refuse(c, head, token.NoMemory)
		}
		mc.reqHeld = head.BodyLen
		body = make([]byte, head.BodyLen)
	case cap(body) < head.BodyLen:
		mc.buf = make([]byte, min(max(head.BodyLen, 2*cap(body), 512), connKeep))
		body = mc.buf
	}
	req, err := wire.ReadRequestBody(mc.r, head, body)
	if err != nil {
		return 0, nil, false, err
	}
	if c == nil {
		return ck.CKR_FUNCTION_NOT_SUPPORTED, nil, false, nil
	}
	if err := mc.args.Decode(c, req.Body); err != nil {
		return ck.CKR_ARGUMENTS_BAD, nil, false, nil
	}
	// The reply's room, before the call makes it: twice the results,
	// which exist twice for a moment, as the call's output and as its
	// copy in the reply.
	if n := wire.ResultsBound(&mc.args); n > connKeep {
		n = int(min(2*int64(n), lim.replies.Size()))
		ok, err := mc.reserve(ctx, lim.replies, n)
		if err != nil {
			return 0, nil, false, err
		}
		if !ok {
			mc.s.log.Debug("request refused: no memory for its reply", "pid", mc.pid, "call", c.Name, "bytes", n)
			code = mc.s.eng.Refuse(mc.app, c, mc.session(c), token.NoMemory)
			mc.s.metrics.Refused(c.ID, code)
			return code, nil, mc.idle(c), nil
		}
		mc.repHeld = n
	}
	mc.rid.Reset()
	code, results, idle = mc.s.call(callCtx, mc.app, c, &mc.args, mc.res, mc.sayIdle)
	return code, results, idle, nil
}

// refuse answers a request without holding its arguments: it reads the
// session the call names, if any, skips the rest, and lets the engine
// answer.
func (mc *moduleConn) refuse(c *calls.Call, head wire.RequestHead, why token.Refusal) (uint64, []byte, bool, error) {
	if c == nil {
		return ck.CKR_FUNCTION_NOT_SUPPORTED, nil, false, wire.SkipRequestBody(mc.r, head.BodyLen)
	}
	skip := head.BodyLen
	var h uint64
	if calls.OnSession(c) && skip >= 8 {
		b, err := mc.r.Peek(8)
		if err != nil {
			return 0, nil, false, err
		}
		h = binary.BigEndian.Uint64(b)
	}
	if err := wire.SkipRequestBody(mc.r, skip); err != nil {
		return 0, nil, false, err
	}
	code := mc.s.eng.Refuse(mc.app, c, h, why)
	mc.s.metrics.Refused(c.ID, code)
	idle := false
	if mc.sayIdle && calls.OnSession(c) {
		idle = mc.app.SessionIdle(h)
	}
	return code, nil, idle, nil
}

// session returns the session the decoded call names (0 for none).
func (mc *moduleConn) session(c *calls.Call) uint64 {
	if calls.OnSession(c) {
		return mc.args.Ulong(0)
	}
	return 0
}

// idle is the reply's idle flag for a decoded call refused unserved.
func (mc *moduleConn) idle(c *calls.Call) bool {
	return mc.sayIdle && calls.OnSession(c) && mc.app.SessionIdle(mc.args.Ulong(0))
}

// call serves one decoded call, and with sayIdle says whether the session
// it named is idle after it. A panic in serving it is a bug: it is logged
// and answered CKR_GENERAL_ERROR, and the daemon goes on.
func (s *Server) call(ctx context.Context, app *token.App, c *calls.Call, args *wire.Args, res *wire.Results, sayIdle bool) (code uint64, results []byte, idle bool) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error serving a call", "call", c.Name, "panic", fmt.Sprint(p))
			code, results, idle = ck.CKR_GENERAL_ERROR, nil, false
		}
	}()
	res.Reset(c)
	if m := s.metrics; m != nil {
		// Read before the call: the arguments alias the request buffer,
		// which the call may not touch but the next request reuses.
		var mech uint64
		if i := m.MechanismArg(c.ID); i >= 0 {
			mech = args.Mechanism(i).Type
		}
		start := time.Now()
		code = s.eng.Dispatch(ctx, app, args, res)
		m.Call(c.ID, code, mech, time.Since(start))
	} else {
		code = s.eng.Dispatch(ctx, app, args, res)
	}
	if wire.HasResults(c, code) {
		results = res.Finish()
	}
	if sayIdle && onSession[c.ID] {
		var but calls.OpKinds
		if prefetched(c, args) {
			// The module holds the output and ends the operation itself.
			but = calls.RoleOf(c).Continues
		}
		idle = app.SessionIdleBut(args.Ulong(0), but)
	}
	return code, results, idle
}

// prefetched: the call asked for its whole result with a NULL buffer
// (calls.Prefetches): the reply's idle flag then leaves out the operation
// it continues, which the module ends itself, unless that operation goes
// on after the follow-up (an Update, calls.PrefetchGoesOn).
func prefetched(c *calls.Call, args *wire.Args) bool {
	if !calls.Prefetches(c) || calls.PrefetchGoesOn(c) {
		return false
	}
	for i, a := range c.Args {
		switch a.Kind {
		case calls.OutBytes:
			return args.Out(i).Prefetch
		case calls.OptOutBytes:
			spec, wanted := args.OptOut(i)
			return wanted && spec.Prefetch
		}
	}
	return false
}

// onSession[id]: call id's first argument is a session.
var onSession = func() []bool {
	on := make([]bool, len(calls.Table)+1)
	for i := range calls.Table {
		on[calls.Table[i].ID] = calls.OnSession(&calls.Table[i])
	}
	return on
}()
