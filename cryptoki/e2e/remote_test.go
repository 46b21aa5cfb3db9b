package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"hsmemu/bench"
	"hsmemu/daemon/remote/remotetest"
)

// Remote daemons: the module reaches `hsmemu serve --listen tls://...`
// over TCP with mutual TLS 1.3 (docs/remote.md). The daemons here have a
// keystore each; cluster_test.go runs several on one PostgreSQL keystore.

// remoteNode is a daemon serving a TLS listener on a loopback port.
type remoteNode struct {
	*daemonProc
	addr string
}

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startRemote starts a daemon whose listener has the pair's certificate,
// trusts pki's CA, lets the administrator's identity see every token and
// administer, and cn:app1 see the token "pay".
func startRemote(t *testing.T, pki *remotetest.PKI, cert remotetest.Pair) *remoteNode {
	t.Helper()
	n := newRemote(t, pki, cert)
	n.start()
	return n
}

// newRemote is startRemote without the start, with extra flags for serve.
func newRemote(t *testing.T, pki *remotetest.PKI, cert remotetest.Pair, extra ...string) *remoteNode {
	t.Helper()
	addr := freeAddr(t)
	// Its log says which handshakes resumed a session.
	t.Setenv("HSMEMU_LOG_LEVEL", "debug")
	d := newDaemon(t, append([]string{"--listen", "tls://" + addr, "--tls-cert", cert.Cert, "--tls-key", cert.Key, "--client-ca", pki.CA,
		"--tls-allow", remotetest.AdminURI + "=*", "--tls-admin", remotetest.AdminURI, "--tls-allow", "cn:app1=pay"}, extra...)...)
	return &remoteNode{daemonProc: d, addr: addr}
}

// remoteEnv is the environment of a client that reaches servers with the
// pair's certificate, and nothing else of the module's configuration.
func remoteEnv(pki *remotetest.PKI, pair remotetest.Pair, servers ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HSMEMU_") {
			env = append(env, e)
		}
	}
	list := make([]string, len(servers))
	for i, s := range servers {
		list[i] = "tls://" + s
	}
	return append(env, "HSMEMU_CONFIG=/nonexistent", "HSMEMU_SYSTEM_CONFIG=/nonexistent",
		"HSMEMU_SERVER="+strings.Join(list, ", "), "HSMEMU_TLS_CERT="+pair.Cert, "HSMEMU_TLS_KEY="+pair.Key, "HSMEMU_TLS_CA="+pki.CA)
}

const (
	remoteSOPIN = "so-pin-8765"
	remotePIN   = "user-pin-1234"
)

