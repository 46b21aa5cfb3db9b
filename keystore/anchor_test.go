package keystore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"hsmemu/tpmroot"
)

// newCounter defines an anchor counter for s in the shared TPM, at a
// handle of its own (the tests' keystores share one domain, and so the
// handle the daemon would derive from it).
func newCounter(t testing.TB, s *Store) (*tpmroot.Counter, uint32) {
	t.Helper()
	auth, err := s.AnchorAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer wipe(auth)
	for {
		seed := make([]byte, 16)
		rand.Read(seed)
		h := tpmroot.AnchorHandle(seed)
		c, err := shared.tpm.DefineCounter(h, auth)
		if errors.Is(err, tpmroot.ErrCounterExists) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return c, h
	}
}

// anchoredStore is a new keystore anchored in a counter of its own.
func anchoredStore(t testing.TB) (*Store, string, *tpmroot.Counter, uint32) {
	t.Helper()
	s, path := newStore(t, Options{})
	c, h := newCounter(t, s)
	rep, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Created || rep.Anchored == 0 || rep.Handle != h {
		t.Fatalf("first anchor: %+v", rep)
	}
	return s, path, c, h
}

// anchorRecord reads the anchor record and checks it accounts for the rows as
// they are.
func anchorRecord(t testing.TB, s *Store) anchorState {
	t.Helper()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	st, _, ok, err := s.readAnchor(ctx, tx)
	if err != nil || !ok {
		t.Fatalf("anchor record: %v %v", ok, err)
	}
	rc, err := s.checkRows(ctx, tx, &st, false)
	if err != nil || rc.repaired || len(rc.badTokens)+len(rc.badObjects)+len(rc.deleted) > 0 || rc.total != st.digest {
		t.Fatalf("the anchor record does not account for the rows (generation %d): %+v %v", st.generation, rc, err)
	}
	return st
}

// putBack replaces the keystore at path with the copy at from, as someone
// with the state directory would, while no Store has it open.
func putBack(t *testing.T, from, path string) {
	t.Helper()
	if testEngine == EnginePostgres {
		if err := pgServer.Get(t).PutBack(ctx, from, path); err != nil {
			t.Fatal(err)
		}
		return
	}
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(path + suffix)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAnchorEveryWriteCounts: each kind of write, through every write
// path of the Store, bumps the generation in its own transaction and
// keeps the record's account of the rows exact.
func TestAnchorEveryWriteCounts(t *testing.T) {
	t.Parallel()
	s, _, _, _ := anchoredStore(t)
	gen := anchorRecord(t, s).generation
	step := func(what string, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		st := anchorRecord(t, s)
		if st.generation <= gen {
			t.Fatalf("%s: generation %d, was %d", what, st.generation, gen)
		}
		gen = st.generation
	}
	var ti TokenInfo
	var obj *Object
	step("token create", func() (err error) {
		ti, err = s.CreateToken(ctx, TokenSpec{Label: "w", Tier: TierStandard, SOPIN: soPIN, UserPIN: userPIN})
		return err
	})
	step("PIN failure count", func() error {
		if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong-pin-0")); !errors.Is(err, ErrPINIncorrect) {
			return err
		}
		return nil
	})
	step("login clears the count", func() error { return s.Login(ctx, ti.UUID, RoleUser, userPIN) })
	step("object put", func() (err error) {
		obj, err = s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), bytes.Repeat([]byte{7}, 32))
		return err
	})
	step("object update", func() error { return s.Update(ctx, obj.ID, keyAttrs(t, "k2", true), nil) })
	step("token policy", func() error { days := 7; return s.SetPolicy(ctx, ti.UUID, &days, nil) })
	step("soft delete", func() error { _, err := s.SoftDelete(ctx, obj.ID); return err })
	step("recover", func() error { _, err := s.Recover(ctx, ti.UUID, obj.UUID); return err })
	step("object delete", func() error { return s.Delete(ctx, obj.ID) })
	step("PIN change", func() error { return s.SetPIN(ctx, ti.UUID, RoleUser, userPIN, []byte("user-secret-2")) })
	step("audit append", func() error { _, err := s.Audit(ctx, AuditActor{Role: "admin"}, "test", nil); return err })
	step("token delete (its objects cascade)", func() error {
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "cascade", false), []byte("x")); err != nil {
			return err
		}
		return s.DeleteToken(ctx, ti.UUID)
	})
	if st := anchorRecord(t, s); st.auditSeq == 0 {
		t.Fatalf("the audit head is not recorded: %+v", st)
	}
}

