package daemon

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/remote"
	"hsmemu/daemon/remote/remotetest"
)

// eventually polls cond for up to 10 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("after 10 s: %s", what)
}

// remoteIdle says whether the TLS listener holds no connection and no
// identity.
func (d *testDaemon) remoteIdle() bool {
	rs := &d.srv.remote
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.conns) == 0 && len(rs.idents) == 0
}

// encryptHead is the head of a C_Encrypt request on session 1 whose data
// is n bytes, and the rest of its body.
func encryptRequest(n int) (head, rest []byte) {
	c, _ := calls.ByName("C_Encrypt")
	body := binary.BigEndian.AppendUint64(nil, 1)
	body = binary.BigEndian.AppendUint32(body, uint32(n))
	body = append(body, make([]byte, n)...)
	body = append(body, 1, 0, 0, 0, 0, 0, 0, 0, 64)
	frame := wire.AppendRequest(nil, 1, c.ID, body)
	return frame[:64], frame[64:]
}

// TestTLSLimits: an identity's connections and sessions are bounded, all
// its applications together.
func TestTLSLimits(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	p := testPolicy(t)
	e := p.Identities["cn:app1"]
	e.Limits = remote.Limits{Connections: 2, Sessions: 3}
	p.Identities["cn:app1"] = e
	d := startTLSDaemon(t, pki, p, nil)
	slot := d.dial(t).NewToken("pay")

	a, b := d.dialTLS(t, pki, pki.App), d.dialTLS(t, pki, pki.App)
	if _, r, err := DialTLS(d.tlsAddr, clientTLS(t, pki, pki.App), NewApp(), wire.Version); err == nil || r.Status != wire.StatusRefused {
		t.Fatalf("a third connection of cn:app1: %+v %v", r, err)
	}
	// Another identity is not held back by cn:app1's limit.
	d.dialTLS(t, pki, pki.Admin).Slots()

	h1, h2 := a.Open(slot, false), b.Open(slot, false)
	b.Open(slot, false)
	a.Must(ck.CKR_SESSION_COUNT, "C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	b.Must(ck.CKR_OK, "C_CloseSession", U(h2))
	a.Open(slot, false)
	_ = h1
}

// TestTLSStalls: a client that stalls in the handshake, or half way
// through a request, is cut off after the timeout, and what it held is
// given back.
func TestTLSStalls(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	p := testPolicy(t)
	e := p.Identities["cn:app1"]
	e.Limits = remote.Limits{BytesInFlight: 3 << 19} // 1.5 MiB
	p.Identities["cn:app1"] = e
	d := startTLSDaemonLimits(t, pki, p, func(rc *RemoteConfig) {
		// The stall must outlast the second request's wait for room
		// (BudgetWait) on a slow machine (-race).
		rc.Handshake, rc.Stall = 500*time.Millisecond, 3*time.Second
	}, Limits{BudgetWait: 300 * time.Millisecond})

	t.Run("handshake", func(t *testing.T) {
		c, err := net.Dial("tcp", d.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte{0x16, 0x03, 0x01}) // a record header, and no more
		start := time.Now()
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("read: %v", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("cut off after %v", el)
		}
	})

	t.Run("mid-frame", func(t *testing.T) {
		stalled, _, err := DialTLS(d.tlsAddr, clientTLS(t, pki, pki.App), NewApp(), wire.Version)
		if err != nil {
			t.Fatal(err)
		}
		raw := stalledConn(t, d, pki)
		head, rest := encryptRequest(1 << 20)
		raw.Write(head)
		raw.Write(rest[:len(rest)/2])
		eventually(t, "the stalled request holds its length of the budget", func() bool { return d.srv.lim.requests.Used() >= 1<<20 })
		// Meanwhile the identity's share has no room for another such
		// request: CKR_DEVICE_MEMORY, while another identity's is served.
		cl := NewClient(t, stalled)
		big := make([]byte, 1<<20)
		cl.Must(ck.CKR_DEVICE_MEMORY, "C_Encrypt", U(1), B(big), Out(64))
		other := d.dialTLS(t, pki, pki.Admin)
		other.Must(ck.CKR_SESSION_HANDLE_INVALID, "C_Encrypt", U(1), B(big), Out(64))
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(raw); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("the stalled connection: %v", err)
		}
		eventually(t, "the budget is given back", func() bool { return d.srv.lim.requests.Used() == 0 })
		stalled.Close()
	})
	other := d.dialTLS(t, pki, pki.App)
	other.Slots()
}

