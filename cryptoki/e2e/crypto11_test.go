package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
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

// TestCrypto11SessionPool: crypto11's pool hands out never-used slots
// first, so one context signing 8,192 times from 32 goroutines opens its
// full 1,023 sessions; with 50 more left open by other contexts of the
// same process (one application to the daemon), every signature must
// still come back, and verify. A token that allows fewer sessions than
// that answers CKR_SESSION_COUNT (the daemon's cap was 1,024), and
// crypto11 then fails or hangs its callers: the test gives up after two
// minutes.
func TestCrypto11SessionPool(t *testing.T) {
	p, _ := withModule(t)
	newToken(t, p, "pool")
	p.Finalize()
	configure := func() *crypto11.Context {
		t.Helper()
		ctx, err := crypto11.Configure(&crypto11.Config{Path: need(t).module, TokenLabel: "pool", Pin: userPIN})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ctx.Close() })
		return ctx
	}
	main := configure()
	key, err := main.GenerateECDSAKeyPairWithLabel([]byte("pool1"), []byte("pool key"), elliptic.P256())
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("signed by the pool"))
	// Other contexts: each signature takes a never-used slot, so 25
	// signatures leave 25 sessions open, twice.
	for range 2 {
		other := configure()
		k, err := other.FindKeyPair([]byte("pool1"), nil)
		if err != nil || k == nil {
			t.Fatalf("the key through another context: %v", err)
		}
		for range 25 {
			if _, err := k.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				t.Fatal(err)
			}
		}
	}
	const workers, each = 32, 256
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range each {
				sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err == nil && !ecdsa.VerifyASN1(key.Public().(*ecdsa.PublicKey), digest[:], sig) {
					err = errors.New("a signature does not verify")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	timeout := time.After(2 * time.Minute)
	for range workers {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-timeout:
			t.Fatal("signers still blocked after two minutes: the pool is starved of sessions")
		}
	}
	// The pool did open its sessions: the token counts them. (The module
	// is crypto11's now, initialised: this context only asks.)
	q := pkcs11.New(need(t).module)
	if err := q.Initialize(); err != nil && !is(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatal(err)
	}
	info, err := q.GetTokenInfo(slotOf(t, q, "pool"))
	if err != nil {
		t.Fatal(err)
	}
	if info.SessionCount < 1000+50 {
		t.Fatalf("the token counts %d sessions; the contexts should hold over 1,050", info.SessionCount)
	}
}
