package keystore

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestDeletionNotAuthenticated: deleted_at edited behind the Store's back
// (a live row marked deleted, a deletion moved back in time, out of range,
// swapped with a live row's), while it serves or before it starts, never
// makes a purge remove the row: the row stays, the failure is recorded
// as tampering naming it, a recovery or an administrator's purge of it is
// refused, and the purge goes on with every other row. A live row marked
// deleted and purged would be a key lost with no trace: the purge drops
// its anchor entry, so no start finds it missing.
func TestDeletionNotAuthenticated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		restart    bool // edit with the Store closed, then start
		early      bool // the purge runs now, not after the retention
		what       string
		edit       func(t *testing.T, db *sql.DB, victim, gone *Object)
		resurrects bool // the edit also cleared gone's deleted_at
	}{
		{name: "live row marked deleted", what: "rows", edit: func(t *testing.T, db *sql.DB, victim, _ *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = ? WHERE id = ?", time.Now().Add(-365*24*time.Hour).Unix(), int64(victim.ID))
		}},
		{name: "live row marked deleted before start", restart: true, what: "rows", edit: func(t *testing.T, db *sql.DB, victim, _ *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = 1 WHERE id = ?", int64(victim.ID))
		}},
		{name: "live row given another's deletion", what: "rows", edit: func(t *testing.T, db *sql.DB, victim, gone *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = (SELECT deleted_at FROM objects WHERE id = ?) WHERE id = ?", int64(gone.ID), int64(victim.ID))
		}},
		{name: "deletion swapped with a live row", what: "rows", resurrects: true, edit: func(t *testing.T, db *sql.DB, victim, gone *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = (SELECT deleted_at FROM objects WHERE id = ?) WHERE id = ?", int64(gone.ID), int64(victim.ID))
			execSQL(t, db, "UPDATE objects SET deleted_at = NULL WHERE id = ?", int64(gone.ID))
		}},
		{name: "deletion moved back", early: true, what: "rows", edit: func(t *testing.T, db *sql.DB, _, gone *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = 1 WHERE id = ?", int64(gone.ID))
		}},
		{name: "deletion negative", early: true, what: "range", edit: func(t *testing.T, db *sql.DB, _, gone *Object) {
			execSQL(t, db, "UPDATE objects SET deleted_at = -86400 WHERE id = ?", int64(gone.ID))
		}},
		{name: "deletion far in the future", early: true, what: "range", edit: func(t *testing.T, db *sql.DB, _, gone *Object) {
			// Added to, it overflows into a purge time long past.
			execSQL(t, db, "UPDATE objects SET deleted_at = 9223372036854775807 WHERE id = ?", int64(gone.ID))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			tok := newToken(t, s, "victim")
			put := func(label string) *Object {
				obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, label, false), []byte(label))
				if err != nil {
					t.Fatal(err)
				}
				return obj
			}
			victim, good, gone, goneGood := put("victim"), put("good"), put("gone"), put("gone-good")
			for _, o := range []*Object{gone, goneGood} {
				if kept, err := s.SoftDelete(ctx, o.ID); err != nil || !kept {
					t.Fatalf("soft delete: %v %v", kept, err)
				}
			}
			// The row whose deletion is not authenticated.
			bad := victim
			if tc.early {
				bad = gone
			}
			db := rawDB(t, path)
			if tc.restart {
				s.Close()
				tc.edit(t, db, victim, gone)
				s = startFindsBad(t, path, c, h, bad.ID, "start")
			} else {
				tc.edit(t, db, victim, gone)
			}

			when := time.Now().Add(time.Duration(DefaultRetentionDays+1) * 24 * time.Hour)
			if tc.early {
				when = time.Now()
			}
			purged, err := s.PurgeExpired(ctx, when)
			if err != nil {
				t.Fatalf("purge: %v", err)
			}
			var ids []ObjectID
			for _, d := range purged {
				ids = append(ids, d.ID)
			}
			want := []ObjectID{}
			if !tc.early {
				want = append(want, goneGood.ID)
				if !tc.resurrects {
					want = []ObjectID{gone.ID, goneGood.ID}
				}
			}
			if !slices.Equal(ids, want) && !(len(ids) == 0 && len(want) == 0) {
				t.Fatalf("purged %v, want %v (the row edited is %d)", ids, want, bad.ID)
			}
			var n int
			if err := db.QueryRow("SELECT count(*) FROM objects WHERE id = ?", int64(bad.ID)).Scan(&n); err != nil || n != 1 {
				t.Fatalf("the row edited: %d rows, %v; want it left in place", n, err)
			}
			if !tamperRecorded(t, s, bad.UUID, tc.what) {
				t.Fatalf("no tamper.detected record of %s (%s)", bad.UUID, tc.what)
			}
			// Offered neither for recovery nor for purge.
			del, err := s.DeletedObjects(ctx, tok.UUID)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range del {
				if d.ID == bad.ID {
					t.Fatalf("the row edited is listed deleted: %+v", d)
				}
			}
			if err := s.Purge(ctx, tok.UUID, bad.UUID); !errors.Is(err, ErrTampered) {
				t.Fatalf("administrator's purge of the row edited: %v, want ErrTampered", err)
			}
			if _, err := s.Recover(ctx, tok.UUID, bad.UUID); !errors.Is(err, ErrTampered) {
				t.Fatalf("recovery of the row edited: %v, want ErrTampered", err)
			}
			if err := db.QueryRow("SELECT count(*) FROM objects WHERE id = ?", int64(bad.ID)).Scan(&n); err != nil || n != 1 {
				t.Fatalf("the row edited, after the refusals: %d rows, %v", n, err)
			}
			// Every other row goes on.
			if got, err := s.Open(ctx, good.ID); err != nil || string(got.Secret) != "good" {
				t.Fatalf("the good object: %v", err)
			}
			if _, err := s.Anchor(ctx); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// The next start finds the row edited too (and a deleted row
			// brought back by the swap).
			s2 := reopen(t, path, Options{})
			rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
			if err != nil || !slices.Contains(rep.BadObjects, int64(bad.ID)) || (tc.resurrects && !slices.Contains(rep.BadObjects, int64(gone.ID))) {
				t.Fatalf("next start: %+v %v", rep, err)
			}
		})
	}
}

