package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"hsmemu/internal/testenv"
)

// p11-kit's remoting: `p11-kit server` loads the module and serves one of
// its tokens on a Unix socket; p11-kit-client.so, loaded by a client,
// forwards that client's calls to it.

// p11kitClientModule finds p11-kit-client.so in p11-kit's module
// directory.
func p11kitClientModule(t *testing.T) string {
	t.Helper()
	dir := "/usr/lib/x86_64-linux-gnu/pkcs11"
	if b, err := exec.Command("pkg-config", "--variable=p11_module_path", "p11-kit-1").Output(); err == nil &&
		len(bytes.TrimSpace(b)) > 0 {
		dir = string(bytes.TrimSpace(b))
	}
	p := filepath.Join(dir, "p11-kit-client.so")
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "p11-kit's client module is not installed (apt-get install p11-kit-modules): %v", err)
	}
	return p
}

// TestClientsP11KitRemote: `p11-kit server --provider MODULE
// pkcs11:token=LABEL` serves the token; through p11-kit-client.so,
// p11tool lists that one token and its objects, and its --test-sign
// passes with each key, and pkcs11-tool's signatures verify with the
// public keys read from the module directly. The clients have no way to
// the daemon but the server: their HSMEMU_SOCKET leads nowhere.
func TestClientsP11KitRemote(t *testing.T) {
	t.Parallel()
	p11kit := needTool(t, "p11-kit", "p11-kit")
	p11tool := needTool(t, "p11tool", "gnutls-bin")
	client := p11kitClientModule(t)
	c := newClientToken(t, "remote", true)

	// Unix socket paths are short: keep the directory short too.
	dir, err := os.MkdirTemp("", "hpk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "p11")
	// -f: in the foreground, so that the test owns it and stops it.
	srv := startBackground(t, "p11-kit server", execOpts{env: c.env}, p11kit, "server", "-f", "--provider", c.a.module,
		"--name", sock, "pkcs11:token="+c.label)
	addrRe := regexp.MustCompile(`(?m)^P11_KIT_SERVER_ADDRESS=([^;\n]+); export P11_KIT_SERVER_ADDRESS;$`)
	srv.waitUntil(t, func() bool {
		if addrRe.FindStringSubmatch(srv.out.String()) == nil {
			return false
		}
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	addr := addrRe.FindStringSubmatch(srv.out.String())[1]
	if addr != "unix:path="+sock {
		t.Fatalf("p11-kit server prints the address %q, want unix:path=%s", addr, sock)
	}
	env := withEnv(c.env, "P11_KIT_SERVER_ADDRESS="+addr, "HSMEMU_SOCKET="+filepath.Join(dir, "no-daemon-here"))
	loginEnv := withEnv(env, "GNUTLS_PIN="+clientPIN)

	// The one token the server serves, as the module describes it.
	out := mustRun(t, "p11tool --list-tokens", execOpts{env: env}, p11tool, "--provider", client, "--list-tokens").text()
	tokens := regexp.MustCompile(`(?m)^Token \d+:$`).FindAllString(out, -1)
	if len(tokens) != 1 {
		t.Fatalf("p11tool --list-tokens through p11-kit-client: %d tokens, want the one served; output:\n%s", len(tokens), out)
	}
	wantMatch(t, "p11tool --list-tokens", out,
		`(?m)^\s+URL: pkcs11:model=hsmemu%20standard;manufacturer=hsmemu;serial=\w+;token=`+c.label+`$`,
		`(?m)^\s+Label: `+c.label+`$`, `(?m)^\s+Flags: RNG, Requires login$`, `(?m)^\s+Manufacturer: hsmemu$`,
		`(?m)^\s+Model: hsmemu standard$`)

	// Its objects: the public ones, and the private ones after a login.
	listed := func(out string) map[string]bool {
		m := map[string]bool{}
		re := regexp.MustCompile(`(?m)^Object \d+:\n\s+URL: \S+;token=` + c.label + `;id=%0\d;object=(\w+);type=(\w+)\n\s+Type: (.*)$`)
		for _, s := range re.FindAllStringSubmatch(out, -1) {
			m[s[1]+" "+s[2]+" "+s[3]] = true
		}
		return m
	}
	public := []string{"rsa public Public key (RSA-2048)", "ec public Public key (EC/ECDSA-SECP256R1)"}
	private := []string{"rsa private Private key (RSA-2048)", "ec private Private key (EC/ECDSA-SECP256R1)"}
	for _, l := range []struct {
		what string
		env  []string
		args []string
		want []string
	}{
		{what: "p11tool --list-all", env: env, args: []string{"--list-all"}, want: public},
		{what: "p11tool --list-all --login", env: loginEnv, args: []string{"--list-all", "--login"}, want: append(private, public...)},
	} {
		out := mustRun(t, l.what, execOpts{env: l.env}, p11tool, append([]string{"--provider", client}, l.args...)...).text()
		got := listed(out)
		for _, w := range l.want {
			if !got[w] {
				t.Fatalf("%s through p11-kit-client: no %q; output:\n%s", l.what, w, out)
			}
		}
		if n := len(regexp.MustCompile(`(?m)^Object \d+:$`).FindAllString(out, -1)); n != len(l.want) {
			t.Fatalf("%s through p11-kit-client: %d objects, want %d; output:\n%s", l.what, n, len(l.want), out)
		}
	}

	for _, ts := range []struct{ name, label, params, alg string }{
		{name: "EC P-256", label: "ec", alg: "ECDSA-SHA256"},
		{name: "RSA-2048", label: "rsa", alg: "RSA-SHA256"},
		{name: "RSA-2048 PSS", label: "rsa", params: "RSA-PSS", alg: "RSA-PSS-SHA256"},
	} {
		t.Run("test-sign "+ts.name, func(t *testing.T) {
			args := []string{"--provider", client, "--test-sign", "--login",
				fmt.Sprintf("pkcs11:token=%s;object=%s;type=private", c.label, ts.label)}
			if ts.params != "" {
				args = append(args, "--sign-params", ts.params)
			}
			out := mustRun(t, "p11tool --test-sign", execOpts{env: loginEnv}, p11tool, args...).text()
			wantMatch(t, "p11tool --test-sign through p11-kit-client", out, `(?m)^Signing using `+ts.alg+`\.\.\. ok$`,
				`(?m)^Verifying against private key parameters\.\.\. ok$`,
				`(?m)^Verifying against public key in the token\.\.\. ok$`)
		})
	}

	// pkcs11-tool signs through p11-kit-client; Go verifies with the public
	// keys read from the module itself. p11-kit 0.24's remoting forwards
	// only the mechanisms it knows, which leaves out CKM_ECDSA_SHA224 to
	// CKM_ECDSA_SHA512 (its client lists ECDSA and ECDSA-SHA1 only): the
	// EC key signs a SHA-256 digest with CKM_ECDSA.
	data := []byte("hsmemu: signed through p11-kit's remoting\n")
	digest := sha256.Sum256(data)
	dataPath, digestPath := filepath.Join(c.dir, "remote-data"), filepath.Join(c.dir, "remote-digest")
	for p, b := range map[string][]byte{dataPath: data, digestPath: digest[:]} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range clientKeys {
		t.Run("pkcs11-tool "+k.name, func(t *testing.T) {
			pub, _ := c.publicKey(t, k.id)
			mech, in := "SHA256-RSA-PKCS", dataPath
			if k.label == "ec" {
				mech, in = "ECDSA", digestPath
			}
			sigPath := filepath.Join(c.dir, "remote-"+k.label+".sig")
			mustRun(t, "pkcs11-tool --sign through p11-kit-client", execOpts{env: env}, c.p11, "--module", client,
				"--token-label", c.label, "--login", "--pin", clientPIN, "--sign", "--id", k.id, "--mechanism", mech,
				"--input-file", in, "--output-file", sigPath)
			sig, err := os.ReadFile(sigPath)
			if err != nil {
				t.Fatal(err)
			}
			ok := false
			switch pub := pub.(type) {
			case *ecdsa.PublicKey:
				// PKCS#11's ECDSA signature is r‖s.
				n := len(sig) / 2
				ok = len(sig) == 64 && ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:]))
			case *rsa.PublicKey:
				ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) == nil
			}
			if !ok {
				t.Fatalf("the %s signature made through p11-kit-client does not verify: %x", mech, sig)
			}
		})
	}

	// The server is still there, serving.
	if srv.exited() {
		t.Fatalf("p11-kit server exited: %v; output:\n%s", srv.err, srv.out)
	}
}
