package bench

import (
	"math"
	"math/bits"
	"time"
)

// The histogram is log-linear, as in HdrHistogram: values below subBuckets
// get one exact bucket each, and every power of two above that is split into
// subBuckets equal buckets. A bucket is then at most 1/subBuckets of its
// lower bound wide, and reporting its midpoint is off by at most half that:
// 1/128 (0.8%) with 64 sub-buckets, well inside the 3% the harness promises.
const (
	subBits    = 6
	subBuckets = 1 << subBits // 64

	// topExp is the highest power of two tracked: values up to
	// 2^(topExp+1)-1 ns, about 2.4 hours, land in their own bucket. Longer
	// ones share the last bucket; Max still reports them exactly.
	topExp     = 42
	numBuckets = subBuckets + (topExp-subBits+1)*subBuckets
	maxTracked = uint64(1)<<(topExp+1) - 1
)

// Histogram records operation latencies in fixed memory (about 19 KiB), so
// a worker can record millions of operations without growing a slice. It is
// not safe for concurrent use: each worker owns one and they are merged when
// the run ends, which keeps Record free of locks and atomics.
//
// The zero value is an empty histogram ready for use.
type Histogram struct {
	counts [numBuckets]uint64
	n      uint64
	min    uint64 // exact extremes, so a constant load reports exact figures
	max    uint64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{}
}

// bucketOf returns the bucket index of v (v <= maxTracked).
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	exp := bits.Len64(v) - 1 // v is in [2^exp, 2^(exp+1))
	shift := uint(exp - subBits)
	sub := int(v>>shift) - subBuckets // in [0, subBuckets)
	return (exp-subBits+1)*subBuckets + sub
}

// bucketRange returns the lowest value in bucket i and the bucket's width.
func bucketRange(i int) (lower, width uint64) {
	if i < subBuckets {
		return uint64(i), 1
	}
	exp := i/subBuckets + subBits - 1
	sub := uint64(i % subBuckets)
	shift := uint(exp - subBits)
	return (subBuckets + sub) << shift, 1 << shift
}

// Record adds one latency. Negative durations (a clock step) count as 0.
func (h *Histogram) Record(d time.Duration) {
	var v uint64
	if d > 0 {
		v = uint64(d)
	}
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	if v > maxTracked {
		v = maxTracked
	}
	h.counts[bucketOf(v)]++
}

// Merge adds every latency recorded in o to h. o is left unchanged; a nil o
// adds nothing.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	for i, c := range o.counts {
		h.counts[i] += c
	}
}

// Count returns how many latencies were recorded.
func (h *Histogram) Count() uint64 {
	return h.n
}

// Max returns the largest latency recorded, exactly; 0 when empty.
func (h *Histogram) Max() time.Duration {
	return time.Duration(h.max)
}

// Quantile returns the latency below or at which a fraction q of the
// recorded latencies fall (q is clamped to [0,1]; 0.5 is the median). It is
// the midpoint of the bucket holding that rank, kept within the exact
// min and max; the first and last ranks (Quantile(0) and Quantile(1)) are
// the exact min and max. An empty histogram returns 0.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if !(q > 0) { // also catches NaN
		q = 0
	} else if q > 1 {
		q = 1
	}
	// The rank is 1-based: the smallest k with k >= q*n, at least 1.
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	if rank > h.n {
		rank = h.n
	}
	// The first and last ranks are the extremes, which are kept exactly.
	if rank == 1 {
		return time.Duration(h.min)
	}
	if rank == h.n {
		return time.Duration(h.max)
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen < rank {
			continue
		}
		lower, width := bucketRange(i)
		v := lower + width/2
		if v < h.min {
			v = h.min
		}
		if v > h.max {
			v = h.max
		}
		return time.Duration(v)
	}
	return time.Duration(h.max) // unreachable while counts sum to n
}
