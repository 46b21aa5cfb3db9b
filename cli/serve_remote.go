package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/daemon/remote"
)

// remoteSetup is `hsmemu serve --listen tls://...`: the listener, its
// certificates and the policy, which SIGHUP reloads.
type remoteSetup struct {
	ln     net.Listener
	certs  *remote.Certs
	policy atomic.Pointer[remote.Policy]
	load   func() (*remote.Policy, error)
}

// remoteListener opens the TLS listener the flags ask for, or returns nil
// when there is none.
func remoteListener(c *cli.Context) (*remoteSetup, error) {
	addr := c.String("listen")
	tlsFlags := []string{"tls-cert", "tls-key", "client-ca", "tls-allow", "tls-admin", "policy"}
	if addr == "" {
		for _, f := range tlsFlags {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s needs --listen tls://HOST:PORT", f)
			}
		}
		return nil, nil
	}
	hostport, ok := strings.CutPrefix(addr, "tls://")
	if !ok {
		return nil, fmt.Errorf("--listen %q: want tls://HOST:PORT", addr)
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return nil, fmt.Errorf("--listen %q: %v", addr, err)
	}
	for _, f := range []string{"tls-cert", "tls-key", "client-ca"} {
		if c.String(f) == "" {
			return nil, fmt.Errorf("--listen needs --tls-cert, --tls-key and --client-ca (missing --%s)", f)
		}
	}
	certs, err := remote.LoadCerts(c.String("tls-cert"), c.String("tls-key"), c.String("client-ca"))
	if err != nil {
		return nil, err
	}
	rs := &remoteSetup{certs: certs}
	file, allows, admins := c.String("policy"), c.StringSlice("tls-allow"), c.StringSlice("tls-admin")
	rs.load = func() (*remote.Policy, error) {
		p := &remote.Policy{}
		if file != "" {
			var err error
			if p, err = remote.LoadPolicy(file); err != nil {
				return nil, fmt.Errorf("--policy: %w", err)
			}
		}
		for _, a := range allows {
			if err := p.Allow(a, false); err != nil {
				return nil, fmt.Errorf("--tls-allow: %w", err)
			}
		}
		for _, a := range admins {
			if err := p.Allow(a, true); err != nil {
				return nil, fmt.Errorf("--tls-admin: %w", err)
			}
		}
		return p, nil
	}
	p, err := rs.load()
	if err != nil {
		return nil, err
	}
	rs.policy.Store(p)
	if rs.ln, err = net.Listen("tcp", hostport); err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	return rs, nil
}

func (rs *remoteSetup) config() daemon.RemoteConfig {
	return daemon.RemoteConfig{Certs: rs.certs, Policy: rs.policy.Load}
}

// reloadOnHUP reloads the certificates and the policy on each SIGHUP
// that hup delivers; a reload that fails keeps what was in force, and says
// why. Without a listener (rs nil) SIGHUP has nothing to reload, and does
// not stop the daemon (the unit's ExecReload sends it).
func (rs *remoteSetup) reloadOnHUP(ctx context.Context, log *slog.Logger, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if rs == nil {
			log.Info("SIGHUP: nothing to reload (no --listen)")
			continue
		}
		p, perr := rs.load()
		if perr == nil {
			rs.policy.Store(p)
		}
		if err := errors.Join(rs.certs.Reload(), perr); err != nil {
			log.Error("SIGHUP: reload failed; what failed to load stays as it was", "err", err)
			continue
		}
		log.Info("SIGHUP: certificates and policy reloaded", "identities", len(p.Identities))
	}
}
