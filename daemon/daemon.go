// Package daemon is hsmemu's daemon, put together: the state directory it
// owns (State: the TPM, the master key in it, the keystore), the socket
// it listens on (Server), and the three parts that serve what arrives
// there:
//   - daemon/token, the token engine: applications, sessions, objects,
//     the attribute rules, login, and every PKCS#11 call the module
//     forwards, dispatched by the call table's ids;
//   - daemon/mech, every mechanism, pure over a key's attributes, which
//     the engine calls;
//   - daemon/admin, the administrator's calls, which use the engine
//     through its small exported API and the keystore.
//
// This package only composes them and runs the connections; it holds no
// PKCS#11 semantics. docs/architecture.md follows one call through all of
// them.
package daemon

import (
	"context"
	"log/slog"
	"net"
	"time"

	"hsmemu/daemon/admin"
	"hsmemu/daemon/metrics"
	"hsmemu/daemon/token"
)

// Config is how the daemon serves its state directory.
type Config struct {
	Engine token.Config
	Server ServerConfig
	// Version is what `hsmemu status` reports.
	Version string
	// PurgeEvery is how often deleted objects whose retention ended are
	// purged (and once at start); zero means hourly.
	PurgeEvery time.Duration
	// AnchorEvery is how often the keystore is anchored in the TPM's
	// counter when it changed; zero means AnchorInterval of the TPM.
	AnchorEvery time.Duration
	// Metrics, when not nil, counts and times the calls and collects the
	// daemon's state when scraped (daemon/metrics); DBPath is the
	// keystore's file, whose size it reports.
	Metrics *metrics.Metrics
	DBPath  string
}

// Daemon is one daemon over an opened state directory.
type Daemon struct {
	st    *State
	log   *slog.Logger
	cfg   Config
	eng   *token.Engine
	admin *admin.Handler
	srv   *Server

	remote   net.Listener // the TLS listener, when there is one
	remoteRC RemoteConfig
}

// ListenRemote has Serve serve ln, a TCP listener, to remote clients
// with mutual TLS (server_tls.go) beside the Unix socket.
func (d *Daemon) ListenRemote(ln net.Listener, rc RemoteConfig) {
	d.remote, d.remoteRC = ln, rc
}

// New puts a daemon together over st. Serve runs it.
func New(st *State, log *slog.Logger, cfg Config) *Daemon {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.PurgeEvery <= 0 {
		cfg.PurgeEvery = time.Hour
	}
	eng := token.New(st.Store, log, cfg.Engine)
	acfg := admin.Config{Version: cfg.Version, Started: time.Now(), Rotator: st}
	if st.TPM != nil {
		acfg.TPM, acfg.TPMHealth, acfg.DA = st.TPM.Info(), st.TPM.Probe, st.TPM.DAInfo
	}
	adm := admin.New(eng, st.Store, log, acfg)
	srv := NewServer(eng, adm, log, cfg.Server)
	if m := cfg.Metrics; m != nil {
		srv.metrics = m
		m.Watch(metrics.Sources{Counts: eng.Counts, Conns: srv.connCount, Store: st.Store, DBPath: cfg.DBPath})
	}
	return &Daemon{st: st, log: log, cfg: cfg, eng: eng, admin: adm, srv: srv}
}

// Engine is the daemon's token engine.
func (d *Daemon) Engine() *token.Engine { return d.eng }

// Serve serves ln until ctx ends (Server.Serve says how it stops), with
// the purger of expired deleted objects and the anchoring of the keystore
// beside it, and closes the engine once they are done. A keystore found
// behind its anchor while serving stops the daemon: Serve returns that
// *keystore.RollbackError. The state directory stays open: its owner
// closes it.
func (d *Daemon) Serve(ctx context.Context, ln *net.UnixListener) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	anchorer := make(chan error, 1)
	go func() {
		err := d.st.RunAnchor(ctx, d.cfg.AnchorEvery)
		if err != nil {
			stop(err)
		}
		anchorer <- err
	}()
	purger := make(chan struct{})
	go func() {
		defer close(purger)
		d.eng.RunPurger(ctx, d.cfg.PurgeEvery)
	}()
	heartbeat := make(chan struct{})
	go func() {
		defer close(heartbeat)
		d.st.RunHeartbeat(ctx, 0)
	}()
	defer func() { <-heartbeat }()
	follower := make(chan struct{})
	go func() {
		defer close(follower)
		d.st.RunMasterFollow(ctx, 0)
	}()
	defer func() { <-follower }()
	// The purger writes audit records: it ends before the engine closes
	// and the caller closes the keystore.
	defer func() {
		<-purger
		d.eng.Close()
	}()
	remoteDone := make(chan error, 1)
	if d.remote != nil {
		go func() {
			err := d.srv.ServeTLS(ctx, d.remote, d.remoteRC)
			if err != nil {
				stop(err)
			}
			remoteDone <- err
		}()
	} else {
		remoteDone <- nil
	}
	err := d.srv.Serve(ctx, ln)
	stop(nil)
	if rerr := <-remoteDone; rerr != nil && err == nil {
		err = rerr
	}
	if aerr := <-anchorer; aerr != nil {
		return aerr
	}
	return err
}
