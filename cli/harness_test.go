package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
	"hsmemu/tpmroot/tpmtest"
)

// mainEnv, set, makes the test binary hsmemu itself (TestMain): how the
// tests start a daemon of their own in another process.
const mainEnv = "HSMEMU_CLI_TEST_MAIN"

// daemonT is a daemon the test started, and the files its commands use.
type daemonT struct {
	t    *testing.T
	dir  string // the test's directory, where the files below are
	st   string // the daemon's state directory
	sock string
}

// startDaemon starts `hsmemu serve` on a managed swtpm in a temporary
// state directory, with quick PIN stretching, 3 failures to a lock, and
// the PIN files so.pin, user.pin and wrong.pin; it stops at the test's
// end. extra are more flags of serve.
func startDaemon(t *testing.T, extra ...string) *daemonT {
	t.Helper()
	tpmtest.Require(t)
	dir := t.TempDir()
	d := &daemonT{t: t, dir: dir, st: filepath.Join(dir, "st"), sock: filepath.Join(dir, "s")}
	for name, pin := range map[string]string{"so.pin": "so-pin-1234", "user.pin": "user-pin-1234", "wrong.pin": "wrong-pin-0000"} {
		d.write(name, pin+"\n")
	}
	cmd := exec.Command(os.Args[0], "serve", "--state-dir", d.st, "--socket", d.sock, "--tpm", "managed", "--lock-memory", "off",
		"--pin-kdf-time", "1", "--pin-kdf-memory", "64", "--pin-failure-delay", "0", "--pin-max-failures", "3", "--anchor-interval", "1h")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("the daemon's log:\n%s", log.String())
		}
	})
	for range 300 {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return d
		}
		select {
		case err := <-done:
			t.Fatalf("the daemon stopped: %v\n%s", err, log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("the daemon does not answer on %s\n%s", d.sock, log.String())
	return nil
}

func (d *daemonT) path(name string) string { return filepath.Join(d.dir, name) }

func (d *daemonT) write(name, content string) {
	d.t.Helper()
	if err := os.WriteFile(d.path(name), []byte(content), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// args expands a command line for this daemon: @NAME is a file of the
// test's directory, and --socket is added to the commands on the daemon.
func (d *daemonT) args(args []string) []string {
	out := make([]string, 0, len(args)+2)
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "@"); ok {
			a = d.path(name)
		}
		a = strings.ReplaceAll(a, "$ST", d.st)
		a = strings.ReplaceAll(a, "$DIR", d.dir)
		out = append(out, a)
	}
	return out
}

// run runs hsmemu in process with args (expanded), on this daemon.
func (d *daemonT) run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"hsmemu"}, d.withSocket(d.args(args))...), &out, &errb)
	return code, out.String(), errb.String()
}

// withSocket puts --socket and --state-dir in front of the arguments of a
// command on the daemon (every one that takes --socket), after its name.
func (d *daemonT) withSocket(args []string) []string {
	cmds := New().Commands
	for i := 0; i < len(args); i++ {
		var c *cli.Command
		for _, x := range cmds {
			if x.Name == args[i] {
				c = x
			}
		}
		switch {
		case c == nil:
			return args
		case hasFlag(c.Flags, "socket"):
			return append(append(append([]string{}, args[:i+1]...), "--socket", d.sock, "--state-dir", d.st), args[i+1:]...)
		}
		cmds = c.Subcommands
	}
	return args
}

// must runs a command that must succeed.
func (d *daemonT) must(args ...string) string {
	d.t.Helper()
	code, stdout, stderr := d.run(args...)
	if code != 0 {
		d.t.Fatalf("hsmemu %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// pemKeyAndCert writes a new EC key and a self-signed certificate for it,
// labelled cn, as one PEM file.
func (d *daemonT) pemKeyAndCert(name, cn string, withKey bool) {
	d.t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		d.t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		d.t.Fatal(err)
	}
	var b bytes.Buffer
	if withKey {
		p8, _ := x509.MarshalPKCS8PrivateKey(k)
		pem.Encode(&b, &pem.Block{Type: "PRIVATE KEY", Bytes: p8})
	}
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	d.write(name, b.String())
}

// createData makes a private data object in a token through the module's
// protocol, as a PKCS#11 application would: a way to what the commands
// do not make.
func (d *daemonT) createData(token, pin string, attrs []wire.Attribute) {
	d.t.Helper()
	p, err := dialP11(d.sock)
	if err != nil {
		d.t.Fatal(err)
	}
	defer p.sock.Close()
	out, err := p.Must("C_GetSlotList", wire.Value{Byte: 1}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 64}})
	if err != nil {
		d.t.Fatal(err)
	}
	slot, found := uint64(0), false
	for _, s := range out[1].Ulongs {
		info, err := p.Must("C_GetTokenInfo", wire.Value{Ulong: s}, wire.Value{})
		if err == nil && strings.TrimRight(info[1].Struct.(*wire.TokenInfo).Label, " ") == token {
			slot, found = s, true
		}
	}
	if !found {
		d.t.Fatalf("no token labelled %q", token)
	}
	out, err = p.Must("C_OpenSession", wire.Value{Ulong: slot}, wire.Value{Ulong: ck.CKF_SERIAL_SESSION | ck.CKF_RW_SESSION}, wire.Value{}, wire.Value{}, wire.Value{})
	if err != nil {
		d.t.Fatal(err)
	}
	h := out[4].Ulong
	if _, err := p.Must("C_Login", wire.Value{Ulong: h}, wire.Value{Ulong: ck.CKU_USER}, wire.Value{Bytes: []byte(pin)}); err != nil {
		d.t.Fatal(err)
	}
	tmpl := append([]wire.Attribute{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_DATA)}, {Type: ck.CKA_TOKEN, Value: keystore.Bool(true)},
		{Type: ck.CKA_PRIVATE, Value: keystore.Bool(true)}}, attrs...)
	if _, err := p.Must("C_CreateObject", wire.Value{Ulong: h}, wire.Value{Template: tmpl}, wire.Value{}); err != nil {
		d.t.Fatal(err)
	}
}