// provision makes the token "pay" with an EC key "sig" (CKA_ID 0x51) on a node,
// through pkcs11-tool over TLS as the administrator.
func provision(t *testing.T, tool, module string, env []string) {
	t.Helper()
	for _, args := range [][]string{
		{"--init-token", "--slot", "0", "--label", "pay", "--so-pin", remoteSOPIN},
		{"--token-label", "pay", "--login", "--login-type", "so", "--so-pin", remoteSOPIN, "--init-pin", "--pin", remotePIN},
		{"--token-label", "pay", "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "sig", "--id", "51"},
	} {
		if out, code := toolRun(t, env, tool, append([]string{"--module", module}, args...)...); code != 0 {
			t.Fatalf("pkcs11-tool %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
}

func TestRemotePkcs11Tool(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	admin := remoteEnv(pki, pki.Admin, n.addr)
	provision(t, tool, a.module, admin)
	// A second token, which cn:app1 does not see.
	if out, code := toolRun(t, admin, tool, "--module", a.module, "--init-token", "--slot", "0", "--label", "hr", "--so-pin", remoteSOPIN); code != 0 {
		t.Fatalf("init hr: %d\n%s", code, out)
	}

	out, _ := toolRun(t, remoteEnv(pki, pki.App, n.addr), tool, "--module", a.module, "-L")
	if _, _, ok := p11Slot(out, "pay"); !ok || strings.Contains(out, "hr") || strings.Contains(out, "uninitialized") {
		t.Errorf("cn:app1 lists:\n%s", out)
	}
	out, code := toolRun(t, remoteEnv(pki, pki.App, n.addr), tool, "--module", a.module, "--token-label", "pay",
		"--login", "--pin", remotePIN, "--sign", "--mechanism", "ECDSA", "--label", "sig", "--input-file", "/dev/null", "--output-file", "/dev/null")
	if code != 0 {
		t.Errorf("cn:app1 signs: exit %d\n%s", code, out)
	}
	out, _ = toolRun(t, remoteEnv(pki, pki.App2, n.addr), tool, "--module", a.module, "-L")
	if strings.Contains(out, "token label") {
		t.Errorf("cn:app2, with no entry, lists tokens:\n%s", out)
	}

	// GnuTLS's p11tool, with the application's certificate.
	p11tool := needTool(t, "p11tool", "gnutls-bin")
	out, code = toolRun(t, remoteEnv(pki, pki.App, n.addr), p11tool, "--provider", a.module, "--list-tokens")
	if code != 0 || !regexp.MustCompile(`(?m)^\s+Label: pay$`).MatchString(out) || strings.Contains(out, "Label: hr") {
		t.Errorf("p11tool --list-tokens: exit %d\n%s", code, out)
	}
	out, code = toolRun(t, append(remoteEnv(pki, pki.App, n.addr), "GNUTLS_PIN="+remotePIN), p11tool, "--provider", a.module,
		"--login", "--list-privkeys", "pkcs11:token=pay")
	if code != 0 || !strings.Contains(out, "object=sig") {
		t.Errorf("p11tool --list-privkeys: exit %d\n%s", code, out)
	}
}

// TestRemoteErrors: what a user can fix is said once, and the slot has no
// token.
func TestRemoteErrors(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)

	// A key others may read.
	loose := filepath.Join(t.TempDir(), "loose.key")
	b, _ := os.ReadFile(pki.App.Key)
	os.WriteFile(loose, b, 0o644)
	// A server that speaks TLS 1.3 with a good certificate, and not the
	// protocol; and one that does not speak TLS.
	notHSM := fakeServer(t, pki, true)
	plain := fakeServer(t, pki, false)

	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"unknown CA", remoteEnv(pki, pki.Stranger, n.addr), "does not know the CA of tls_cert"},
		{"expired", remoteEnv(pki, pki.Expired, n.addr), "tls_cert .* has expired"},
		{"key mode", remoteEnv(pki, remotetest.Pair{Cert: pki.App.Cert, Key: loose}, n.addr), "may be read by other users .*chmod 600"},
		{"daemon not trusted", append(remoteEnv(pki, pki.App, n.addr), "HSMEMU_TLS_CA="+pki.OtherCA), "certificate tls_ca does not verify"},
		{"not hsmemu", remoteEnv(pki, pki.App, notHSM), "is not an hsmemu daemon"},
		{"not TLS", remoteEnv(pki, pki.App, plain), "is not an hsmemu daemon"},
		{"bad server", append(remoteEnv(pki, pki.App, n.addr), "HSMEMU_SERVER=tcp://"+n.addr), "want tls://HOST:PORT"},
		{"no certificate", append(remoteEnv(pki, pki.App, n.addr), "HSMEMU_TLS_CERT="), "not tls_cert, tls_key and tls_ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _ := toolRun(t, tc.env, tool, "--module", a.module, "-L", "-O")
			if !strings.Contains(out, "daemon not running") || strings.Contains(out, "token label") {
				t.Errorf("the slot is not the one without a token:\n%s", out)
			}
			lines := regexp.MustCompile(`(?m)^hsmemu-pkcs11: .*$`).FindAllString(out, -1)
			if len(lines) != 1 || !regexp.MustCompile(tc.want).MatchString(lines[0]) {
				t.Errorf("want one message matching %q, got %q\n%s", tc.want, lines, out)
			}
		})
	}
}

// fakeServer listens on a loopback port and answers every connection with
// junk, over TLS 1.3 with the daemon's certificate or in clear.
func fakeServer(t *testing.T, pki *remotetest.PKI, withTLS bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if withTLS {
		cert, err := tls.LoadX509KeyPair(pki.Daemon.Cert, pki.Daemon.Key)
		if err != nil {
			t.Fatal(err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, ClientAuth: tls.RequestClientCert})
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				var b [32]byte
				io.ReadFull(c, b[:])
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			}()
		}
	}()
	return ln.Addr().String()
}

