package swtpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

const (
	// MaxMessage caps both a command we send and a response we accept. TPMs
	// advertise TPM_PT_MAX_COMMAND_SIZE / TPM_PT_MAX_RESPONSE_SIZE of a few
	// KiB (libtpms: 4096); 64 KiB leaves room and still bounds what a
	// broken or hostile peer can make us allocate.
	MaxMessage = 64 << 10

	// DefaultTimeout bounds one command's round trip. swtpm answers in
	// milliseconds; a peer that says nothing for this long is stuck, or is
	// serving another client (a bare swtpm serves one connection at a time).
	DefaultTimeout = 30 * time.Second

	headerSize = 10 // tag u16 | size u32 | response code u32
)

// ErrConnLost wraps every error of a Conn that leaves it unusable: an I/O
// error (swtpm exited, the socket was closed, a command timed out), a
// framing error, or a Conn already closed. A TPM that answers, even with
// an error code, never gives it: it says a new connection is needed.
var ErrConnLost = errors.New("swtpm connection lost")

// Conn is a go-tpm transport.TPM over a stream socket to swtpm's data
// channel, which carries bare TPM commands and responses (no simulator
// framing). Unlike go-tpm's linuxudstpm and tcp transports, which take
// whatever a single Read returns, it reads the 10-byte response header and
// then exactly the size the header declares, so a response split across
// reads arrives whole and the stream never falls out of step.
//
// After any I/O or framing error the stream's position is unknown, so the
// Conn refuses every later command with that error instead of reading a
// stale response as the answer to a new command.
type Conn struct {
	mu      sync.Mutex
	conn    net.Conn
	timeout time.Duration
	broken  error
	closed  bool
}

// NewConn wraps an established connection. timeout bounds each command's
// round trip; zero means DefaultTimeout.
func NewConn(c net.Conn, timeout time.Duration) *Conn {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Conn{conn: c, timeout: timeout}
}

// Dial connects to the swtpm data socket at path.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to swtpm at %s: %w", path, err)
	}
	return NewConn(c, 0), nil
}

// Send implements transport.TPM: it writes one command and returns its
// whole response.
func (c *Conn) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, c.broken
	}
	if len(cmd) < headerSize || len(cmd) > MaxMessage {
		return nil, fmt.Errorf("swtpm transport: refusing a %d-byte command (want %d to %d bytes)", len(cmd), headerSize, MaxMessage)
	}
	rsp, err := c.roundTrip(cmd)
	if err != nil {
		c.broken = fmt.Errorf("%w: unusable after an earlier error: %w", ErrConnLost, err)
		return nil, fmt.Errorf("%w: %w", ErrConnLost, err)
	}
	return rsp, nil
}

func (c *Conn) roundTrip(cmd []byte) ([]byte, error) {
	if err := c.conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		return nil, fmt.Errorf("swtpm transport: setting deadline: %w", err)
	}
	if _, err := c.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm transport: writing command: %w", err)
	}
	var hdr [headerSize]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("swtpm transport: reading response header: %w", noEOF(err))
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > MaxMessage {
		return nil, fmt.Errorf("swtpm transport: response header declares %d bytes (want %d to %d)", size, headerSize, MaxMessage)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(c.conn, rsp[headerSize:]); err != nil {
		return nil, fmt.Errorf("swtpm transport: reading %d-byte response: %w", size, noEOF(err))
	}
	return rsp, nil
}

// noEOF turns a bare EOF into ErrUnexpectedEOF: the peer hung up in the
// middle of an exchange, which is never a clean end.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Close closes the connection. Later commands fail.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.broken = fmt.Errorf("%w: closed", ErrConnLost)
	return c.conn.Close()
}
