package swtpm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// response builds a TPM response: tag, size, code, body.
func response(body []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, 0x8001)
	b = binary.BigEndian.AppendUint32(b, uint32(10+len(body)))
	b = binary.BigEndian.AppendUint32(b, 0)
	return append(b, body...)
}

var command = []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8} // TPM2_GetRandom(8)

// serve answers each command read from c with the next of responses,
// written in pieces of at most chunk bytes with a pause between them.
func serve(t *testing.T, c net.Conn, chunk int, responses ...[]byte) {
	t.Helper()
	go func() {
		defer c.Close()
		buf := make([]byte, 4096)
		for _, rsp := range responses {
			if _, err := c.Read(buf); err != nil {
				return
			}
			for len(rsp) > 0 {
				n := min(chunk, len(rsp))
				if _, err := c.Write(rsp[:n]); err != nil {
					return
				}
				rsp = rsp[n:]
				time.Sleep(time.Millisecond)
			}
		}
		io.Copy(io.Discard, c)
	}()
}

func TestConnReadsWholeResponseInPieces(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	first := response(bytes.Repeat([]byte{0xab}, 300))
	second := response([]byte{1, 2, 3})
	serve(t, server, 3, first, second)
	c := NewConn(client, 5*time.Second)
	defer c.Close()
	for i, want := range [][]byte{first, second} {
		got, err := c.Send(command)
		if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Send %d: got %d bytes %x, want %d bytes", i, len(got), got, len(want))
		}
	}
}

func TestConnRefusesOversizedResponse(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	huge := binary.BigEndian.AppendUint16(nil, 0x8001)
	huge = binary.BigEndian.AppendUint32(huge, 1<<31) // 2 GiB declared
	huge = binary.BigEndian.AppendUint32(huge, 0)
	serve(t, server, 4, huge)
	c := NewConn(client, 5*time.Second)
	defer c.Close()

	start := time.Now()
	_, err := c.Send(command)
	if err == nil || !strings.Contains(err.Error(), "declares 2147483648 bytes") {
		t.Fatalf("err = %v, want a refusal of the declared size", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusal took %v", d)
	}
	// The stream is out of step now: every later command fails.
	if _, err2 := c.Send(command); err2 == nil || !strings.Contains(err2.Error(), "unusable") {
		t.Errorf("Send after a framing error: err = %v, want the connection refused", err2)
	}
}

func TestConnRefusesUndersizedResponse(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	bad := response(nil)
	binary.BigEndian.PutUint32(bad[2:], 9)
	serve(t, server, 10, bad)
	c := NewConn(client, 5*time.Second)
	defer c.Close()
	if _, err := c.Send(command); err == nil {
		t.Fatal("accepted a response declaring 9 bytes")
	}
}

func TestConnTruncatedResponse(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	go func() {
		buf := make([]byte, 64)
		server.Read(buf)
		server.Write(response(make([]byte, 20))[:15]) // then hang up
		server.Close()
	}()
	c := NewConn(client, 5*time.Second)
	defer c.Close()
	if _, err := c.Send(command); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want ErrUnexpectedEOF", err)
	}
}

func TestConnTimeout(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer server.Close()
	go func() { // reads the command, never answers
		buf := make([]byte, 64)
		server.Read(buf)
	}()
	c := NewConn(client, 100*time.Millisecond)
	defer c.Close()
	start := time.Now()
	_, err := c.Send(command)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timed out after %v", d)
	}
}

func TestConnRefusesBadCommands(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	defer server.Close()
	c := NewConn(client, time.Second)
	for _, cmd := range [][]byte{nil, command[:9], make([]byte, MaxMessage+1)} {
		if _, err := c.Send(cmd); err == nil {
			t.Errorf("sent a %d-byte command", len(cmd))
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Send(command); err == nil {
		t.Error("Send after Close succeeded")
	}
}
