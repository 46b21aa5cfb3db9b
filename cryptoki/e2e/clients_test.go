package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"hsmemu/internal/testenv"

	"golang.org/x/crypto/ssh"
)

// Real clients of the module, each as its users run it: OpenSC's
// pkcs11-tool self-tests, OpenSSL 3 through the libp11 engine (signatures,
// decryption, a self-signed certificate and a TLS server), OpenSSH
// (ssh-keygen -D, ssh-agent with ssh-add -s, signatures through the agent),
// GnuTLS's p11tool and p11-kit's module registry. Each test starts its own
// daemon and makes a token with pkcs11-tool, holding an RSA-2048 key pair
// (id 01, label "rsa") and an EC P-256 key pair (id 02, label "ec").
//
// The tests only run other programs, so they run in parallel with each
// other. A client that is not installed skips its test, and fails it under
// CI=true (scripts/install-deps.sh installs them all).

const (
	clientSOPIN = "client-so-pin-8765"
	clientPIN   = "client-user-pin-1234"
	// clientTimeout bounds one client run, and the life of a server or an
	// agent a test starts.
	clientTimeout = 60 * time.Second
)

// syncBuffer collects a process's output; it may be read while the
// process writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// execOpts is how a client runs: its environment, its standard input, and
// the user it runs as (nil: this process's).
type execOpts struct {
	env   []string
	stdin []byte
	cred  *syscall.Credential
}

// execResult is what a client run gave: its standard output and error,
// apart and interleaved as a terminal shows them, and its exit code.
type execResult struct {
	stdout, stderr, mixed string
	code                  int
}

// text is the output to read: standard output then standard error. The
// interleaved output may cut a line of one with the other (a client's
// standard output to a pipe is buffered, its standard error is not).
func (r execResult) text() string {
	if r.stdout != "" && !strings.HasSuffix(r.stdout, "\n") {
		return r.stdout + "\n" + r.stderr
	}
	return r.stdout + r.stderr
}

// withEnv returns base with the variables added, never sharing its array.
func withEnv(base []string, kv ...string) []string {
	return append(slices.Clip(base), kv...)
}

// cmdline renders a command for failure messages.
func cmdline(tool string, args ...string) string {
	parts := []string{filepath.Base(tool)}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n;?&*'\"\\") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// clientExec runs a client to its end; a client that does not finish in
// time, or cannot run, fails the test.
func clientExec(t *testing.T, o execOpts, tool string, args ...string) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = o.env
	if o.stdin != nil {
		cmd.Stdin = bytes.NewReader(o.stdin)
	}
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	// A child the client leaves behind must not hold its output open.
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&stdout, &out), io.MultiWriter(&stderr, &out)
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s: no exit within %v\n%s", cmdline(tool, args...), clientTimeout, out.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return execResult{stdout: stdout.String(), stderr: stderr.String(), mixed: out.String(), code: 0}
	case errors.As(err, &ee) && ee.Exited():
		return execResult{stdout: stdout.String(), stderr: stderr.String(), mixed: out.String(), code: ee.ExitCode()}
	}
	t.Fatalf("%s: %v\n%s", cmdline(tool, args...), err, out.String())
	return execResult{}
}

// mustRun runs a client and fails the test, with the client's whole
// output, unless it exits 0.
func mustRun(t *testing.T, what string, o execOpts, tool string, args ...string) execResult {
	t.Helper()
	r := clientExec(t, o, tool, args...)
	if r.code != 0 {
		t.Fatalf("%s: %s: exit %d, want 0; output:\n%s", what, cmdline(tool, args...), r.code, r.mixed)
	}
	return r
}

// wantMatch fails the test unless out matches every pattern.
func wantMatch(t *testing.T, what, out string, patterns ...string) {
	t.Helper()
	for _, p := range patterns {
		if !regexp.MustCompile(p).MatchString(out) {
			t.Fatalf("%s: output does not match %q; output:\n%s", what, p, out)
		}
	}
}

// bgProc is a server or an agent a test runs beside its clients.
type bgProc struct {
	what   string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// startBackground starts a process that lives at most clientTimeout, and
// is stopped when the test ends.
func startBackground(t *testing.T, what string, o execOpts, tool string, args ...string) *bgProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	p := &bgProc{what: what + ": " + cmdline(tool, args...), out: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	p.cmd = exec.CommandContext(ctx, tool, args...)
	p.cmd.Env = o.env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s: %v", p.what, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s: output:\n%s", p.what, p.out)
		}
	})
	return p
}

// waitUntil waits until ready says so; a process that exits first, or
// does not get ready in time, fails the test.
func (p *bgProc) waitUntil(t *testing.T, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ready() {
		select {
		case <-p.done:
			t.Fatalf("%s: exited (%v) before it was ready; output:\n%s", p.what, p.err, p.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after 20 s; output:\n%s", p.what, p.out)
		}
	}
}

// stop ends the process with SIGTERM, then SIGKILL, and waits for it.
func (p *bgProc) stop() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.cancel()
			<-p.done
		}
	}
	p.cancel()
}