// TestAnchorTriggersCoverEveryTable: every table but the audit log and
// the anchor itself has its three triggers, so a write path added later,
// or a table, cannot go around the record.
func TestAnchorTriggersCoverEveryTable(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	if testEngine == EnginePostgres {
		// One trigger per table, noting every change to the writer.
		var missing []string
		rows, err := s.w.QueryContext(ctx, `SELECT c.relname FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
			AND c.relname NOT IN ('anchor', 'anchor_rows', 'hsmemu_schema', 'hsmemu_changes', 'nodes', 'node_masters')
			AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'hsmemu_anchor')`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var n string
			rows.Scan(&n)
			missing = append(missing, n)
		}
		rows.Close()
		if len(missing) > 0 {
			t.Fatalf("tables without the anchor's trigger: %v", missing)
		}
		return
	}
	conn, err := s.w.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.QueryContext(ctx, "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	if len(tables) < 6 {
		t.Fatalf("tables %v", tables)
	}
	for _, table := range tables {
		want := []string{"insert", "update", "delete"}
		switch table {
		case "anchor", "anchor_rows", "nodes", "node_masters":
			want = nil
		case "audit_log":
			want = []string{"insert"}
		}
		for _, ev := range want {
			var n int
			name := "hsmemu_anchor_" + table + "_" + ev
			if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM temp.sqlite_schema WHERE type = 'trigger' AND name = ?", name).Scan(&n); err != nil || n != 1 {
				t.Errorf("trigger %s: %d %v", name, n, err)
			}
		}
	}
}

// TestAnchorRollbackRefused: a keystore put back from a copy taken
// before a later anchor is refused, naming the gap; the copy of the
// newest state is not.
func TestAnchorRollbackRefused(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	ti := newToken(t, s, "r")
	if _, err := s.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	old := copyKeystore(t, path)
	for i := range 2 {
		if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong-pin-0")); !errors.Is(err, ErrPINIncorrect) {
			t.Fatal(err)
		}
		if did, err := s.Anchor(ctx); err != nil || !did {
			t.Fatalf("anchor %d: %v %v", i, did, err)
		}
		if did, err := s.Anchor(ctx); err != nil || did {
			t.Fatalf("anchor with nothing written: %v %v", did, err)
		}
	}
	s.Close()

	putBack(t, old, path)
	s2 := reopen(t, path, Options{})
	_, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	var re *RollbackError
	if !errors.As(err, &re) || !errors.Is(err, ErrRolledBack) || re.What != "behind" || re.Behind != 2 {
		t.Fatalf("rolled back keystore: %v", err)
	}
	if !strings.Contains(err.Error(), "2 anchor(s) behind the TPM") || !strings.Contains(err.Error(), "an older copy was put back") {
		t.Fatalf("message: %v", err)
	}
	// Nothing was written: still refused.
	s2.Close()
	s3 := reopen(t, path, Options{})
	if _, err := s3.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("second start: %v", err)
	}
}

