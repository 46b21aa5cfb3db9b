package daemon

import (
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/remote"
	"hsmemu/daemon/remote/remotetest"
	"hsmemu/daemon/token"
)

// TestTLSReinitStaysInScope: a tenant that holds its token's SO PIN
// re-initialises it only under a label it sees; a label of another
// tenant's would plant the token, and whatever its SO set up in it, in
// that tenant's slot list.
func TestTLSReinitStaysInScope(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	p := testPolicy(t)
	if err := p.Allow("cn:app2=hr", false); err != nil {
		t.Fatal(err)
	}
	d := startTLSDaemon(t, pki, p, nil)
	pay := d.dial(t).NewToken("pay")

	app1, app2 := d.dialTLS(t, pki, pki.App), d.dialTLS(t, pki, pki.App2)
	app1.Must(ck.CKR_ARGUMENTS_BAD, "C_InitToken", U(pay), S(SOPIN), Label32("hr"))
	if got := app2.Slots(); len(got) != 0 {
		t.Fatalf("cn:app2 sees slots %v: another tenant's token took its label", got)
	}
	if got := app1.Slots(); !slices.Equal(got, []uint64{pay}) {
		t.Fatalf("cn:app1 sees slots %v, want %v", got, []uint64{pay})
	}
	// A label it sees is its to give.
	app1.Must(ck.CKR_OK, "C_InitToken", U(pay), S(SOPIN), Label32("ops"))
	if got := app1.Slots(); !slices.Equal(got, []uint64{pay}) {
		t.Fatalf("cn:app1 sees slots %v after relabelling its token", got)
	}
}

// TestTLSHandshakeFlood: a host with no certificate that opens
// connections and never finishes their handshakes holds only its own
// share of the listener's slots; a client of another host still gets
// through (before the share, the flood held every slot until the
// handshake timeout, and every new client was refused).
func TestTLSHandshakeFlood(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), func(rc *RemoteConfig) {
		rc.Handshake = time.Minute // the flood outlasts the test
	})
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	var flood []net.Conn
	t.Cleanup(func() {
		for _, c := range flood {
			c.Close()
		}
	})
	for range maxConns + 8 {
		c, err := dialer.Dial("tcp", d.tlsAddr)
		if err != nil {
			t.Fatalf("flood connection %d: %v", len(flood), err)
		}
		flood = append(flood, c)
	}
	// The listener takes connections in their order, so by the time it
	// takes this one it has taken (or turned away) the whole flood.
	cl := d.dialTLS(t, pki, pki.App)
	cl.Slots()
	// The flood's connections past its share were closed at once.
	last := flood[len(flood)-1]
	last.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := last.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a flood connection past the host's share: read %d, %v; want EOF", n, err)
	}
}

// TestTLSRefusalsLogged: handshakes that fail, which anyone who reaches
// the port can make by the thousand, are logged at once and then counted
// into one line a minute (before, each was a line of the daemon's log).
func TestTLSRefusalsLogged(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	certs, err := remote.LoadCerts(pki.Daemon.Cert, pki.Daemon.Key, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	policy := testPolicy(t)
	dir := t.TempDir()
	logs := &syncBuf{}
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "s"), log: slog.New(slog.NewJSONHandler(logs, nil)),
		remote: &RemoteConfig{Certs: certs, Policy: func() *remote.Policy { return policy }}}
	d.start(t, token.Config{})
	const n = 20
	for range n {
		c, err := net.Dial("tcp", d.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		io.ReadAll(c) // the daemon closes it
		c.Close()
	}
	// The listener logs a refusal before it closes the connection.
	lines := logs.lines(t, "remote connection refused at the TLS handshake")
	// One line, or two should the loop have straddled a minute.
	if len(lines) == 0 || len(lines) > 2 {
		t.Fatalf("%d refused handshakes logged in %d lines", n, len(lines))
	}
	// A client with a certificate is still served.
	d.dialTLS(t, pki, pki.App).Slots()
}

// TestTLSWrongPINsPerIdentity: every wrong PIN counts in the TPM's one
// dictionary-attack counter, which locks every token's PIN checks past
// its maximum. A tenant that holds its token's SO PIN could unlock its
// user again and again and spend that count alone; its identity may now
// have only 10 wrong PINs checked (one more a minute), reconnecting or
// not, while other identities and local clients go on.
func TestTLSWrongPINsPerIdentity(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), nil)
	local := d.dial(t)
	pay, ops := local.NewToken("pay"), local.NewToken("ops")

	tenant := d.dialTLS(t, pki, pki.App)
	h := tenant.Open(pay, true)
	for i := range 10 {
		if rv, _ := tenant.Call("C_Login", U(h), U(ck.CKU_USER), S("wrong-pin")); rv != ck.CKR_PIN_INCORRECT && rv != ck.CKR_PIN_LOCKED {
			t.Fatalf("wrong PIN %d: %#x", i, rv)
		}
	}
	// The user is locked; its SO would unlock it and spend 10 more. Not
	// now, on any connection of the identity.
	tenant.Must(ck.CKR_PIN_LOCKED, "C_Login", U(h), U(ck.CKU_SO), S(SOPIN))
	again := d.dialTLS(t, pki, pki.App)
	h2 := again.Open(ops, true)
	again.Must(ck.CKR_PIN_LOCKED, "C_Login", U(h2), U(ck.CKU_USER), S(UserPIN))
	again.Must(ck.CKR_PIN_LOCKED, "C_SetPIN", U(h2), S(UserPIN), S("another-pin"))

	// Another identity, and a local client, are not held to it.
	admin := d.dialTLS(t, pki, pki.Admin)
	admin.Must(ck.CKR_OK, "C_Login", U(admin.Open(ops, false)), U(ck.CKU_USER), S(UserPIN))
	local.Must(ck.CKR_OK, "C_Login", U(local.Open(pay, true)), U(ck.CKU_SO), S(SOPIN))
}