// TestDeletionPutBackRecovers: a live row marked deleted behind the
// Store's back, refused by the purge, is whole again once deleted_at is
// put back: nothing of it was lost, and the next start takes it back.
func TestDeletionPutBackRecovers(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	tok := newToken(t, s, "tok")
	obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	execSQL(t, db, "UPDATE objects SET deleted_at = 1 WHERE id = ?", int64(obj.ID))
	if purged, err := s.PurgeExpired(ctx, time.Now()); err != nil || len(purged) != 0 {
		t.Fatalf("purge: %v %v", purged, err)
	}
	execSQL(t, db, "UPDATE objects SET deleted_at = NULL WHERE id = ?", int64(obj.ID))
	s.Close()
	s2 := reopen(t, path, Options{})
	if rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil || len(rep.BadObjects) != 0 {
		t.Fatalf("start: %+v %v", rep, err)
	}
	if got, err := s2.Open(ctx, obj.ID); err != nil || string(got.Secret) != "secret" {
		t.Fatalf("open: %v", err)
	}
}

// TestPurgeNeedsAnchor: on a keystore with no anchor record nothing
// authenticates a deletion, and the purges refuse.
func TestPurgeNeedsAnchor(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	tok := newToken(t, s, "tok")
	obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
		t.Fatalf("soft delete: %v %v", kept, err)
	}
	later := time.Now().Add(time.Duration(DefaultRetentionDays+1) * 24 * time.Hour)
	if _, err := s.PurgeExpired(ctx, later); !errors.Is(err, ErrNotAnchored) {
		t.Fatalf("expiry purge: %v, want ErrNotAnchored", err)
	}
	if err := s.Purge(ctx, tok.UUID, obj.UUID); !errors.Is(err, ErrNotAnchored) {
		t.Fatalf("purge: %v, want ErrNotAnchored", err)
	}
}

// tamperRecorded reports whether the audit log holds a tamper.detected
// record of object u with what.
func tamperRecorded(t *testing.T, s *Store, u UUID, what string) bool {
	t.Helper()
	if err := s.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := s.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Event == "tamper.detected" && r.Detail["uuid"] == u.String() && r.Detail["what"] == what {
			return true
		}
	}
	return false
}

