package bench

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// relErr is how far got is from want, relative to want.
func relErr(got, want time.Duration) float64 {
	return math.Abs(float64(got-want)) / float64(want)
}

// The promised error is 3%; the design gives 1/128, so test against 1%
// to catch a regression long before the promise is broken.
const histTol = 0.01

func TestHistogramEmpty(t *testing.T) {
	var h Histogram // the zero value is usable
	for _, q := range []float64{0, 0.5, 1} {
		if got := h.Quantile(q); got != 0 {
			t.Errorf("empty Quantile(%v) = %v, want 0", q, got)
		}
	}
	if h.Count() != 0 || h.Max() != 0 {
		t.Errorf("empty Count/Max = %d/%v", h.Count(), h.Max())
	}
	if NewHistogram().Quantile(0.99) != 0 {
		t.Error("NewHistogram not empty")
	}
}

func TestHistogramUniform(t *testing.T) {
	h := NewHistogram()
	const n = 100000
	// 1..100000 us, shuffled so order cannot matter.
	for _, i := range rand.New(rand.NewPCG(1, 2)).Perm(n) {
		h.Record(time.Duration(i+1) * time.Microsecond)
	}
	if h.Count() != n {
		t.Fatalf("Count = %d, want %d", h.Count(), n)
	}
	for _, q := range []float64{0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999} {
		want := time.Duration(math.Ceil(q*n)) * time.Microsecond
		got := h.Quantile(q)
		if e := relErr(got, want); e > histTol {
			t.Errorf("Quantile(%v) = %v, want %v (error %.2f%%)", q, got, want, 100*e)
		}
	}
	if got := h.Quantile(0); got != time.Microsecond {
		t.Errorf("Quantile(0) = %v, want the exact min 1us", got)
	}
	if got := h.Quantile(1); got != n*time.Microsecond {
		t.Errorf("Quantile(1) = %v, want the exact max", got)
	}
	if h.Max() != n*time.Microsecond {
		t.Errorf("Max = %v", h.Max())
	}
}

func TestHistogramConstant(t *testing.T) {
	h := NewHistogram()
	const d = 1234567 * time.Nanosecond
	for range 1000 {
		h.Record(d)
	}
	for _, q := range []float64{0, 0.5, 0.99, 1} {
		if got := h.Quantile(q); got != d {
			t.Errorf("Quantile(%v) = %v, want %v", q, got, d)
		}
	}
}

func TestHistogramTwoSpikes(t *testing.T) {
	h := NewHistogram()
	const fast, slow = 100 * time.Microsecond, 10 * time.Millisecond
	for i := range 1000 {
		if i%10 == 0 {
			h.Record(slow) // 10%
		} else {
			h.Record(fast)
		}
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{q: 0.01, want: fast}, {q: 0.5, want: fast}, {q: 0.9, want: fast}, {q: 0.901, want: slow}, {q: 0.99, want: slow}, {q: 1, want: slow}} {
		if got := h.Quantile(c.q); relErr(got, c.want) > histTol {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}

// Every bucket must hold the values mapped to it, and its midpoint must be
// within 1/128 of each of them: this is what the accuracy promise rests on.
func TestHistogramBuckets(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	check := func(v uint64) {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d out of range", v, i)
		}
		lo, w := bucketRange(i)
		if v < lo || v >= lo+w {
			t.Fatalf("value %d outside its bucket %d [%d, %d)", v, i, lo, lo+w)
		}
		mid := lo + w/2
		if e := math.Abs(float64(mid)-float64(v)) / float64(v); v > 0 && e > 1.0/128 {
			t.Fatalf("value %d: midpoint %d off by %.3f%%", v, mid, 100*e)
		}
	}
	for v := range uint64(5000) {
		check(v)
	}
	for range 100000 {
		// Log-uniform from 1 ns to the largest tracked value.
		check(uint64(math.Exp(rng.Float64() * math.Log(float64(maxTracked)))))
	}
	check(maxTracked)
	// Buckets are contiguous and increasing.
	var next uint64
	for i := range numBuckets {
		lo, w := bucketRange(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		next = lo + w
	}
	if next != maxTracked+1 {
		t.Fatalf("buckets end at %d, want %d", next, maxTracked+1)
	}
}

func TestHistogramEdges(t *testing.T) {
	h := NewHistogram()
	h.Record(-5 * time.Second)
	if h.Count() != 1 || h.Quantile(0.5) != 0 || h.Max() != 0 {
		t.Errorf("negative: Count %d, p50 %v, Max %v; want 1, 0, 0", h.Count(), h.Quantile(0.5), h.Max())
	}

	h = NewHistogram()
	for v := range 64 { // small values are exact
		h.Record(time.Duration(v))
	}
	if got := h.Quantile(0.5); got != 31 {
		t.Errorf("0..63ns p50 = %v, want 31ns", got)
	}

	h = NewHistogram()
	long := 5 * time.Hour // beyond the tracked range
	h.Record(time.Millisecond)
	h.Record(long)
	if h.Max() != long || h.Quantile(1) != long {
		t.Errorf("Max/Quantile(1) = %v/%v, want %v", h.Max(), h.Quantile(1), long)
	}
	if got := h.Quantile(0); got != time.Millisecond {
		t.Errorf("Quantile(0) = %v", got)
	}
	// q outside [0,1] is clamped rather than panicking.
	if h.Quantile(-1) != time.Millisecond || h.Quantile(2) != long || h.Quantile(math.NaN()) != time.Millisecond {
		t.Error("q outside [0,1] not clamped")
	}
}

func TestHistogramMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	all, a, b := NewHistogram(), NewHistogram(), NewHistogram()
	for i := range 50000 {
		d := time.Duration(rng.ExpFloat64() * float64(200*time.Microsecond))
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(a)
	m.Merge(nil)
	m.Merge(NewHistogram())
	m.Merge(b)
	if m != *all {
		t.Fatalf("merged histogram differs from recording everything into one")
	}
	for _, q := range []float64{0, 0.5, 0.99, 1} {
		if m.Quantile(q) != all.Quantile(q) {
			t.Errorf("Quantile(%v): merged %v, all %v", q, m.Quantile(q), all.Quantile(q))
		}
	}
	if a.Count()+b.Count() != m.Count() {
		t.Error("Merge changed its argument")
	}
}

func TestHistogramRecordAllocs(t *testing.T) {
	h := NewHistogram()
	d := time.Duration(0)
	if n := testing.AllocsPerRun(1000, func() {
		d += 7919
		h.Record(d)
	}); n != 0 {
		t.Errorf("Record allocates %v times per call", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewHistogram()
	// Precomputed latencies, so the benchmark times Record, not the RNG.
	rng := rand.New(rand.NewPCG(7, 8))
	ds := make([]time.Duration, 1024)
	for i := range ds {
		ds[i] = time.Duration(rng.ExpFloat64() * float64(100*time.Microsecond))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h.Record(ds[i&1023])
		i++
	}
}
