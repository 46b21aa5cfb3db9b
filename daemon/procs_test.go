package daemon

import "testing"

func TestProcsPerConnection(t *testing.T) {
	var asked []int
	p := &procs{base: 2, set: 2, apply: func(n int) { asked = append(asked, n) }}
	p.add(1)
	p.add(1)
	p.add(-1)
	p.add(-1)
	want := []int{3, 4, 3, 2}
	if len(asked) != len(want) {
		t.Fatalf("asked for %v, want %v", asked, want)
	}
	for i := range want {
		if asked[i] != want[i] {
			t.Fatalf("asked for %v, want %v", asked, want)
		}
	}

	// Past procsPerCore connections per core, no more Ps.
	asked = nil
	extra := procsPerCore * 2
	for range extra + 5 {
		p.add(1)
	}
	if got := asked[len(asked)-1]; got != 2+extra || len(asked) != extra {
		t.Fatalf("after %d connections: %d requests, last %d; want %d, last %d", extra+5, len(asked), got, extra, 2+extra)
	}

	// GOMAXPROCS set in the environment is left as it is.
	asked = nil
	fixed := &procs{base: 2, set: 2, fixed: true, apply: func(n int) { asked = append(asked, n) }}
	fixed.add(1)
	fixed.add(-1)
	if len(asked) != 0 {
		t.Fatalf("with GOMAXPROCS fixed, asked for %v", asked)
	}
}
