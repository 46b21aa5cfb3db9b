package keystore

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// auditN appends n records.
func auditN(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		if _, err := s.Audit(ctx, AuditActor{UID: 1000, PID: 42, Token: "t", Role: "user"}, "login", map[string]string{"n": fmt.Sprint(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAuditChain(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	rep, err := s.VerifyAudit(ctx)
	if err != nil || !rep.OK || rep.Records != 0 || rep.Head != nil {
		t.Fatalf("empty log: %+v %v", rep, err)
	}
	auditN(t, s, 5)
	rep, err = s.VerifyAudit(ctx)
	if err != nil || !rep.OK || rep.Records != 5 || rep.HeadSeq != 5 || len(rep.Head) != 32 {
		t.Fatalf("intact log: %+v %v", rep, err)
	}
	tail, err := s.AuditTail(ctx, 2)
	if err != nil || len(tail) != 2 || tail[0].Seq != 4 || tail[1].Seq != 5 || tail[1].Detail["n"] != "5" || tail[1].Actor.UID != 1000 {
		t.Fatalf("tail: %+v %v", tail, err)
	}
	if string(tail[1].PrevHash) != string(tail[0].Hash) {
		t.Fatal("record 5 does not link to record 4")
	}
	all, err := s.AuditRecords(ctx, 0, 0)
	if err != nil || len(all) != 5 || string(all[0].PrevHash) != string(genesis) {
		t.Fatalf("all: %d %v", len(all), err)
	}
}

func TestAuditVerifyCatchesTampering(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		edit   func(t *testing.T, db *sql.DB)
		badSeq int64
		want   string
	}{
		{name: "edited event", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "UPDATE audit_log SET event = 'logout' WHERE seq = 3")
		}, badSeq: 3, want: "record 3 was edited"},
		{name: "edited detail", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, `UPDATE audit_log SET detail = '{"n":"99"}' WHERE seq = 2`)
		}, badSeq: 2, want: "record 2 was edited"},
		{name: "edited time", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "UPDATE audit_log SET time = time + 1 WHERE seq = 4")
		}, badSeq: 4, want: "record 4 was edited"},
		{name: "deleted", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "DELETE FROM audit_log WHERE seq = 3")
		}, badSeq: 4, want: "3 to 3 are missing before record 4"},
		{name: "deleted first", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "DELETE FROM audit_log WHERE seq = 1")
		}, badSeq: 2, want: "1 to 1 are missing"},
		{name: "deleted and renumbered", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "DELETE FROM audit_log WHERE seq = 2")
			for _, q := range []string{"UPDATE audit_log SET seq = 2 WHERE seq = 3", "UPDATE audit_log SET seq = 3 WHERE seq = 4", "UPDATE audit_log SET seq = 4 WHERE seq = 5"} {
				execSQL(t, db, q)
			}
		}, badSeq: 2, want: "a record was deleted before record 2"},
		{name: "reordered", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "UPDATE audit_log SET seq = 100 WHERE seq = 2")
			execSQL(t, db, "UPDATE audit_log SET seq = 2 WHERE seq = 3")
			execSQL(t, db, "UPDATE audit_log SET seq = 3 WHERE seq = 100")
		}, badSeq: 2, want: "reordered: record 2 belongs after record 3"},
		{name: "tail deleted", edit: func(t *testing.T, db *sql.DB) {
			execSQL(t, db, "DELETE FROM audit_log WHERE seq >= 4")
		}, badSeq: 3, want: "records 4 to 5, written by this daemon, are missing from the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			auditN(t, s, 5)
			c.edit(t, rawDB(t, path))
			rep, err := s.VerifyAudit(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK || rep.BadSeq != c.badSeq || !strings.Contains(rep.Problem, c.want) {
				t.Fatalf("report %+v, want bad seq %d with %q", rep, c.badSeq, c.want)
			}
		})
	}
}

