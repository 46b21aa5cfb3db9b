package keystore

import (
	"sync"
	"sync/atomic"
)

// cache keeps opened objects so that using a key a second time costs a map
// lookup instead of a SQLite read and an AES-GCM open. It is bounded and
// evicts with the CLOCK algorithm: a hit only sets a flag, so hits take the
// read lock and never contend with each other.
//
// Every invalidation bumps an epoch. A miss notes the epoch before it reads
// the database and inserts only if no invalidation happened meanwhile, so an
// update or logout racing with a miss can never leave a stale entry behind.
type cache struct {
	mu    sync.RWMutex
	max   int
	m     map[ObjectID]*cacheEntry
	ring  []ObjectID // slots for CLOCK; 0 marks a free slot
	free  []int
	hand  int
	epoch atomic.Uint64
}

type cacheEntry struct {
	obj  *Object
	ref  atomic.Bool
	slot int
}

func newCache(max int) *cache {
	if max < 0 {
		max = 0
	}
	return &cache{max: max, m: make(map[ObjectID]*cacheEntry, max)}
}

func (c *cache) get(id ObjectID) (*Object, bool) {
	c.mu.RLock()
	e, ok := c.m[id]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e.obj, true
}

func (c *cache) currentEpoch() uint64 { return c.epoch.Load() }

// put inserts obj unless the cache was invalidated since epoch was read.
func (c *cache) put(obj *Object, epoch uint64) {
	if c.max == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch.Load() != epoch {
		return
	}
	if _, ok := c.m[obj.ID]; ok {
		// Entries are immutable once published (get reads obj without
		// the lock), and a racing miss opened the same authenticated row.
		return
	}
	e := &cacheEntry{obj: obj}
	switch {
	case len(c.free) > 0:
		e.slot = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	case len(c.ring) < c.max:
		e.slot = len(c.ring)
		c.ring = append(c.ring, 0)
	default:
		e.slot = c.evict()
	}
	c.ring[e.slot] = obj.ID
	c.m[obj.ID] = e
}

// evict frees one slot, giving every recently used entry a second chance.
// Called with mu held and the ring full.
func (c *cache) evict() int {
	for {
		slot := c.hand
		c.hand = (c.hand + 1) % len(c.ring)
		e := c.m[c.ring[slot]]
		if e.ref.Swap(false) {
			continue
		}
		delete(c.m, c.ring[slot])
		return slot
	}
}

func (c *cache) remove(id ObjectID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch.Add(1)
	c.dropLocked(id)
}

func (c *cache) dropLocked(id ObjectID) {
	e, ok := c.m[id]
	if !ok {
		return
	}
	delete(c.m, id)
	c.ring[e.slot] = 0
	c.free = append(c.free, e.slot)
}

// purge drops every entry for which drop returns true.
func (c *cache) purge(drop func(*Object) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch.Add(1)
	for id, e := range c.m {
		if drop(e.obj) {
			c.dropLocked(id)
		}
	}
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
