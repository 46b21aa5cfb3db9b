package cli

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"hsmemu/daemon/metrics"
)

// serveMetrics serves m at /metrics on addr: a Unix socket path (one with
// a "/"), created 0600 like the profiler's, or a TCP host:port. Metrics
// hold no secret (counts, latencies, token-independent labels), so TCP is
// allowed; a Prometheus on another host needs it. Bind it to loopback or
// a management network.
//
//	curl --unix-socket PATH http://hsmemu/metrics
//	curl http://127.0.0.1:9464/metrics
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, log *slog.Logger) error {
	var ln net.Listener
	var err error
	if isSocketPath(addr) {
		ln, err = listenPrivate(addr)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := obsServer(mux, obsIdleTimeout)
	go srv.Serve(capConns(ln, obsMaxConns))
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("metrics listening", "address", ln.Addr().String())
	return nil
}

// isSocketPath: --metrics takes a path with a "/" as a Unix socket.
func isSocketPath(addr string) bool { return strings.Contains(addr, "/") }

// checkMetricsAddr refuses what is neither a socket path nor host:port,
// before serve opens anything.
func checkMetricsAddr(addr string) error {
	if isSocketPath(addr) {
		return nil
	}
	_, _, err := net.SplitHostPort(addr)
	return err
}