// TestRemoteCProgram runs the C end-to-end program (setup, fork, threads,
// bad arguments, daemon restarts, a fork and a C_Finalize during the
// first dial's reading of tls_ca) through tls://.
func TestRemoteCProgram(t *testing.T) {
	a := need(t)
	prog := ctestNeedBuilt(t, "build/e2e")
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	runCProgramOn(t, n.daemonProc, prog, a.module, remoteEnv(pki, pki.Admin, n.addr), ctestSections, 250)
	// Its threads dial several connections, and it restarts the daemon
	// several times: most handshakes resume a session an earlier one got
	// (a restarted daemon has new ticket keys, so the first after each
	// start is a full one).
	n.stop() // its log is complete, and no longer written
	var full, resumed int
	for _, l := range n.logs {
		full += strings.Count(l.String(), "resumed=false")
		resumed += strings.Count(l.String(), "resumed=true")
	}
	t.Logf("TLS handshakes: %d full, %d resumed", full, resumed)
	if resumed == 0 || resumed < full {
		t.Errorf("%d full handshakes and %d resumed", full, resumed)
	}
}

// TestRemoteCProgramASan is TestRemoteCProgram with the sanitized program
// and module: libssl's memory, and ours around it, checked.
func TestRemoteCProgramASan(t *testing.T) {
	a := need(t)
	prog := ctestNeedBuilt(t, "build/e2e-asan")
	module := ctestNeedBuilt(t, strings.TrimPrefix(a.asanModule, a.root+string(filepath.Separator)))
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	runCProgramOn(t, n.daemonProc, prog, module, append(remoteEnv(pki, pki.Admin, n.addr),
		"ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0", "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"), ctestSections, 250)
}

// TestRemoteConfigFile: the servers and certificates from module.conf; a
// first server that accepts the connection and never answers costs the
// first dial its share of the call timeout, and the module goes on with
// the second.
func TestRemoteConfigFile(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	provision(t, tool, a.module, remoteEnv(pki, pki.Admin, n.addr))
	silent, err := net.Listen("tcp", "127.0.0.1:0") // never accepts: the kernel does, and nothing answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	conf := filepath.Join(t.TempDir(), "module.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("# remote daemons\nserver = tls://%s, tls://%s\ntls_cert = %s\ntls_key = %s\ntls_ca = %s\ntimeout = 2\n",
		silent.Addr(), n.addr, pki.App.Cert, pki.App.Key, pki.CA)), 0o600)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HSMEMU_") {
			env = append(env, e)
		}
	}
	env = append(env, "HSMEMU_CONFIG="+conf)
	start := time.Now()
	out, code := toolRun(t, env, tool, "--module", a.module, "-L")
	el := time.Since(start)
	if _, _, ok := p11Slot(out, "pay"); code != 0 || !ok {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	t.Logf("listed through the second server in %v (the first silent, timeout 2 s)", el.Round(time.Millisecond))
	if el < time.Second {
		t.Errorf("the silent server was not tried first (%v)", el)
	}
}

