package cli

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestObsConnectionsBounded: a connection to --metrics (which may be on
// TCP, open to any host that reaches it) or --pprof is a descriptor of
// the daemon's: past obsMaxConns at once, a new one is closed when it
// is accepted, and the ones held go on.
func TestObsConnectionsBounded(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := filepath.Join(t.TempDir(), "metrics.sock")
	if err := serveMetrics(ctx, path, metrics.New(), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range obsMaxConns {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	extra, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection %d: %v, want it closed", obsMaxConns+1, err)
	}
	// A held connection is served.
	if _, err := io.WriteString(held[0], "GET /metrics HTTP/1.1\r\nHost: hsmemu\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	held[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(held[0]).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("a held connection: %q %v", line, err)
	}
}

// TestObsIdleClosed: a connection left idle after a request is closed
// by the server rather than held for good.
func TestObsIdleClosed(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "obs.sock")
	ln, err := listenPrivate(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := obsServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), 50*time.Millisecond)
	go srv.Serve(capConns(ln, obsMaxConns))
	defer srv.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: hsmemu\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("%q %v", line, err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatalf("the idle connection: %v, want it closed by the server", err)
	}
}
