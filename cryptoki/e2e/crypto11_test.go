package e2e

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// TestCrypto11TLS: keys made on the token through crypto11 serve a
// crypto/tls handshake as crypto.Signers, and an RSA key decrypts OAEP as a
// crypto.Decrypter.
func TestCrypto11TLS(t *testing.T) {
	p, d := withModule(t)
	newToken(t, p, "tls")
	// crypto11 loads the module itself, in this process, as another user
	// of the same library: finalise ours first.
	p.Finalize()
	ctx, err := crypto11.Configure(&crypto11.Config{Path: need(t).module, TokenLabel: "tls", Pin: userPIN})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	_ = d

	ec, err := ctx.GenerateECDSAKeyPairWithLabel([]byte("ec1"), []byte("tls ecdsa"), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := ctx.GenerateRSAKeyPairWithLabel([]byte("rsa1"), []byte("tls rsa"), 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		signer  crypto.Signer
		version uint16
	}{
		{name: "ECDSA P-256 TLS 1.3", signer: ec, version: tls.VersionTLS13},
		{name: "ECDSA P-256 TLS 1.2", signer: ec, version: tls.VersionTLS12},
		{name: "RSA-2048 TLS 1.3 (PSS)", signer: rsaKey, version: tls.VersionTLS13},
		{name: "RSA-2048 TLS 1.2", signer: rsaKey, version: tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) { handshake(t, tc.signer, tc.version) })
	}

	// RSA-OAEP through crypto.Decrypter.
	dec, ok := rsaKey.(crypto11.SignerDecrypter)
	if !ok {
		t.Fatal("crypto11's RSA key is not a Decrypter")
	}
	msg := []byte("a secret for the token")
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, dec.Public().(*rsa.PublicKey), msg, []byte("label"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := dec.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("label")})
	if err != nil || string(pt) != string(msg) {
		t.Fatalf("OAEP decrypt: %q %v", pt, err)
	}
}

// handshake runs a TLS handshake whose server key is signer, with a
// self-signed certificate the token signed, and checks the client accepts.
func handshake(t *testing.T, signer crypto.Signer, version uint16) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "hsmemu.test"},
		DNSNames:     []string{"hsmemu.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		t.Fatalf("self-signing with the token: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	server := tls.Server(sc, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: signer}},
		MinVersion:   version, MaxVersion: version,
	})
	client := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: "hsmemu.test", MinVersion: version, MaxVersion: version})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- server.HandshakeContext(ctx) }()
	if err := client.HandshakeContext(ctx); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if got := client.ConnectionState().Version; got != version {
		t.Fatalf("negotiated %x, want %x", got, version)
	}
}

// ed25519Signer is a crypto.Signer over a token Ed25519 key, through
// miekg/pkcs11 (crypto11 has no Ed25519).
type ed25519Signer struct {
	p   *pkcs11.Ctx
	h   pkcs11.SessionHandle
	key pkcs11.ObjectHandle
	pub ed25519.PublicKey
}

func (s *ed25519Signer) Public() crypto.PublicKey { return s.pub }

func (s *ed25519Signer) Sign(_ io.Reader, msg []byte, _ crypto.SignerOpts) ([]byte, error) {
	if err := s.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, s.key); err != nil {
		return nil, err
	}
	return s.p.Sign(s.h, msg)
}

// TestEd25519TLS: a token Ed25519 key serves a TLS 1.3 handshake.
func TestEd25519TLS(t *testing.T) {
	p, _ := withModule(t)
	slot := newToken(t, p, "ed")
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	edParams, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 101, 112})
	pub, priv, err := p.GenerateKeyPair(h,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdwardsKeyPairGen, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, edParams), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := p.GetAttributeValue(h, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		t.Fatal(err)
	}
	var point []byte
	if rest, err := asn1.Unmarshal(attrs[0].Value, &point); err != nil || len(rest) != 0 || len(point) != ed25519.PublicKeySize {
		t.Fatalf("CKA_EC_POINT %x: %v", attrs[0].Value, err)
	}
	handshake(t, &ed25519Signer{p: p, h: h, key: priv, pub: ed25519.PublicKey(point)}, tls.VersionTLS13)
}

// PKCS#11 3.0 mechanisms miekg/pkcs11 does not name.
const (
	ckmEdwardsKeyPairGen = 0x1055
	ckmEdDSA             = 0x1057
)
