package bench

import (
	"slices"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		xs   []float64
		want float64
	}{
		{xs: nil, want: 0},
		{xs: []float64{7}, want: 7},
		{xs: []float64{3, 1, 2}, want: 2},
		{xs: []float64{9, 1, 5, 3, 7}, want: 5},
		{xs: []float64{4, 1}, want: 2.5},
		{xs: []float64{10, 1, 4, 2}, want: 3},
	} {
		in := slices.Clone(c.xs)
		if got := median(in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.xs, got, c.want)
		}
		if !slices.Equal(in, c.xs) {
			t.Errorf("median reordered its input: %v became %v", c.xs, in)
		}
	}
}

// histOf returns a histogram holding only d.
func histOf(d time.Duration) *Histogram {
	h := NewHistogram()
	h.Record(d)
	return h
}

func TestSummarize(t *testing.T) {
	var r Result
	r.addCell(Cell{OpsPerS: 900, Latency: histOf(30 * time.Microsecond)})
	r.addCell(Cell{OpsPerS: 1200, Latency: histOf(10 * time.Microsecond)})
	r.addCell(Cell{OpsPerS: 1000, Latency: histOf(20 * time.Microsecond)})
	summarize(&r)
	if r.Runs != 3 {
		t.Errorf("Runs = %d, want 3", r.Runs)
	}
	if r.OpsPerS != 1000 || r.OpsPerSMin != 900 || r.OpsPerSMax != 1200 {
		t.Errorf("ops/s = %v (%v-%v), want 1000 (900-1200)", r.OpsPerS, r.OpsPerSMin, r.OpsPerSMax)
	}
	if r.P50 != Micros(20*time.Microsecond) || r.P99 != Micros(20*time.Microsecond) {
		t.Errorf("p50/p99 = %v/%v, want 20us", r.P50, r.P99)
	}
	if len(r.cells) != 3 {
		t.Errorf("summarize changed the cells")
	}
}

func TestSummarizeEvenAndNilLatency(t *testing.T) {
	var r Result
	r.addCell(Cell{OpsPerS: 100, Latency: histOf(10 * time.Microsecond)})
	r.addCell(Cell{OpsPerS: 300})
	r.addCell(Cell{OpsPerS: 200, Latency: histOf(30 * time.Microsecond)})
	r.addCell(Cell{OpsPerS: 400})
	summarize(&r)
	if r.Runs != 4 || r.OpsPerS != 250 || r.OpsPerSMin != 100 || r.OpsPerSMax != 400 {
		t.Errorf("runs %d ops/s %v (%v-%v), want 4 250 (100-400)", r.Runs, r.OpsPerS, r.OpsPerSMin, r.OpsPerSMax)
	}
	// Only the two runs with latencies count: the mean of 10 and 30.
	if r.P50 != Micros(20*time.Microsecond) {
		t.Errorf("p50 = %v, want 20us", r.P50)
	}
}

func TestSummarizeNoCells(t *testing.T) {
	var r Result
	summarize(&r)
	if r.Runs != 0 || r.OpsPerS != 0 || r.OpsPerSMin != 0 || r.OpsPerSMax != 0 || r.P50 != 0 || r.P99 != 0 {
		t.Errorf("summarize with no cells set figures: %+v", r)
	}
}

func TestSetRatios(t *testing.T) {
	rs := []Result{
		{Op: "sign", Module: "base", Concurrency: 1, Status: "ok", OpsPerS: 1000},
		{Op: "sign", Module: "emu", Concurrency: 1, Status: "ok", OpsPerS: 1520},
		{Op: "sign", Module: "base", Concurrency: 4, Status: "ok", OpsPerS: 2000},
		{Op: "sign", Module: "emu", Concurrency: 4, Status: "ok", OpsPerS: 1000},
		// Baseline unsupported: no ratio.
		{Op: "wrap", Module: "base", Concurrency: 1, Status: "unsupported"},
		{Op: "wrap", Module: "emu", Concurrency: 1, Status: "ok", OpsPerS: 500, Ratio: 9},
		// Baseline missing altogether.
		{Op: "find", Module: "emu", Concurrency: 1, Status: "ok", OpsPerS: 500},
		// Baseline measured nothing.
		{Op: "gen", Module: "base", Concurrency: 1, Status: "ok", OpsPerS: 0},
		{Op: "gen", Module: "emu", Concurrency: 1, Status: "ok", OpsPerS: 5},
		// Not ok itself.
		{Op: "digest", Module: "base", Concurrency: 1, Status: "ok", OpsPerS: 10},
		{Op: "digest", Module: "emu", Concurrency: 1, Status: "failed", OpsPerS: 10},
	}
	setRatios(rs, "base")
	want := []float64{1, 1.52, 1, 0.5, 0, 0, 0, 0, 0, 1, 0}
	for i, r := range rs {
		if r.Ratio != want[i] {
			t.Errorf("%s %s c=%d: ratio %v, want %v", r.Op, r.Module, r.Concurrency, r.Ratio, want[i])
		}
	}
}
