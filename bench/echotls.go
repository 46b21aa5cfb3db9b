package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The TLS floor: the same bare request and reply as the socket floor,
// over TCP on loopback with TLS 1.3, to this binary re-executed as a
// server that inherits its listening socket (descriptor 3). It is the
// least a call through a remote module (`PATH@tls://...`) can cost on
// this machine: the record layer, both ways, and loopback TCP. The
// handshake is made once, before measuring, as the module makes it once
// per connection; so the server's certificate is a throwaway one made at
// its start, and the client does not verify it.

// echoTLS as echoEnv's value makes the server a TLS one.
const echoTLS = "tls"

// serveEchoTLS serves one TLS connection on the inherited listener.
func serveEchoTLS(string) error {
	if want, err := strconv.Atoi(os.Getenv(echoParentEnv)); err != nil || os.Getppid() != want {
		return fmt.Errorf("started by process %q, now the child of %d: not serving", os.Getenv(echoParentEnv), os.Getppid())
	}
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		return err
	}
	defer ln.Close()
	cert, err := throwawayCert()
	if err != nil {
		return err
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(echoAcceptTimeout))
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	ln.Close()
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	defer tc.Close()
	req, rep := make([]byte, echoRequest), make([]byte, echoReply)
	for n := 1; ; n++ {
		if n%echoYieldEvery == 0 {
			runtime.Gosched()
		}
		if _, err := io.ReadFull(tc, req); err != nil {
			return nil // the client closed the connection: done
		}
		if _, err := tc.Write(rep); err != nil {
			return nil
		}
	}
}

func throwawayCert() (tls.Certificate, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmemu bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}, nil
}

// echoTLSClient is a TLS connection to an echo server in a child process.
type echoTLSClient struct {
	c    *tls.Conn
	cmd  *exec.Cmd
	done chan struct{}
	errs *echoStderr
}

// startEchoTLS starts this binary as a TLS echo server and connects to it.
func startEchoTLS() (_ *echoTLSClient, err error) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	exe, xerr := os.Executable()
	if xerr != nil {
		exe = os.Args[0]
	}
	var args []string
	if testing.Testing() {
		args = []string{"-test.run=^$", "-test.bench=^$"}
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), echoEnv+"="+echoTLS, echoParentEnv+"="+strconv.Itoa(os.Getpid()))
	cmd.ExtraFiles = []*os.File{f}
	errs := &echoStderr{}
	cmd.Stderr = errs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start TLS echo server: %w", err)
	}
	e := &echoTLSClient{cmd: cmd, done: make(chan struct{}), errs: errs}
	go func() {
		cmd.Wait()
		close(e.done)
	}()
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	d := &net.Dialer{Timeout: echoStartTimeout}
	c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	if err != nil {
		return nil, fmt.Errorf("TLS echo server: %w: %s", err, errs.String())
	}
	e.c = c
	return e, nil
}

func (e *echoTLSClient) roundTrips(n int, req, rep []byte) error {
	e.c.SetDeadline(time.Now().Add(time.Minute))
	for i := 1; i <= n; i++ {
		if _, err := e.c.Write(req); err != nil {
			return fmt.Errorf("TLS echo: write: %w", err)
		}
		if _, err := io.ReadFull(e.c, rep); err != nil {
			return fmt.Errorf("TLS echo: read: %w", err)
		}
	}
	return nil
}

// Close ends the connection and the server.
func (e *echoTLSClient) Close() error {
	if e.c != nil {
		e.c.Close()
	}
	select {
	case <-e.done:
	case <-time.After(echoStopTimeout):
		e.cmd.Process.Kill()
		<-e.done
	}
	return nil
}
