package metrics

import (
	"context"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hsmemu/keystore"
)

// Sources are what the collector reads when scraped; a nil func or an
// empty path leaves its metrics out.
type Sources struct {
	// Counts is the engine's attached applications and open sessions.
	Counts func() (apps, sessions int)
	// Conns is the connections the server holds, module and admin.
	Conns func() int
	// Store is the keystore: its cache and audit counts.
	Store Store
	// DBPath is the keystore's file; its size, with its write-ahead log,
	// is reported.
	DBPath string
}

// Store is what the collector reads of the keystore (*keystore.Store).
type Store interface {
	Stats() keystore.Stats
	AuditHead(ctx context.Context) (int64, []byte, error)
	TamperCount(ctx context.Context) (int64, error)
}

// Watch registers the collector of src. The keystore's tamper records are
// counted once, from the audit log, at the first scrape, and from then on
// as they are appended, so a scrape never counts the whole log.
func (m *Metrics) Watch(src Sources) {
	m.reg.MustRegister(&collector{src: src})
}

type collector struct {
	src Sources

	mu         sync.Mutex // one scrape at a time reads the keystore
	tamperBase uint64     // tamper records in the log less those this Store appended, once counted
	tamperRead bool
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descApps        = desc("hsmemu_applications", "Applications (PKCS#11 clients) attached.")
	descSessions    = desc("hsmemu_sessions", "PKCS#11 sessions open, over all applications.")
	descConns       = desc("hsmemu_connections", "Connections the daemon holds: the module's and administrators'.")
	descCacheHits   = desc("hsmemu_object_cache_hits_total", "Opens of a stored object served from the cache of unsealed objects.")
	descCacheMisses = desc("hsmemu_object_cache_misses_total", "Opens of a stored object that read and unsealed its row.")
	descCacheSize   = desc("hsmemu_object_cache_entries", "Unsealed objects the cache holds.")
	descAudited     = desc("hsmemu_audit_events_total", "Audit records this daemon appended since it started, by event.", "event")
	descPINFail     = desc("hsmemu_pin_failures_total", "Wrong PINs since the daemon started (every *.failure audit event: logins, PIN changes, SO checks).")
	descLockouts    = desc("hsmemu_pin_lockouts_total", "Roles locked after too many wrong PINs since the daemon started (pin.lockout audit events).")
	descTamper      = desc("hsmemu_tamper_detections_total", "Integrity failures detected over the keystore's life: the audit log's tamper.detected records.")
	descAuditRecs   = desc("hsmemu_audit_records", "Records in the audit log.")
	descDBSize      = desc("hsmemu_keystore_size_bytes", "The keystore's file size, its write-ahead log included.")
	descScrapeErr   = desc("hsmemu_metrics_scrape_errors", "Keystore reads that failed during this scrape (their metrics are left out).")
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descApps, descSessions, descConns, descCacheHits, descCacheMisses, descCacheSize,
		descAudited, descPINFail, descLockouts, descTamper, descAuditRecs, descDBSize, descScrapeErr} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if c.src.Counts != nil {
		apps, sessions := c.src.Counts()
		gauge(descApps, float64(apps))
		gauge(descSessions, float64(sessions))
	}
	if c.src.Conns != nil {
		gauge(descConns, float64(c.src.Conns()))
	}
	if s := c.src.Store; s != nil {
		st := s.Stats()
		counter(descCacheHits, float64(st.CacheHits))
		counter(descCacheMisses, float64(st.CacheMisses))
		gauge(descCacheSize, float64(st.CacheEntries))
		var failures uint64
		for ev, n := range st.Audited {
			counter(descAudited, float64(n), ev)
			if strings.HasSuffix(ev, ".failure") {
				failures += n
			}
		}
		counter(descPINFail, float64(failures))
		counter(descLockouts, float64(st.Audited["pin.lockout"]))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := 0
		if !c.tamperRead {
			// Appends between the two reads would be counted twice: none
			// race with a scrape but a tampering found at that moment.
			if n, err := s.TamperCount(ctx); err == nil {
				c.tamperBase, c.tamperRead = uint64(n)-s.Stats().Audited["tamper.detected"], true
			} else {
				errs++
			}
		}
		if c.tamperRead {
			counter(descTamper, float64(c.tamperBase+st.Audited["tamper.detected"]))
		}
		if n, _, err := s.AuditHead(ctx); err == nil {
			gauge(descAuditRecs, float64(n))
		} else {
			errs++
		}
		gauge(descScrapeErr, float64(errs))
	}
	if p := c.src.DBPath; p != "" {
		var size int64
		for _, f := range []string{p, p + "-wal"} {
			if fi, err := os.Stat(f); err == nil {
				size += fi.Size()
			}
		}
		gauge(descDBSize, float64(size))
	}
}