// TestAnchorRowReplay: single rows put back from an older copy (a token
// row with fewer PIN failures, an object's earlier attributes), moved or
// added, even within the anchor window, are taken down alone, as rows
// failing their MAC are; a row deleted is reported. A row put back
// together with its entry, or a row of the domain's, refuses the
// keystore.
func TestAnchorRowReplay(t *testing.T) {
	t.Parallel()
	type outcome int
	const (
		tokenDown outcome = iota
		objectDown
		reported
		refused
	)
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object)
		want outcome
	}{
		{"token row replayed", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			db := rawDB(t, path)
			before := make([]any, 18)
			ptrs := make([]any, len(before))
			for i := range before {
				ptrs[i] = &before[i]
			}
			if err := db.QueryRow("SELECT * FROM tokens WHERE id = ?", victim.ID).Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				s.Login(ctx, victim.UUID, RoleUser, []byte("wrong-pin-0"))
			}
			s.Close()
			execSQL(t, db, "DELETE FROM tokens WHERE id = ?", victim.ID)
			execSQL(t, db, "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", before...)
		}, tokenDown},
		{"object row replayed", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			db := rawDB(t, path)
			u, attrs, sealed := getRecord(t, db, obj.ID)
			if err := s.Update(ctx, obj.ID, keyAttrs(t, "after", false), nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			setRecord(t, db, obj.ID, u, attrs, sealed)
			execSQL(t, db, "UPDATE objects SET label = ? WHERE id = ?", []byte("before"), obj.ID)
		}, objectDown},
		{"object row moved to another token", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			s.Close()
			execSQL(t, rawDB(t, path), "UPDATE objects SET token_id = token_id + 1000 WHERE id = ?", obj.ID)
		}, objectDown},
		{"object row deleted", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			s.Close()
			execSQL(t, rawDB(t, path), "DELETE FROM objects WHERE id = ?", obj.ID)
		}, reported},
		{"object row replayed with its entry", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			db := rawDB(t, path)
			u, attrs, sealed := getRecord(t, db, obj.ID)
			var entry []byte
			if err := db.QueryRow("SELECT term FROM anchor_rows WHERE tbl = 'objects' AND key = ?", fmt.Sprint(obj.ID)).Scan(&entry); err != nil {
				t.Fatal(err)
			}
			if err := s.Update(ctx, obj.ID, keyAttrs(t, "after", false), nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			setRecord(t, db, obj.ID, u, attrs, sealed)
			execSQL(t, db, "UPDATE objects SET label = ? WHERE id = ?", []byte("before"), obj.ID)
			execSQL(t, db, "UPDATE anchor_rows SET term = ? WHERE tbl = 'objects' AND key = ?", entry, fmt.Sprint(obj.ID))
		}, refused},
		{"carried key row added", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			s.Close()
			execSQL(t, rawDB(t, path), "INSERT INTO carried (label, master_generation, sealed) VALUES (?, 9, ?)", []byte{0}, []byte{0})
		}, refused},
		{"root row edited", func(t *testing.T, s *Store, path string, victim TokenInfo, obj *Object) {
			s.Close()
			execSQL(t, rawDB(t, path), "UPDATE root SET updated_at = updated_at - 1")
		}, refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			victim := newToken(t, s, "victim")
			obj, err := s.Put(ctx, victim.UUID, keyAttrs(t, "before", false), []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			sibling, err := s.Put(ctx, victim.UUID, keyAttrs(t, "sibling", false), []byte("sibling"))
			if err != nil {
				t.Fatal(err)
			}
			other := newToken(t, s, "other")
			kept, err := s.Put(ctx, other.UUID, keyAttrs(t, "kept", false), []byte("kept"))
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(t, s, path, victim, obj)
			s2 := reopen(t, path, Options{})
			rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
			if tc.want == refused {
				var re *RollbackError
				if !errors.As(err, &re) || re.What != "rows" || !strings.Contains(err.Error(), "a row was put back from an older copy, deleted, or added outside hsmemu") {
					t.Fatalf("%s: %+v %v", tc.name, rep, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantTokens, wantObjects, wantDeleted := []int64(nil), []int64(nil), []string(nil)
			switch tc.want {
			case tokenDown:
				wantTokens = []int64{victim.ID}
			case objectDown:
				wantObjects = []int64{int64(obj.ID)}
			case reported:
				wantDeleted = []string{fmt.Sprintf("object row %d", obj.ID)}
			}
			if !slices.Equal(rep.BadTokens, wantTokens) || !slices.Equal(rep.BadObjects, wantObjects) || !slices.Equal(rep.Deleted, wantDeleted) {
				t.Fatalf("%s: %+v", tc.name, rep)
			}
			_, verr := s2.Token(ctx, victim.UUID)
			_, oerr := s2.Open(ctx, obj.ID)
			_, serr := s2.Open(ctx, sibling.ID)
			switch tc.want {
			case tokenDown:
				if TamperWhat(verr) != "rows" || serr == nil {
					t.Fatalf("the victim token: %v; its other key: %v", verr, serr)
				}
			case objectDown:
				if verr != nil || TamperWhat(oerr) != "rows" || serr != nil {
					t.Fatalf("token %v, object %v, its sibling %v", verr, oerr, serr)
				}
				ids, err := s2.Find(ctx, victim.UUID, Filter{})
				if err != nil || slices.Contains(ids, obj.ID) || !slices.Contains(ids, sibling.ID) {
					t.Fatalf("find: %v %v", ids, err)
				}
			case reported:
				if verr != nil || !errors.Is(oerr, ErrNotFound) || serr != nil {
					t.Fatalf("token %v, object %v, its sibling %v", verr, oerr, serr)
				}
			}
			if got, err := s2.Open(ctx, kept.ID); err != nil || !bytes.Equal(got.Secret, []byte("kept")) {
				t.Fatalf("the other token's key: %v", err)
			}
			// Writes go on (the row that failed included, by those who
			// may), and the next start finds the same.
			newToken(t, s2, "later")
			if err := s2.AuditTamper(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := s2.TamperCount(ctx); err != nil || n != 1 {
				t.Fatalf("tamper records: %d %v", n, err)
			}
			if _, err := s2.Anchor(ctx); err != nil {
				t.Fatal(err)
			}
			s2.Close()
			s3 := reopen(t, path, Options{})
			rep3, err := s3.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
			if err != nil || !slices.Equal(rep3.BadTokens, wantTokens) || !slices.Equal(rep3.BadObjects, wantObjects) || !slices.Equal(rep3.Deleted, wantDeleted) {
				t.Fatalf("next start: %+v %v", rep3, err)
			}
			if tc.want == objectDown {
				// Deleting the row that failed ends it.
				if err := s3.Delete(ctx, obj.ID); err != nil {
					t.Fatal(err)
				}
				s3.Close()
				s4 := reopen(t, path, Options{})
				if rep4, err := s4.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil || len(rep4.BadObjects)+len(rep4.Deleted) > 0 {
					t.Fatalf("after deleting the failed row: %+v %v", rep4, err)
				}
			}
		})
	}
}

// TestAnchorEntryEdited: a row's entry edited alone, its row untouched,
// is written again from the rows and reported; nothing is taken down.
func TestAnchorEntryEdited(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	ti := newToken(t, s, "p")
	s.Close()
	db := rawDB(t, path)
	var entry []byte
	if err := db.QueryRow("SELECT term FROM anchor_rows WHERE tbl = 'tokens' AND key = ?", fmt.Sprint(ti.ID)).Scan(&entry); err != nil {
		t.Fatal(err)
	}
	entry[len(entry)-1] ^= 1
	execSQL(t, db, "UPDATE anchor_rows SET term = ? WHERE tbl = 'tokens' AND key = ?", entry, fmt.Sprint(ti.ID))
	s2 := reopen(t, path, Options{})
	rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil || len(rep.BadTokens)+len(rep.BadObjects) != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	anchorRecord(t, s2)
	if _, err := s2.Token(ctx, ti.UUID); err != nil {
		t.Fatal(err)
	}
	if err := s2.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s2.TamperCount(ctx); err != nil || n != 1 {
		t.Fatalf("tamper records %d %v", n, err)
	}
	s2.Close()
	s3 := reopen(t, path, Options{})
	if _, err := s3.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatal(err)
	}
	anchorRecord(t, s3) // written again, for good
}

// TestAnchorReset: a restore re-anchors an older keystore on purpose,
// says how far behind it was, and records it in the audit log; a normal
// start follows.
func TestAnchorReset(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	old := copyKeystore(t, path)
	newToken(t, s, "later")
	if _, err := s.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	putBack(t, old, path)
	s2 := reopen(t, path, Options{})
	rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h, Reset: "restore", Actor: AuditActor{Role: "admin"}})
	if err != nil || !rep.Reset || rep.Behind != 1 {
		t.Fatalf("reset: %+v %v", rep, err)
	}
	recs, err := s2.AuditTail(ctx, 1)
	if err != nil || len(recs) != 1 || recs[0].Event != "anchor.reset" || recs[0].Detail["behind"] != "1" || recs[0].Detail["reason"] != "restore" {
		t.Fatalf("audit: %+v %v", recs, err)
	}
	if rep, err := s2.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("audit verify: %+v %v", rep, err)
	}
	s2.Close()
	s3 := reopen(t, path, Options{})
	if _, err := s3.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatalf("start after the reset: %v", err)
	}
	// Reset forgives an older keystore, not an edited one: a token row
	// removed is reported, a row of the domain's refuses it.
	ti := newToken(t, s3, "edited")
	if _, err := s3.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	s3.Close()
	execSQL(t, rawDB(t, path), "DELETE FROM tokens WHERE id = ?", ti.ID)
	s4 := reopen(t, path, Options{})
	if rep, err := s4.AttachAnchor(ctx, c, AnchorOptions{Handle: h, Reset: "restore"}); err != nil || !slices.Equal(rep.Deleted, []string{fmt.Sprintf("token row %d", ti.ID)}) {
		t.Fatalf("reset of a keystore with a token row removed: %+v %v", rep, err)
	}
	s4.Close()
	execSQL(t, rawDB(t, path), "UPDATE root SET updated_at = updated_at + 1")
	s5 := reopen(t, path, Options{})
	if _, err := s5.AttachAnchor(ctx, c, AnchorOptions{Handle: h, Reset: "restore"}); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("reset of a keystore with its root row edited: %v", err)
	}
}

