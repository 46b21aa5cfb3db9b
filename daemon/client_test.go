package daemon

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/metrics"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
	"hsmemu/tpmroot/tpmtest"
)

// The daemon's tests talk to a real daemon (real swtpm, SQLite on disk)
// over its socket with the wire codec: the module's side of the protocol,
// in Go. The C module's own tests drive the same daemon through it.

type testDaemon struct {
	dir, sock string
	st        *State
	eng       *token.Engine
	srv       *Server
	limits    Limits
	stop      func()
	// Set before start: the daemon's metrics and logger (nil: none).
	metrics *metrics.Metrics
	log     *slog.Logger
	// remote, when set before start, serves a TLS listener on a loopback
	// port, tlsAddr (server_tls_test.go).
	remote  *RemoteConfig
	tlsAddr string
	// noRings declines every ring offer (ServerConfig.NoRings).
	noRings bool
}

func startDaemon(t testing.TB, cfg token.Config) *testDaemon {
	t.Helper()
	return startDaemonLimits(t, cfg, Limits{})
}

// startDaemonLimits starts a daemon whose connections have the limits
// given.
func startDaemonLimits(t testing.TB, cfg token.Config, lim Limits) *testDaemon {
	t.Helper()
	return startDaemonWith(t, cfg, func(d *testDaemon) { d.limits = lim })
}

// startDaemonWith starts a daemon that set has configured.
func startDaemonWith(t testing.TB, cfg token.Config, set func(*testDaemon)) *testDaemon {
	t.Helper()
	// Unix socket paths are short: keep the directory short too.
	dir, err := os.MkdirTemp("", "hsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "s")}
	set(d)
	d.start(t, cfg)
	return d
}

func (d *testDaemon) start(t testing.TB, cfg token.Config) {
	t.Helper()
	tpmtest.Require(t)
	st, err := OpenState(context.Background(), StateConfig{
		Dir: d.dir, TPM: "managed",
		Store: keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}, MaxPINFailures: cfg.MaxPINFailures},
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FailureDelay == 0 {
		cfg.FailureDelay = -1
	}
	ln, err := Listen(d.sock, ServerConfig{Group: -1})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	d.st = st
	dm := New(st, d.log, Config{Engine: cfg, Server: ServerConfig{Group: -1, Limits: d.limits, NoRings: d.noRings},
		Metrics: d.metrics, DBPath: filepath.Join(d.dir, DatabaseName)})
	d.eng, d.srv = dm.Engine(), dm.srv
	if d.remote != nil {
		tln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			ln.Close()
			st.Close()
			t.Fatal(err)
		}
		d.tlsAddr = tln.Addr().String()
		dm.ListenRemote(tln, *d.remote)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- dm.Serve(ctx, ln)
	}()
	stopped := false
	d.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		st.Close()
	}
	t.Cleanup(d.stop)
}

// client is one application: one connection with its own application id
// (cryptoki/wire/wiretest).
type client struct{ *wiretest.Client }

func (d *testDaemon) dial(t testing.TB) *client {
	t.Helper()
	return d.dialAs(t, wiretest.NewApp())
}

func (d *testDaemon) dialAs(t testing.TB, app [16]byte) *client {
	t.Helper()
	return d.dialVersion(t, app, wire.Version)
}

// dialVersion connects speaking protocol version v.
func (d *testDaemon) dialVersion(t testing.TB, app [16]byte, v uint16) *client {
	t.Helper()
	return &client{Client: wiretest.DialClientAs(t, d.sock, app, v)}
}
