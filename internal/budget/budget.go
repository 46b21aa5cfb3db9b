// Package budget is a byte budget that many holders draw from: a counting
// semaphore over bytes, first come first served. The daemon bounds with it
// what its connections hold in flight and what its operations hold between
// calls (docs/reliability.md, "Memory bounds").
//
// A holder takes bytes before it allocates them and gives them back when
// it drops them. TryAcquire never waits: a caller holding a lock uses it.
// Acquire waits its turn, until its context ends; waiters are served in
// order, so a large request is not starved by a stream of small ones.
package budget

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrTooLarge is Acquire's answer to a request larger than the whole
// budget: it could never be served.
var ErrTooLarge = errors.New("budget: request larger than the budget")

// Budget is a number of bytes shared by its holders. A nil *Budget is
// unlimited: every request succeeds at once.
type Budget struct {
	size int64

	mu      sync.Mutex
	used    int64
	waiters list.List // of *waiter, in arrival order
}

type waiter struct {
	n     int64
	ready chan struct{} // closed when the bytes are the waiter's
}

// New returns a budget of size bytes.
func New(size int64) *Budget {
	if size <= 0 {
		panic(fmt.Sprintf("budget: internal error: size %d", size))
	}
	return &Budget{size: size}
}

// Size is the budget's size in bytes (0 for an unlimited budget).
func (b *Budget) Size() int64 {
	if b == nil {
		return 0
	}
	return b.size
}

// Used is the bytes held now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Waiting is how many requests wait their turn now.
func (b *Budget) Waiting() int {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiters.Len()
}

// TryAcquire takes n bytes if they are free now and nobody is waiting
// before it, and reports whether it took them.
func (b *Budget) TryAcquire(n int64) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.waiters.Len() == 0 && b.used+n <= b.size {
		b.used += n
		return true
	}
	return false
}

// Acquire takes n bytes, waiting its turn until they are free or ctx
// ends; then it returns ctx's error and holds nothing. A request larger
// than the budget is ErrTooLarge at once.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	if b == nil || n <= 0 {
		return nil
	}
	if n > b.size {
		return ErrTooLarge
	}
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+n <= b.size {
		b.used += n
		b.mu.Unlock()
		return nil
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.mu.Unlock()

	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready:
			// Served while giving up: hand the bytes back.
			b.used -= n
			b.notify()
		default:
			front := b.waiters.Front() == elem
			b.waiters.Remove(elem)
			if front {
				// The waiters behind it may fit now.
				b.notify()
			}
		}
		b.mu.Unlock()
		return ctx.Err()
	}
}

// Release gives back n bytes taken before.
func (b *Budget) Release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used -= n
	if b.used < 0 {
		panic("budget: internal error: released more than held")
	}
	b.notify()
}

// notify serves the waiters at the front whose bytes are free, in order.
// The caller holds b.mu.
func (b *Budget) notify() {
	for {
		front := b.waiters.Front()
		if front == nil {
			return
		}
		w := front.Value.(*waiter)
		if b.used+w.n > b.size {
			return
		}
		b.used += w.n
		b.waiters.Remove(front)
		close(w.ready)
	}
}
