package bench

import (
	"math"
	"sort"
	"time"
)

// addCell records one completed run of r; summarize turns the cells into
// the figures that are reported.
func (r *Result) addCell(c Cell) {
	r.cells = append(r.cells, c)
}

// summarize fills r's figures from its cells. The median over runs is
// reported, not the mean, so that one run disturbed by the machine (a GC,
// another process) does not move the figure; min and max show the spread.
// A result without cells is left as it is.
func summarize(r *Result) {
	if len(r.cells) == 0 {
		return
	}
	rates := make([]float64, 0, len(r.cells))
	var p50s, p99s []float64
	for _, c := range r.cells {
		rates = append(rates, c.OpsPerS)
		// A run may have measured throughput only; it has no say in
		// the latency figures.
		if c.Latency != nil && c.Latency.Count() > 0 {
			p50s = append(p50s, float64(c.Latency.Quantile(0.50)))
			p99s = append(p99s, float64(c.Latency.Quantile(0.99)))
		}
	}
	r.Runs = len(r.cells)
	r.OpsPerS = median(rates)
	r.OpsPerSMin, r.OpsPerSMax = rates[0], rates[0]
	for _, x := range rates[1:] {
		r.OpsPerSMin = math.Min(r.OpsPerSMin, x)
		r.OpsPerSMax = math.Max(r.OpsPerSMax, x)
	}
	r.P50 = Micros(time.Duration(math.Round(median(p50s))))
	r.P99 = Micros(time.Duration(math.Round(median(p99s))))
}

// setRatios sets each ok result's Ratio to its throughput over the
// baseline module's for the same op and concurrency, the figure the
// harness exists to show. Where the baseline did not run that cell (or
// measured nothing) there is nothing to compare with, and Ratio is 0.
func setRatios(results []Result, baseline string) {
	type key struct {
		op   string
		conc int
	}
	base := make(map[key]float64)
	for _, r := range results {
		if r.Module == baseline && r.Status == "ok" && r.OpsPerS > 0 {
			base[key{r.id(), r.Concurrency}] = r.OpsPerS
		}
	}
	for i := range results {
		r := &results[i]
		r.Ratio = 0
		if r.Status != "ok" {
			continue
		}
		if b, ok := base[key{r.id(), r.Concurrency}]; ok {
			r.Ratio = r.OpsPerS / b
		}
	}
}

// median returns the median of xs (the mean of the two middle values when
// there is an even number), 0 for none. It sorts a copy: callers keep their
// values in run order.
func median(xs []float64) float64 {
	n := len(xs)
	if n == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
