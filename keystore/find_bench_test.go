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

// BenchmarkEngines measures, on both engines in the same run, what a
// database read or write costs a key: a cold open (no cache: one indexed
// read, the checks, one AES-GCM open) and a create (a seal and a committed
// insert, durable before it returns). A warm open touches no database.
//
//	go test -run '^$' -bench '^BenchmarkEngines$' ./keystore/
func BenchmarkEngines(b *testing.B) {
	for _, engine := range []string{EngineSQLite, EnginePostgres} {
		loc := func(b *testing.B) string {
			if engine == EnginePostgres {
				return pgServer.NewDatabase(b)
			}
			return filepath.Join(b.TempDir(), "keystore.db")
		}
		b.Run("engine="+engine+"/op=open-cold", func(b *testing.B) {
			s, _ := newStoreAt(b, loc(b), Options{CacheEntries: -1})
			ti := newToken(b, s, "bench")
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				b.Fatal(err)
			}
			obj, err := s.Put(ctx, ti.UUID, keyAttrs(b, "aes", true), make([]byte, 32))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Open(ctx, obj.ID); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("engine="+engine+"/op=create", func(b *testing.B) {
			s, _ := newStoreAt(b, loc(b), Options{})
			ti := newToken(b, s, "bench")
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				b.Fatal(err)
			}
			attrs := keyAttrs(b, "aes", true)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Put(ctx, ti.UUID, attrs, make([]byte, 32)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
