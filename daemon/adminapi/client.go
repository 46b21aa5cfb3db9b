package adminapi

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"hsmemu/cryptoki/wire"
)

// ErrNoDaemon is Dial's error when nothing answers on the socket.
var ErrNoDaemon = errors.New("no daemon answers")

// Client is an admin connection.
type Client struct {
	c       net.Conn
	timeout time.Duration
}

// Dial opens an admin connection to the daemon at the socket path. The
// admin protocol is the same in every protocol version, so a daemon that
// speaks an older one is spoken to in it.
func Dial(path string) (*Client, error) {
	c, r, err := dialVersion(path, wire.Version)
	if err == nil && r.Status == wire.StatusVersion && r.Version >= wire.MinVersion && r.Version < wire.Version {
		c.Close()
		c, r, err = dialVersion(path, r.Version)
	}
	if err != nil {
		return nil, err
	}
	switch r.Status {
	case wire.StatusOK:
	case wire.StatusRefused:
		c.Close()
		return nil, fmt.Errorf("the daemon on %s refused an admin connection: run this as the daemon's user or root", path)
	default:
		c.Close()
		return nil, fmt.Errorf("the daemon on %s speaks protocol version %d, this command %d: use the hsmemu that runs it", path, r.Version, wire.Version)
	}
	c.SetDeadline(time.Time{})
	return &Client{c: c, timeout: 5 * time.Minute}, nil
}

// DialTLS opens an admin connection to a daemon's TLS listener at addr
// (host:port), with cfg's client certificate, which must be of an
// identity the daemon lets administer it (docs/remote.md).
func DialTLS(addr string, cfg *tls.Config) (*Client, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to tls://%s: %w", addr, err)
	}
	r, err := hello(c, addr, wire.Version)
	if err != nil {
		return nil, err
	}
	switch r.Status {
	case wire.StatusOK:
	case wire.StatusRefused:
		c.Close()
		return nil, fmt.Errorf("the daemon at tls://%s refused an admin connection: its certificate's identity is not an administrator there (--tls-admin, or admin in the policy file)", addr)
	default:
		c.Close()
		return nil, fmt.Errorf("the daemon at tls://%s speaks protocol version %d, this command %d: use the hsmemu that runs it", addr, r.Version, wire.Version)
	}
	c.SetDeadline(time.Time{})
	return &Client{c: c, timeout: 5 * time.Minute}, nil
}

// dialVersion connects and sends an admin hello of version v.
func dialVersion(path string, v uint16) (net.Conn, wire.HelloReply, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, wire.HelloReply{}, fmt.Errorf("%w on %s: start it with `hsmemu serve`, or name its socket with --socket", ErrNoDaemon, path)
		}
		return nil, wire.HelloReply{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	r, err := hello(c, path, v)
	return c, r, err
}

// hello sends an admin hello of version v on c and reads the reply; c
// is closed on an error.
func hello(c net.Conn, path string, v uint16) (wire.HelloReply, error) {
	h := wire.Hello{Version: v, Flags: wire.FlagAdmin, PID: uint32(os.Getpid())}
	rand.Read(h.AppID[:])
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(h.Marshal()); err != nil {
		c.Close()
		return wire.HelloReply{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	r, err := wire.ReadHelloReply(c)
	if err != nil {
		c.Close()
		return wire.HelloReply{}, fmt.Errorf("connect to %s: %w", path, err)
	}
	return r, nil
}

// Close closes the connection.
func (cl *Client) Close() error { return cl.c.Close() }

// Call sends op with args and decodes the result into result (which may be
// nil). A refusal by the daemon is an *Error.
func (cl *Client) Call(op string, args, result any) error {
	return cl.CallProgress(op, args, result, nil)
}

// CallProgress is Call for a long call: progress, when not nil, is told
// each progress report the daemon sends before its reply.
func (cl *Client) CallProgress(op string, args, result any, progress func(Progress)) error {
	req := Request{Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return err
		}
		req.Args = b
		defer clear(b) // it may hold PINs
	}
	cl.c.SetDeadline(time.Now().Add(cl.timeout))
	defer cl.c.SetDeadline(time.Time{})
	if err := WriteFrame(cl.c, req); err != nil {
		return fmt.Errorf("send %s: %w", op, err)
	}
	var rep Reply
	for {
		rep = Reply{}
		if err := ReadFrame(cl.c, &rep); err != nil {
			return fmt.Errorf("read the reply to %s: %w", op, err)
		}
		if rep.Progress == nil {
			break
		}
		if progress != nil {
			progress(*rep.Progress)
		}
		cl.c.SetDeadline(time.Now().Add(cl.timeout))
	}
	if rep.Error != nil {
		return rep.Error
	}
	if result != nil {
		if err := json.Unmarshal(rep.Result, result); err != nil {
			return fmt.Errorf("read the reply to %s: %w", op, err)
		}
	}
	return nil
}
