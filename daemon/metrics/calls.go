package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hsmemu/cryptoki/ck"
)

// bounds are Buckets in nanoseconds, for the hot path's comparisons.
var bounds = func() []int64 {
	b := make([]int64, len(Buckets))
	for i, s := range Buckets {
		b[i] = int64(s * 1e9)
	}
	return b
}()

// histogram counts durations into Buckets, plus one bucket for those
// beyond the last bound; its count is the sum of its buckets, so a scrape
// always sees a histogram that adds up.
type histogram struct {
	buckets [len(bucketBounds) + 1]atomic.Uint64 // not cumulative
	sumNs   atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	ns := int64(d)
	i := 0
	for i < len(bounds) && ns > bounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sumNs.Add(uint64(max(ns, 0)))
}

// snapshot is the histogram as Prometheus wants it: its count, its sum in
// seconds, and cumulative buckets by upper bound.
func (h *histogram) snapshot() (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(Buckets))
	for i := range h.buckets {
		count += h.buckets[i].Load()
		if i < len(Buckets) {
			buckets[Buckets[i]] = count
		}
	}
	return count, float64(h.sumNs.Load()) / 1e9, buckets
}

// callStats is one PKCS#11 function's instruments.
type callStats struct {
	name    string
	mechArg int // the index of its mechanism argument, or -1
	ok      atomic.Uint64
	rvs     sync.Map // CK_RV (uint64) -> *atomic.Uint64, for all but CKR_OK
	dur     histogram
	mechs   sync.Map // mechanism (uint64) -> *histogram
}

func (cs *callStats) count(rv uint64) {
	if rv == ck.CKR_OK {
		cs.ok.Add(1)
		return
	}
	c, ok := cs.rvs.Load(rv)
	if !ok {
		c, _ = cs.rvs.LoadOrStore(rv, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

var (
	descCalls = desc("hsmemu_pkcs11_calls_total", "PKCS#11 calls served, by function and return value (its CK_RV name).", "function", "rv")
	descDur   = desc("hsmemu_pkcs11_call_duration_seconds", "Time the daemon took to serve a PKCS#11 call, from its decoded request to its result, by function.", "function")
	descMech  = desc("hsmemu_pkcs11_mechanism_call_duration_seconds", "Time to serve the PKCS#11 calls that name a mechanism (operation Inits, key generation, wrap, unwrap, derive), by function and mechanism.", "function", "mechanism")
)

// callCollector turns the calls' counters into metric families; a
// function never called is left out.
type callCollector struct{ m *Metrics }

func (callCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCalls
	ch <- descDur
	ch <- descMech
}

func (c callCollector) Collect(ch chan<- prometheus.Metric) {
	for _, cs := range c.m.byCall {
		if cs == nil {
			continue
		}
		if n, sum, buckets := cs.dur.snapshot(); n > 0 {
			ch <- prometheus.MustNewConstHistogram(descDur, n, sum, buckets, cs.name)
		}
		if ok := cs.ok.Load(); ok > 0 {
			ch <- prometheus.MustNewConstMetric(descCalls, prometheus.CounterValue, float64(ok), cs.name, ck.Error(ck.CKR_OK).Error())
		}
		cs.rvs.Range(func(rv, v any) bool {
			ch <- prometheus.MustNewConstMetric(descCalls, prometheus.CounterValue, float64(v.(*atomic.Uint64).Load()), cs.name, ck.Error(rv.(uint64)).Error())
			return true
		})
		cs.mechs.Range(func(mech, h any) bool {
			n, sum, buckets := h.(*histogram).snapshot()
			name := "other"
			if mech != otherMechanism {
				name = ck.MechanismName(mech.(uint64))
			}
			ch <- prometheus.MustNewConstHistogram(descMech, n, sum, buckets, cs.name, name)
			return true
		})
	}
}
