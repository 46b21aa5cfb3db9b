package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"hsmemu/cryptoki/ck"
)

// Frame layouts (docs/protocol.md, "Frames"); the u32 length counts the
// bytes after itself.
//
//	request: length u32 | request id u32 | call u32 | arguments
//	reply:   length u32 | request id u32 | rv u64 | flags u8 | results
//
// The reply's flags: bit 0 has-results; bit 1 (version 2) idle, the
// session the call named has no operation in progress after it.
const (
	requestHeader = 4 + 4     // id, call
	replyHeader   = 4 + 8 + 1 // id, rv, flags
)

// Reply flags.
const (
	replyHasResults = 1
	replyIdle       = 2
)

// Request is one decoded request frame. Body aliases the buffer ReadRequest
// returned, and is valid until that buffer is reused.
type Request struct {
	ID   uint32
	Call uint32
	Body []byte
}

// Reply is one decoded reply frame. Results is nil when has-results is 0,
// and otherwise aliases the buffer ReadReply returned.
type Reply struct {
	ID         uint32
	RV         uint64
	HasResults bool
	Results    []byte
	Idle       bool // the session the call named has no operation in progress
}

// String prints the request's shape: its body may hold a PIN.
func (q Request) String() string {
	return fmt.Sprintf("request %d call %d, %d bytes", q.ID, q.Call, len(q.Body))
}

// GoString is String.
func (q Request) GoString() string { return q.String() }

// MarshalJSON refuses: the body may be secret.
func (q Request) MarshalJSON() ([]byte, error) { return nil, errNoJSON }

// String prints the reply's shape: its results may hold key material.
func (p Reply) String() string {
	if !p.HasResults {
		return fmt.Sprintf("reply %d rv %#x", p.ID, p.RV)
	}
	return fmt.Sprintf("reply %d rv %#x, %d bytes of results", p.ID, p.RV, len(p.Results))
}

// GoString is String.
func (p Reply) GoString() string { return p.String() }

// MarshalJSON refuses: the results may be secret.
func (p Reply) MarshalJSON() ([]byte, error) { return nil, errNoJSON }

// ReadRequest reads one request frame from r into buf, growing it when
// needed, and returns the request and the buffer to pass to the next call,
// so that a connection reads without allocating once its buffer is large
// enough (a daemon may drop a buffer that grew past what it wants to keep
// per connection). The request's Body aliases the returned buffer.
//
// It returns io.EOF when the peer closed the connection between frames.
// Every error (io.EOF included) means the connection must be closed: a
// frame's length of less than the header or over MaxFrame is ErrFrame, and
// is refused before anything is allocated for it.
func ReadRequest(r *bufio.Reader, buf []byte) (Request, []byte, error) {
	buf, err := readFrame(r, buf, requestHeader)
	if err != nil {
		return Request{}, buf, err
	}
	return Request{
		ID:   binary.BigEndian.Uint32(buf),
		Call: binary.BigEndian.Uint32(buf[4:]),
		Body: buf[requestHeader:],
	}, buf, nil
}

// RequestHead is a request frame's header: what the daemon reads before
// deciding whether, and into what, to read the rest.
type RequestHead struct {
	ID      uint32
	Call    uint32
	BodyLen int // the arguments' bytes that follow
}

// ReadRequestHead reads a request frame's length, request id and call, and
// nothing of its arguments. A length of less than the header or over
// MaxFrame is ErrFrame; io.EOF means the peer closed the connection
// between frames. Every error means the connection must be closed.
func ReadRequestHead(r *bufio.Reader) (RequestHead, error) {
	// Peeked, not copied out: a header that escaped to the heap would
	// cost an allocation per request.
	b, err := r.Peek(4)
	if err != nil {
		if len(b) == 0 && errors.Is(err, io.EOF) {
			return RequestHead{}, io.EOF // between frames
		}
		return RequestHead{}, truncated(err)
	}
	n := binary.BigEndian.Uint32(b)
	if n < requestHeader || n > MaxFrame {
		return RequestHead{}, fmt.Errorf("%w: frame length %d outside [%d, %d]", ErrFrame, n, requestHeader, MaxFrame)
	}
	if b, err = r.Peek(4 + requestHeader); err != nil {
		return RequestHead{}, truncated(err)
	}
	h := RequestHead{
		ID:      binary.BigEndian.Uint32(b[4:]),
		Call:    binary.BigEndian.Uint32(b[8:]),
		BodyLen: int(n) - requestHeader,
	}
	r.Discard(4 + requestHeader)
	return h, nil
}

// ReadRequestBody reads the arguments of the frame whose head was just
// read into buf, which must hold at least h.BodyLen bytes, and returns the
// request; its Body aliases buf. An error means the connection must be
// closed.
func ReadRequestBody(r *bufio.Reader, h RequestHead, buf []byte) (Request, error) {
	if cap(buf) < h.BodyLen {
		panic(fmt.Sprintf("wire: internal error: a buffer of %d bytes for a body of %d", cap(buf), h.BodyLen))
	}
	body := buf[:h.BodyLen]
	if _, err := io.ReadFull(r, body); err != nil {
		return Request{}, truncated(err)
	}
	return Request{ID: h.ID, Call: h.Call, Body: body}, nil
}

