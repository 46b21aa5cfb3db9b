package keystore

import (
	"slices"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user and system time so far: on a loaded
// machine, what a benchmark spent, where wall time says what it waited.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU starts counting CPU time; the function it returns reports it
// per operation.
func reportCPU(b *testing.B) func() {
	start := cpuTime()
	return func() {
		b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// The write paths, each one committed transaction, without and with the
// anchor record (anchor.go) to keep: run them with
//
//	go test -run '^$' -bench Write ./keystore/
func benchWrites(b *testing.B, s *Store) {
	ti := newToken(b, s, "bench")
	attrs := keyAttrs(b, "aes", false)
	secret := make([]byte, 32)
	b.Run("object", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := s.Put(ctx, ti.UUID, attrs, secret); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("update", func(b *testing.B) {
		obj, err := s.Put(ctx, ti.UUID, attrs, secret)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if err := s.UpdateLocked(ctx, obj.ID, func(cur *Object) (Attributes, []byte, error) {
				a, err := withCounter(cur.Attrs, counterOf(cur.Attrs)+1)
				return a, nil, err
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("object and soft delete", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			obj, err := s.Put(ctx, ti.UUID, attrs, secret)
			if err != nil {
				b.Fatal(err)
			}
			if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
				b.Fatal(kept, err)
			}
		}
	})
	b.Run("token", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		days := 30
		for b.Loop() {
			days = 61 - days
			if err := s.SetPolicy(ctx, ti.UUID, &days, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("audit", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, err := s.Audit(ctx, AuditActor{Role: "admin"}, "bench", map[string]string{"k": "v"}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkWrite(b *testing.B) {
	b.Run("plain", func(b *testing.B) {
		s, _ := newStore(b, Options{})
		benchWrites(b, s)
	})
	b.Run("anchored", func(b *testing.B) {
		s, _ := newStore(b, Options{})
		c, h := newCounter(b, s)
		if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
			b.Fatal(err)
		}
		benchWrites(b, s)
	})
}

// BenchmarkSealGate measures what the seal gate (sealgate.go) costs the
// writes that seal, on an anchored keystore: each iteration makes one
// write as before the gate and the next one with it, in turn, so that a
// loaded machine's noise falls on both alike. gated/ungated is the
// ratio of their medians. SQLite has no gate (both halves are the same write): its ratio
// is the measurement's noise. Run it on both engines with
//
//	go test -run '^$' -bench SealGate ./keystore/
//	HSMEMU_TEST_DB=postgres go test -run '^$' -bench SealGate ./keystore/
func BenchmarkSealGate(b *testing.B) {
	s, _ := newStore(b, Options{})
	c, h := newCounter(b, s)
	if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		b.Fatal(err)
	}
	ti := newToken(b, s, "gate")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		b.Fatal(err)
	}
	secret := make([]byte, 32)
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(b, "updated", true), secret)
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range []struct {
		name  string
		write func() error
	}{
		{"object", func() error { _, err := s.Put(ctx, ti.UUID, keyAttrs(b, "aes", false), secret); return err }},
		{"private", func() error { _, err := s.Put(ctx, ti.UUID, keyAttrs(b, "aes", true), secret); return err }},
		{"update", func() error {
			return s.UpdateLocked(ctx, obj.ID, func(cur *Object) (Attributes, []byte, error) {
				a, err := withCounter(cur.Attrs, counterOf(cur.Attrs)+1)
				return a, nil, err
			})
		}},
	} {
		b.Run(w.name, func(b *testing.B) {
			defer func() { s.ungated = false }()
			var took [2][]time.Duration
			for i := 0; b.Loop(); i++ {
				s.ungated = i%2 == 0
				start := time.Now()
				if err := w.write(); err != nil {
					b.Fatal(err)
				}
				took[i%2] = append(took[i%2], time.Since(start))
			}
			if len(took[0]) == 0 || len(took[1]) == 0 {
				return
			}
			// Medians: a stall of the machine's, which lands on one
			// half or the other, moves them little.
			median := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(d[len(d)/2])
			}
			off, on := median(took[0]), median(took[1])
			b.ReportMetric(off, "ungated-ns/op")
			b.ReportMetric(on, "gated-ns/op")
			b.ReportMetric(on/off, "gated/ungated")
		})
	}
}
