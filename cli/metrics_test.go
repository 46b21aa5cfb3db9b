package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"

	"github.com/rogpeppe/go-internal/testscript"
)

// scrape SOCKET GETs /metrics from the daemon's metrics socket, which must
// be mode 0600, and prints the body.
func cmdScrape(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: scrape SOCKET")
	}
	path := ts.MkAbs(args[0])
	fi, err := os.Stat(path)
	ts.Check(err)
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		ts.Fatalf("%s: mode %v, want a socket 0600", args[0], fi.Mode())
	}
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	res, err := cl.Get("http://hsmemu/metrics")
	ts.Check(err)
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	ts.Check(err)
	if res.StatusCode != 200 {
		ts.Fatalf("scrape: %s: %s", res.Status, body)
	}
	ts.Stdout().Write(body)
}
