package keystore

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestConcurrentReadersAndWriter runs readers (Open, Find) beside a writer
// (Put, Update, Delete); under -race this checks the Store's locking, and the
// assertions check that no reader ever sees a half-written object.
func TestConcurrentReadersAndWriter(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{CacheEntries: 16})
	ti := newToken(t, s, "busy")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	const objects = 120
	secret := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, 32) }
	var ids [objects]atomic.Int64
	var written atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 16)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				w := int(written.Load())
				if w == 0 {
					continue
				}
				i := (n*7 + r) % w
				obj, err := s.Open(ctx, ObjectID(ids[i].Load()))
				if errors.Is(err, ErrNotFound) && i%10 == 0 {
					continue // deleted by the writer
				}
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(obj.Secret, secret(i)) {
					errs <- errors.New("reader saw another object's secret")
					return
				}
				if n%50 == 0 {
					if _, err := s.Find(ctx, ti.UUID, Filter{IncludePrivate: true}); err != nil {
						errs <- err
						return
					}
				}
			}
		}(r)
	}
	for i := 0; i < objects; i++ {
		obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", i%2 == 0), secret(i))
		if err != nil {
			t.Fatal(err)
		}
		ids[i].Store(int64(obj.ID))
		written.Add(1)
		if i > 0 && i%5 == 0 {
			if err := s.Update(ctx, ObjectID(ids[i-1].Load()), keyAttrs(t, "updated", (i-1)%2 == 0), nil); err != nil {
				t.Fatal(err)
			}
		}
		if i > 0 && i%10 == 0 {
			if err := s.Delete(ctx, ObjectID(ids[i].Load())); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
