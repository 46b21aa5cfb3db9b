package keystore

import (
	"fmt"
	"strings"
	"testing"
)

// findShapes are Find's filters, one of each shape (which conditions the
// query has).
func findShapes() map[string]Filter {
	class, kt := uint64(4), uint64(0x1f)
	out := map[string]Filter{}
	for shape := range 32 {
		var f Filter
		if shape&1 != 0 {
			f.Class = &class
		}
		if shape&2 != 0 {
			f.KeyType = &kt
		}
		if shape&4 != 0 {
			f.Label = []byte("k")
		}
		if shape&8 != 0 {
			f.ID = []byte{1, 2, 3}
		}
		f.IncludePrivate = shape&16 == 0
		out[fmt.Sprintf("shape %02d", shape)] = f
	}
	return out
}

// TestFindSkipsDeleted: a token keeps its deleted objects for its
// retention (90 days by default), so a busy token holds many more deleted
// objects than live ones. Every find must walk an index of live objects
// only, or its cost grows with everything ever deleted (the soak in
// daemon/chaos saw finds by class slow down four times in 30 minutes).
// SQLite's query plan says which index each find's statement walks.
func TestFindSkipsDeleted(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "plans")
	for name, f := range findShapes() {
		if _, err := s.Find(ctx, ti.UUID, f); err != nil {
			t.Fatal(err)
		}
		shape, where, args := findConditions(ti.UUID, f)
		if testEngine == EnginePostgres {
			pgPlanUsesLiveIndex(t, s, name, s.findQuery(shape, where), args)
			continue
		}
		rows, err := s.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+s.findQuery(shape, where), args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		var objects string
		for _, p := range plan {
			if strings.Contains(p, " o ") || strings.HasSuffix(p, " o") {
				objects = p
			}
		}
		if !strings.Contains(objects, "USING INDEX objects_live_") && !strings.Contains(objects, "USING COVERING INDEX objects_live_") {
			t.Errorf("%s walks %q, not an index of live objects (plan %q)", name, objects, plan)
		}
	}
}

// BenchmarkFindAmongDeleted finds the 10 live keys of a token by class,
// beside none and 10,000 deleted ones: the two should cost the same.
func BenchmarkFindAmongDeleted(b *testing.B) {
	for _, deleted := range []int{0, 10000} {
		b.Run(fmt.Sprintf("deleted=%d", deleted), func(b *testing.B) {
			s, _ := newStore(b, Options{})
			ti := newToken(b, s, "find")
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				b.Fatal(err)
			}
			for i := range 10 + deleted {
				obj, err := s.Put(ctx, ti.UUID, keyAttrs(b, fmt.Sprintf("k%d", i), false), nil)
				if err != nil {
					b.Fatal(err)
				}
				if i >= 10 {
					if _, err := s.SoftDelete(ctx, obj.ID); err != nil {
						b.Fatal(err)
					}
				}
			}
			// The WAL the writes left would slow every read alike.
			if _, err := s.w.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
				b.Fatal(err)
			}
			class := uint64(4)
			b.ResetTimer()
			for b.Loop() {
				ids, err := s.Find(ctx, ti.UUID, Filter{Class: &class, IncludePrivate: true})
				if err != nil || len(ids) != 10 {
					b.Fatalf("%d found, %v", len(ids), err)
				}
			}
		})
	}
}

// pgPlanUsesLiveIndex checks PostgreSQL's plan of a find. Its planner goes
// by statistics, and on a table this small a scan of the table is
// cheapest, so the plan is asked for with scans of tables off: what it
// then walks is the index it would use on a large table.
func pgPlanUsesLiveIndex(t *testing.T, s *Store, name, q string, args []any) {
	t.Helper()
	conn, err := s.r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(ctx, "RESET enable_seqscan")
	rows, err := conn.QueryContext(ctx, "EXPLAIN "+q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, line)
	}
	all := strings.Join(plan, "\n")
	if !strings.Contains(all, "using objects_live_") || strings.Contains(all, "Seq Scan on objects") || strings.Contains(all, "objects_by_token") {
		t.Errorf("%s: objects not found through an index of live objects:\n%s", name, all)
	}
}
