package budget

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestTryAcquire(t *testing.T) {
	t.Parallel()
	b := New(10)
	if !b.TryAcquire(6) || b.TryAcquire(5) || !b.TryAcquire(4) {
		t.Fatal("TryAcquire does not count")
	}
	if got := b.Used(); got != 10 {
		t.Fatalf("used %d, want 10", got)
	}
	b.Release(6)
	if !b.TryAcquire(5) {
		t.Fatal("released bytes not free")
	}
	var unlimited *Budget
	if !unlimited.TryAcquire(1<<62) || unlimited.Acquire(context.Background(), 1<<62) != nil {
		t.Fatal("a nil budget refused")
	}
	unlimited.Release(1 << 62)
}

func TestAcquireTooLarge(t *testing.T) {
	t.Parallel()
	if err := New(10).Acquire(context.Background(), 11); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Acquire(11) of 10: %v", err)
	}
}

// Waiters are served in order, as bytes come free; one that gives up
// holds nothing and lets the next through.
func TestAcquireOrder(t *testing.T) {
	t.Parallel()
	b := New(10)
	if err := b.Acquire(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	gaveUp, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var order []int64
	var wg sync.WaitGroup
	start := func(ctx context.Context, n int64) {
		wg.Add(1)
		queued := make(chan struct{})
		go func() {
			defer wg.Done()
			close(queued)
			if err := b.Acquire(ctx, n); err != nil {
				return
			}
			mu.Lock()
			order = append(order, n)
			mu.Unlock()
		}()
		<-queued
		// Let it reach the queue: order of arrival is what is tested.
		deadline := time.Now().Add(10 * time.Second)
		for {
			b.mu.Lock()
			l := b.waiters.Len()
			b.mu.Unlock()
			if l > 0 && waitersHold(b, n) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("waiter never queued")
			}
			time.Sleep(time.Millisecond)
		}
	}
	start(gaveUp, 9) // at the front, gives up
	start(context.Background(), 4)
	start(context.Background(), 6)
	// A small request does not jump the queue.
	if b.TryAcquire(1) {
		t.Fatal("TryAcquire went before the waiters")
	}
	cancel()
	for waitersHold(b, 9) {
		time.Sleep(time.Millisecond)
	}
	// Four bytes free: the 4 at the front goes, the 6 waits.
	b.Release(4)
	for waitersHold(b, 4) {
		time.Sleep(time.Millisecond)
	}
	if !waitersHold(b, 6) {
		t.Fatal("the 6 was served with 4 bytes free")
	}
	b.Release(6)
	wg.Wait()
	if len(order) != 2 {
		t.Fatalf("served %v, want 4 and 6", order)
	}
	if got := b.Used(); got != 10 {
		t.Fatalf("used %d, want 10", got)
	}
}

func waitersHold(b *Budget, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for e := b.waiters.Front(); e != nil; e = e.Next() {
		if e.Value.(*waiter).n == n {
			return true
		}
	}
	return false
}

// Many holders taking and giving back never exceed the budget.
func TestAcquireConcurrent(t *testing.T) {
	t.Parallel()
	b := New(100)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var inUse, peak int64
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := int64(10 + i*5)
			for range 200 {
				if err := b.Acquire(context.Background(), n); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inUse += n
				peak = max(peak, inUse)
				mu.Unlock()
				mu.Lock()
				inUse -= n
				mu.Unlock()
				b.Release(n)
			}
		}()
	}
	wg.Wait()
	if peak > 100 || b.Used() != 0 {
		t.Fatalf("peak %d of 100, %d left held", peak, b.Used())
	}
}
