package bench

import (
	"os"
	"testing"
)

// TestMain routes the re-executed test binary to the echo server of
// Hotpath's socket-roundtrip benchmark.
func TestMain(m *testing.M) {
	MaybeServeEcho()
	os.Exit(m.Run())
}