// SkipRequestBody reads past the arguments of the frame whose head was
// just read, keeping none of them (through r's own buffer), so that the
// next frame can be read: the daemon answers a request it refuses to hold
// without losing the stream. An error means the connection must be
// closed.
func SkipRequestBody(r *bufio.Reader, n int) error {
	if _, err := r.Discard(n); err != nil {
		return truncated(err)
	}
	return nil
}

// truncated turns an end of stream inside a frame into ErrFrame.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated frame: %w", ErrFrame, io.ErrUnexpectedEOF)
	}
	return err
}

// AppendRequest appends a request frame to dst (client side). The body must
// be at most MaxFrame-8 bytes (AppendArgs makes sure of it); the daemon
// closes the connection on a larger one.
func AppendRequest(dst []byte, id, call uint32, body []byte) []byte {
	dst = appendU32(dst, uint32(requestHeader+len(body)))
	dst = appendU32(dst, id)
	dst = appendU32(dst, call)
	return append(dst, body...)
}

// AppendReply appends a reply frame to dst. results nil means has-results
// 0 (use HasResults to decide); a non-nil results, even empty, is sent with
// has-results 1. A reply that would exceed MaxFrame (an output grown past
// the cap) is sent as ck.CKR_DEVICE_MEMORY without results instead.
func AppendReply(dst []byte, id uint32, rv uint64, results []byte) []byte {
	return AppendReplyIdle(dst, id, rv, results, false)
}

// AppendReplyIdle is AppendReply with the idle flag of protocol version 2:
// the session the call named has no operation in progress after it.
func AppendReplyIdle(dst []byte, id uint32, rv uint64, results []byte, idle bool) []byte {
	dst, results = AppendReplyHead(dst, id, rv, results, idle)
	return append(dst, results...)
}

// AppendReplyHead is AppendReplyIdle in two pieces, so that large results
// go out without being copied: it appends the reply's header to dst and
// returns it with the results to send after it (nil when the reply goes
// without them, results over MaxFrame among them).
func AppendReplyHead(dst []byte, id uint32, rv uint64, results []byte, idle bool) (head, rest []byte) {
	if len(results) > MaxFrame-replyHeader {
		rv, results = ck.CKR_DEVICE_MEMORY, nil
	}
	dst = appendU32(dst, uint32(replyHeader+len(results)))
	dst = appendU32(dst, id)
	dst = appendU64(dst, rv)
	var flags byte
	if idle {
		flags |= replyIdle
	}
	if results == nil {
		return append(dst, flags), nil
	}
	return append(dst, flags|replyHasResults), results
}

// ReadReply reads one reply frame (client side), as ReadRequest reads a
// request. A flags byte with bits other than has-results and idle, or
// results without has-results, is ErrFrame.
func ReadReply(r *bufio.Reader, buf []byte) (Reply, []byte, error) {
	buf, err := readFrame(r, buf, replyHeader)
	if err != nil {
		return Reply{}, buf, err
	}
	p := Reply{ID: binary.BigEndian.Uint32(buf), RV: binary.BigEndian.Uint64(buf[4:])}
	flags := buf[12]
	p.Idle = flags&replyIdle != 0
	switch {
	case flags&^(replyHasResults|replyIdle) != 0:
		return Reply{}, buf, fmt.Errorf("%w: reply flags %#x", ErrFrame, flags)
	case flags&replyHasResults != 0:
		p.HasResults, p.Results = true, buf[replyHeader:]
	case len(buf) != replyHeader:
		return Reply{}, buf, fmt.Errorf("%w: %d bytes of results with has-results 0", ErrFrame, len(buf)-replyHeader)
	}
	return p, buf, nil
}

// growStep is how much a frame's buffer grows ahead of the bytes that
// arrived, so that a peer declaring a large frame and sending little costs
// little memory.
const growStep = 64 << 10

// readFrame reads a length-prefixed frame's content (after the length) of at
// least minLen bytes into buf and returns buf holding exactly it.
func readFrame(r *bufio.Reader, buf []byte, minLen int) ([]byte, error) {
	if cap(buf) < 4 {
		buf = make([]byte, 0, 512)
	}
	hdr := buf[:4]
	if _, err := io.ReadFull(r, hdr); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return buf[:0], fmt.Errorf("%w: truncated length: %w", ErrFrame, err)
		}
		return buf[:0], err // io.EOF between frames, or the connection's error
	}
	n := binary.BigEndian.Uint32(hdr)
	if n < uint32(minLen) || n > MaxFrame {
		return buf[:0], fmt.Errorf("%w: frame length %d outside [%d, %d]", ErrFrame, n, minLen, MaxFrame)
	}
	size := int(n)
	buf = buf[:0]
	for len(buf) < size {
		if len(buf) == cap(buf) {
			next := min(max(2*cap(buf), growStep), size)
			grown := make([]byte, len(buf), next)
			copy(grown, buf)
			buf = grown
		}
		end := min(cap(buf), size)
		if _, err := io.ReadFull(r, buf[len(buf):end]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("%w: truncated frame: %w", ErrFrame, io.ErrUnexpectedEOF)
			}
			return buf[:0], err
		}
		buf = buf[:end]
	}
	return buf, nil
}
