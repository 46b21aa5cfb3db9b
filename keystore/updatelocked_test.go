package keystore

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
)

// attrCounter is a vendor attribute the tests keep a counter in.
const attrCounter = 0x80000000 | 0x7e57

// counterOf reads the test counter of an object's attributes.
func counterOf(a Attributes) uint64 {
	v, ok := a.Get(attrCounter)
	if !ok {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// withCounter is a with the test counter set to n.
func withCounter(a Attributes, n uint64) (Attributes, error) {
	out := []Attribute{{Type: attrCounter, Value: binary.BigEndian.AppendUint64(nil, n)}}
	for _, x := range a {
		if x.Type != attrCounter {
			out = append(out, x)
		}
	}
	return NewAttributes(out...)
}

// lockedCounter has goroutines on each Store advance one object's
// counter with UpdateLocked, and checks no value was seen twice, none
// was lost, and the object still opens (its seal covers the change).
func lockedCounter(t *testing.T, stores ...*Store) {
	t.Helper()
	ti := newToken(t, stores[0], "counter")
	for _, s := range stores {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	obj, err := stores[0].Put(ctx, ti.UUID, keyAttrs(t, "k", true), make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 4, 25
	var mu sync.Mutex
	seen := map[uint64]int{}
	errs := make(chan error, workers*len(stores))
	var wg sync.WaitGroup
	for _, s := range stores {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					var got uint64
					err := s.UpdateLocked(ctx, obj.ID, func(cur *Object) (Attributes, []byte, error) {
						got = counterOf(cur.Attrs)
						a, err := withCounter(cur.Attrs, got+1)
						return a, nil, err
					})
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					seen[got]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := uint64(workers * each * len(stores))
	for v, n := range seen {
		if n != 1 {
			t.Errorf("value %d seen %d times", v, n)
		}
	}
	if uint64(len(seen)) != total {
		t.Errorf("%d distinct values of %d", len(seen), total)
	}
	for i, s := range stores {
		got, err := s.Open(ctx, obj.ID)
		if err != nil {
			t.Fatalf("store %d: %v", i, err)
		}
		// The other Stores' caches may lag by the bound; a locked read
		// never does.
		err = s.UpdateLocked(ctx, obj.ID, func(cur *Object) (Attributes, []byte, error) {
			if n := counterOf(cur.Attrs); n != total {
				t.Errorf("store %d: counter %d, want %d", i, n, total)
			}
			if string(cur.Secret) != string(got.Secret) {
				t.Errorf("store %d: secret changed", i)
			}
			return nil, nil, errRefused
		})
		if !errors.Is(err, errRefused) {
			t.Fatalf("store %d: change's error: %v", i, err)
		}
	}
}

var errRefused = errors.New("refused")

// TestUpdateLocked: two Stores on one database (each engine of the
// matrix) and, on PostgreSQL, a cluster of three never let two
// read-modify-writes of one object see the same state.
func TestUpdateLocked(t *testing.T) {
	t.Parallel()
	loc := newLocation(t)
	a, _ := newStoreAt(t, loc, Options{})
	b := reopen(t, loc, Options{})
	lockedCounter(t, a, b)
}

func TestClusterUpdateLocked(t *testing.T) {
	t.Parallel()
	lockedCounter(t, clusterStores(t, 3, Options{})...)
}

// TestUpdateLockedRollsBack: a change that fails leaves the object as it
// was.
func TestUpdateLockedRollsBack(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "rollback")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	err = s.UpdateLocked(ctx, obj.ID, func(cur *Object) (Attributes, []byte, error) {
		return nil, nil, errRefused
	})
	if !errors.Is(err, errRefused) {
		t.Fatalf("got %v", err)
	}
	got, err := s.Open(ctx, obj.ID)
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Attrs.Encode()) != string(obj.Attrs.Encode()) {
		t.Fatal("attributes changed")
	}
	if err := s.UpdateLocked(ctx, 1<<40, func(*Object) (Attributes, []byte, error) { return nil, nil, nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing object: %v", err)
	}
}
