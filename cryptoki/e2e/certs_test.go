package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"

	"hsmemu/internal/testenv"
)

// TestCertTLSServer: a certificate request signed inside a premium token
// (`hsmemu cert request`) verifies with OpenSSL; a test CA issues the
// certificate from it (openssl x509 -req); `hsmemu cert import` attaches
// it to its key; and a TLS server whose key is the token's, through the
// module and crypto11, serves it to a Go client that trusts only the
// test CA.
func TestCertTLSServer(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		testenv.Missing(t, "openssl: %v", err)
	}
	d := startDaemon(t)
	work := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = work
		cmd.Env = append(d.env(), "HSMEMU_SO_PIN="+soPIN, "HSMEMU_USER_PIN="+userPIN)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	hsm := func(args ...string) string { t.Helper(); return run(d.bin, args...) }

	hsm("token", "create", "--label", "web", "--tier", "premium")
	hsm("key", "generate", "--token", "web", "--type", "ec-p256", "--key", "tls")
	hsm("cert", "request", "--token", "web", "--key", "tls", "--subject", "CN=hsmemu.test,O=hsmemu", "--san", "DNS:hsmemu.test", "--san", "IP:127.0.0.1", "--out", "tls.csr")
	if out := run("openssl", "req", "-verify", "-in", "tls.csr", "-noout"); !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl req -verify: %s", out)
	}
	run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=hsmemu test CA", "-days", "2")
	run("openssl", "x509", "-req", "-in", "tls.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.pem", "-days", "1", "-copy_extensions", "copy")
	if out := hsm("cert", "import", "--token", "web", "--in", "tls.pem"); !strings.Contains(out, `key "tls"`) {
		t.Fatalf("cert import did not attach the certificate to key tls: %s", out)
	}
	leafPEM, err := os.ReadFile(filepath.Join(work, "tls.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(work, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("the test CA does not parse")
	}

	// The application's side: the module, through crypto11.
	t.Setenv("HSMEMU_SOCKET", d.sock)
	ctx11, err := crypto11.Configure(&crypto11.Config{Path: need(t).module, TokenLabel: "web", Pin: userPIN})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx11.Close()
	signer, err := ctx11.FindKeyPair(nil, []byte("tls"))
	if err != nil || signer == nil {
		t.Fatalf("the key pair by label: %v %v", signer, err)
	}
	// The certificate is found as PKCS#11 clients find it: by the key's
	// CKA_ID.
	id, err := ctx11.GetAttribute(signer, crypto11.CkaId)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ctx11.FindCertificate(id.Value, nil, nil)
	if err != nil || leaf == nil {
		t.Fatalf("no certificate with the key's CKA_ID %x: %v", id.Value, err)
	}
	if want, err := tlsCertFromPEM(leafPEM); err != nil || !leaf.Equal(want) {
		t.Fatal("the token's certificate is not the one the CA issued")
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw}, PrivateKey: signer}}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_, err = io.WriteString(c, "hello from the token\n")
		served <- err
	}()
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dialer := &tls.Dialer{Config: &tls.Config{RootCAs: roots, ServerName: "hsmemu.test"}}
	conn, err := dialer.DialContext(dctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("the client refused the server: %v", err)
	}
	defer conn.Close()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello from the token\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if st := conn.(*tls.Conn).ConnectionState(); !st.PeerCertificates[0].Equal(leaf) || len(st.VerifiedChains) == 0 {
		t.Fatal("the client did not verify the token's certificate to the test CA")
	}
	// And the 127.0.0.1 name too, from the request's SANs.
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Fatal(err)
	}
}

func tlsCertFromPEM(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(blk.Bytes)
}
