package keystore

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// countStretches counts Argon2id runs for the rest of the test.
func countStretches(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	orig := stretch
	stretch = func(pin, salt []byte, p Argon2Params) []byte {
		n.Add(1)
		return orig(pin, salt, p)
	}
	t.Cleanup(func() { stretch = orig })
	return &n
}

func TestPINCacheSkipsStretchForAKnownPIN(t *testing.T) {
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "cache")
	n := countStretches(t)
	for i := range 3 {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
		s.Logout(ti.UUID)
		if got := n.Load(); got != 1 {
			t.Fatalf("after %d logins, %d stretches; want 1", i+1, got)
		}
	}
	// A wrong PIN is stretched, refused and counted, cache or not.
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("not-the-pin")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("wrong PIN: %v", err)
	}
	if got := n.Load(); got != 2 {
		t.Fatalf("the wrong PIN was not stretched (%d)", got)
	}
	info, err := s.Token(ctx, ti.UUID)
	if err != nil || info.UserFailures != 1 {
		t.Fatalf("failures %d, %v; want 1", info.UserFailures, err)
	}
	// A wrong PIN is never remembered.
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("not-the-pin")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("wrong PIN again: %v", err)
	}
	if got := n.Load(); got != 3 {
		t.Fatalf("the wrong PIN was not stretched again (%d)", got)
	}
}

// After a PIN change the old PIN's entry opens nothing: the new record
// has a new salt. The old PIN is refused, the new one works.
func TestPINCacheAfterPINChange(t *testing.T) {
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "change")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	newPIN := []byte("user-secret-2")
	if err := s.SetPIN(ctx, ti.UUID, RoleUser, userPIN, newPIN); err != nil {
		t.Fatal(err)
	}
	s.Logout(ti.UUID)
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("the old PIN after a change: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, newPIN); err != nil {
		t.Fatalf("the new PIN: %v", err)
	}
}

func TestPINCacheExpiresAndCanBeOff(t *testing.T) {
	for _, c := range []struct {
		ttl  time.Duration
		want int64
	}{{ttl: time.Nanosecond, want: 3}, {ttl: -1, want: 3}, {ttl: time.Hour, want: 1}} {
		s, _ := newStore(t, Options{PINCacheTTL: c.ttl})
		ti := newToken(t, s, "ttl")
		n := countStretches(t)
		for range 3 {
			time.Sleep(time.Millisecond)
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			s.Logout(ti.UUID)
		}
		if got := n.Load(); got != c.want {
			t.Fatalf("TTL %v: %d stretches in 3 logins, want %d", c.ttl, got, c.want)
		}
	}
}

// The cache is bounded: the least recently used entry goes first.
func TestStretchCacheBound(t *testing.T) {
	c := newStretchCache(time.Hour)
	var first [32]byte
	for i := range stretchCacheMax + 10 {
		id := c.id([]byte{byte(i), byte(i >> 8)}, DefaultArgon2, []byte("pin"))
		if i == 0 {
			first = id
		}
		c.put(id, []byte{1, 2, 3})
	}
	if len(c.entries) != stretchCacheMax {
		t.Fatalf("%d entries, bound %d", len(c.entries), stretchCacheMax)
	}
	if _, ok := c.get(first); ok {
		t.Fatal("the oldest entry survived")
	}
}

// An entry no one uses again is wiped by the sweeper, not only when looked
// up: within 1.25 TTLs of its last use.
func TestStretchCacheSweeps(t *testing.T) {
	c := newStretchCache(40 * time.Millisecond)
	defer c.clear()
	id := c.id([]byte("salt"), DefaultArgon2, []byte("pin"))
	c.put(id, []byte{1, 2, 3})
	c.mu.Lock()
	stretched := c.entries[id].stretched
	c.mu.Unlock()
	time.Sleep(120 * time.Millisecond)
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d entries left after 3 TTLs", n)
	}
	if stretched[0] != 0 || stretched[1] != 0 || stretched[2] != 0 {
		t.Fatal("the expired entry's stretched key was not wiped")
	}
}
