package bench

import (
	"testing"
	"time"
)

// The ring floor's echo server answers through the rings, and goes when
// the client does.
func TestRingFloor(t *testing.T) {
	f, err := startRingFloor()
	if err != nil {
		t.Fatal(err)
	}
	cell, err := f.measure(Options{Warmup: 20 * time.Millisecond, Duration: 100 * time.Millisecond})
	if err != nil {
		f.close()
		t.Fatal(err)
	}
	if cell.Ops == 0 || cell.Latency.Quantile(0.5) <= 0 {
		t.Errorf("ring floor: %d round trips, p50 %v", cell.Ops, cell.Latency.Quantile(0.5))
	}
	e := f.c.(*echoClient)
	if e.ring == nil {
		t.Fatal("the floor's round trips did not go through rings")
	}
	if err := e.Close(); err != nil {
		t.Errorf("the ring echo server did not exit cleanly: %v", err)
	}
	f.close()
}

// Each module's p50 is related to its own transport's floor.
func TestFloorRatioByTransport(t *testing.T) {
	us := func(x float64) Micros { return Micros(time.Duration(x * float64(time.Microsecond))) }
	results := []Result{
		{Op: "wrap", Module: "rings", Concurrency: 1, Status: "ok", P50: us(12)},
		{Op: "wrap", Module: "socket", Concurrency: 1, Status: "ok", P50: us(30), overSocket: true},
		{Op: "wrap", Module: "tls", Concurrency: 1, Status: "ok", P50: us(60), Remote: true},
		{Op: "wrap", Module: "rings", Concurrency: 2, Status: "ok", P50: us(24)},
	}
	calls := map[string]int{"wrap": 1}
	setFloorRatios(results, &Result{Status: "ok", P50: us(15)}, calls, floorSocket)
	setFloorRatios(results, &Result{Status: "ok", P50: us(6)}, calls, floorRing)
	setFloorRatios(results, &Result{Status: "ok", P50: us(20)}, calls, floorTLS)
	for i, want := range []float64{2, 2, 3, 0} {
		if got := results[i].FloorRatio; got < want-1e-9 || got > want+1e-9 {
			t.Errorf("%s c=%d: floor ratio %v, want %v", results[i].Module, results[i].Concurrency, got, want)
		}
	}
}