// TestAuditForgedRecord: a record computed without the TPM's key does not
// verify, even when it links correctly.
func TestAuditForgedRecord(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	auditN(t, s, 2)
	recs, err := s.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	forged := auditRow{seq: 3, time: 1, actor: `{"uid":0,"pid":1}`, event: "login", detail: "{}", prevHash: recs[1].Hash}
	forged.hash = auditHash(make([]byte, 32), &forged)
	execSQL(t, rawDB(t, path), "INSERT INTO audit_log (seq, time, actor, event, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
		forged.seq, forged.time, forged.actor, forged.event, forged.detail, forged.prevHash, forged.hash)
	rep, err := s.VerifyAudit(ctx)
	if err != nil || rep.OK || rep.BadSeq != 3 {
		t.Fatalf("forged record: %+v %v", rep, err)
	}
	// A second Store (another daemon's lifetime) sees the same chain.
	s2 := reopen(t, path, Options{})
	if rep2, err := s2.VerifyAudit(ctx); err != nil || rep2.BadSeq != 3 {
		t.Fatalf("reopened: %+v %v", rep2, err)
	}
}

// TestAuditTailReplaced: records removed from the end and replaced by new
// ones chain cleanly, but the Store that wrote the removed ones notices at
// its next append.
func TestAuditTailReplaced(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	auditN(t, s, 5)
	execSQL(t, rawDB(t, path), "DELETE FROM audit_log WHERE seq >= 4")
	auditN(t, s, 2) // records 4 and 5 again, chained to record 3
	rep, err := s.VerifyAudit(ctx)
	if err != nil || rep.OK || !strings.Contains(rep.Problem, "the log ended at record 3 when this daemon had written up to record 5") {
		t.Fatalf("tail replaced: %+v %v", rep, err)
	}
	// Replaced in place, with the count unchanged, is caught too.
	s2, path2 := newStore(t, Options{})
	auditN(t, s2, 3)
	db := rawDB(t, path2)
	execSQL(t, db, "UPDATE audit_log SET hash = (SELECT hash FROM audit_log WHERE seq = 1) WHERE seq = 3")
	if rep, err := s2.VerifyAudit(ctx); err != nil || rep.OK {
		t.Fatalf("head replaced: %+v %v", rep, err)
	}
}

// TestAuditRecordUnreadable: one record edited into something the daemon
// never writes (an actor that is not JSON; in a log rebuilt without its
// types, a time that is not a number) takes down itself alone: a listing
// (audit tail, show, export) goes on past it, marking it unreadable and
// noting it as tampering, and verification names it instead of failing.
func TestAuditRecordUnreadable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, what string
		loose      bool
		edit       string
	}{
		{"actor", "actor", false, "UPDATE audit_log SET actor = 'x' WHERE seq = 3"},
		{"detail", "detail", false, "UPDATE audit_log SET detail = '[1]' WHERE seq = 3"},
		{"time of another type", "time", true, "UPDATE audit_log SET time = 'x' WHERE seq = 3"},
		{"event of another type", "event", true, "UPDATE audit_log SET event = NULL WHERE seq = 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.loose {
				sqliteOnly(t, "rebuilds the table without types, as only a hand edit of SQLite's file can")
			}
			s, path := newStore(t, Options{})
			auditN(t, s, 5)
			db := rawDB(t, path)
			if tc.loose {
				execSQL(t, db, "CREATE TABLE loose AS SELECT * FROM audit_log; DROP TABLE audit_log; ALTER TABLE loose RENAME TO audit_log")
			}
			execSQL(t, db, tc.edit)
			recs, err := s.AuditRecords(ctx, 0, 0)
			if err != nil || len(recs) != 5 {
				t.Fatalf("listing: %d records, %v; want all 5", len(recs), err)
			}
			for i, r := range recs {
				switch {
				case r.Seq != int64(i+1):
					t.Fatalf("record %d listed as %d", i+1, r.Seq)
				case i == 2 && r.Detail["unreadable"] != tc.what:
					t.Fatalf("the edited record: %+v, want it marked unreadable (%s)", r, tc.what)
				case i != 2 && (r.Detail["n"] != fmt.Sprint(i+1) || r.Actor.UID != 1000):
					t.Fatalf("record %d: %+v", i+1, r)
				}
			}
			rep, err := s.VerifyAudit(ctx)
			if err != nil || rep.OK || rep.BadSeq != 3 || !strings.Contains(rep.Problem, "record 3 was edited") {
				t.Fatalf("verify: %+v %v; want record 3 named", rep, err)
			}
			if !tc.loose {
				if err := s.AuditTamper(ctx); err != nil {
					t.Fatal(err)
				}
				if n, err := s.TamperCount(ctx); err != nil || n != 1 {
					t.Fatalf("tamper records: %d %v, want the edited record noted once", n, err)
				}
			}
		})
	}
}