// exited reports whether the process has ended.
func (p *bgProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// clientToken is a daemon with one token, made and filled by pkcs11-tool.
type clientToken struct {
	a     artefacts
	d     *daemonProc
	env   []string // the daemon's client environment (HSMEMU_SOCKET)
	dir   string
	label string
	p11   string // pkcs11-tool
}

// newClientToken starts a daemon, makes a token labelled label with the
// user PIN set and, with keys, the RSA and EC key pairs in it.
func newClientToken(t *testing.T, label string, keys bool, daemonArgs ...string) *clientToken {
	t.Helper()
	c := &clientToken{a: need(t), label: label, dir: t.TempDir()}
	c.p11 = needTool(t, "pkcs11-tool", "opensc")
	// Registered before the daemon's own cleanup, so it runs after the
	// daemon has stopped and its log is complete.
	t.Cleanup(func() {
		if t.Failed() && c.d != nil {
			t.Logf("hsmemu %s log:\n%s", strings.Join(c.d.args, " "), c.d.log)
		}
	})
	c.d = startDaemon(t, daemonArgs...)
	c.env = c.d.env()
	c.pkcs11tool(t, "init token", "--init-token", "--slot", "0", "--label", label, "--so-pin", clientSOPIN)
	c.pkcs11tool(t, "init PIN", "--init-pin", "--token-label", label, "--so-pin", clientSOPIN, "--pin", clientPIN)
	if keys {
		c.pkcs11tool(t, "RSA key pair", c.user("--keypairgen", "--key-type", "rsa:2048", "--id", "01", "--label", "rsa")...)
		c.pkcs11tool(t, "EC key pair", c.user("--keypairgen", "--key-type", "EC:prime256v1", "--id", "02", "--label", "ec")...)
	}
	return c
}

// user returns pkcs11-tool arguments that log the user in to the token.
func (c *clientToken) user(args ...string) []string {
	return append([]string{"--token-label", c.label, "--login", "--pin", clientPIN}, args...)
}

// pkcs11tool runs pkcs11-tool with the module and returns its output; it
// must exit 0.
func (c *clientToken) pkcs11tool(t *testing.T, what string, args ...string) string {
	t.Helper()
	return mustRun(t, what, execOpts{env: c.env}, c.p11, append([]string{"--module", c.a.module}, args...)...).text()
}

// publicKey exports a public key with pkcs11-tool (no login: it is a
// public object) and returns it, parsed, and the path of its PEM file.
func (c *clientToken) publicKey(t *testing.T, id string) (crypto.PublicKey, string) {
	t.Helper()
	der := filepath.Join(c.dir, "pub-"+id+".der")
	c.pkcs11tool(t, "export the public key "+id, "--token-label", c.label, "--read-object", "--type", "pubkey",
		"--id", id, "--output-file", der)
	b, err := os.ReadFile(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		t.Fatalf("pkcs11-tool exported public key %s: %v (%x)", id, err, b)
	}
	pemPath := filepath.Join(c.dir, "pub-"+id+".pem")
	if err := os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: b}), 0o600); err != nil {
		t.Fatal(err)
	}
	return pub, pemPath
}

// clientKeys are the token's two key pairs.
var clientKeys = []struct{ name, label, id string }{
	{name: "EC P-256", label: "ec", id: "02"},
	{name: "RSA-2048", label: "rsa", id: "01"},
}

// pkcs11ToolFailure matches what pkcs11-tool prints when a test or a call
// fails: "ERR: ...", "... failed", "error: PKCS11 function ...",
// "warning: C_Sign() didn't return ...", "Invalid signature", "N errors",
// "Aborting.".
var pkcs11ToolFailure = regexp.MustCompile(`(?i)\bERR\b|fail|error|warning|invalid|wrong|differ|abort`)

// pkcs11ToolFailures returns the lines of a pkcs11-tool self-test's output
// that report a failure; the closing "No errors" does not.
func pkcs11ToolFailures(out string) []string {
	var bad []string
	for _, l := range strings.Split(out, "\n") {
		if pkcs11ToolFailure.MatchString(l) && strings.TrimSpace(l) != "No errors" {
			bad = append(bad, l)
		}
	}
	return bad
}

