package moduletest

import (
	"bufio"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/wire"
)

// Req is one decoded request as the peer's handler sees it.
type Req struct {
	Call  *calls.Call
	Args  *wire.Args // nil when the arguments did not decode
	Hello wire.Hello // the hello of the connection it came on
	Conn  int        // the connection's number, from 1
}

// Resp is the handler's answer. Results nil sends no results. Close closes
// the connection instead of answering; Raw, when set, is written as is
// instead of a reply.
type Resp struct {
	RV      uint64
	Results []byte
	Close   bool
	Raw     []byte
}

// Handler answers one request.
type Handler func(Req) Resp

// Peer is a fake daemon listening on a Unix socket.
type Peer struct {
	Path string

	ln     *net.UnixListener
	handle Handler
	status uint16 // hello status to answer
	newest uint16 // the newest protocol version it speaks; 0: wire.Version
	mute   bool   // never answer a hello

	mu     sync.Mutex
	hellos []wire.Hello
	open   map[net.Conn]bool
	wg     sync.WaitGroup
}

// Listen starts a peer in a temporary directory; it stops with the test.
func Listen(t testing.TB, h Handler) *Peer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hsmemu.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	p := &Peer{Path: path, ln: ln, handle: h, open: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

// Refuse makes the peer answer every hello with status s (wire.StatusRefused).
func (p *Peer) Refuse(s uint16) {
	p.mu.Lock()
	p.status = s
	p.mu.Unlock()
}

// Hellos returns the hellos received so far, one per connection.
// Mute makes the peer read hellos and never answer them, as a daemon
// that hangs.
func (p *Peer) Mute() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mute = true
}

// SpeakUpTo makes the peer answer a hello of a later version than v as a
// daemon of version v does: version not supported.
func (p *Peer) SpeakUpTo(v uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.newest = v
}

func (p *Peer) Hellos() []wire.Hello {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]wire.Hello(nil), p.hellos...)
}

// DropAll closes every open connection, as a daemon that exits does.
func (p *Peer) DropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.open {
		c.Close()
	}
}

// Close stops the peer and waits for its connections to end.
func (p *Peer) Close() {
	p.ln.Close()
	p.DropAll()
	p.wg.Wait()
}

func (p *Peer) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.open[c] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go p.conn(c)
	}
}

func (p *Peer) conn(c net.Conn) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
		c.Close()
	}()
	h, err := wire.ReadHello(c)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.hellos = append(p.hellos, h)
	n := len(p.hellos)
	status, newest, mute := p.status, p.newest, p.mute
	p.mu.Unlock()
	if mute {
		io.Copy(io.Discard, c) // until the client gives up and closes
		return
	}
	if newest == 0 {
		newest = wire.Version
	}
	version := h.Version
	if version > newest {
		version, status = newest, wire.StatusVersion
	}
	if _, err := c.Write(wire.HelloReply{Version: version, Status: status}.Marshal()); err != nil || status != wire.StatusOK {
		return
	}
	r := bufio.NewReader(c)
	var buf []byte
	for {
		var q wire.Request
		q, buf, err = wire.ReadRequest(r, buf)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
		call, ok := calls.ByID(q.Call)
		var resp Resp
		switch {
		case !ok || call.Mode != calls.Forwarded:
			resp = Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		default:
			args, err := wire.DecodeArgs(call, q.Body)
			if err != nil {
				resp = Resp{RV: ck.CKR_ARGUMENTS_BAD}
			} else {
				resp = p.handle(Req{Call: call, Args: args, Hello: h, Conn: n})
			}
		}
		switch {
		case resp.Close:
			return
		case resp.Raw != nil:
			if _, err := c.Write(resp.Raw); err != nil {
				return
			}
		default:
			if _, err := c.Write(wire.AppendReply(nil, q.ID, resp.RV, resp.Results)); err != nil {
				return
			}
		}
	}
}

// Reply builds the results of call name with build, which supplies the
// outputs; it returns the rv build returns (CKR_OK when it returns 0) and
// the results.
func Reply(name string, build func(r *wire.Results) uint64) Resp {
	c, ok := calls.ByName(name)
	if !ok {
		panic("moduletest: no call " + name)
	}
	r := wire.NewResults(c)
	rv := build(r)
	return Resp{RV: rv, Results: r.Finish()}
}
