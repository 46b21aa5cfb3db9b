package keystore

import (
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
