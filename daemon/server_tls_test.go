package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/remote"
	"hsmemu/daemon/remote/remotetest"
	"hsmemu/daemon/token"
)

// startTLSDaemon starts a daemon serving its Unix socket and a TLS
// listener with pki's certificates under policy.
func startTLSDaemon(t testing.TB, pki *remotetest.PKI, policy *remote.Policy, tweak func(*RemoteConfig)) *testDaemon {
	t.Helper()
	return startTLSDaemonLimits(t, pki, policy, tweak, Limits{})
}

func startTLSDaemonLimits(t testing.TB, pki *remotetest.PKI, policy *remote.Policy, tweak func(*RemoteConfig), lim Limits) *testDaemon {
	t.Helper()
	certs, err := remote.LoadCerts(pki.Daemon.Cert, pki.Daemon.Key, pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	rc := &RemoteConfig{Certs: certs, Policy: func() *remote.Policy { return policy }}
	if tweak != nil {
		tweak(rc)
	}
	dir, err := os.MkdirTemp("", "hsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "s"), remote: rc, limits: lim}
	d.start(t, token.Config{})
	return d
}

// clientTLS is a module's TLS configuration with the client pair.
func clientTLS(t testing.TB, pki *remotetest.PKI, pair remotetest.Pair) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if pair.Cert != "" {
		c, err := tls.LoadX509KeyPair(pair.Cert, pair.Key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// dialTLS connects an application over TLS with the client pair.
func (d *testDaemon) dialTLS(t *testing.T, pki *remotetest.PKI, pair remotetest.Pair) *client {
	t.Helper()
	s, _, err := DialTLS(d.tlsAddr, clientTLS(t, pki, pair), NewApp(), wire.Version)
	if err != nil {
		t.Fatalf("dial tls://%s: %v", d.tlsAddr, err)
	}
	t.Cleanup(func() { s.Close() })
	return &client{Client: NewClient(t, s)}
}

func testPolicy(t testing.TB) *remote.Policy {
	p := &remote.Policy{}
	for _, a := range []string{"cn:app1=pay", "cn:app1=ops", "uri:spiffe://hsmemu.test/admin=*"} {
		if err := p.Allow(a, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Allow(remotetest.AdminURI, true); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTLSPolicy: each identity sees only its tokens; one with no entry
// sees none; the free slot is an administrator's alone.
func TestTLSPolicy(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), nil)
	local := d.dial(t)
	pay, ops, hr := local.NewToken("pay"), local.NewToken("ops"), local.NewToken("hr")

	app := d.dialTLS(t, pki, pki.App)
	if got := app.Slots(); !slices.Equal(got, []uint64{pay, ops}) {
		t.Errorf("cn:app1 sees slots %v, want %v", got, []uint64{pay, ops})
	}
	// The hidden token is no slot at all, for every call that names one.
	app.Must(ck.CKR_SLOT_ID_INVALID, "C_GetTokenInfo", U(hr), None())
	app.Must(ck.CKR_SLOT_ID_INVALID, "C_GetSlotInfo", U(hr), None())
	app.Must(ck.CKR_SLOT_ID_INVALID, "C_OpenSession", U(hr), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	app.Must(ck.CKR_SLOT_ID_INVALID, "C_GetMechanismList", U(hr), Out(500))
	app.Must(ck.CKR_SLOT_ID_INVALID, "C_InitToken", U(0), S(SOPIN), Label32("mine"))
	// Its own token works as on the socket.
	h := app.Open(pay, false)
	app.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	app.Must(ck.CKR_OK, "C_GenerateRandom", U(h), U(32))

	nobody := d.dialTLS(t, pki, pki.App2)
	if got := nobody.Slots(); len(got) != 0 {
		t.Errorf("cn:app2, with no entry, sees slots %v", got)
	}
	nobody.Must(ck.CKR_SLOT_ID_INVALID, "C_OpenSession", U(pay), U(ck.CKF_SERIAL_SESSION), None(), None(), None())

	admin := d.dialTLS(t, pki, pki.Admin)
	if got := admin.Slots(); !slices.Equal(got, []uint64{pay, ops, hr, 0}) {
		t.Errorf("the administrator sees slots %v", got)
	}

	// The audit log names the remote identity of the login.
	recs, err := d.st.Store.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Event == "login.success" && r.Actor.Remote == "cn:app1" && r.Actor.UID == RemoteUID {
			found = true
		}
	}
	if !found {
		t.Errorf("no login record names cn:app1: %+v", recs)
	}
}

// TestTLSRefused: the handshake refuses what it must, TLS 1.3 only.
func TestTLSRefused(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), nil)
	for _, tc := range []struct {
		name string
		cfg  func() *tls.Config
	}{
		{"no client certificate", func() *tls.Config { return clientTLS(t, pki, remotetest.Pair{}) }},
		{"expired", func() *tls.Config { return clientTLS(t, pki, pki.Expired) }},
		{"unknown CA", func() *tls.Config { return clientTLS(t, pki, pki.Stranger) }},
		{"TLS 1.2", func() *tls.Config {
			c := clientTLS(t, pki, pki.App)
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// With TLS 1.3 a refused client certificate shows at the first
			// read after the handshake: the hello's reply.
			_, _, err := DialTLS(d.tlsAddr, tc.cfg(), NewApp(), wire.Version)
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
	// And a good one still works afterwards.
	d.dialTLS(t, pki, pki.App).Slots()
}

// TestTLSAdmin: admin calls over TLS need an administrator's identity;
// their audit records name it.
func TestTLSAdmin(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), nil)
	if _, err := adminapi.DialTLS(d.tlsAddr, clientTLS(t, pki, pki.App)); err == nil || !strings.Contains(err.Error(), "not an administrator") {
		t.Fatalf("an application's certificate made an admin connection: %v", err)
	}
	a, err := adminapi.DialTLS(d.tlsAddr, clientTLS(t, pki, pki.Admin))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var made adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "remote", Tier: "standard", SOPIN: []byte(SOPIN), UserPIN: []byte(UserPIN)}, &made); err != nil {
		t.Fatal(err)
	}
	var list []adminapi.Token
	if err := a.Call(adminapi.OpTokenList, nil, &list); err != nil || len(list) != 1 || list[0].Label != "remote" {
		t.Fatalf("token.list: %+v %v", list, err)
	}
	recs, err := d.st.Store.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || recs[len(recs)-1].Actor.Remote != remotetest.AdminURI {
		t.Fatalf("last audit record %+v does not name %s", recs[len(recs)-1], remotetest.AdminURI)
	}
}