// TestClientsPkcs11ToolSelfTests: pkcs11-tool's own tests pass with an RSA
// and an EC key pair on the token: --test, --test-ec, --test-fork and
// --test-threads.
func TestClientsPkcs11ToolSelfTests(t *testing.T) {
	t.Parallel()
	// Real PIN hashing (the daemon's defaults) on every login, the PIN
	// cache off: the main thread's login then outlasts --test-threads'
	// thread, as in TestPkcs11Tool. --test-ec signs with CKM_ECDSA_SHA1,
	// which only the legacy policy lets sign (docs/mechanisms.md).
	c := newClientToken(t, "selftests", true, "--pin-kdf-time", "3", "--pin-kdf-memory", "65536", "--pin-cache-ttl", "0", "--legacy-algorithms")
	rsaObject := `(?m)^Private Key Object; RSA\s*\n\s+label:\s+rsa\n\s+ID:\s+01$`
	ecObject := `(?m)^Private Key Object; EC\s*\n\s+label:\s+ec\n\s+ID:\s+02$`

	t.Run("test", func(t *testing.T) {
		// pkcs11-tool 0.23 tests C_Sign only with mechanisms flagged
		// CKF_HW ("Signatures: not implemented" otherwise); it verifies
		// with the RSA key and decrypts with it, and skips the EC key.
		r := mustRun(t, "--test", execOpts{env: c.env}, c.p11, append([]string{"--module", c.a.module}, c.user("--test")...)...)
		out := r.text()
		if bad := pkcs11ToolFailures(out); len(bad) > 0 {
			t.Fatalf("pkcs11-tool --test reports failures:\n%s\noutput:\n%s", strings.Join(bad, "\n"), out)
		}
		if !strings.HasSuffix(strings.TrimSpace(r.stdout), "\nNo errors") {
			t.Fatalf("pkcs11-tool --test does not end with \"No errors\"; output:\n%s", r.stdout)
		}
		wantMatch(t, "--test", out,
			`C_GenerateRandom\(\):\n(.*\n)?\s+seems to be OK`,
			`(?m)^\s+all \d+ digest functions seem to work$`,
			`(?m)^Verify \(currently only for RSA\)\n\s+testing key \d+ \(rsa\)\s*\n\s+RSA-PKCS: OK$`,
			`(?m)^\s+testing key \d+ \(ec\)`,
			`(?m)^Decryption \(currently only for RSA\)\n\s+testing key \d+ \(rsa\)\s*\n\s+RSA-PKCS: OK$`,
			`(?m)^\s+RSA-PKCS-OAEP: .*\n\s*OK$`)
	})

	t.Run("test-ec", func(t *testing.T) {
		// --test-ec makes token keys, and pkcs11-tool 0.23 opens a
		// read-only session for it: C_GenerateKeyPair there must be
		// CKR_SESSION_READ_ONLY (and is). --session-rw asks for the
		// read-write session the test needs.
		args := c.user("--test-ec", "--id", "03", "--key-type", "EC:prime256v1")
		if r := clientExec(t, execOpts{env: c.env}, c.p11, append([]string{"--module", c.a.module}, args...)...); r.code != 0 &&
			!strings.Contains(r.text(), "C_GenerateKeyPair failed: rv = CKR_SESSION_READ_ONLY") {
			t.Fatalf("--test-ec in a read-only session: exit %d, want CKR_SESSION_READ_ONLY from C_GenerateKeyPair; output:\n%s",
				r.code, r.mixed)
		}
		out := c.pkcs11tool(t, "--test-ec", append([]string{"--session-rw"}, args...)...)
		// pkcs11-tool 0.23 fetches the signature that a C_Sign length
		// query measured with C_SignFinal, which mixes the single-part and
		// multi-part forms; the specification refuses that, as hsmemu
		// does (CKR_OPERATION_ACTIVE) and SoftHSMv2 (whose --test-ec
		// fails there too). Every other line must be clean.
		signFinal := "warning: PKCS11 function C_SignFinal failed: rv = CKR_OPERATION_ACTIVE (0x90)"
		var bad []string
		seen := false
		for _, l := range pkcs11ToolFailures(out) {
			if strings.TrimSpace(l) == signFinal {
				seen = true
				continue
			}
			bad = append(bad, l)
		}
		if len(bad) > 0 || !seen {
			t.Fatalf("pkcs11-tool --test-ec: failures %q, the known C_SignFinal refusal seen: %v\noutput:\n%s", bad, seen, out)
		}
		wantMatch(t, "--test-ec", out, `\*\*\* Generating EC key pair \*\*\*`,
			`\*\*\* Changing the CKA_ID of private and public key into one of 20 bytes \*\*\*`,
			`\*\*\* Doing a signature \*\*\*`, `\*\*\* Deleting the private and the public key again \*\*\*`,
			`(?m)^==> OK$`)
		// It deleted its keys, and left the others.
		out = c.pkcs11tool(t, "list objects after --test-ec", c.user("--list-objects")...)
		wantMatch(t, "objects after --test-ec", out, rsaObject, ecObject)
		if n := strings.Count(out, "Object;"); n != 4 {
			t.Fatalf("%d objects after --test-ec, want 4:\n%s", n, out)
		}
	})

	t.Run("test-fork", func(t *testing.T) {
		// The child calls C_Initialize after fork() and must succeed
		// (pkcs11-tool exits non-zero otherwise); the parent then goes on
		// with the module it initialised before the fork.
		out := c.pkcs11tool(t, "--test-fork", c.user("--test-fork", "--list-objects")...)
		if bad := pkcs11ToolFailures(out); len(bad) > 0 {
			t.Fatalf("pkcs11-tool --test-fork reports failures:\n%s\noutput:\n%s", strings.Join(bad, "\n"), out)
		}
		wantMatch(t, "--test-fork", out, `\*\*\* Calling C_Initialize in forked child process \*\*\*`, rsaObject, ecObject)
	})

	t.Run("test-threads", func(t *testing.T) {
		what := "--test-threads ILGISLT0"
		out := c.pkcs11tool(t, what, append([]string{"--test-threads", "ILGISLT0", "-L"}, c.user("--list-objects")...)...)
		checkThreads(t, what, out, 1)
		_, block, ok := p11Slot(out, c.label)
		if !ok {
			t.Fatalf("%s: no slot labelled %s:\n%s", what, c.label, out)
		}
		wantMatch(t, what, block, `PIN initialized`)
		wantMatch(t, what, out, rsaObject, ecObject)
	})
}