// TestSoftDeleteTokenMoved: an object's token_id moved behind the
// Store's back, to a token that keeps nothing (retention 0), would have
// the next C_DestroyObject of it destroy it at once, under its own
// token's purge protection, with no trace (the delete drops its anchor
// entry); moved to a token that keeps, soft-deleted under that token's
// policy. The soft delete checks the row is as written first: refused as
// tampering, recorded, the row left in place.
func TestSoftDeleteTokenMoved(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		days int
	}{{"to a token that keeps nothing", 0}, {"to a token that keeps", 30}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			tok, other := newToken(t, s, "victim"), newToken(t, s, "other")
			on, days := true, DefaultRetentionDays
			if err := s.SetPolicy(ctx, tok.UUID, &days, &on); err != nil {
				t.Fatal(err)
			}
			if err := s.SetPolicy(ctx, other.UUID, &tc.days, nil); err != nil {
				t.Fatal(err)
			}
			obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			good, err := s.Put(ctx, tok.UUID, keyAttrs(t, "good", false), []byte("good"))
			if err != nil {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			execSQL(t, db, "UPDATE objects SET token_id = ? WHERE id = ?", other.ID, int64(obj.ID))
			if kept, err := s.SoftDelete(ctx, obj.ID); !errors.Is(err, ErrTampered) {
				t.Fatalf("soft delete of the row moved: kept %v, %v; want ErrTampered", kept, err)
			}
			var n int
			if err := db.QueryRow("SELECT count(*) FROM objects WHERE id = ? AND deleted_at IS NULL", int64(obj.ID)).Scan(&n); err != nil || n != 1 {
				t.Fatalf("the row moved: %d live rows, %v; want it left in place", n, err)
			}
			if !tamperRecordedRow(t, s, obj.ID) {
				t.Fatal("no tamper.detected record of the row moved")
			}
			// Every other object goes on, deletes included.
			if kept, err := s.SoftDelete(ctx, good.ID); err != nil || !kept {
				t.Fatalf("soft delete of the good object: %v %v", kept, err)
			}
			if _, err := s.Anchor(ctx); err != nil {
				t.Fatal(err)
			}
			s.Close()
			startFindsBad(t, path, c, h, obj.ID, "next start")
		})
	}
}

// tamperRecordedRow reports whether the audit log holds a tamper.detected
// record of object row id, named by its row id.
func tamperRecordedRow(t *testing.T, s *Store, id ObjectID) bool {
	t.Helper()
	if err := s.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := s.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Event == "tamper.detected" && r.Detail["kind"] == "object" && r.Detail["uuid"] == fmt.Sprintf("row %d", id) {
			return true
		}
	}
	return false
}

// TestOpenLiveRowMarkedDeleted: an open of a live object whose row was
// marked deleted behind the Store's back is refused as tampering, and
// recorded, while the daemon serves, not taken for an object deleted
// (which would go unrecorded until the next start). An object deleted by
// the Store is still just not found.
func TestOpenLiveRowMarkedDeleted(t *testing.T) {
	t.Parallel()
	s, path, _, _ := anchoredStore(t)
	tok := newToken(t, s, "tok")
	put := func(label string) *Object {
		obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, label, false), []byte(label))
		if err != nil {
			t.Fatal(err)
		}
		return obj
	}
	victim, good, gone := put("victim"), put("good"), put("gone")
	if kept, err := s.SoftDelete(ctx, gone.ID); err != nil || !kept {
		t.Fatalf("soft delete: %v %v", kept, err)
	}
	db := rawDB(t, path)
	execSQL(t, db, "UPDATE objects SET deleted_at = ? WHERE id = ?", time.Now().Unix(), int64(victim.ID))
	cold := reopen(t, path, Options{}) // its cache holds nothing: every open reads the row
	if _, err := cold.Open(ctx, victim.ID); TamperWhat(err) != "rows" {
		t.Fatalf("open of the live row marked deleted: %v, want tampered (rows)", err)
	}
	if !tamperRecorded(t, cold, victim.UUID, "rows") {
		t.Fatal("no tamper.detected record of the live row marked deleted")
	}
	if _, err := cold.Open(ctx, gone.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open of the object deleted: %v, want ErrNotFound", err)
	}
	if got, err := cold.Open(ctx, good.ID); err != nil || string(got.Secret) != "good" {
		t.Fatalf("the good object: %v", err)
	}
}