// flakyCounter is the TPM counter with a power cut before one increment.
type flakyCounter struct {
	Counter
	fail bool
}

func (f *flakyCounter) Increment() (uint64, error) {
	if f.fail {
		f.fail = false
		return 0, errors.New("power cut")
	}
	return f.Counter.Increment()
}

// TestAnchorCrash: a daemon that stops between its writes and the next
// anchor, or between an anchor's commit and its increment, leaves a
// keystore the next start accepts and anchors.
func TestAnchorCrash(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	newToken(t, s, "crash")
	fc := &flakyCounter{Counter: c, fail: true}
	s.anc.counter = fc
	if _, err := s.Anchor(ctx); err == nil || !strings.Contains(err.Error(), "power cut") {
		t.Fatalf("anchor with a power cut: %v", err)
	}
	st := anchorRecord(t, s)
	v, _, _ := c.Value()
	if st.anchored != v+1 {
		t.Fatalf("record at %d, counter %d: want the record one ahead", st.anchored, v)
	}
	newToken(t, s, "not anchored") // written after the last anchor
	s.Close()
	s2 := reopen(t, path, Options{})
	rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil || rep.Reset || rep.TPMBehind != 0 {
		t.Fatalf("start after the crash: %+v %v", rep, err)
	}
	if v2, _, _ := c.Value(); v2 != rep.Anchored || v2 < v+1 {
		t.Fatalf("counter %d, record %d", v2, rep.Anchored)
	}
	if st := anchorRecord(t, s2); st.generation != st.anchoredGen {
		t.Fatalf("start did not anchor what was written: %+v", st)
	}
	// Anchoring while running catches up the same way.
	fc2 := &flakyCounter{Counter: c, fail: true}
	s2.anc.counter = fc2
	newToken(t, s2, "again")
	if _, err := s2.Anchor(ctx); err == nil {
		t.Fatal("no power cut")
	}
	newToken(t, s2, "and again")
	if did, err := s2.Anchor(ctx); err != nil || !did {
		t.Fatalf("catch up: %v %v", did, err)
	}
	v3, _, _ := c.Value()
	if st := anchorRecord(t, s2); st.anchored != v3 || st.generation != st.anchoredGen {
		t.Fatalf("record %+v, counter %d", st, v3)
	}
}

