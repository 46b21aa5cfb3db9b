package keystore

import (
	"maps"
	"sync"
	"sync/atomic"
)

// Stats are counts a Store keeps of its own work since it was opened, for
// the daemon's metrics (daemon/metrics reads them when scraped; the
// keystore itself knows nothing of Prometheus).
type Stats struct {
	// CacheHits and CacheMisses count Open's lookups of the object
	// cache; CacheEntries is what it holds now.
	CacheHits, CacheMisses uint64
	CacheEntries           int
	// Audited counts the audit records this Store appended, by event
	// ("login.failure", "pin.lockout", "tamper.detected", ...).
	Audited map[string]uint64
}

// stats is a Store's counters. The cache's are on the hot path: one
// atomic add per Open.
type stats struct {
	hits, misses atomic.Uint64

	mu      sync.Mutex
	audited map[string]uint64
}

func (st *stats) noteAudit(event string) {
	st.mu.Lock()
	if st.audited == nil {
		st.audited = map[string]uint64{}
	}
	st.audited[event]++
	st.mu.Unlock()
}

// Stats returns the Store's counts.
func (s *Store) Stats() Stats {
	s.stats.mu.Lock()
	audited := maps.Clone(s.stats.audited)
	s.stats.mu.Unlock()
	if audited == nil {
		audited = map[string]uint64{}
	}
	return Stats{CacheHits: s.stats.hits.Load(), CacheMisses: s.stats.misses.Load(), CacheEntries: s.cache.len(), Audited: audited}
}
