// Package remotetest makes the certificates the remote-client tests use,
// with crypto/x509: a CA; daemons' certificates for 127.0.0.1 and
// localhost; client certificates for an application (cn:app1), a second
// application (cn:app2), an administrator (uri:spiffe://hsmemu.test/admin),
// one that has expired (cn:old) and one of an unknown CA (cn:stranger).
package remotetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Pair is a certificate and its key, as PEM files.
type Pair struct{ Cert, Key string }

// PKI is a test's certificates, written under Dir.
type PKI struct {
	Dir string
	CA  string // the CA's certificate: --client-ca and the module's tls_ca
	// OtherCA is a CA nobody trusts.
	OtherCA  string
	Daemon   Pair // cn:node1
	Daemon2  Pair // cn:node2
	Daemon3  Pair // cn:node3
	App      Pair // cn:app1
	App2     Pair // cn:app2
	Admin    Pair // uri:spiffe://hsmemu.test/admin, cn:admin
	Expired  Pair // cn:old, expired yesterday
	Stranger Pair // cn:stranger, signed by OtherCA
}

// AdminURI is the administrator's identity.
const AdminURI = "uri:spiffe://hsmemu.test/admin"

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// serialNumber is random: tests make PKIs in parallel.
func serialNumber(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// New writes a PKI into a fresh directory of the test.
func New(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := &PKI{Dir: dir}
	ca := makeCA(t, dir, "ca", "hsmemu test CA")
	p.CA = filepath.Join(dir, "ca.pem")
	other := makeCA(t, dir, "other-ca", "someone else's CA")
	p.OtherCA = filepath.Join(dir, "other-ca.pem")
	now := time.Now()
	p.Daemon = leaf(t, dir, "daemon", ca, &x509.Certificate{Subject: pkix.Name{CommonName: "node1"},
		DNSNames: []string{"localhost", "node1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, now)
	p.Daemon2 = leaf(t, dir, "daemon2", ca, &x509.Certificate{Subject: pkix.Name{CommonName: "node2"},
		DNSNames: []string{"localhost", "node2"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, now)
	p.Daemon3 = leaf(t, dir, "daemon3", ca, &x509.Certificate{Subject: pkix.Name{CommonName: "node3"},
		DNSNames: []string{"localhost", "node3"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, now)
	client := func(name, cn string, uri string, iss issuer, at time.Time) Pair {
		tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if uri != "" {
			u, err := url.Parse(uri)
			if err != nil {
				t.Fatal(err)
			}
			tmpl.URIs = []*url.URL{u}
		}
		return leaf(t, dir, name, iss, tmpl, at)
	}
	p.App = client("app", "app1", "", ca, now)
	p.App2 = client("app2", "app2", "", ca, now)
	p.Admin = client("admin", "admin", "spiffe://hsmemu.test/admin", ca, now)
	p.Expired = client("expired", "old", "", ca, now.Add(-48*time.Hour))
	p.Stranger = client("stranger", "stranger", "", other, now)
	return p
}

func key(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeCA(t testing.TB, dir, name, cn string) issuer {
	k := key(t)
	tmpl := &x509.Certificate{SerialNumber: serialNumber(t), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	write(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der, 0o644)
	return issuer{cert, k}
}

// leaf issues a certificate valid for a day from at less an hour (so one
// issued two days ago has expired).
func leaf(t testing.TB, dir, name string, iss issuer, tmpl *x509.Certificate, at time.Time) Pair {
	k := key(t)
	tmpl.SerialNumber = serialNumber(t)
	tmpl.NotBefore, tmpl.NotAfter = at.Add(-time.Hour), at.Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, iss.cert, &k.PublicKey, iss.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	p := Pair{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key")}
	write(t, p.Cert, "CERTIFICATE", der, 0o644)
	write(t, p.Key, "PRIVATE KEY", kder, 0o600)
	return p
}

func write(t testing.TB, path, typ string, der []byte, mode os.FileMode) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
}