// stalledConn is a TLS connection of cn:app1 past its hello.
func stalledConn(t *testing.T, d *testDaemon, pki *remotetest.PKI) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", d.tlsAddr, clientTLS(t, pki, pki.App))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(wire.Hello{Version: wire.Version, AppID: NewApp()}.Marshal())
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		t.Fatalf("hello: %+v %v", r, err)
	}
	return c
}

// TestTLSReload: certificates reloaded (SIGHUP) serve the next handshake.
func TestTLSReload(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	var certs *remote.Certs
	d := startTLSDaemon(t, pki, testPolicy(t), func(rc *RemoteConfig) { certs = rc.Certs })
	peer := func() string {
		c, err := tls.Dial("tcp", d.tlsAddr, clientTLS(t, pki, pki.App))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := peer(); got != "node1" {
		t.Fatalf("daemon certificate %q", got)
	}
	for _, f := range [][2]string{{pki.Daemon2.Cert, pki.Daemon.Cert}, {pki.Daemon2.Key, pki.Daemon.Key}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(f[1], b, 0o600)
	}
	if err := certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := peer(); got != "node2" {
		t.Fatalf("after reload: daemon certificate %q", got)
	}
	// A reload that fails keeps what was loaded.
	os.WriteFile(pki.Daemon.Key, []byte("junk"), 0o600)
	if err := certs.Reload(); err == nil {
		t.Fatal("a junk key reloaded")
	}
	if got := peer(); got != "node2" {
		t.Fatalf("after a failed reload: daemon certificate %q", got)
	}
}

// TestTLSOpenSSL: OpenSSL's s_client against the listener: TLS 1.3 with a
// client certificate gets the daemon's hello reply; TLS 1.2, or no client
// certificate, gets nothing.
func TestTLSOpenSSL(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (scripts/install-deps.sh test)")
	}
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), func(rc *RemoteConfig) { rc.Idle = time.Second })
	hello := wire.Hello{Version: wire.Version, AppID: NewApp(), PID: 1}.Marshal()
	run := func(args ...string) (string, bool) {
		all := append([]string{"s_client", "-connect", d.tlsAddr, "-servername", "localhost", "-CAfile", pki.CA, "-ign_eof"}, args...)
		cmd := exec.Command("openssl", all...)
		cmd.Stdin = bytes.NewReader(hello)
		out, err := cmd.CombinedOutput()
		return string(out), err == nil
	}
	out, _ := run("-tls1_3", "-cert", pki.App.Cert, "-key", pki.App.Key)
	if !strings.Contains(out, "TLSv1.3") || !strings.Contains(out, "Verify return code: 0 (ok)") || !strings.Contains(out, "HSMU\x00"+string([]byte{byte(wire.Version)})+"\x00\x00") {
		t.Errorf("TLS 1.3 with a client certificate:\n%s", out)
	}
	out, _ = run("-tls1_2", "-cert", pki.App.Cert, "-key", pki.App.Key)
	if strings.Contains(out, "HSMU") || !strings.Contains(out, "alert protocol version") {
		t.Errorf("TLS 1.2 was served:\n%s", out)
	}
	out, _ = run("-tls1_3")
	if strings.Contains(out, "HSMU") || !strings.Contains(out, "certificate required") {
		t.Errorf("no client certificate was served:\n%s", out)
	}
}

// TestTLSResume: a client's second connection resumes the first one's
// session; after a reload it does not, since a resumed session skips the
// client certificate, which the new CA bundle may not accept.
func TestTLSResume(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	var certs *remote.Certs
	d := startTLSDaemon(t, pki, testPolicy(t), func(rc *RemoteConfig) { rc.Idle = time.Second; certs = rc.Certs })
	cfg := clientTLS(t, pki, pki.App)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	resumed := func() bool {
		// The ticket comes after the handshake: the hello's reply brings
		// it in.
		s, _, err := DialTLS(d.tlsAddr, cfg, NewApp(), wire.Version)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		return s.Resumed()
	}
	if resumed() {
		t.Fatal("the first connection resumed")
	}
	if !resumed() {
		t.Fatal("the second connection did not resume")
	}
	if err := certs.Reload(); err != nil {
		t.Fatal(err)
	}
	if resumed() {
		t.Fatal("a connection after a reload resumed")
	}
}
