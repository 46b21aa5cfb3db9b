package e2e

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/miekg/pkcs11"
)

// The module's hop, against the floor of any hop: run both in one go so
// the ratio holds on a noisy machine.
//
//	go test -run '^$' -bench 'RoundTrip' -count 6 ./cryptoki/e2e/

// Frame sizes of C_GenerateRandom(32): the request (length, id, call,
// session, length) and the reply (length, id, rv, has-results, bytes).
const (
	randomRequest = 4 + 4 + 4 + 8 + 8
	randomReply   = 4 + 4 + 8 + 1 + 4 + 32
)

// BenchmarkRoundTripModuleRandom32 is one C_GenerateRandom(32) from Go
// through the C module to the daemon and back.
func BenchmarkRoundTripModuleRandom32(b *testing.B) {
	p, _ := withModule(b)
	if err := p.InitToken(0, soPIN, "bench"); err != nil {
		b.Fatal(err)
	}
	slots, _ := p.GetSlotList(true)
	h, err := p.OpenSession(slots[len(slots)-1], pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := p.GenerateRandom(h, 32); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRoundTripBareSocket is a bare request and reply of the same
// sizes over a Unix socket to a Go server: the floor of every call.
func BenchmarkRoundTripBareSocket(b *testing.B) {
	dir, err := os.MkdirTemp("", "hsb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, rep := make([]byte, randomRequest), make([]byte, randomReply)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(rep); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("unix", filepath.Join(dir, "s"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req, rep := make([]byte, randomRequest), make([]byte, randomReply)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, rep); err != nil {
			b.Fatal(err)
		}
	}
}
