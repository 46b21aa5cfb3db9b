// Package wiretest is a PKCS#11 application in Go that speaks the module's
// protocol, for tests: the one client the daemon's, the engine's and the
// CLI scripts' tests share.
//
// A Conn makes calls by name with their arguments in the call table's
// order (outputs included, as placeholders or output specs) and returns
// the CK_RV and the decoded results. It runs over an Exchanger: a Socket,
// dialled like the C module dials the daemon, or anything else that turns
// a request into a reply (the token engine's tests serve calls in
// process). A Client wraps a Conn for a test: a broken exchange fails the
// test, and Must checks the CK_RV.
package wiretest

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Exchanger carries one request and returns its reply.
type Exchanger interface {
	Exchange(id, call uint32, body []byte) (wire.Reply, error)
}

// Socket is a connection to a daemon, past its hello.
type Socket struct {
	c   net.Conn
	r   *bufio.Reader
	buf []byte
}

// Dial connects to the daemon at path as application app, speaking
// protocol version v (wire.Version: the newest). A hello the daemon does
// not accept is an error that carries its reply.
func Dial(path string, app [16]byte, v uint16) (*Socket, wire.HelloReply, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, wire.HelloReply{}, err
	}
	return Hello(c, app, v)
}

// DialTLS is Dial to a daemon's TLS listener at addr (host:port).
func DialTLS(addr string, cfg *tls.Config, app [16]byte, v uint16) (*Socket, wire.HelloReply, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, wire.HelloReply{}, err
	}
	return Hello(c, app, v)
}

// Hello opens the protocol on a connection c: the Socket, or an error
// (c closed) that carries the daemon's reply.
func Hello(c net.Conn, app [16]byte, v uint16) (*Socket, wire.HelloReply, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(wire.Hello{Version: v, AppID: app, PID: uint32(os.Getpid())}.Marshal()); err != nil {
		c.Close()
		return nil, wire.HelloReply{}, err
	}
	reply, err := wire.ReadHelloReply(c)
	if err == nil && (!reply.Accepted() || reply.Version != v) {
		err = fmt.Errorf("hello refused: %+v", reply)
	}
	if err != nil {
		c.Close()
		return nil, reply, err
	}
	return &Socket{c: c, r: bufio.NewReader(c)}, reply, nil
}

// NewApp returns a fresh application id.
func NewApp() [16]byte {
	var app [16]byte
	rand.Read(app[:])
	return app
}

// Exchange writes the request and reads its reply, within 30 seconds.
func (s *Socket) Exchange(id, call uint32, body []byte) (wire.Reply, error) {
	s.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := s.c.Write(wire.AppendRequest(nil, id, call, body)); err != nil {
		return wire.Reply{}, fmt.Errorf("write: %w", err)
	}
	rep, buf, err := wire.ReadReply(s.r, s.buf)
	s.buf = buf
	if err != nil {
		return wire.Reply{}, fmt.Errorf("read: %w", err)
	}
	return rep, nil
}

// Close closes the connection.
func (s *Socket) Close() error { return s.c.Close() }

// Resumed says whether a TLS connection resumed an earlier session.
func (s *Socket) Resumed() bool {
	tc, ok := s.c.(*tls.Conn)
	return ok && tc.ConnectionState().DidResume
}

// Conn makes calls over an Exchanger. It is not safe for concurrent use.
type Conn struct {
	x  Exchanger
	id uint32
	// Idle is the last reply's idle flag (docs/protocol.md, "Deferred
	// Init").
	Idle bool
}

// NewConn returns a Conn over x.
func NewConn(x Exchanger) *Conn { return &Conn{x: x} }

// Call makes one call and returns its CK_RV and, when the CK_RV carries
// them, its results. An error is a broken exchange, not a CK_RV.
func (c *Conn) Call(name string, vals ...wire.Value) (uint64, []wire.Value, error) {
	call, ok := calls.ByName(name)
	if !ok {
		return 0, nil, fmt.Errorf("no call %s", name)
	}
	body, err := wire.EncodeArgs(call, vals)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", name, err)
	}
	c.id++
	rep, err := c.x.Exchange(c.id, call.ID, body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", name, err)
	}
	if rep.ID != c.id {
		return 0, nil, fmt.Errorf("%s: reply id %d, want %d", name, rep.ID, c.id)
	}
	c.Idle = rep.Idle
	if !rep.HasResults {
		return rep.RV, nil, nil
	}
	out, err := wire.DecodeResults(call, rep.RV, rep.Results)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: results: %w", name, err)
	}
	return rep.RV, out, nil
}

// Must makes a call that must return CKR_OK, and returns its results.
func (c *Conn) Must(name string, vals ...wire.Value) ([]wire.Value, error) {
	rv, out, err := c.Call(name, vals...)
	if err == nil && rv != ck.CKR_OK {
		err = fmt.Errorf("%s: %v", name, ck.Error(rv))
	}
	return out, err
}

// Client is a Conn for one test: a broken exchange fails the test.
type Client struct {
	T testing.TB
	*Conn
}

// NewClient returns a Client over x.
func NewClient(t testing.TB, x Exchanger) *Client { return &Client{T: t, Conn: NewConn(x)} }

// DialClient connects a new application to the daemon at path, for the
// length of the test.
func DialClient(t testing.TB, path string) *Client {
	t.Helper()
	return DialClientAs(t, path, NewApp(), wire.Version)
}

// DialClientAs connects application app to the daemon at path speaking
// protocol version v, for the length of the test.
func DialClientAs(t testing.TB, path string, app [16]byte, v uint16) *Client {
	t.Helper()
	s, _, err := Dial(path, app, v)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return NewClient(t, s)
}

// Call makes one call; vals are the call's arguments in table order.
func (cl *Client) Call(name string, vals ...wire.Value) (uint64, []wire.Value) {
	cl.T.Helper()
	rv, out, err := cl.Conn.Call(name, vals...)
	if err != nil {
		cl.T.Fatal(err)
	}
	return rv, out
}

// Must makes a call that must return want, and returns its results.
func (cl *Client) Must(want uint64, name string, vals ...wire.Value) []wire.Value {
	cl.T.Helper()
	got, out := cl.Call(name, vals...)
	if got != want {
		cl.T.Fatalf("%s = %v, want %v", name, ck.Error(got), ck.Error(want))
	}
	return out
}
