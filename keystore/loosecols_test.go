package keystore

import (
	"errors"
	"slices"
	"testing"
)

// TestObjectColumnsOfAnotherType: with the objects table rebuilt without
// its types, as a hand edit of the file can, a column of one row edited
// to a value of another type takes down that row alone: finds and the
// listing of deleted objects leave it out and go on, an open of it is
// ErrTampered, not a database error, and each is recorded as tampering.
func TestObjectColumnsOfAnotherType(t *testing.T) {
	sqliteOnly(t, "rebuilds the table without types, as only a hand edit of SQLite's file can")
	t.Parallel()
	for _, tc := range []struct {
		column, expr string
		deleted      bool // edit the deleted object, not the live one
	}{
		{"class", "'x'", false},
		{"key_type", "'x'", false},
		{"private", "'x'", false},
		{"label", "42", false},
		{"ckaid", "42", false},
		{"token_id", "'x'", false},
		{"class", "'x'", true},
		{"private", "'x'", true},
		{"deleted_at", "'x'", true},
	} {
		name := tc.column
		if tc.deleted {
			name = "deleted " + name
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			tok := newToken(t, s, "tok")
			put := func(label string) *Object {
				obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, label, false), []byte(label))
				if err != nil {
					t.Fatal(err)
				}
				return obj
			}
			victim, good := put("victim"), put("good")
			gone, goneGood := put("gone"), put("gone-good")
			for _, o := range []*Object{gone, goneGood} {
				if kept, err := s.SoftDelete(ctx, o.ID); err != nil || !kept {
					t.Fatalf("soft delete: %v %v", kept, err)
				}
			}
			db := rawDB(t, path)
			execSQL(t, db, `PRAGMA foreign_keys = OFF;
				CREATE TABLE loose AS SELECT * FROM objects; DROP TABLE objects; ALTER TABLE loose RENAME TO objects;
				CREATE INDEX objects_live_by_class ON objects (token_id, class, key_type, label) WHERE deleted_at IS NULL;
				CREATE INDEX objects_live_by_label ON objects (token_id, label) WHERE deleted_at IS NULL;
				CREATE INDEX objects_live_by_ckaid ON objects (token_id, ckaid) WHERE deleted_at IS NULL;
				CREATE INDEX objects_by_token ON objects (token_id, deleted_at);`)
			bad := victim
			if tc.deleted {
				bad = gone
			}
			execSQL(t, db, "UPDATE objects SET "+tc.column+" = "+tc.expr+" WHERE id = ?", int64(bad.ID))
			var typ string
			if err := db.QueryRow("SELECT typeof("+tc.column+") FROM objects WHERE id = ?", int64(bad.ID)).Scan(&typ); err != nil {
				t.Fatal(err)
			}
			if typ == "integer" && tc.expr == "'x'" {
				t.Fatalf("%s kept its type: the edit tests nothing", tc.column)
			}

			ids, err := s.Find(ctx, tok.UUID, Filter{IncludePrivate: true})
			if err != nil || !slices.Contains(ids, good.ID) || (!tc.deleted && slices.Contains(ids, victim.ID)) {
				t.Fatalf("find: %v %v; want the good object and not the edited one", ids, err)
			}
			if tc.deleted && !slices.Contains(ids, victim.ID) {
				t.Fatalf("find: %v; the live objects are untouched", ids)
			}
			del, err := s.DeletedObjects(ctx, tok.UUID)
			if err != nil {
				t.Fatalf("deleted objects: %v", err)
			}
			var listed []ObjectID
			for _, d := range del {
				listed = append(listed, d.ID)
			}
			if !slices.Contains(listed, goneGood.ID) || (tc.deleted && slices.Contains(listed, gone.ID)) {
				t.Fatalf("deleted objects: %v; want the good one and not the edited one", listed)
			}
			if tc.column == "token_id" {
				// A Store whose cache does not hold it reads the row.
				cold := reopen(t, path, Options{})
				if _, err := cold.Open(ctx, victim.ID); !errors.Is(err, ErrTampered) || TamperWhat(err) != "type of token_id" {
					t.Fatalf("open of the row edited: %v, want ErrTampered (type of token_id)", err)
				}
				if got, err := cold.Open(ctx, good.ID); err != nil || string(got.Secret) != "good" {
					t.Fatalf("open of the good object: %v", err)
				}
				if err := cold.AuditTamper(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := s.Open(ctx, good.ID); err != nil || string(got.Secret) != "good" {
				t.Fatalf("open of the good object: %v", err)
			}
			if err := s.AuditTamper(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := s.TamperCount(ctx); err != nil || n < 1 {
				t.Fatalf("tamper records: %d %v, want the edited row recorded", n, err)
			}
		})
	}
}
