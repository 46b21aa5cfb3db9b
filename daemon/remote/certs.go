package remote

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// Certs are the TLS listener's certificate, its key and the CA bundle
// that verifies clients, loaded from files and reloaded on demand
// (SIGHUP). Each handshake takes the set loaded last; a reload that fails
// keeps the previous one.
type Certs struct {
	certFile, keyFile, caFile string
	cur                       atomic.Pointer[tls.Config]
	// outer is the listener's configuration. Its session ticket keys
	// are the ones every handshake uses (crypto/tls takes them from the
	// configuration the connection was made with), so one configuration
	// serves every connection, and resumption works.
	outer *tls.Config
}

// LoadCerts loads the three files.
func LoadCerts(certFile, keyFile, caFile string) (*Certs, error) {
	c := &Certs{certFile: certFile, keyFile: keyFile, caFile: caFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	c.outer = &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return c.cur.Load(), nil
		},
	}
	return c, nil
}

// Reload reads the files again.
func (c *Certs) Reload() error {
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	if pair.Leaf != nil && time.Now().After(pair.Leaf.NotAfter) {
		return fmt.Errorf("--tls-cert %s expired on %s", c.certFile, pair.Leaf.NotAfter.Format(time.DateOnly))
	}
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return fmt.Errorf("--client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("--client-ca %s: no PEM certificate in it", c.caFile)
	}
	// A session resumed skips the client's certificate: tickets issued
	// under what was loaded before are void after a reload.
	if c.outer != nil {
		var k [32]byte
		if _, err := rand.Read(k[:]); err != nil {
			return err
		}
		c.outer.SetSessionTicketKeys([][32]byte{k})
	}
	c.cur.Store(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		// Every identity the policy can name comes from these two.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no client certificate")
			}
			if len(Identities(cs.PeerCertificates[0])) == 0 {
				return errors.New("the client certificate has neither a common name nor a URI SAN")
			}
			return nil
		},
	})
	return nil
}

// Config is the configuration of the listener: each handshake gets the
// certificates loaded last.
func (c *Certs) Config() *tls.Config { return c.outer }

// Leaf is the listener's certificate as loaded last (tests, logs).
func (c *Certs) Leaf() *x509.Certificate {
	cfg := c.cur.Load()
	if cfg == nil || len(cfg.Certificates) == 0 {
		return nil
	}
	return cfg.Certificates[0].Leaf
}
