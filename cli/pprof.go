package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"syscall"
	"time"
)

// serveProfiler serves net/http/pprof on a Unix socket at path, created
// 0600: only the daemon's own user (and root) may read its goroutine
// stacks, heap and CPU profiles. Profiles hold no key material, but they
// are the daemon's insides, so no TCP address is accepted, loopback
// included (any local user can reach loopback).
//
//	curl --unix-socket PATH http://hsmemu/debug/pprof/goroutine?debug=1
//	curl --unix-socket PATH -o cpu.pprof 'http://hsmemu/debug/pprof/profile?seconds=10'
//	go tool pprof cpu.pprof
func serveProfiler(ctx context.Context, path string, log *slog.Logger) error {
	if err := checkProfilerPath(path); err != nil {
		return err
	}
	ln, err := listenPrivate(path)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := obsServer(mux, obsIdleTimeout)
	go srv.Serve(capConns(ln, obsMaxConns))
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("profiler listening", "socket", path)
	return nil
}

// checkProfilerPath refuses what is not a socket path, a TCP address
// above all: serve checks it before it opens anything.
func checkProfilerPath(path string) error {
	if !strings.Contains(path, "/") {
		return fmt.Errorf("%q is not a socket path: the profiler listens on a Unix socket only (e.g. /run/hsmemu/pprof.sock or ./pprof.sock), never TCP", path)
	}
	return nil
}

// listenPrivate listens on a Unix socket at path created 0600, replacing
// a stale one a dead daemon left; a live one is an error, and so is
// anything there that is not a socket: a path slipped onto the keystore
// or a config file must not remove it.
func listenPrivate(path string) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("something is serving %s already", path)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%s is there and is not a socket: give a path where a socket may be created", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	old := syscall.Umask(0o177) // created 0600, never wider for a moment
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}
