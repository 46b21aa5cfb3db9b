package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// NSS: the module added to a fresh NSS database with modutil, and
// certutil listing, making and using keys and certificates on the token.

// nssKeyID is the CKA_ID NSS gives a key pair it makes, and the
// certificates of it: the SHA-1 of the EC point, or of the RSA modulus.
func nssKeyID(t *testing.T, pub crypto.PublicKey) string {
	t.Helper()
	var sum [20]byte
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		point, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		sum = sha1.Sum(point)
	case *rsa.PublicKey:
		sum = sha1.Sum(k.N.Bytes())
	default:
		t.Fatalf("no NSS key id for a %T", pub)
	}
	return hex.EncodeToString(sum[:])
}

// TestClientsNSS: modutil adds the module to a fresh NSS database and
// lists the token; certutil -L -h all lists the token's certificate (with
// the u flag of a key pair whose private key is on the token), certutil -K
// its keys; certutil -S makes an EC and an RSA key pair on the token with
// a self-signed certificate each, and a self-signed certificate with the
// token's existing EC key, all three stored on the token and signed by the
// token's keys.
func TestClientsNSS(t *testing.T) {
	t.Parallel()
	certutil := needTool(t, "certutil", "libnss3-tools")
	modutil := needTool(t, "modutil", "libnss3-tools")
	c := newClientToken(t, "nss", true)
	rsaCert := c.certOnToken(t, "01", "rsa", "hsmemu nss pkcs11-tool rsa")

	db := "sql:" + filepath.Join(c.dir, "nssdb")
	if err := os.Mkdir(filepath.Join(c.dir, "nssdb"), 0o700); err != nil {
		t.Fatal(err)
	}
	pinFile := filepath.Join(c.dir, "nss-pin")
	noise := filepath.Join(c.dir, "nss-noise")
	n := make([]byte, 64)
	rand.Read(n)
	for p, b := range map[string][]byte{pinFile: []byte(clientPIN + "\n"), noise: n} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	o := execOpts{env: c.env}
	run := func(t *testing.T, what, tool string, args ...string) string {
		t.Helper()
		return mustRun(t, what, o, tool, args...).text()
	}

	run(t, "certutil -N", certutil, "-N", "--empty-password", "-d", db)
	// modutil asks for confirmation unless -force.
	out := run(t, "modutil -add", modutil, "-dbdir", db, "-add", "hsmemu", "-libfile", c.a.module, "-force")
	wantMatch(t, "modutil -add", out, `(?m)^Module "hsmemu" added to database\.$`)
	out = run(t, "modutil -list", modutil, "-dbdir", db, "-list", "hsmemu")
	wantMatch(t, "modutil -list hsmemu", out, `(?m)^\s*Library file: `+regexp.QuoteMeta(c.a.module)+`$`,
		`(?m)^\s*Manufacturer: hsmemu\s*$`, `(?m)^\s+Status: Enabled\n\s+Token Name: nss\s*\n\s+Token Manufacturer: hsmemu\s*$`)

	listCerts := func(t *testing.T) string {
		t.Helper()
		return run(t, "certutil -L -h all", certutil, "-L", "-h", "all", "-d", db, "-f", pinFile)
	}
	listKeys := func(t *testing.T) string {
		t.Helper()
		return run(t, "certutil -K -h "+c.label, certutil, "-K", "-h", c.label, "-d", db, "-f", pinFile)
	}
	// A line of certutil -K: "< n> TYPE ID NICKNAME".
	keyLine := func(typ, id, nick string) string {
		return `(?m)^<\s*\d+> ` + typ + `\s+` + regexp.QuoteMeta(id) + `\s+` + regexp.QuoteMeta(nick) + `$`
	}

	t.Run("list", func(t *testing.T) {
		wantMatch(t, "certutil -L -h all", listCerts(t), `(?m)^nss:rsa\s+u,u,u$`)
		out := listKeys(t)
		wantMatch(t, "certutil -K", out, `(?m)^certutil: Checking token "nss" in slot "hsmemu slot \d+"$`,
			keyLine("rsa", "01", "rsa"), keyLine("ec", "02", "ec"))
		if k := regexp.MustCompile(`(?m)^<\s*\d+> `).FindAllString(out, -1); len(k) != 2 {
			t.Fatalf("certutil -K: %d keys, want 2; output:\n%s", len(k), out)
		}
		// NSS reads the certificate as it was written. (-h: certutil
		// logs in to that token, with -f's PIN, before it looks.)
		r := mustRun(t, "certutil -L -n nss:rsa -r", o, certutil, "-L", "-d", db, "-h", c.label, "-f", pinFile, "-n", "nss:rsa", "-r")
		if r.stdout != string(rsaCert.Raw) {
			t.Fatalf("certutil -L -n nss:rsa -r: %d bytes, not the %d of the certificate on the token:\n%s",
				len(r.stdout), len(rsaCert.Raw), r.stderr)
		}
	})

	// readCert reads a certificate off the token with pkcs11-tool, by its
	// label: it is a token object, whatever NSS remembers of it.
	readCert := func(t *testing.T, label string) *x509.Certificate {
		t.Helper()
		path := filepath.Join(c.dir, "nss-"+label+".der")
		c.pkcs11tool(t, "read the certificate "+label, "--token-label", c.label, "--read-object", "--type", "cert",
			"--label", label, "--output-file", path)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(b)
		if err != nil {
			t.Fatalf("the certificate %s on the token: %v", label, err)
		}
		return cert
	}
	selfSigned := func(t *testing.T, cert *x509.Certificate, cn string) {
		t.Helper()
		if cert.Subject.CommonName != cn || cert.Issuer.CommonName != cn {
			t.Fatalf("certificate subject %s, issuer %s; want CN=%s for both", cert.Subject, cert.Issuer, cn)
		}
		if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
			t.Fatalf("the self-signed certificate %s does not verify: %v", cn, err)
		}
	}

	// certutil -S making a key pair on the token (-h nss), and a
	// self-signed certificate with it, stored on the token.
	for _, g := range []struct {
		nick, cn, typ, serial string
		args                  []string
		check                 func(crypto.PublicKey) bool
	}{
		{nick: "nssec", cn: "hsmemu nss ec", typ: "ec", serial: "1001", args: []string{"-k", "ec", "-q", "nistp256"},
			check: func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() }},
		{nick: "nssrsa", cn: "hsmemu nss rsa", typ: "rsa", serial: "1002", args: []string{"-k", "rsa", "-g", "2048"},
			check: func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 }},
	} {
		t.Run("self-signed "+g.nick, func(t *testing.T) {
			args := append([]string{"-S", "-d", db, "-f", pinFile, "-z", noise, "-h", c.label, "-n", g.nick,
				"-s", "CN=" + g.cn, "-x", "-t", "u,u,u", "-Z", "SHA256", "-v", "2", "-m", g.serial}, g.args...)
			run(t, "certutil -S", certutil, args...)

			cert := readCert(t, g.nick)
			selfSigned(t, cert, g.cn)
			if !g.check(cert.PublicKey) {
				t.Fatalf("certutil -S %s: the certificate's key is a %T", g.nick, cert.PublicKey)
			}
			id := nssKeyID(t, cert.PublicKey)
			wantMatch(t, "certutil -L -h all after certutil -S", listCerts(t), `(?m)^nss:`+g.nick+`\s+u,u,u$`)
			wantMatch(t, "certutil -K after certutil -S", listKeys(t), keyLine(g.typ, id, "nss:"+g.nick))
			// The private key is a token object, with the id NSS gave it.
			objs := c.pkcs11tool(t, "list objects", c.user("--list-objects", "--type", "privkey")...)
			wantMatch(t, "pkcs11-tool --list-objects --type privkey", objs,
				`(?m)^Private Key Object; `+strings.ToUpper(g.typ)+`\s*\n(?:\s+label:.*\n)?\s+ID:\s+`+id+`$`)
		})
	}

	// certutil -S with the token's existing EC key, by its CKA_ID. NSS
	// gives the certificate its own CKA_ID (the SHA-1 of the point), not
	// the key's, so it does not pair them (no u flag): it is asked for no
	// trust, which NSS would keep in its own database.
	t.Run("self-signed with an existing key", func(t *testing.T) {
		pub, _ := c.publicKey(t, "02")
		run(t, "certutil -S -k 02", certutil, "-S", "-d", db, "-f", pinFile, "-z", noise, "-h", c.label, "-n", "nss-existing",
			"-s", "CN=hsmemu nss existing ec", "-x", "-t", ",,", "-Z", "SHA256", "-v", "2", "-m", "1003", "-k", "02")
		cert := readCert(t, "nss-existing")
		selfSigned(t, cert, "hsmemu nss existing ec")
		if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
			t.Fatal("certutil -S -k 02: the certificate's key is not the token's key 02")
		}
		wantMatch(t, "certutil -L -h all", listCerts(t), `(?m)^nss:nss-existing\s+,,\s*$`)
	})
}