// TestAnchorAuditTailCut: the audit log's newest records removed is
// reported by the verification of the next daemon, without a head kept
// elsewhere, and recorded as tampering.
func TestAnchorAuditTailCut(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	auditN(t, s, 5)
	s.Close()
	execSQL(t, rawDB(t, path), "DELETE FROM audit_log WHERE seq >= (SELECT max(seq) - 1 FROM audit_log)")
	s2 := reopen(t, path, Options{})
	rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil || rep.AuditLost == "" {
		t.Fatalf("attach: %+v %v", rep, err)
	}
	if err := s2.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := s2.VerifyAudit(ctx)
	if err != nil || v.OK || !strings.Contains(v.Problem, "the keystore's anchor record says it ended at record") {
		t.Fatalf("verify: %+v %v", v, err)
	}
	if n, err := s2.TamperCount(ctx); err != nil || n != 1 {
		t.Fatalf("tamper records: %d %v", n, err)
	}
}

// TestAnchorRecordEdited: the record itself edited or removed refuses
// the keystore; a counter that is not the one it was anchored in too.
func TestAnchorRecordEdited(t *testing.T) {
	t.Parallel()
	t.Run("edited", func(t *testing.T) {
		t.Parallel()
		s, path, c, h := anchoredStore(t)
		s.Close()
		db := rawDB(t, path)
		var blob []byte
		if err := db.QueryRow("SELECT state FROM anchor").Scan(&blob); err != nil {
			t.Fatal(err)
		}
		blob[40] ^= 1
		execSQL(t, db, "UPDATE anchor SET state = ?", blob)
		s2, err := openAt(ctx, path, Options{Argon2: cheapArgon})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		root, _ := testRoot(t)
		err = s2.Attach(ctx, root, root.DomainID())
		if err == nil {
			_, err = s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
		}
		if !errors.Is(err, ErrTampered) {
			t.Fatalf("edited record: %v", err)
		}
	})
	t.Run("removed", func(t *testing.T) {
		t.Parallel()
		s, path, c, h := anchoredStore(t)
		s.Close()
		execSQL(t, rawDB(t, path), "DELETE FROM anchor")
		s2 := reopen(t, path, Options{})
		_, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
		var re *RollbackError
		if !errors.As(err, &re) || re.What != "no record" {
			t.Fatalf("removed record: %v", err)
		}
	})
	t.Run("another counter", func(t *testing.T) {
		t.Parallel()
		s, path, _, h := anchoredStore(t)
		s.Close()
		s2 := reopen(t, path, Options{})
		other, oh := newCounter(t, s2)
		if _, err := s2.AttachAnchor(ctx, other, AnchorOptions{Handle: h}); !errors.Is(err, ErrRolledBack) {
			t.Fatalf("a new counter for an anchored keystore: %v", err)
		}
		if _, err := s2.AttachAnchor(ctx, other, AnchorOptions{Handle: oh}); err == nil {
			t.Fatal("a record naming another counter")
		}
	})
}

