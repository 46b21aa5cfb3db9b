package cli

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/daemon/metrics"
)

// TestProfilerOnUnixSocket: the profiler is served on a 0600 Unix socket,
// never on TCP, loopback included.
func TestProfilerOnUnixSocket(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, addr := range []string{"127.0.0.1:6060", "localhost:6060", "[::1]:6060", ":6060", "pprof.sock"} {
		if err := serveProfiler(ctx, addr, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "Unix socket only") {
			t.Errorf("--pprof %s: %v, want refused", addr, err)
		}
	}
	path := filepath.Join(t.TempDir(), "pprof.sock")
	if err := serveProfiler(ctx, path, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the profiler's socket: %v %v, want a 0600 socket", fi.Mode(), err)
	}
	// A second profiler on a live socket is refused, and the first one
	// keeps serving.
	if err := serveProfiler(ctx, path, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a second profiler took a live socket")
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := client.Get("http://hsmemu/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("GET goroutine profile: %d %.200s", resp.StatusCode, body)
	}
	cancel()
}

// TestSocketPathNotAFile: --pprof and --metrics take a socket's path and
// replace a stale socket a dead daemon left there, but never a file that
// is not a socket: a slip of the path (the keystore's, a config file's)
// is refused, and the file is left as it was.
func TestSocketPathNotAFile(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	for _, name := range []string{"pprof", "metrics"} {
		path := filepath.Join(dir, "keystore-"+name+".db")
		if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
			t.Fatal(err)
		}
		var err error
		if name == "pprof" {
			err = serveProfiler(ctx, path, slog.New(slog.DiscardHandler))
		} else {
			err = serveMetrics(ctx, path, metrics.New(), slog.New(slog.DiscardHandler))
		}
		if err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("--%s on a regular file: %v, want refused", name, err)
		}
		if b, rerr := os.ReadFile(path); rerr != nil || string(b) != "not a socket" {
			t.Fatalf("--%s: the file at its path: %q %v, want it left as it was", name, b, rerr)
		}
	}
	// A stale socket is still replaced.
	path := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := serveProfiler(ctx, path, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("a stale socket: %v", err)
	}
}
