package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Connection setup (docs/protocol.md, "Connection").
const (
	// Version is the protocol version this package speaks, MinVersion the
	// oldest the daemon still serves. Version 2 added the reply's idle
	// flag, version 3 the prefetch of an output (OutSpec.Prefetch),
	// version 4 the prefetch of an Update's, version 5 that of a one-call
	// message's with its parameter's outputs, version 6 that of
	// C_WrapKeyAuthenticated's (calls.PrefetchVersion).
	Version    = 6
	MinVersion = 1

	// HelloSize and HelloReplySize are the sizes of the two messages.
	HelloSize      = 32
	HelloReplySize = 8

	// Hello reply statuses. After a non-zero one the daemon closes.
	StatusOK      = 0 // accepted
	StatusVersion = 1 // version not supported; the reply carries the daemon's highest
	StatusRefused = 2 // peer not allowed, or application id of another process
	// StatusJoined (version 2) is accepted, too: the application already
	// had connections, and its sessions and logins go on. StatusOK then
	// means the application starts afresh, with none.
	StatusJoined = 3

	// FlagAdmin in a hello opens an administrator's connection, which
	// speaks the admin protocol (daemon/adminapi) instead of PKCS#11
	// calls. Other flags are refused.
	FlagAdmin = 1
)

// magic opens both the hello and its reply.
const magic = "HSMU"

// Hello is the client's first message on a connection:
//
//	"HSMU" | version u16 | flags u16 | application id [16] | pid u32 | epoch u31 ring u1
//
// ReadHello checks only the magic; the daemon judges the version and the
// flags (FlagAdmin or 0) and answers with a status. The last word was
// reserved (0) before the epoch and the ring bit: a daemon that knows
// neither ignores both.
type Hello struct {
	Version uint16
	Flags   uint16
	AppID   [16]byte
	PID     uint32
	// Epoch (31 bits) numbers the application's handles when the daemon
	// starts it afresh: they are Epoch<<32 | n, so that handles of an
	// earlier life of the application (before a daemon restart, a
	// failover) never name new sessions or objects. The module moves it
	// on at every fresh start; 0 (all an older module sends) gives the
	// handles from 1.
	Epoch uint32
	// Ring says that a ring offer follows the accepted hello
	// (docs/protocol.md, "Rings"): one frame of call RingCall whose body
	// is the ring size u32 and a reserved u32 (0), with the memfd attached
	// (SCM_RIGHTS). The daemon answers it with a reply frame of request id
	// 0 and no results: rv CKR_OK when the rings carry the connection's
	// frames from then on, any other rv when the socket does. A daemon
	// that does not know the bit declines the offer as an unknown call.
	Ring bool
}

// MaxEpoch is the largest Hello.Epoch: the word keeps a bit for Ring.
const MaxEpoch = 1<<31 - 1

// RingCall is the ring offer's call number, outside every call table.
const RingCall = 0xFFFFFF01

// Marshal returns the hello's 32 bytes.
func (h Hello) Marshal() []byte {
	b := make([]byte, 0, HelloSize)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	b = binary.BigEndian.AppendUint16(b, h.Flags)
	b = append(b, h.AppID[:]...)
	b = binary.BigEndian.AppendUint32(b, h.PID)
	last := (h.Epoch & MaxEpoch) << 1
	if h.Ring {
		last |= 1
	}
	return binary.BigEndian.AppendUint32(b, last)
}

// ReadHello reads a hello. A wrong magic is ErrFrame; a short read is
// io.EOF or io.ErrUnexpectedEOF.
func ReadHello(r io.Reader) (Hello, error) {
	var b [HelloSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Hello{}, err
	}
	if string(b[:4]) != magic {
		return Hello{}, fmt.Errorf("%w: hello magic %q", ErrFrame, b[:4])
	}
	h := Hello{
		Version: binary.BigEndian.Uint16(b[4:]),
		Flags:   binary.BigEndian.Uint16(b[6:]),
		PID:     binary.BigEndian.Uint32(b[24:]),
		Epoch:   binary.BigEndian.Uint32(b[28:]) >> 1,
		Ring:    b[31]&1 != 0,
	}
	copy(h.AppID[:], b[8:24])
	return h, nil
}

// HelloReply is the daemon's answer to a hello:
//
//	"HSMU" | version u16 | status u16
type HelloReply struct {
	Version uint16
	Status  uint16
}

// Accepted says whether the daemon took the connection.
func (r HelloReply) Accepted() bool {
	return r.Status == StatusOK || r.Status == StatusJoined
}

// Marshal returns the reply's 8 bytes.
func (h HelloReply) Marshal() []byte {
	b := make([]byte, 0, HelloReplySize)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint16(b, h.Version)
	return binary.BigEndian.AppendUint16(b, h.Status)
}

// ReadHelloReply reads a hello reply (client side). A wrong magic is
// ErrFrame.
func ReadHelloReply(r io.Reader) (HelloReply, error) {
	var b [HelloReplySize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return HelloReply{}, err
	}
	if string(b[:4]) != magic {
		return HelloReply{}, fmt.Errorf("%w: hello reply magic %q", ErrFrame, b[:4])
	}
	return HelloReply{Version: binary.BigEndian.Uint16(b[4:]), Status: binary.BigEndian.Uint16(b[6:])}, nil
}