// TestAnchorCopyRunning: a second copy of the keystore anchoring in the
// same counter makes the first one's next anchor refuse it, and its
// writes fail from then on.
func TestAnchorCopyRunning(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	ti := newToken(t, s, "fork")
	if _, err := s.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	fork := copyKeystore(t, path)
	s2 := reopen(t, fork, Options{})
	if _, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatal(err)
	}
	newToken(t, s2, "fork-write")
	if _, err := s2.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	newToken(t, s, "mine")
	if _, err := s.Anchor(ctx); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("anchor after another copy anchored: %v", err)
	}
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("x")); !errors.Is(err, ErrRolledBack) {
		t.Fatalf("a write after the refusal: %v", err)
	}
}

// TestAnchorMasterRotation: the record's key moves with the master key;
// the record keeps accounting for the rows through a rotation, and the
// keystore opens under the new master with the same counter.
func TestAnchorMasterRotation(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	ti := newToken(t, s, "rot")
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("x")); err != nil {
		t.Fatal(err)
	}
	next, _ := beginMasterRotation(t, s)
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateMaster(ctx, nil); err != nil {
		t.Fatal(err)
	}
	anchorRecord(t, s)
	if did, err := s.Anchor(ctx); err != nil || !did {
		t.Fatalf("anchor after the rotation: %v %v", did, err)
	}
	var blob []byte
	if err := s.r.QueryRow("SELECT state FROM anchor").Scan(&blob); err != nil {
		t.Fatal(err)
	}
	if e, _ := blobEpoch(blob); e != 2 {
		t.Fatalf("record sealed in epoch %d after the rotation, want 2", e)
	}
	s.Close()
	s2, err := openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Attach(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatalf("start under the new master: %v", err)
	}
}

// TestAnchorUpgrade: a keystore written before the record existed gets
// one at its first anchored start, accounting for every row already in
// it.
func TestAnchorUpgrade(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "up")
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("x")); err != nil {
		t.Fatal(err)
	}
	auditN(t, s, 2)
	s.Close()
	s2 := reopen(t, path, Options{})
	c, h := newCounter(t, s2)
	rep, err := s2.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil || !rep.Created || rep.Rows < 3 {
		t.Fatalf("upgrade: %+v %v", rep, err)
	}
	if st := anchorRecord(t, s2); st.auditSeq != 3 { // two, and anchor.create
		t.Fatalf("audit head %d", st.auditSeq)
	}
}