// opensslEngine finds the libp11 engine in OpenSSL's engines directory.
func opensslEngine(t *testing.T, openssl string) string {
	t.Helper()
	r := mustRun(t, "engines directory", execOpts{env: os.Environ()}, openssl, "version", "-e")
	m := regexp.MustCompile(`ENGINESDIR: "([^"]*)"`).FindStringSubmatch(r.text())
	if m == nil {
		t.Fatalf("openssl version -e: %s", r.mixed)
	}
	p := filepath.Join(m[1], "pkcs11.so")
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "the libp11 engine is not installed (apt-get install libengine-pkcs11-openssl): %v", err)
	}
	return p
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestClientsOpenSSLEngine: OpenSSL 3 with the libp11 engine signs with the
// token's EC and RSA keys (checked by openssl and by Go with the public
// keys pkcs11-tool exports), decrypts with the RSA key, makes self-signed
// certificates with both, and serves TLS 1.3 and 1.2 with them.
func TestClientsOpenSSLEngine(t *testing.T) {
	t.Parallel()
	openssl := needTool(t, "openssl", "openssl")
	engine := opensslEngine(t, openssl)
	c := newClientToken(t, "openssl", true)

	// The engine is configured, not initialised, when a command starts;
	// `-engine pkcs11` initialises it, loading the module.
	conf := filepath.Join(c.dir, "openssl.cnf")
	cnf := fmt.Sprintf(`openssl_conf = openssl_init

[openssl_init]
engines = engine_section

[engine_section]
pkcs11 = pkcs11_section

[pkcs11_section]
engine_id = pkcs11
dynamic_path = %s
MODULE_PATH = %s
init = 0

[req]
distinguished_name = req_dn
prompt = no

[req_dn]
CN = hsmemu
`, engine, c.a.module)
	if err := os.WriteFile(conf, []byte(cnf), 0o600); err != nil {
		t.Fatal(err)
	}
	o := execOpts{env: withEnv(c.env, "OPENSSL_CONF="+conf)}
	ossl := func(t *testing.T, what string, args ...string) string {
		t.Helper()
		return mustRun(t, what, o, openssl, args...).text()
	}
	data := []byte("hsmemu: a file signed by OpenSSL through the libp11 engine\n")
	dataPath := filepath.Join(c.dir, "data")
	digest := sha256.Sum256(data)
	digestPath := filepath.Join(c.dir, "data.sha256")
	for p, b := range map[string][]byte{dataPath: data, digestPath: digest[:]} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for _, k := range clientKeys {
		t.Run(k.name, func(t *testing.T) {
			pub, pubPEM := c.publicKey(t, k.id)
			uri := fmt.Sprintf("pkcs11:token=%s;object=%s;type=private?pin-value=%s", c.label, k.label, clientPIN)
			file := func(name string) string { return filepath.Join(c.dir, k.label+"-"+name) }
			read := func(p string) []byte {
				t.Helper()
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			// verifyGo checks a SHA-256 signature of data with Go.
			verifyGo := func(what string, sig []byte, pss bool) {
				t.Helper()
				var err error
				switch pub := pub.(type) {
				case *ecdsa.PublicKey:
					if pub.Curve != elliptic.P256() {
						t.Fatalf("the EC key is on %s", pub.Curve.Params().Name)
					}
					if !ecdsa.VerifyASN1(pub, digest[:], sig) {
						err = errors.New("ECDSA verification failed")
					}
				case *rsa.PublicKey:
					if pub.N.BitLen() != 2048 {
						t.Fatalf("the RSA key has %d bits", pub.N.BitLen())
					}
					if pss {
						err = rsa.VerifyPSS(pub, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
					} else {
						err = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig)
					}
				default:
					t.Fatalf("public key %s is a %T", k.id, pub)
				}
				if err != nil {
					t.Fatalf("%s: Go does not verify the signature with the exported public key: %v (%x)", what, err, sig)
				}
			}

			// openssl dgst hashes and signs through the engine.
			sig := file("dgst.sig")
			ossl(t, "dgst -sign", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", uri,
				"-out", sig, dataPath)
			out := ossl(t, "dgst -verify", "dgst", "-sha256", "-verify", pubPEM, "-signature", sig, dataPath)
			wantMatch(t, "dgst -verify", out, `(?m)^Verified OK$`)
			verifyGo("dgst -sign", read(sig), false)

			// openssl pkeyutl signs a digest through the engine.
			sig = file("pkeyutl.sig")
			ossl(t, "pkeyutl -sign", "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-inkey", uri, "-sign",
				"-pkeyopt", "digest:sha256", "-in", digestPath, "-out", sig)
			out = ossl(t, "pkeyutl -verify", "pkeyutl", "-verify", "-pubin", "-inkey", pubPEM, "-pkeyopt", "digest:sha256",
				"-in", digestPath, "-sigfile", sig)
			wantMatch(t, "pkeyutl -verify", out, `(?m)^Signature Verified Successfully$`)
			verifyGo("pkeyutl -sign", read(sig), false)

			if rsaPub, ok := pub.(*rsa.PublicKey); ok {
				// RSA-PSS signatures.
				sig = file("pss.sig")
				pss := []string{"-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"}
				ossl(t, "dgst -sign PSS", append([]string{"dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine",
					"-sign", uri, "-out", sig}, append(pss, dataPath)...)...)
				out = ossl(t, "dgst -verify PSS", append([]string{"dgst", "-sha256", "-verify", pubPEM, "-signature", sig},
					append(pss, dataPath)...)...)
				wantMatch(t, "dgst -verify PSS", out, `(?m)^Verified OK$`)
				verifyGo("dgst -sign PSS", read(sig), true)

				// Decryption of what Go encrypted to the public key:
				// PKCS#1 v1.5 and OAEP with SHA-256.
				secret := []byte("a secret only the token can read")
				for _, dec := range []struct {
					name string
					enc  func() ([]byte, error)
					opts []string
				}{
					{name: "PKCS#1 v1.5", enc: func() ([]byte, error) { return rsa.EncryptPKCS1v15(rand.Reader, rsaPub, secret) }, opts: nil},
					{name: "OAEP SHA-256", enc: func() ([]byte, error) { return rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPub, secret, nil) },
						opts: []string{"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"}},
				} {
					ct, err := dec.enc()
					if err != nil {
						t.Fatal(err)
					}
					in, pt := file("ct"), file("pt")
					if err := os.WriteFile(in, ct, 0o600); err != nil {
						t.Fatal(err)
					}
					ossl(t, "pkeyutl -decrypt "+dec.name, append([]string{"pkeyutl", "-decrypt", "-engine", "pkcs11",
						"-keyform", "engine", "-inkey", uri, "-in", in, "-out", pt}, dec.opts...)...)
					if got := read(pt); !bytes.Equal(got, secret) {
						t.Fatalf("pkeyutl -decrypt %s: %q, want %q", dec.name, got, secret)
					}
				}
			}

			// A self-signed certificate for the token's key.
			certPath := file("cert.pem")
			ossl(t, "req -x509", "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine", "-key", uri,
				"-sha256", "-days", "1", "-subj", "/CN=hsmemu "+k.label, "-addext", "subjectAltName=IP:127.0.0.1",
				"-out", certPath)
			block, _ := pem.Decode(read(certPath))
			if block == nil {
				t.Fatalf("req -x509 wrote no PEM certificate:\n%s", read(certPath))
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Fatalf("the certificate's public key is not the token's")
			}
			if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
				t.Fatalf("the self-signed certificate's signature: %v", err)
			}

			// A TLS server whose key stays on the token, and clients that
			// trust only its certificate.
			handshakes := []tlsCase{
				{name: "TLS 1.3", args: []string{"-tls1_3"}, want: []string{`(?m)^New, TLSv1\.3, Cipher is TLS_`}},
				{name: "TLS 1.2", args: []string{"-tls1_2"}, want: []string{`(?m)^New, TLSv1\.2, Cipher is ECDHE-`}},
			}
			if k.label == "ec" {
				for i := range handshakes {
					handshakes[i].want = append(handshakes[i].want, `(?m)^Peer signature type: ECDSA$`)
				}
			} else {
				for i := range handshakes {
					handshakes[i].want = append(handshakes[i].want, `(?m)^Peer signature type: RSA-PSS$`)
				}
				// And PKCS#1 v1.5 signatures, which TLS 1.2 still allows.
				handshakes = append(handshakes, tlsCase{name: "TLS 1.2 PKCS#1 v1.5", args: []string{"-tls1_2", "-sigalgs", "RSA+SHA256"},
					want: []string{`(?m)^New, TLSv1\.2, Cipher is ECDHE-RSA-`, `(?m)^Peer signature type: RSA$`}})
			}
			port := opensslServer(t, openssl, o, uri, certPath, len(handshakes))
			for _, h := range handshakes {
				args := append([]string{"s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", port), "-CAfile", certPath,
					"-verify_return_error", "-ign_eof"}, h.args...)
				r := clientExec(t, execOpts{env: o.env, stdin: []byte("GET / HTTP/1.0\r\n\r\n")}, openssl, args...)
				if r.code != 0 {
					t.Fatalf("%s: %s: exit %d, want 0; output:\n%s", h.name, cmdline(openssl, args...), r.code, r.mixed)
				}
				wantMatch(t, h.name+" "+cmdline(openssl, args...), r.text(), append([]string{`(?m)^Verification: OK$`,
					`(?m)^\s*Verify return code: 0 \(ok\)$`, `(?m)^HTTP/1\.0 200 ok`}, h.want...)...)
			}
		})
	}
}

