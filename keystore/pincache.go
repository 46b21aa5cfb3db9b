package keystore

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"
)

// stretchCache remembers the Argon2id output of PINs that opened their
// record, so that logging in again with the same PIN skips the stretch,
// which is the whole cost of a login (tens to hundreds of milliseconds,
// by design). An entry is found by a keyed hash of the record's salt and
// parameters and the PIN, under a key made at random for this process, so
// the PIN itself is not kept. It holds the stretched key only (and, for a
// record bound to the TPM, the secret the TPM gave out for it, so that a
// login with a PIN seen before skips the TPM too); the record still has to
// open under it, so a stale entry (the PIN was changed: a new salt) is
// never found, and one that no longer opens is dropped and the full check
// runs. Wrong PINs never enter: each one is stretched and, for a bound
// record, presented to the TPM, which counts it.
//
// What it costs, for the TTL after a login (and up to a quarter of it
// more, until the sweeper runs): anyone who reads the daemon's memory gets
// the stretched key, which with the record on disk opens the token's data
// key, and also the HMAC key, with which the entry ids test PIN guesses at
// HMAC speed rather than Argon2id's. Without the cache, a memory image
// taken while no one is logged in holds neither. Options.PINCacheTTL sets
// the TTL (negative: no cache).
type stretchCache struct {
	key [32]byte
	ttl time.Duration

	mu      sync.Mutex
	entries map[[32]byte]*stretchEntry
	stop    chan struct{} // ends the sweeper
}

type stretchEntry struct {
	stretched []byte
	used      time.Time
}

// stretchCacheMax bounds the entries: one per token and role in use.
const stretchCacheMax = 256

func newStretchCache(ttl time.Duration) *stretchCache {
	if ttl <= 0 {
		return nil
	}
	c := &stretchCache{ttl: ttl, entries: map[[32]byte]*stretchEntry{}, stop: make(chan struct{})}
	if _, err := rand.Read(c.key[:]); err != nil {
		return nil
	}
	go c.sweeper()
	return c
}

// sweeper wipes expired entries every quarter TTL, so an entry no one uses
// again is gone within 1.25 TTLs of its last use.
func (c *stretchCache) sweeper() {
	t := time.NewTicker(max(c.ttl/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.sweep()
		}
	}
}

func (c *stretchCache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for k, e := range c.entries {
		if now.Sub(e.used) > c.ttl {
			c.dropLocked(k)
		}
	}
}

// id names the entry of pin for a record with salt and p.
func (c *stretchCache) id(salt []byte, p Argon2Params, pin []byte) [32]byte {
	m := hmac.New(sha256.New, c.key[:])
	var params [12]byte
	binary.BigEndian.PutUint32(params[0:], p.Time)
	binary.BigEndian.PutUint32(params[4:], p.MemoryKiB)
	binary.BigEndian.PutUint32(params[8:], uint32(p.Threads))
	m.Write(params[:])
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(salt)))
	m.Write(n[:])
	m.Write(salt)
	m.Write(pin)
	var id [32]byte
	m.Sum(id[:0])
	return id
}

// get returns a copy of an entry's stretched key, renewing its TTL.
func (c *stretchCache) get(id [32]byte) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[id]
	if !ok {
		return nil, false
	}
	now := time.Now()
	if now.Sub(e.used) > c.ttl {
		c.dropLocked(id)
		return nil, false
	}
	e.used = now
	return append([]byte(nil), e.stretched...), true
}

func (c *stretchCache) put(id [32]byte, stretched []byte) {
	if c == nil {
		return
	}
	c.sweep() // expired ones first
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if len(c.entries) >= stretchCacheMax {
		var oldest [32]byte
		var at time.Time
		for k, e := range c.entries {
			if at.IsZero() || e.used.Before(at) {
				oldest, at = k, e.used
			}
		}
		c.dropLocked(oldest)
	}
	c.entries[id] = &stretchEntry{stretched: append([]byte(nil), stretched...), used: now}
}

func (c *stretchCache) drop(id [32]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(id)
}

func (c *stretchCache) dropLocked(id [32]byte) {
	if e, ok := c.entries[id]; ok {
		wipe(e.stretched)
		delete(c.entries, id)
	}
}

// clear wipes every entry and stops the sweeper (the store is closing).
func (c *stretchCache) clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.entries {
		c.dropLocked(id)
	}
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	clear(c.key[:])
}
