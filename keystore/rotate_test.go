package keystore

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// TestRotateDataKey: every object sealed under the data key opens after a
// rotation, in this Store and in a cold one; both PINs still log in; and
// readers and writers working through the rotation never fail.
func TestRotateDataKey(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{CacheEntries: -1})
	ti := newToken(t, s, "rot")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	var ids []ObjectID
	for i := range 50 {
		obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprint("k", i), i%5 != 0), []byte(fmt.Sprint("material-", i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, obj.ID)
	}
	deleted, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "gone", true), []byte("deleted-material"))
	s.SoftDelete(ctx, deleted.ID)

	if _, err := s.RotateDataKey(ctx, ti.UUID, soPIN, nil, nil); !errors.Is(err, ErrUserPINNeeded) {
		t.Fatalf("without the user PIN: %v", err)
	}
	if _, err := s.RotateDataKey(ctx, ti.UUID, []byte("wrong-so"), userPIN, nil); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("wrong SO PIN: %v", err)
	}

	// Readers and a writer run through three rotations.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var failures atomic.Int64
	var written []ObjectID
	var mu sync.Mutex
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				id := ids[(n*7+w)%len(ids)]
				if _, err := s.Open(ctx, id); err != nil {
					failures.Add(1)
					t.Errorf("open during rotation: %v", err)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; !stop.Load(); n++ {
			obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprint("w", n), true), []byte(fmt.Sprint("written-", n)))
			if err != nil {
				failures.Add(1)
				t.Errorf("put during rotation: %v", err)
				return
			}
			mu.Lock()
			written = append(written, obj.ID)
			mu.Unlock()
		}
	}()
	var done []int
	for range 3 {
		n, err := s.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, func(d, total int) { done = append(done, d) })
		if err != nil {
			t.Fatal(err)
		}
		if n < 41 || len(done) == 0 || done[len(done)-1] != n {
			t.Fatalf("resealed %d, progress %v", n, done)
		}
		done = done[:0]
	}
	stop.Store(true)
	wg.Wait()
	if failures.Load() > 0 {
		t.FailNow()
	}

	// A cold Store opens everything, the written objects too.
	s2 := reopen(t, path, Options{CacheEntries: -1})
	for _, pin := range []struct {
		role Role
		pin  []byte
	}{{role: RoleSO, pin: soPIN}, {role: RoleUser, pin: userPIN}} {
		if err := s2.Login(ctx, ti.UUID, pin.role, pin.pin); err != nil {
			t.Fatalf("login as %v after rotation: %v", pin.role, err)
		}
	}
	mu.Lock()
	all := append(append([]ObjectID(nil), ids...), written...)
	mu.Unlock()
	for _, id := range all {
		if _, err := s2.Open(ctx, id); err != nil {
			t.Fatalf("open %d after rotation: %v", id, err)
		}
	}
	got, err := s2.Open(ctx, ids[1])
	if err != nil || string(got.Secret) != "material-1" {
		t.Fatalf("object 1: %q %v", got.Secret, err)
	}
	if _, err := s2.Recover(ctx, ti.UUID, deleted.UUID); err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Open(ctx, deleted.ID); err != nil || string(got.Secret) != "deleted-material" {
		t.Fatalf("deleted object after rotation: %v", err)
	}
	after, _ := s2.Token(ctx, ti.UUID)
	if after.DataGeneration != ti.DataGeneration+3 {
		t.Fatalf("data generation %d, want %d", after.DataGeneration, ti.DataGeneration+3)
	}
}
