package keystore

import (
	"testing"
)

// BenchmarkAnchorDigest is the start's check of the rows against their
// entries and the anchor record, per row (a keystore of 2000 keys).
func BenchmarkAnchorDigest(b *testing.B) {
	s, _, _, _ := anchoredStoreB(b)
	ti := newToken(b, s, "digest")
	for range 2000 {
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(b, "k", false), make([]byte, 32)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	cpu := cpuTime()
	rows := int64(0)
	for b.Loop() {
		tx, err := s.w.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		st, _, _, err := s.readAnchor(ctx, tx)
		if err != nil {
			b.Fatal(err)
		}
		rc, err := s.checkRows(ctx, tx, &st, false)
		tx.Rollback()
		if err != nil {
			b.Fatal(err)
		}
		rows += rc.rows
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(rows), "ns/row")
	b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(rows), "cpu-ns/row")
}

func anchoredStoreB(b *testing.B) (*Store, string, Counter, uint32) {
	s, path := newStore(b, Options{})
	c, h := newCounter(b, s)
	if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		b.Fatal(err)
	}
	return s, path, c, h
}

// BenchmarkAnchorDigestFloor reads the same rows without computing their
// terms: what the digest adds is the difference.
func BenchmarkAnchorDigestFloor(b *testing.B) {
	s, _, _, _ := anchoredStoreB(b)
	ti := newToken(b, s, "digest")
	for range 2000 {
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(b, "k", false), make([]byte, 32)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	cpu := cpuTime()
	rows := int64(0)
	for b.Loop() {
		r, err := s.w.QueryContext(ctx, "SELECT * FROM objects")
		if err != nil {
			b.Fatal(err)
		}
		cols, _ := r.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for r.Next() {
			if err := r.Scan(ptrs...); err != nil {
				b.Fatal(err)
			}
			rows++
		}
		r.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(rows), "ns/row")
	b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(rows), "cpu-ns/row")
}