// TestAuditFieldsBounded: a label is the application's to choose, up to
// an attribute's 1 MiB, and goes into the record of every write of its
// object, which the log keeps for ever: each field of a record is cut to
// maxAuditField bytes (at a character's boundary), saying how long it
// was, and the record still verifies.
func TestAuditFieldsBounded(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	long := strings.Repeat("é", 32<<10) // 64 KiB, two bytes a character
	rec, err := s.Audit(ctx, AuditActor{UID: 1, PID: 2, Token: long, Role: "user"}, "key.generate", map[string]string{"label": long, "class": "secret-key"})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"label": rec.Detail["label"], "token": rec.Actor.Token} {
		if len(v) > maxAuditField+64 || !strings.HasPrefix(v, long[:maxAuditField]) || !strings.HasSuffix(v, "… (65536 bytes)") || !utf8.ValidString(v) {
			t.Fatalf("%s: %d bytes, ending %q", name, len(v), v[max(0, len(v)-40):])
		}
	}
	if rec.Detail["class"] != "secret-key" {
		t.Fatalf("a short field changed: %q", rec.Detail["class"])
	}
	if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// TestAuditRecordOversized: a record edited in with a field far larger
// than the daemon writes (or one written before fields were bounded)
// is listed with its fields cut as new records are, and one with more
// detail than the daemon writes, or a hash that is no hash, as
// unreadable: a listing's reply (1000 records under the admin
// protocol's 16 MiB) is never lost to one record.
func TestAuditRecordOversized(t *testing.T) {
	t.Parallel()
	huge := strings.Repeat("a", 2<<20)
	many := map[string]string{}
	for i := range 5000 {
		many[fmt.Sprint("k", i)] = strings.Repeat("b", 1000)
	}
	manyJSON, _ := json.Marshal(many)
	for _, tc := range []struct {
		name, what string // what: "" for listed with its fields cut
		edit       string
		args       []any
	}{
		{"long label", "", `UPDATE audit_log SET detail = ? WHERE seq = 3`, []any{`{"label":"` + huge + `"}`}},
		{"long token", "", `UPDATE audit_log SET actor = ? WHERE seq = 3`, []any{`{"uid":1,"pid":2,"token":"` + huge + `"}`}},
		{"many details", "detail", `UPDATE audit_log SET detail = ? WHERE seq = 3`, []any{string(manyJSON)}},
		{"long event", "event", `UPDATE audit_log SET event = ? WHERE seq = 3`, []any{huge}},
		{"long hash", "hash", `UPDATE audit_log SET hash = ? WHERE seq = 3`, []any{[]byte(huge)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			auditN(t, s, 5)
			execSQL(t, rawDB(t, path), tc.edit, tc.args...)
			recs, err := s.AuditRecords(ctx, 0, 0)
			if err != nil || len(recs) != 5 {
				t.Fatalf("listing: %d records, %v; want all 5", len(recs), err)
			}
			for i, r := range recs {
				b, _ := json.Marshal(r)
				if len(b) > 16<<10 {
					t.Fatalf("record %d listed in %d bytes", r.Seq, len(b))
				}
				if i != 2 && r.Detail["n"] != fmt.Sprint(i+1) {
					t.Fatalf("record %d: %+v", i+1, r)
				}
			}
			if got := recs[2].Detail["unreadable"]; got != tc.what {
				t.Fatalf("the edited record: unreadable %q, want %q", got, tc.what)
			}
			if rep, err := s.VerifyAudit(ctx); err != nil || rep.OK || rep.BadSeq != 3 {
				t.Fatalf("verify: %+v %v; want record 3 named", rep, err)
			}
		})
	}
}
