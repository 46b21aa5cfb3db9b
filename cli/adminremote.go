package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
)

// dialRemoteAdmin opens an admin connection to the first daemon of
// --server that answers, over TLS 1.3 with --tls-cert and --tls-key,
// verifying the daemon against --tls-ca (docs/remote.md).
func dialRemoteAdmin(c *cli.Context) (*adminapi.Client, error) {
	cfg, err := adminTLS(c)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, s := range strings.Split(c.String("server"), ",") {
		s = strings.TrimSpace(s)
		addr, ok := strings.CutPrefix(s, "tls://")
		host, _, herr := net.SplitHostPort(addr)
		if !ok || herr != nil {
			return nil, fmt.Errorf("--server %q: want tls://HOST:PORT", s)
		}
		cfg := cfg.Clone()
		cfg.ServerName = host
		cl, err := adminapi.DialTLS(addr, cfg)
		if err == nil {
			return cl, nil
		}
		errs = append(errs, err)
	}
	err = errors.Join(errs...)
	if !slices.ContainsFunc(errs, func(e error) bool { return !unanswered(e) }) {
		// As on a socket: scripts tell "nothing runs there" by its code.
		return nil, fmt.Errorf("%w: %w", adminapi.ErrNoDaemon, err)
	}
	return nil, err
}

// unanswered says whether a dial failed for want of anything listening:
// refused, unreachable, or no answer in time.
func unanswered(err error) bool {
	var ne net.Error
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		(errors.As(err, &ne) && ne.Timeout())
}

func adminTLS(c *cli.Context) (*tls.Config, error) {
	certFile, keyFile, caFile := c.String("tls-cert"), c.String("tls-key"), c.String("tls-ca")
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("--server needs --tls-cert, --tls-key and --tls-ca (or HSMEMU_TLS_CERT, HSMEMU_TLS_KEY, HSMEMU_TLS_CA)")
	}
	if fi, err := os.Stat(keyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("--tls-key %s may be read by other users (mode %03o): chmod 600 %s", keyFile, fi.Mode().Perm(), keyFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}, RootCAs: roots}, nil
}
