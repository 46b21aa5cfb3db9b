// Package metrics is the daemon's Prometheus instrumentation: counters and
// latency histograms of the PKCS#11 and admin calls, updated on the call
// path, and a collector that reads the rest (applications, sessions,
// connections, the keystore's cache and audit counts, its file's size)
// only when scraped. docs/metrics.md lists the metrics.
//
// The PKCS#11 call path must stay cheap. Every call's instruments are made
// once, when the Metrics is made, in a slice indexed by the call table's
// ids, and they are plain atomic counters of our own (calls.go) rather
// than client_golang's, whose histograms take twice the atomic operations
// to keep a scrape's snapshot exact: a call costs two clock reads and
// three atomic adds, and no label lookup. Only a return value other than
// CKR_OK, and a mechanism on the calls that take one, go through a map
// (sync.Map, read mostly, so without locks once warm). A scrape turns the
// counters into Prometheus' families.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// bucketBounds are the latency histograms' bucket bounds in seconds: from a
// cached AES operation served in the daemon (a few microseconds) to an
// RSA-4096 key generation or a PIN stretched with Argon2id (seconds).
var bucketBounds = [...]float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Buckets are the bounds as client_golang takes them.
var Buckets = bucketBounds[:]

// Metrics is one daemon's registry and the instruments its calls update.
// A nil *Metrics records nothing, so the daemon runs without one.
type Metrics struct {
	reg *prometheus.Registry

	byCall []*callStats // by call id; nil for ids the daemon never serves

	admin    *prometheus.CounterVec
	adminDur *prometheus.HistogramVec
}

// New returns the daemon's metrics, with Go's runtime and process
// collectors registered beside them.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		admin: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hsmemu_admin_calls_total",
			Help: "Administrator's calls served, by call and outcome (ok, or the admin protocol's error code).",
		}, []string{"op", "code"}),
		adminDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hsmemu_admin_call_duration_seconds",
			Help:    "Time to serve an administrator's call, by call.",
			Buckets: Buckets,
		}, []string{"op"}),
	}
	maxID := uint32(0)
	for i := range calls.Table {
		maxID = max(maxID, calls.Table[i].ID)
	}
	m.byCall = make([]*callStats, maxID+1)
	for i := range calls.Table {
		c := &calls.Table[i]
		if c.Mode != calls.Forwarded {
			continue
		}
		cs := &callStats{name: c.Name, mechArg: -1}
		for j, a := range c.Args {
			if a.Kind == calls.Mechanism {
				cs.mechArg = j
			}
		}
		m.byCall[c.ID] = cs
	}
	m.reg.MustRegister(m.admin, m.adminDur, callCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the daemon's collectors go (Register).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// MechanismArg returns the index of call id's mechanism argument, or -1
// when it has none (or is not served): the server reads the mechanism
// only for those calls.
func (m *Metrics) MechanismArg(id uint32) int {
	if m == nil || int(id) >= len(m.byCall) || m.byCall[id] == nil {
		return -1
	}
	return m.byCall[id].mechArg
}

// Call records one PKCS#11 call: its return value and how long it took.
// mech is the mechanism it named when MechanismArg says it has one.
func (m *Metrics) Call(id uint32, rv uint64, mech uint64, d time.Duration) {
	if m == nil || int(id) >= len(m.byCall) {
		return
	}
	cs := m.byCall[id]
	if cs == nil {
		return
	}
	cs.dur.observe(d)
	cs.count(rv)
	if cs.mechArg >= 0 {
		h, ok := cs.mechs.Load(mech)
		if !ok {
			// The number is the client's, refused or not: one it makes
			// up in every call must not grow the map, and the scrape,
			// without bound. Only a warm, known mechanism skips this.
			if !ck.IsMechanism(mech) {
				mech = otherMechanism
			}
			h, _ = cs.mechs.LoadOrStore(mech, &histogram{})
		}
		h.(*histogram).observe(d)
	}
}

// otherMechanism is the key, and "other" the label, of every mechanism
// number PKCS#11 does not name. CK_UNAVAILABLE_INFORMATION names none.
const otherMechanism = ^uint64(0)

// Refused counts a PKCS#11 call answered unserved (too large, or no
// memory for it: daemon/requests.go): its return value, no latency.
func (m *Metrics) Refused(id uint32, rv uint64) {
	if m == nil || int(id) >= len(m.byCall) || m.byCall[id] == nil {
		return
	}
	m.byCall[id].count(rv)
}

// Admin records one administrator's call: code is "ok" or the admin
// protocol's error code.
func (m *Metrics) Admin(op, code string, d time.Duration) {
	if m == nil {
		return
	}
	m.admin.WithLabelValues(op, code).Inc()
	m.adminDur.WithLabelValues(op).Observe(d.Seconds())
}