// TestResurrectedWhileServing: a deleted object whose deleted_at is
// cleared behind the Store's back while it serves, so that its key is in
// use again, is refused as tampering on open, left out of finds and
// recorded, whether the Store deleted it itself or found it deleted at
// start; one recovered by another Store on the keystore opens.
func TestResurrectedWhileServing(t *testing.T) {
	t.Parallel()
	for _, restart := range []bool{false, true} {
		name := "deleted by this store"
		if restart {
			name = "deleted at start"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			tok := newToken(t, s, "tok")
			put := func(label string) *Object {
				obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, label, false), []byte(label))
				if err != nil {
					t.Fatal(err)
				}
				return obj
			}
			gone, recovered, good := put("gone"), put("recovered"), put("good")
			for _, o := range []*Object{gone, recovered} {
				if kept, err := s.SoftDelete(ctx, o.ID); err != nil || !kept {
					t.Fatalf("soft delete: %v %v", kept, err)
				}
			}
			if restart {
				s.Close()
				s = reopen(t, path, Options{})
				if rep, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil || len(rep.BadObjects) != 0 {
					t.Fatalf("start: %+v %v", rep, err)
				}
			}
			other := reopen(t, path, Options{}) // another Store on the keystore
			if _, err := other.Recover(ctx, tok.UUID, recovered.UUID); err != nil {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			execSQL(t, db, "UPDATE objects SET deleted_at = NULL WHERE id = ?", int64(gone.ID))

			ids, err := s.Find(ctx, tok.UUID, Filter{IncludePrivate: true})
			if err != nil || slices.Contains(ids, gone.ID) || !slices.Contains(ids, recovered.ID) || !slices.Contains(ids, good.ID) {
				t.Fatalf("find: %v %v; want the recovered and the good object, not the one brought back", ids, err)
			}
			if _, err := s.Open(ctx, gone.ID); TamperWhat(err) != "rows" {
				t.Fatalf("open of the row brought back: %v, want tampered (rows)", err)
			}
			if !tamperRecorded(t, s, gone.UUID, "rows") {
				t.Fatal("no tamper.detected record of the row brought back")
			}
			if got, err := s.Open(ctx, recovered.ID); err != nil || string(got.Secret) != "recovered" {
				t.Fatalf("the object recovered by another store: %v", err)
			}
			if got, err := s.Open(ctx, good.ID); err != nil || string(got.Secret) != "good" {
				t.Fatalf("the good object: %v", err)
			}
		})
	}
}

// TestRecoveredElsewhereUnanchored: on a keystore with no anchor record
// an object recovered by another Store opens and is found, as before
// (nothing can be checked there, and nothing is refused for it).
func TestRecoveredElsewhereUnanchored(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	tok := newToken(t, s, "tok")
	obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
		t.Fatalf("soft delete: %v %v", kept, err)
	}
	if _, err := reopen(t, path, Options{}).Recover(ctx, tok.UUID, obj.UUID); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.Find(ctx, tok.UUID, Filter{IncludePrivate: true}); err != nil || !slices.Equal(ids, []ObjectID{obj.ID}) {
		t.Fatalf("find: %v %v", ids, err)
	}
	if got, err := s.Open(ctx, obj.ID); err != nil || string(got.Secret) != "k" {
		t.Fatalf("open: %v", err)
	}
}

// TestDeletedListBatches: the listing checks its rows in batches; a row
// edited in a later batch is left out, and only it.
func TestDeletedListBatches(t *testing.T) {
	t.Parallel()
	s, path, _, _ := anchoredStore(t)
	tok := newToken(t, s, "tok")
	var objs []*Object
	for i := range deletedBatch + 6 {
		obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, fmt.Sprint(i), false), []byte("k"))
		if err != nil {
			t.Fatal(err)
		}
		if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
			t.Fatalf("soft delete: %v %v", kept, err)
		}
		objs = append(objs, obj)
	}
	bad := objs[deletedBatch+3]
	execSQL(t, rawDB(t, path), "UPDATE objects SET label = ? WHERE id = ?", []byte("edited"), int64(bad.ID))
	del, err := s.DeletedObjects(ctx, tok.UUID)
	if err != nil || len(del) != len(objs)-1 {
		t.Fatalf("listed %d, %v; want %d", len(del), err, len(objs)-1)
	}
	for _, d := range del {
		if d.ID == bad.ID {
			t.Fatal("the row edited is listed")
		}
	}
	if !tamperRecorded(t, s, bad.UUID, "rows") {
		t.Fatal("no tamper.detected record of the row edited")
	}
}