// tlsCase is a TLS handshake: its s_client options and what its output
// must show.
type tlsCase struct {
	name string
	args []string
	want []string
}

// opensslServer starts `openssl s_server -www` with the token's key on a
// free loopback port, for n connections, and returns the port once it
// accepts.
func opensslServer(t *testing.T, openssl string, o execOpts, uri, certPath string, n int) int {
	t.Helper()
	for try := 0; ; try++ {
		port := freePort(t)
		args := []string{"s_server", "-engine", "pkcs11", "-keyform", "engine", "-key", uri, "-cert", certPath,
			"-accept", fmt.Sprintf("127.0.0.1:%d", port), "-www", "-naccept", strconv.Itoa(n)}
		srv := startBackground(t, "s_server", o, openssl, args...)
		ready := func() bool { return strings.Contains(srv.out.String(), "ACCEPT") || srv.exited() }
		srv.waitUntil(t, ready)
		if !srv.exited() {
			return port
		}
		// Someone took the port between freePort and s_server: again.
		if try < 3 && strings.Contains(srv.out.String(), "in use") {
			continue
		}
		t.Fatalf("%s: exited (%v) before accepting; output:\n%s", srv.what, srv.err, srv.out)
	}
}

// TestClientsOpenSSH: ssh-keygen -D lists the token's public keys; an
// ssh-agent loads the module with ssh-add -s, lists the keys, and signs
// with each through the module, and ssh-keygen -Y verify accepts the
// signatures.
func TestClientsOpenSSH(t *testing.T) {
	t.Parallel()
	sshKeygen := needTool(t, "ssh-keygen", "openssh-client")
	sshAgent := needTool(t, "ssh-agent", "openssh-client")
	sshAdd := needTool(t, "ssh-add", "openssh-client")
	c := newClientToken(t, "openssh", true)

	// The keys as OpenSSH should see them, from the public keys
	// pkcs11-tool exports.
	want := map[string]ssh.PublicKey{}
	for _, k := range clientKeys {
		pub, _ := c.publicKey(t, k.id)
		sp, err := ssh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		want[k.label] = sp
	}
	// checkKeys compares authorized_keys lines to want: one per key.
	checkKeys := func(t *testing.T, what, lines string) {
		t.Helper()
		seen := map[string]bool{}
		rest := []byte(lines)
		for len(bytes.TrimSpace(rest)) > 0 {
			pk, comment, _, r, err := ssh.ParseAuthorizedKey(rest)
			if err != nil {
				t.Fatalf("%s: %v; output:\n%s", what, err, lines)
			}
			rest = r
			label := ""
			for l, w := range want {
				if bytes.Equal(pk.Marshal(), w.Marshal()) {
					label = l
				}
			}
			if label == "" || seen[label] {
				t.Fatalf("%s: unexpected key %s %s (%s); output:\n%s", what, pk.Type(), ssh.FingerprintSHA256(pk), comment, lines)
			}
			seen[label] = true
		}
		if len(seen) != len(want) {
			t.Fatalf("%s: %d of the token's %d keys; output:\n%s", what, len(seen), len(want), lines)
		}
	}
	// checkFingerprints finds one line per key, with its fingerprint.
	checkFingerprints := func(t *testing.T, what, out string) {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(want) {
			t.Fatalf("%s: %d lines, want %d; output:\n%s", what, len(lines), len(want), out)
		}
		for l, w := range want {
			bits, typ := "256", "ECDSA"
			if l == "rsa" {
				bits, typ = "2048", "RSA"
			}
			wantMatch(t, what, out, `(?m)^`+bits+` `+regexp.QuoteMeta(ssh.FingerprintSHA256(w))+` .*\(`+typ+`\)$`)
		}
	}

	// ssh-keygen -D: the public keys, in authorized_keys form.
	r := mustRun(t, "ssh-keygen -D", execOpts{env: c.env}, sshKeygen, "-D", c.a.module)
	checkKeys(t, "ssh-keygen -D", r.stdout)
	keysPath := filepath.Join(c.dir, "token-keys.pub")
	if err := os.WriteFile(keysPath, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, "ssh-keygen -lf", execOpts{env: c.env}, sshKeygen, "-lf", keysPath).stdout
	checkFingerprints(t, "ssh-keygen -lf of ssh-keygen -D", out)

	// The agent, allowed to load modules from bin/ only; the module it
	// loads (in ssh-pkcs11-helper) finds the daemon by HSMEMU_SOCKET.
	binDir, err := filepath.EvalSymlinks(filepath.Dir(c.a.module))
	if err != nil {
		t.Fatal(err)
	}
	module := filepath.Join(binDir, filepath.Base(c.a.module))
	// Unix socket paths are short: keep the directory short too.
	sockDir, err := os.MkdirTemp("", "hsa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "agent.sock")
	agent := startBackground(t, "ssh-agent", execOpts{env: c.env}, sshAgent, "-D", "-a", sock, "-P", binDir+"/*")
	agent.waitUntil(t, func() bool {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	agentEnv := withEnv(c.env, "SSH_AUTH_SOCK="+sock)

	// ssh-add asks for the PIN through SSH_ASKPASS.
	askpass := filepath.Join(c.dir, "askpass")
	if err := os.WriteFile(askpass, []byte("#!/bin/sh\necho '"+clientPIN+"'\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	addEnv := withEnv(agentEnv, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
	out = mustRun(t, "ssh-add -s", execOpts{env: addEnv}, sshAdd, "-s", module).text()
	wantMatch(t, "ssh-add -s", out, `(?m)^Card added: `+regexp.QuoteMeta(module)+`$`)
	out = mustRun(t, "ssh-add -l", execOpts{env: agentEnv}, sshAdd, "-l").stdout
	checkFingerprints(t, "ssh-add -l", out)
	r = mustRun(t, "ssh-add -L", execOpts{env: agentEnv}, sshAdd, "-L")
	checkKeys(t, "ssh-add -L", r.stdout)

	// Signatures through the agent, and their verification.
	var allowed strings.Builder
	for _, w := range want {
		fmt.Fprintf(&allowed, "hsmemu@clients %s", ssh.MarshalAuthorizedKey(w))
	}
	allowedPath := filepath.Join(c.dir, "allowed_signers")
	if err := os.WriteFile(allowedPath, []byte(allowed.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range clientKeys {
		t.Run(k.name, func(t *testing.T) {
			pubPath := filepath.Join(c.dir, k.label+".pub")
			data := []byte("hsmemu: signed by ssh-agent with the token's " + k.name + " key\n")
			dataPath := filepath.Join(c.dir, k.label+"-data")
			for p, b := range map[string][]byte{pubPath: ssh.MarshalAuthorizedKey(want[k.label]), dataPath: data} {
				if err := os.WriteFile(p, b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			mustRun(t, "ssh-keygen -Y sign", execOpts{env: agentEnv}, sshKeygen, "-Y", "sign", "-f", pubPath, "-n", "file", dataPath)
			typ := map[string]string{"rsa": "RSA", "ec": "ECDSA"}[k.label]
			verify := []string{"-Y", "verify", "-f", allowedPath, "-I", "hsmemu@clients", "-n", "file", "-s", dataPath + ".sig"}
			out := mustRun(t, "ssh-keygen -Y verify", execOpts{env: agentEnv, stdin: data}, sshKeygen, verify...).text()
			wantMatch(t, "ssh-keygen -Y verify", out, `Good "file" signature for hsmemu@clients with `+typ+` key `+
				regexp.QuoteMeta(ssh.FingerprintSHA256(want[k.label])))
			// The verification means something: other data fails.
			bad := clientExec(t, execOpts{env: agentEnv, stdin: append([]byte("x"), data...)}, sshKeygen, verify...)
			if bad.code == 0 {
				t.Fatalf("ssh-keygen -Y verify accepts the signature for other data:\n%s", bad.mixed)
			}
		})
	}
}

// TestClientsGnuTLS: GnuTLS's p11tool lists the token's keys (the private
// ones after a login only) and its --test-sign passes with each.
func TestClientsGnuTLS(t *testing.T) {
	t.Parallel()
	p11tool := needTool(t, "p11tool", "gnutls-bin")
	c := newClientToken(t, "gnutls", true)
	loginEnv := withEnv(c.env, "GNUTLS_PIN="+clientPIN)

	type object struct{ url, typ, label string }
	objects := func(out string) []object {
		var objs []object
		re := regexp.MustCompile(`(?m)^Object \d+:\n\s+URL: (\S+)\n\s+Type: (.*)\n\s+Label: (.*)$`)
		for _, m := range re.FindAllStringSubmatch(out, -1) {
			objs = append(objs, object{url: m[1], typ: m[2], label: m[3]})
		}
		return objs
	}
	wantObjects := func(t *testing.T, what, out string, want []object) {
		t.Helper()
		got := objects(out)
		if len(got) != len(want) {
			t.Fatalf("%s: %d objects, want %d; output:\n%s", what, len(got), len(want), out)
		}
		for _, w := range want {
			found := false
			for _, g := range got {
				if g.typ == w.typ && g.label == w.label && strings.Contains(g.url, ";token="+c.label+";") &&
					strings.HasSuffix(g.url, w.url) && strings.Contains(g.url, "manufacturer=hsmemu;") {
					found = true
				}
			}
			if !found {
				t.Fatalf("%s: no %s labelled %s with a URL ending %s; output:\n%s", what, w.typ, w.label, w.url, out)
			}
		}
	}
	public := []object{
		{url: "id=%01;object=rsa;type=public", typ: "Public key (RSA-2048)", label: "rsa"},
		{url: "id=%02;object=ec;type=public", typ: "Public key (EC/ECDSA-SECP256R1)", label: "ec"},
	}
	private := []object{
		{url: "id=%01;object=rsa;type=private", typ: "Private key (RSA-2048)", label: "rsa"},
		{url: "id=%02;object=ec;type=private", typ: "Private key (EC/ECDSA-SECP256R1)", label: "ec"},
	}

	out := mustRun(t, "p11tool --list-all --login", execOpts{env: loginEnv}, p11tool, "--provider", c.a.module,
		"--list-all", "--login").text()
	wantObjects(t, "p11tool --list-all --login", out, append(slices.Clip(public), private...))
	out = mustRun(t, "p11tool --list-all", execOpts{env: c.env}, p11tool, "--provider", c.a.module, "--list-all").text()
	wantObjects(t, "p11tool --list-all without login", out, public)

	for _, ts := range []struct{ name, label, params, alg string }{
		{name: "EC P-256", label: "ec", params: "", alg: "ECDSA-SHA256"},
		{name: "RSA-2048", label: "rsa", params: "", alg: "RSA-SHA256"},
		{name: "RSA-2048 PSS", label: "rsa", params: "RSA-PSS", alg: "RSA-PSS-SHA256"},
	} {
		t.Run(ts.name, func(t *testing.T) {
			args := []string{"--provider", c.a.module, "--test-sign", "--login",
				fmt.Sprintf("pkcs11:token=%s;object=%s;type=private", c.label, ts.label)}
			if ts.params != "" {
				args = append(args, "--sign-params", ts.params)
			}
			out := mustRun(t, "p11tool --test-sign", execOpts{env: loginEnv}, p11tool, args...).text()
			wantMatch(t, "p11tool --test-sign", out, `(?m)^Signing using `+ts.alg+`\.\.\. ok$`,
				`(?m)^Verifying against private key parameters\.\.\. ok$`,
				`(?m)^Verifying against public key in the token\.\.\. ok$`)
		})
	}
}

// othersMayRead reports whether any user may read the file at path: every
// directory above it searchable by others, and the file readable by them.
func othersMayRead(path string) bool {
	p, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o004 == 0 {
		return false
	}
	for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == filepath.Dir(dir) {
			return true
		}
	}
}

// TestClientsP11Kit: the module registered in a p11-kit user configuration
// shows in `p11-kit list-modules` with its token, and p11-kit's proxy
// module serves the token to pkcs11-tool.
//
// p11-kit ignores the user configuration of root. Run as root (as CI is),
// the test runs p11-kit as nobody (uid 65534), whom the daemon then allows
// (--allow-uid, --socket-group); when nobody cannot read bin/ (a
// repository under /root), p11-kit loads a copy of the module.
func TestClientsP11Kit(t *testing.T) {
	t.Parallel()
	p11kit := needTool(t, "p11-kit", "p11-kit")
	var daemonArgs []string
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		const nobody = 65534
		g, err := user.LookupGroupId(strconv.Itoa(nobody))
		if err != nil {
			t.Fatalf("no group %d to run p11-kit as nobody: %v", nobody, err)
		}
		daemonArgs = []string{"--allow-uid", strconv.Itoa(nobody), "--socket-group", g.Name}
		cred = &syscall.Credential{Uid: nobody, Gid: nobody}
	}
	c := newClientToken(t, "p11kit", false, daemonArgs...)

	home := c.dir
	module := c.a.module
	if cred != nil {
		// nobody reaches the socket through the daemon's directory.
		if err := os.Chmod(c.d.dir, 0o711); err != nil {
			t.Fatal(err)
		}
		var err error
		if home, err = os.MkdirTemp("", "hsmemu-p11kit-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(home) })
		if err := os.Chmod(home, 0o755); err != nil {
			t.Fatal(err)
		}
		if !othersMayRead(c.a.module) {
			b, err := os.ReadFile(c.a.module)
			if err != nil {
				t.Fatal(err)
			}
			module = filepath.Join(home, filepath.Base(c.a.module))
			if err := os.WriteFile(module, b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	// ~/.config/pkcs11: only the user's modules, this one.
	cfg := filepath.Join(home, ".config", "pkcs11")
	if err := os.MkdirAll(filepath.Join(cfg, "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	for p, s := range map[string]string{
		filepath.Join(cfg, "pkcs11.conf"):              "user-config: only\n",
		filepath.Join(cfg, "modules", "hsmemu.module"): "module: " + module + "\n",
	} {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o := execOpts{env: withEnv(c.env, "HOME="+home), cred: cred}

	out := mustRun(t, "p11-kit list-modules", o, p11kit, "list-modules").text()
	m := regexp.MustCompile(`(?m)^hsmemu: ` + regexp.QuoteMeta(module) + `\n((?:[ \t]+.*\n?)*)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("p11-kit list-modules does not list the module hsmemu: %s; output:\n%s", module, out)
	}
	wantMatch(t, "p11-kit list-modules", m[1], `(?m)^\s+library-manufacturer: hsmemu$`,
		`(?m)^\s+token: `+regexp.QuoteMeta(c.label)+`\n\s+manufacturer: hsmemu\n\s+model: hsmemu \w+\n`+
			`\s+serial-number: \w+\n(?:\s+\S+-version: .*\n)*\s+flags:\n(?:\s+[a-z-]+\n)*?\s+token-initialized`)

	// Through p11-kit's proxy module, pkcs11-tool finds the token.
	proxy := "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so"
	if b, err := exec.Command("pkg-config", "--variable=proxy_module", "p11-kit-1").Output(); err == nil &&
		len(bytes.TrimSpace(b)) > 0 {
		proxy = string(bytes.TrimSpace(b))
	}
	if _, err := os.Stat(proxy); err != nil {
		t.Logf("p11-kit's proxy module is not installed (%v): not tried", err)
		return
	}
	out = mustRun(t, "pkcs11-tool through p11-kit-proxy", o, c.p11, "--module", proxy, "-L").text()
	if _, block, ok := p11Slot(out, c.label); !ok || !strings.Contains(block, "token manufacturer : hsmemu") {
		t.Fatalf("pkcs11-tool --module %s -L: no hsmemu token labelled %s; output:\n%s", proxy, c.label, out)
	}
}
