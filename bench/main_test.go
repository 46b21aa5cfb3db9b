package bench

import (
	"os"
	"testing"
)

// TestMain routes the re-executed test binary to the echo server of
// Hotpath's socket-roundtrip benchmark, or to the server of the
// shared-memory floor (shmfloor_test.go).
func TestMain(m *testing.M) {
	maybeServeShmFloor()
	MaybeServeEcho()
	os.Exit(m.Run())
}
