package daemon

import (
	"testing"
	"time"
)

// applied collects what a procs asks the runtime for.
func testProcs(fixed bool) (*procs, chan int) {
	asked := make(chan int, 100)
	return &procs{base: 2, set: 2, fixed: fixed, wake: make(chan struct{}, 1),
		apply: func(n int) { asked <- n }}, asked
}

// settle waits until p's goroutine has applied want, and returns what it
// asked for on the way.
func settle(t *testing.T, asked chan int, want int) []int {
	t.Helper()
	var got []int
	deadline := time.After(5 * time.Second)
	for {
		select {
		case n := <-asked:
			got = append(got, n)
			if n == want {
				return got
			}
		case <-deadline:
			t.Fatalf("asked for %v, never %d", got, want)
		}
	}
}

func TestProcsPerConnection(t *testing.T) {
	p, asked := testProcs(false)
	p.add(1)
	settle(t, asked, 3)
	p.add(1)
	settle(t, asked, 4)
	p.add(-1)
	p.add(-1)
	settle(t, asked, 2)

	// Past procsPerCore connections per core, no more Ps.
	extra := procsPerCore * 2
	for range extra + 5 {
		p.add(1)
	}
	settle(t, asked, 2+extra)
	time.Sleep(50 * time.Millisecond)
	select {
	case n := <-asked:
		t.Fatalf("asked for %d past the bound %d", n, 2+extra)
	default:
	}
}

// Fewer Ps only after the count has stayed lower for the shrink delay: a
// connection that comes and goes within it costs nothing.
func TestProcsShrinkLate(t *testing.T) {
	p, asked := testProcs(false)
	p.shrink = 200 * time.Millisecond
	p.add(1)
	settle(t, asked, 3)
	p.add(-1)
	p.add(1) // back within the delay
	time.Sleep(400 * time.Millisecond)
	select {
	case n := <-asked:
		t.Fatalf("asked for %d after a connection came and went", n)
	default:
	}
	p.add(-1)
	settle(t, asked, 2)
}

// GOMAXPROCS set in the environment is left as it is.
func TestProcsFixed(t *testing.T) {
	p, asked := testProcs(true)
	p.add(1)
	p.add(-1)
	time.Sleep(50 * time.Millisecond)
	select {
	case n := <-asked:
		t.Fatalf("with GOMAXPROCS fixed, asked for %d", n)
	default:
	}
}