// TestTokenGoneKeepsMovedRow: a key moved behind the Store's back onto
// another token, by its token_id, would go with that token when it is
// deleted or re-initialised, and its anchor entry with it: a key lost
// with no trace. The row is checked first: the deletion is refused as
// tampering, recorded, and the key stays; the token's own objects do not
// go either, the whole deletion undone.
func TestTokenGoneKeepsMovedRow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		gone func(s *Store, tok TokenInfo) error
	}{
		{"delete", func(s *Store, tok TokenInfo) error { return s.DeleteToken(ctx, tok.UUID) }},
		{"reinit", func(s *Store, tok TokenInfo) error { return s.Reinit(ctx, tok.UUID, soPIN, "again") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			tok, scratch := newToken(t, s, "victim"), newToken(t, s, "scratch")
			obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			own, err := s.Put(ctx, scratch.UUID, keyAttrs(t, "own", false), []byte("own"))
			if err != nil {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			execSQL(t, db, "UPDATE objects SET token_id = ? WHERE id = ?", scratch.ID, int64(obj.ID))
			if err := tc.gone(s, scratch); !errors.Is(err, ErrTampered) {
				t.Fatalf("%s of the token the row was moved to: %v, want ErrTampered", tc.name, err)
			}
			var n int
			if err := db.QueryRow("SELECT count(*) FROM objects WHERE id IN (?, ?)", int64(obj.ID), int64(own.ID)).Scan(&n); err != nil || n != 2 {
				t.Fatalf("%d of the two rows left, %v; want both", n, err)
			}
			if !tamperRecordedRow(t, s, obj.ID) {
				t.Fatal("no tamper.detected record of the row moved")
			}
			// Put back, the key is whole.
			execSQL(t, db, "UPDATE objects SET token_id = ? WHERE id = ?", tok.ID, int64(obj.ID))
			if _, err := s.Anchor(ctx); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s2 := reopen(t, path, Options{})
			if rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil || len(rep.BadObjects) != 0 {
				t.Fatalf("start: %+v %v", rep, err)
			}
			if got, err := s2.Open(ctx, obj.ID); err != nil || string(got.Secret) != "secret" {
				t.Fatalf("the key put back: %v", err)
			}
			if err := tc.gone(s2, scratch); err != nil {
				t.Fatalf("%s once the row is put back: %v", tc.name, err)
			}
		})
	}
}

// TestPurgeRereadsDeletionTime: a deletion time edited to one long past
// for the purge's listing, and put back before the purge's transaction,
// must not have the row, as written again, purged before its retention
// ends: the purge decides on the row as its transaction reads it.
func TestPurgeRereadsDeletionTime(t *testing.T) {
	t.Parallel()
	s, path, _, _ := anchoredStore(t)
	tok := newToken(t, s, "tok")
	obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
		t.Fatalf("soft delete: %v %v", kept, err)
	}
	db := rawDB(t, path)
	var at int64
	if err := db.QueryRow("SELECT deleted_at FROM objects WHERE id = ?", int64(obj.ID)).Scan(&at); err != nil {
		t.Fatal(err)
	}
	execSQL(t, db, "UPDATE objects SET deleted_at = 1 WHERE id = ?", int64(obj.ID))
	// The listing is taken: the deletion time is put back before the
	// purge's transaction (its audit record is made in between).
	purged, err := s.PurgeExpiredAudited(ctx, time.Now(), func(d Deleted) AuditNote {
		execSQL(t, db, "UPDATE objects SET deleted_at = ? WHERE id = ?", at, int64(obj.ID))
		return AuditNote{Actor: AuditActor{Role: "daemon"}, Event: "key.purge", Detail: map[string]string{"object": d.UUID.String()}}
	})
	if err != nil || len(purged) != 0 {
		t.Fatalf("purged %+v, %v; want nothing: the retention has not ended", purged, err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM objects WHERE id = ?", int64(obj.ID)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the object: %d rows, %v; want it kept", n, err)
	}
	if del, err := s.DeletedObjects(ctx, tok.UUID); err != nil || len(del) != 1 || del[0].ID != obj.ID {
		t.Fatalf("deleted objects: %+v %v; want it, as written", del, err)
	}
}
