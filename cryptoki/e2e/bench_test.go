package e2e

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/unixfd"
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
	h, err := p.OpenSession(slotOf(b, p, "bench"), pkcs11.CKF_SERIAL_SESSION)
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
// sizes over a Unix socket to a server in another process: the floor of
// every call. Both ends do blocking reads and writes on their descriptors,
// as the module and the daemon do.
func BenchmarkRoundTripBareSocket(b *testing.B) {
	dir, err := os.MkdirTemp("", "hsb")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	srv := exec.Command(os.Args[0], "-test.run=^TestEchoServer$")
	srv.Env = append(os.Environ(), echoEnv+"="+sock)
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	var c net.Conn
	for i := 0; ; i++ {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if i > 500 {
			b.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
	fd, err := blockingFd(c)
	if err != nil {
		b.Fatal(err)
	}
	defer fd.Close()
	req, rep := make([]byte, randomRequest), make([]byte, randomReply)
	b.ResetTimer()
	for b.Loop() {
		if _, err := fd.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(fd, rep); err != nil {
			b.Fatal(err)
		}
	}
}

const echoEnv = "HSMEMU_E2E_ECHO"

// TestEchoServer is BenchmarkRoundTripBareSocket's server process.
func TestEchoServer(t *testing.T) {
	sock := os.Getenv(echoEnv)
	if sock == "" {
		t.Skip("only as the bare round trip's server")
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := blockingFd(c)
	if err != nil {
		t.Fatal(err)
	}
	req, rep := make([]byte, randomRequest), make([]byte, randomReply)
	for n := 1; ; n++ {
		if n%64 == 0 {
			runtime.Gosched() // as the daemon's connections do (daemon/server.go)
		}
		if _, err := io.ReadFull(fd, req); err != nil {
			return
		}
		if _, err := fd.Write(rep); err != nil {
			return
		}
	}
}

// blockingFd returns a blocking duplicate of a connection's descriptor that
// the runtime's poller never sees (unixfd.DupBlocking), as the daemon's.
func blockingFd(c net.Conn) (*os.File, error) {
	fd, err := unixfd.DupBlocking(c.(*net.UnixConn))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "conn"), nil // blocking: os leaves it out of the poller too
}