// TestRemoteBench runs `hsmemu bench` on one daemon through its socket and
// through TLS in one run, with both floors, and reports how an operation
// through TLS compares with its time through the socket plus the
// difference of the floors (docs/remote.md). It asserts no speed.
func TestRemoteBench(t *testing.T) {
	a := need(t)
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	cmd := exec.Command(a.daemon, "bench", "--module", a.module+"@"+n.sock, "--module", a.module+"@tls://"+n.addr,
		"--tls-cert", pki.Admin.Cert, "--tls-key", pki.Admin.Key, "--tls-ca", pki.CA, "--setup",
		"--op", "sign-ecdsa-p256", "--op", "wrap", "--op", "random-32",
		"--duration", "300ms", "--warmup", "50ms", "--runs", "3", "--json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hsmemu bench: %v\n%s", err, stderr.String())
	}
	rep, err := bench.ReadJSON(strings.NewReader(string(out)))
	if err != nil {
		t.Fatalf("JSON: %v\n%s", err, out)
	}
	if rep.Floor == nil || rep.Floor.Status != "ok" || rep.TLSFloor == nil || rep.TLSFloor.Status != "ok" {
		t.Fatalf("floors: %+v %+v", rep.Floor, rep.TLSFloor)
	}
	t.Logf("floors: Unix socket p50 %v, TLS p50 %v", time.Duration(rep.Floor.P50), time.Duration(rep.TLSFloor.P50))
	tls := 0
	for _, r := range rep.Results {
		if r.Status != "ok" {
			t.Errorf("%s on %s: %s %s", r.Op, r.Module, r.Status, r.Reason)
			continue
		}
		t.Logf("%-16s %-26s p50 %-8v %8.0f/s  floor ratio %.2f  tls ratio %.2f", r.Op, r.Module, time.Duration(r.P50), r.OpsPerS, r.FloorRatio, r.TLSRatio)
		if r.Remote {
			tls++
			if r.TLSRatio <= 0 {
				t.Errorf("%s through TLS has no ratio to the socket's", r.Op)
			}
		}
	}
	if tls != 3 {
		t.Errorf("%d results through TLS, want 3", tls)
	}
}

// TestRemoteAdminCLI: `hsmemu --server tls://...` administers a remote
// daemon with an administrator's certificate, and not with an
// application's; the audit log names the remote administrator.
func TestRemoteAdminCLI(t *testing.T) {
	a := need(t)
	pki := remotetest.New(t)
	n := startRemote(t, pki, pki.Daemon)
	run := func(pair remotetest.Pair, args ...string) (string, int) {
		t.Helper()
		all := append([]string{"--server", "tls://" + n.addr, "--tls-cert", pair.Cert, "--tls-key", pair.Key, "--tls-ca", pki.CA}, args...)
		cmd := exec.Command(a.daemon, all...)
		cmd.Env = remoteEnv(pki, pair)
		cmd.Env = append(cmd.Env, "HSMEMU_SO_PIN="+remoteSOPIN, "HSMEMU_USER_PIN="+remotePIN)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := run(pki.Admin, "token", "create", "--label", "ops"); code != 0 {
		t.Fatalf("token create: exit %d\n%s", code, out)
	}
	if out, code := run(pki.Admin, "token", "list"); code != 0 || !strings.Contains(out, "ops") {
		t.Fatalf("token list: exit %d\n%s", code, out)
	}
	if out, code := run(pki.App, "token", "list"); code == 0 || !strings.Contains(out, "not an administrator") {
		t.Fatalf("an application's certificate administers: exit %d\n%s", code, out)
	}
	out, code := run(pki.Admin, "audit", "tail")
	if code != 0 || !strings.Contains(out, remotetest.AdminURI) {
		t.Fatalf("audit tail does not name the remote administrator: exit %d\n%s", code, out)
	}
}

// TestRemoteSIGHUP: SIGHUP rereads the listener's certificates; a daemon
// without a listener is not stopped by it.
func TestRemoteSIGHUP(t *testing.T) {
	need(t)
	pki := remotetest.New(t)
	// Certificates the daemon reads from files that the test replaces.
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "d.pem"), filepath.Join(dir, "d.key")
	cp := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(to, b, 0o600)
	}
	cp(pki.Daemon.Cert, cert)
	cp(pki.Daemon.Key, key)
	n := startRemote(t, pki, remotetest.Pair{Cert: cert, Key: key})
	peer := func() string {
		c, err := tls.Dial("tcp", n.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := peer(); got != "node1" {
		t.Fatalf("certificate %q", got)
	}
	cp(pki.Daemon2.Cert, cert)
	cp(pki.Daemon2.Key, key)
	n.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for peer() != "node2" {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload\n%s", n.log)
		}
		time.Sleep(20 * time.Millisecond)
	}

	local := startDaemon(t)
	local.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond)
	if c, err := net.Dial("unix", local.sock); err != nil {
		t.Fatalf("SIGHUP stopped a daemon without a listener: %v\n%s", err, local.log)
	} else {
		c.Close()
	}
}
