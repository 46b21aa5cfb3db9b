package e2e

import (
	"archive/zip"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Java: the JDK's SunPKCS11 provider loads the module, as keytool and
// jarsigner use it with `-storetype PKCS11`.

// certOnToken issues a certificate for the public key pkcs11-tool exports
// from the token (id), signed by a throwaway CA, and writes it to the
// token with pkcs11-tool under the same id and the label. Clients that
// list keys by their certificates (SunPKCS11, NSS) then see the key pair.
func (c *clientToken) certOnToken(t *testing.T, id, label, cn string) *x509.Certificate {
	t.Helper()
	pub, _ := c.publicKey(t, id)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hsmemu e2e CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(c.dir, "cert-"+label+".der")
	if err := os.WriteFile(path, der, 0o600); err != nil {
		t.Fatal(err)
	}
	c.pkcs11tool(t, "write the certificate "+label, c.user("--write-object", path, "--type", "cert", "--id", id, "--label", label)...)
	return cert
}

// slotID returns the id of the token's slot, as pkcs11-tool -L shows it.
func (c *clientToken) slotID(t *testing.T) string {
	t.Helper()
	out := c.pkcs11tool(t, "list slots", "-L")
	id, _, ok := p11Slot(out, c.label)
	if !ok {
		t.Fatalf("pkcs11-tool -L: no slot holds the token %s:\n%s", c.label, out)
	}
	return id
}

// keytoolFingerprint is a SHA-256 fingerprint as keytool prints it.
func keytoolFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	parts := make([]string, 0, len(sum))
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// writeJar writes a jar of the files, with a manifest and nothing signed.
func writeJar(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var b bytes.Buffer
	z := zip.NewWriter(&b)
	names := []string{"META-INF/MANIFEST.MF"}
	contents := map[string]string{"META-INF/MANIFEST.MF": "Manifest-Version: 1.0\r\nCreated-By: hsmemu e2e\r\n\r\n"}
	for n, s := range files {
		names = append(names, n)
		contents[n] = s
	}
	for _, n := range names {
		w, err := z.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, contents[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rewriteJar copies the jar at src to dst, passing every entry's content
// through edit (which returns it unchanged, or changed).
func rewriteJar(t *testing.T, src, dst string, edit func(name string, b []byte) []byte) {
	t.Helper()
	r, err := zip.OpenReader(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out bytes.Buffer
	z := zip.NewWriter(&out)
	for _, f := range r.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		w, err := z.Create(f.Name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(edit(f.Name, b)); err != nil {
			t.Fatal(err)
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// jarEntries returns the names of a jar's entries.
func jarEntries(t *testing.T, path string) []string {
	t.Helper()
	r, err := zip.OpenReader(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var names []string
	for _, f := range r.File {
		names = append(names, f.Name)
	}
	return names
}

// keytoolEntries parses `keytool -list -v` into its entries' blocks, by
// alias.
func keytoolEntries(out string) map[string]string {
	entries := map[string]string{}
	for _, b := range regexp.MustCompile(`(?m)^Alias name: `).Split(out, -1)[1:] {
		alias, _, _ := strings.Cut(b, "\n")
		entries[strings.TrimSpace(alias)] = b
	}
	return entries
}

// TestClientsJava: the JDK's SunPKCS11 provider, through keytool and
// jarsigner. keytool -list shows the token's key pair that has a
// certificate (SunPKCS11 lists a private key only with one) and its secret
// key; keytool -genkeypair makes an EC P-256 and an RSA-2048 key pair on
// the token, each with a self-signed certificate the token signed, and
// keytool -genseckey an AES key; jarsigner signs jars with those keys and
// with the pkcs11-tool key (PKCS#1 v1.5, PSS, ECDSA), and jarsigner
// -verify accepts them, and refuses them once a file or the signature is
// changed; keytool -delete destroys a key pair and its certificate.
func TestClientsJava(t *testing.T) {
	t.Parallel()
	keytool := needTool(t, "keytool", "openjdk-17-jdk-headless")
	jarsigner := needTool(t, "jarsigner", "openjdk-17-jdk-headless")
	c := newClientToken(t, "java", true)

	// The RSA key pair gets a certificate; the EC one none; and an AES
	// key, which SunPKCS11 lists as a secret key entry.
	rsaCert := c.certOnToken(t, "01", "rsa", "hsmemu java pkcs11-tool rsa")
	c.pkcs11tool(t, "AES key", c.user("--keygen", "--key-type", "AES:32", "--id", "05", "--label", "aes")...)

	cfg := filepath.Join(c.dir, "sunpkcs11.cfg")
	// The library's path quoted: it may hold spaces.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("name = hsmemu\nlibrary = \"%s\"\nslot = %s\n", c.a.module, c.slotID(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	// keytool and jarsigner in English whatever the machine's locale, and
	// quick to start (each run is a short-lived JVM).
	jvm := []string{"-J-Duser.language=en", "-J-Duser.country=US", "-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC"}
	store := []string{"-keystore", "NONE", "-storetype", "PKCS11", "-providerClass", "sun.security.pkcs11.SunPKCS11",
		"-providerArg", cfg, "-storepass", clientPIN}
	o := execOpts{env: c.env}
	kt := func(t *testing.T, what string, args ...string) string {
		t.Helper()
		return mustRun(t, what, o, keytool, append(append(slices.Clone(jvm), args...), store...)...).text()
	}

	t.Run("list", func(t *testing.T) {
		out := kt(t, "keytool -list", "-list")
		wantMatch(t, "keytool -list", out, `(?m)^Keystore type: PKCS11$`, `(?m)^Keystore provider: SunPKCS11-hsmemu$`,
			`(?m)^Your keystore contains 2 entries$`,
			`(?m)^aes, SecretKeyEntry, $`,
			`(?m)^rsa, PrivateKeyEntry, \nCertificate fingerprint \(SHA-256\): `+keytoolFingerprint(rsaCert.Raw)+`$`)
		out = kt(t, "keytool -list -v", "-list", "-v")
		e := keytoolEntries(out)
		if len(e) != 2 {
			t.Fatalf("keytool -list -v: %d entries, want 2 (aes, rsa); output:\n%s", len(e), out)
		}
		wantMatch(t, "keytool -list -v: rsa", e["rsa"], `(?m)^Entry type: PrivateKeyEntry$`,
			`(?m)^Owner: CN=hsmemu java pkcs11-tool rsa$`, `(?m)^Issuer: CN=hsmemu e2e CA$`,
			`(?m)^Subject Public Key Algorithm: 2048-bit RSA key$`)
		wantMatch(t, "keytool -list -v: aes", e["aes"], `(?m)^Entry type: SecretKeyEntry$`)
	})

	// Key pairs made on the token by keytool, each with a self-signed
	// certificate whose signature the token made.
	gen := []struct {
		alias, name string
		args        []string
		keyAlg      string // keytool -list -v's "Subject Public Key Algorithm"
		sigAlg      string
		check       func(crypto.PublicKey) bool
	}{
		{alias: "jec", name: "hsmemu java ec", args: []string{"-keyalg", "EC", "-groupname", "secp256r1", "-sigalg", "SHA256withECDSA"},
			keyAlg: `256-bit EC \(secp256r1\) key`, sigAlg: "SHA256withECDSA",
			check: func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() }},
		{alias: "jrsa", name: "hsmemu java rsa", args: []string{"-keyalg", "RSA", "-keysize", "2048", "-sigalg", "SHA256withRSA"},
			keyAlg: `2048-bit RSA key`, sigAlg: "SHA256withRSA",
			check: func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 }},
	}
	for _, g := range gen {
		t.Run("genkeypair "+g.alias, func(t *testing.T) {
			kt(t, "keytool -genkeypair", append([]string{"-genkeypair", "-alias", g.alias, "-dname", "CN=" + g.name,
				"-validity", "2"}, g.args...)...)
			out := kt(t, "keytool -list -v -alias", "-list", "-v", "-alias", g.alias)
			wantMatch(t, "keytool -list -v -alias "+g.alias, out, `(?m)^Alias name: `+g.alias+`$`,
				`(?m)^Entry type: PrivateKeyEntry$`, `(?m)^Certificate chain length: 1$`,
				`(?m)^Owner: CN=`+g.name+`$`, `(?m)^Issuer: CN=`+g.name+`$`,
				`(?m)^Signature algorithm name: `+g.sigAlg+`$`, `(?m)^Subject Public Key Algorithm: `+g.keyAlg+`$`)

			// The certificate: self-signed, by the token's new key.
			pemPath := filepath.Join(c.dir, g.alias+".pem")
			kt(t, "keytool -exportcert", "-exportcert", "-rfc", "-alias", g.alias, "-file", pemPath)
			b, err := os.ReadFile(pemPath)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(b)
			if block == nil {
				t.Fatalf("keytool -exportcert -rfc wrote no PEM:\n%s", b)
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != g.name || !g.check(cert.PublicKey) {
				t.Fatalf("keytool's certificate for %s: subject %s, key %T", g.alias, cert.Subject, cert.PublicKey)
			}
			if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
				t.Fatalf("the self-signed certificate of %s does not verify: %v", g.alias, err)
			}
			// Both are token objects: the private key and the certificate,
			// with the alias as their CKA_ID (SunPKCS11's convention).
			objs := c.pkcs11tool(t, "list objects", c.user("--list-objects")...)
			typ := map[string]string{"jec": "EC", "jrsa": "RSA"}[g.alias]
			id := hex.EncodeToString([]byte(g.alias))
			wantMatch(t, "pkcs11-tool --list-objects after keytool -genkeypair", objs,
				`(?m)^Private Key Object; `+typ+`\s*\n(?:\s+label:.*\n)?\s+ID:\s+`+id+`$`,
				`(?m)^Certificate Object; type = X\.509 cert\n\s+label:\s+`+g.alias+`\n\s+subject:\s+DN: CN=`+g.name+`\n(?:\s+serial:.*\n)?\s+ID:\s+`+id+`$`)
		})
	}

	// A secret key made on the token by keytool.
	t.Run("genseckey", func(t *testing.T) {
		out := kt(t, "keytool -genseckey", "-genseckey", "-alias", "jaes", "-keyalg", "AES", "-keysize", "256")
		wantMatch(t, "keytool -genseckey", out, `(?m)^Generated 256-bit AES secret key$`)
		objs := c.pkcs11tool(t, "list objects", c.user("--list-objects", "--type", "secrkey")...)
		wantMatch(t, "pkcs11-tool --list-objects after keytool -genseckey", objs,
			`(?m)^Secret Key Object; AES length 32\n(?:\s+\w+:.*\n)*?\s+label:\s+jaes$`)
	})

	t.Run("list after genkeypair", func(t *testing.T) {
		out := kt(t, "keytool -list -v", "-list", "-v")
		e := keytoolEntries(out)
		want := map[string]string{"aes": "SecretKeyEntry", "jaes": "SecretKeyEntry", "rsa": "PrivateKeyEntry",
			"jec": "PrivateKeyEntry", "jrsa": "PrivateKeyEntry"}
		for a, typ := range want {
			if _, ok := e[a]; !ok {
				t.Fatalf("keytool -list -v: no entry %s; output:\n%s", a, out)
			}
			wantMatch(t, "keytool -list -v: "+a, e[a], `(?m)^Entry type: `+typ+`$`)
		}
		if len(e) != len(want) {
			t.Fatalf("keytool -list -v: %d entries, want %d; output:\n%s", len(e), len(want), out)
		}
	})

	// jarsigner, with each key: the two keytool made and pkcs11-tool's
	// RSA key, whose certificate a CA issued, with PKCS#1 v1.5 and PSS.
	jar := filepath.Join(c.dir, "hello.jar")
	writeJar(t, jar, map[string]string{"hello.txt": "hsmemu: a jar signed by a token key\n"})
	for _, s := range []struct {
		name, alias, signer, sigAlg, block string
		args                               []string
		addProvider                        bool
	}{
		{name: "jec", alias: "jec", signer: "CN=hsmemu java ec", sigAlg: "SHA256withECDSA, 256-bit key", block: "META-INF/JEC.EC"},
		{name: "jrsa", alias: "jrsa", signer: "CN=hsmemu java rsa", sigAlg: "SHA256withRSA, 2048-bit key", block: "META-INF/JRSA.RSA",
			addProvider: true},
		{name: "rsa", alias: "rsa", signer: "CN=hsmemu java pkcs11-tool rsa", sigAlg: "SHA256withRSA, 2048-bit key",
			block: "META-INF/RSA.RSA"},
		{name: "rsa PSS", alias: "rsa", signer: "CN=hsmemu java pkcs11-tool rsa", sigAlg: "RSASSA-PSS, 2048-bit key",
			block: "META-INF/RSA.RSA", args: []string{"-sigalg", "RSASSA-PSS"}},
	} {
		t.Run("jarsigner "+s.name, func(t *testing.T) {
			signed := filepath.Join(c.dir, strings.ReplaceAll(s.name, " ", "-")+"-signed.jar")
			args := append(slices.Clone(jvm), "-keystore", "NONE", "-storetype", "PKCS11")
			if s.addProvider {
				args = append(args, "-addprovider", "SunPKCS11")
			} else {
				args = append(args, "-providerClass", "sun.security.pkcs11.SunPKCS11")
			}
			// -providerArg goes with the -providerClass or -addprovider
			// before it.
			args = append(append(args, "-providerArg", cfg), s.args...)
			args = append(args, "-storepass", clientPIN, "-signedjar", signed, jar, s.alias)
			out := mustRun(t, "jarsigner", o, jarsigner, args...).text()
			wantMatch(t, "jarsigner", out, `(?m)^jar signed\.$`)
			names := jarEntries(t, signed)
			if !slices.Contains(names, s.block) || !slices.Contains(names, strings.TrimSuffix(s.block, filepath.Ext(s.block))+".SF") {
				t.Fatalf("signed jar's entries %q: no %s and its .SF", names, s.block)
			}

			verify := append(slices.Clone(jvm), "-verify", "-verbose", "-certs")
			out = mustRun(t, "jarsigner -verify", o, jarsigner, append(verify, signed)...).text()
			wantMatch(t, "jarsigner -verify", out, `(?m)^jar verified\.$`, `(?m)^- Signed by "`+s.signer+`"$`,
				`(?m)^\s+Signature algorithm: `+s.sigAlg+`$`, `(?m)^sm\s+\d+ .* hello\.txt$`)

			// The verification means something: a changed file, or a
			// changed signature, is refused.
			for _, bad := range []struct {
				what string
				edit func(string, []byte) []byte
				want string
			}{
				{what: "a changed file", want: `(?m)^jarsigner: java\.lang\.SecurityException: SHA-256 digest error for hello\.txt$`, edit: func(n string, b []byte) []byte {
					if n == "hello.txt" {
						return []byte("hsmemu: a jar changed after signing\n")
					}
					return b
				}},
				{what: "a changed signature", want: `(?m)^jarsigner: java\.lang\.SecurityException: cannot verify signature block file META-INF/` +
					strings.ToUpper(s.alias) + `$`,
					edit: func(n string, b []byte) []byte {
						if n == s.block {
							b = bytes.Clone(b)
							b[len(b)-1] ^= 0x01
						}
						return b
					}},
			} {
				tampered := filepath.Join(c.dir, strings.ReplaceAll(s.name, " ", "-")+"-tampered.jar")
				rewriteJar(t, signed, tampered, bad.edit)
				r := clientExec(t, o, jarsigner, append(verify, tampered)...)
				if r.code == 0 || strings.Contains(r.text(), "jar verified.") {
					t.Fatalf("jarsigner -verify accepts %s: exit %d; output:\n%s", bad.what, r.code, r.mixed)
				}
				wantMatch(t, "jarsigner -verify of "+bad.what, r.text(), bad.want)
			}
		})
	}

	// keytool -delete destroys the key pair and its certificate on the
	// token.
	t.Run("delete", func(t *testing.T) {
		kt(t, "keytool -delete", "-delete", "-alias", "jrsa")
		out := kt(t, "keytool -list", "-list")
		if strings.Contains(out, "jrsa, ") {
			t.Fatalf("keytool -list after keytool -delete -alias jrsa:\n%s", out)
		}
		wantMatch(t, "keytool -list after keytool -delete", out, `(?m)^Your keystore contains 4 entries$`)
		objs := c.pkcs11tool(t, "list objects", c.user("--list-objects")...)
		if id := hex.EncodeToString([]byte("jrsa")); strings.Contains(objs, id) {
			t.Fatalf("pkcs11-tool --list-objects after keytool -delete: an object with id %s is left:\n%s", id, objs)
		}
	})
}
