package keystore

import (
	"fmt"
	"path/filepath"
	"testing"
)

// BenchmarkFind finds one object among 100 and among 10,000 on a token,
// by class and label (what most applications ask) and by CKA_ID, on both
// engines in the same run: SQLite, and PostgreSQL on a server the
// benchmark starts. Indexed finds cost about the same among 10,000 as
// among 100; the engines' ratio is docs/performance.md's.
//
//	go test -run '^$' -bench '^BenchmarkFind$' -benchtime 2000x ./keystore/
func BenchmarkFind(b *testing.B) {
	for _, engine := range []string{EngineSQLite, EnginePostgres} {
		for _, n := range []int{100, 10000} {
			b.Run(fmt.Sprintf("engine=%s/objects=%d", engine, n), func(b *testing.B) {
				loc := filepath.Join(b.TempDir(), "keystore.db")
				if engine == EnginePostgres {
					loc = pgServer.NewDatabase(b)
				}
				s, _ := newStoreAt(b, loc, Options{})
				ti := newToken(b, s, "find")
				for i := range n {
					a, err := NewAttributes(
						Attribute{Type: AttrClass, Value: Ulong(4)},
						Attribute{Type: AttrKeyType, Value: Ulong(0x1f)},
						Attribute{Type: AttrToken, Value: Bool(true)},
						Attribute{Type: AttrPrivate, Value: Bool(false)},
						Attribute{Type: AttrLabel, Value: fmt.Appendf(nil, "k%d", i)},
						Attribute{Type: AttrID, Value: fmt.Appendf(nil, "id-%d", i)},
					)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := s.Put(ctx, ti.UUID, a, nil); err != nil {
						b.Fatal(err)
					}
				}
				class := uint64(4)
				target := n / 2
				for _, q := range []struct {
					name string
					f    Filter
				}{
					{"class+label", Filter{Class: &class, Label: fmt.Appendf(nil, "k%d", target), IncludePrivate: true}},
					{"id", Filter{ID: fmt.Appendf(nil, "id-%d", target), IncludePrivate: true}},
				} {
					b.Run("by="+q.name, func(b *testing.B) {
						b.ReportAllocs()
						for b.Loop() {
							ids, err := s.Find(ctx, ti.UUID, q.f)
							if err != nil || len(ids) != 1 {
								b.Fatalf("%d found, %v", len(ids), err)
							}
						}
					})
				}
			})
		}
	}
}
