package keystore

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestSoftDelete(t *testing.T) {
	t.Parallel()
	s, _, _, _ := anchoredStore(t) // a purge needs the deletion authenticated (deletion.go)
	ti := newToken(t, s, "soft")
	if ti.RetentionDays != DefaultRetentionDays || ti.PurgeProtection {
		t.Fatalf("new token's policy: %d days, protection %v", ti.RetentionDays, ti.PurgeProtection)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.SoftDelete(ctx, obj.ID)
	if err != nil || !kept {
		t.Fatalf("soft delete: %v %v", kept, err)
	}
	if _, err := s.Open(ctx, obj.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open deleted: %v", err)
	}
	if ids, err := s.Find(ctx, ti.UUID, Filter{Label: []byte("k")}); err != nil || len(ids) != 0 {
		t.Fatalf("find deleted: %v %v", ids, err)
	}
	if _, err := s.SoftDelete(ctx, obj.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	counts, _ := s.ObjectCounts(ctx)
	if counts[ti.ID] != 0 {
		t.Fatalf("deleted object counted: %v", counts)
	}
	del, err := s.DeletedObjects(ctx, ti.UUID)
	if err != nil || len(del) != 1 || del[0].UUID != obj.UUID || string(del[0].Label) != "k" ||
		del[0].PurgeAfter.Sub(del[0].DeletedAt) != 90*24*time.Hour {
		t.Fatalf("deleted list: %+v %v", del, err)
	}
	// Not yet expired: kept.
	if purged, err := s.PurgeExpired(ctx, time.Now()); err != nil || len(purged) != 0 {
		t.Fatalf("purge expired early: %v %v", purged, err)
	}
	id, err := s.Recover(ctx, ti.UUID, obj.UUID)
	if err != nil || id != obj.ID {
		t.Fatalf("recover: %v %v", id, err)
	}
	if got, err := s.Open(ctx, obj.ID); err != nil || string(got.Secret) != "secret" {
		t.Fatalf("open recovered: %v", err)
	}
	if _, err := s.Recover(ctx, ti.UUID, obj.UUID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("recover a live object: %v", err)
	}
	// Purge: only a deleted object; then it is gone.
	if err := s.Purge(ctx, ti.UUID, obj.UUID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("purge a live object: %v", err)
	}
	s.SoftDelete(ctx, obj.ID)
	if err := s.Purge(ctx, ti.UUID, obj.UUID); err != nil {
		t.Fatal(err)
	}
	if del, _ := s.DeletedObjects(ctx, ti.UUID); len(del) != 0 {
		t.Fatalf("purged object still listed: %+v", del)
	}
	// Expiry: a deleted object past its retention is purged.
	obj2, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "k2", false), []byte("x"))
	s.SoftDelete(ctx, obj2.ID)
	if purged, err := s.PurgeExpired(ctx, time.Now().Add(91*24*time.Hour)); err != nil || len(purged) != 1 || purged[0].UUID != obj2.UUID {
		t.Fatalf("purge expired: %+v %v", purged, err)
	}
	// Retention 0 deletes at once.
	zero := 0
	if err := s.SetPolicy(ctx, ti.UUID, &zero, nil); err != nil {
		t.Fatal(err)
	}
	obj3, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "k3", false), []byte("x"))
	if kept, err := s.SoftDelete(ctx, obj3.ID); err != nil || kept {
		t.Fatalf("delete with no retention: %v %v", kept, err)
	}
	if del, _ := s.DeletedObjects(ctx, ti.UUID); len(del) != 0 {
		t.Fatalf("kept with no retention: %+v", del)
	}
}

func TestPurgeProtection(t *testing.T) {
	t.Parallel()
	s, path, _, _ := anchoredStore(t)
	ti := newToken(t, s, "protected")
	on, off := true, false
	three, thirty, sixty := 3, 30, 60
	if err := s.SetPolicy(ctx, ti.UUID, &three, &on); !isPolicy(err) {
		t.Fatalf("protection with 3 days: %v", err)
	}
	if err := s.SetPolicy(ctx, ti.UUID, &sixty, &on); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		days *int
		prot *bool
	}{{days: nil, prot: &off}, {days: &thirty, prot: nil}} {
		if err := s.SetPolicy(ctx, ti.UUID, c.days, c.prot); !isPolicy(err) {
			t.Fatalf("loosening protection: %v", err)
		}
	}
	ninety := 90
	if err := s.SetPolicy(ctx, ti.UUID, &ninety, nil); err != nil {
		t.Fatalf("growing retention: %v", err)
	}
	obj, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("x"))
	s.SoftDelete(ctx, obj.ID)
	if err := s.Purge(ctx, ti.UUID, obj.UUID); !errors.Is(err, ErrPurgeProtected) {
		t.Fatalf("purge under protection: %v", err)
	}
	if err := s.DeleteToken(ctx, ti.UUID); !errors.Is(err, ErrPurgeProtected) {
		t.Fatalf("delete token under protection: %v", err)
	}
	if err := s.Reinit(ctx, ti.UUID, soPIN, "again"); !errors.Is(err, ErrPurgeProtected) {
		t.Fatalf("reinit under protection: %v", err)
	}
	// Expiry still purges under protection; then the token can go.
	if purged, err := s.PurgeExpired(ctx, time.Now().Add(91*24*time.Hour)); err != nil || len(purged) != 1 {
		t.Fatalf("purge expired under protection: %v %v", purged, err)
	}
	// Editing the policy in the database is tampering, even back to the
	// defaults.
	db := rawDB(t, path)
	execSQL(t, db, "UPDATE tokens SET purge_protection = 0, retention_days = 90 WHERE id = ?", ti.ID)
	s2 := reopen(t, path, Options{})
	if _, err := s2.Token(ctx, ti.UUID); !errors.Is(err, ErrTampered) {
		t.Fatalf("policy edited: %v", err)
	}
	execSQL(t, db, "UPDATE tokens SET purge_protection = 1, retention_days = 90 WHERE id = ?", ti.ID)
	if err := s.DeleteToken(ctx, ti.UUID); err != nil {
		t.Fatalf("delete an empty protected token: %v", err)
	}
}

func isPolicy(err error) bool {
	var pe *PolicyError
	return errors.As(err, &pe)
}

func TestKeyBackup(t *testing.T) {
	t.Parallel()
	s, _, _, _ := anchoredStore(t)
	ti := newToken(t, s, "kb")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("material"))
	if err != nil {
		t.Fatal(err)
	}
	blob, err := s.SealKeyBackup(ctx, []BackupObject{{UUID: obj.UUID, Attrs: obj.Attrs, Secret: obj.Secret}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(blob, []byte("material")) {
		t.Fatal("the backup holds the material in clear")
	}
	// The uuid is taken while the object lives, even deleted.
	if _, err := s.PutAs(ctx, ti.UUID, obj.UUID, obj.Attrs, obj.Secret); !errors.Is(err, ErrObjectExists) {
		t.Fatalf("restore over a live object: %v", err)
	}
	s.SoftDelete(ctx, obj.ID)
	if _, err := s.PutAs(ctx, ti.UUID, obj.UUID, obj.Attrs, obj.Secret); !errors.Is(err, ErrObjectExists) {
		t.Fatalf("restore over a deleted object: %v", err)
	}
	if err := s.Purge(ctx, ti.UUID, obj.UUID); err != nil {
		t.Fatal(err)
	}
	objs, err := s.OpenKeyBackup(ctx, blob)
	if err != nil || len(objs) != 1 || objs[0].UUID != obj.UUID || string(objs[0].Secret) != "material" {
		t.Fatalf("open: %+v %v", objs, err)
	}
	back, err := s.PutAs(ctx, ti.UUID, objs[0].UUID, objs[0].Attrs, objs[0].Secret)
	if err != nil || back.UUID != obj.UUID {
		t.Fatalf("restore: %v", err)
	}
	got, err := s.Open(ctx, back.ID)
	if err != nil || string(got.Secret) != "material" || !bytes.Equal(got.Attrs.Encode(), obj.Attrs.Encode()) {
		t.Fatalf("restored object: %v %q %v", err, got.Secret, bytes.Equal(got.Attrs.Encode(), obj.Attrs.Encode()))
	}
	// Every altered byte is refused.
	for i := range blob {
		bad := bytes.Clone(blob)
		bad[i] ^= 1
		if _, err := s.OpenKeyBackup(ctx, bad); err == nil {
			t.Fatalf("a backup with byte %d flipped opened", i)
		}
	}
	if _, err := s.OpenKeyBackup(ctx, blob[:len(blob)-1]); !errors.Is(err, ErrNotKeyBackup) {
		t.Fatalf("truncated: %v", err)
	}
}

func FuzzParseBackup(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, p []byte) {
		objs, err := parseBackup(p)
		if err == nil && (len(objs) < 1 || len(objs) > maxBackupObjects) {
			t.Fatalf("%d objects", len(objs))
		}
	})
}

// FuzzParsePINRecord: a stored PIN record of any shape parses or is
// refused, never read out of bounds.
func FuzzParsePINRecord(f *testing.F) {
	f.Add(make([]byte, pinRecordLen))
	f.Add(append([]byte{1}, make([]byte, pinRecordLenV1-1)...))
	f.Add((&pinRecord{version: 3, params: cheapArgon, salt: make([]byte, 16), nonce: make([]byte, 12), sealed: make([]byte, 48),
		seal: []byte("seal"), copy: make([]byte, recoveryCopyLen)}).marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePINRecord(b)
		if err != nil {
			return
		}
		if len(r.salt) != pinSaltLen || len(r.nonce) != gcmNonceLen || len(r.sealed) != 32+gcmTagLen {
			t.Fatalf("parsed %d/%d/%d", len(r.salt), len(r.nonce), len(r.sealed))
		}
		// Whatever parses re-encodes to the same bytes.
		if again := r.marshal(); string(again) != string(b) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", b, again)
		}
	})
}

// TestPurgeExpiredAudited: each object the purge removes is recorded in
// the transaction that removes it, so that, seen from the database at any
// moment of the purge (as another daemon sees it when the purger is
// killed), every object gone has its record and no object left has one;
// an object recovered after the purge listed it is neither purged nor
// recorded.
func TestPurgeExpiredAudited(t *testing.T) {
	t.Parallel()
	s, _, _, _ := anchoredStore(t)
	ti := newToken(t, s, "audited")
	const n = 6
	var objs []*Object
	for i := range n {
		obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, string(rune('a'+i)), false), []byte("sixteen byte key"))
		if err != nil {
			t.Fatal(err)
		}
		if kept, err := s.SoftDelete(ctx, obj.ID); err != nil || !kept {
			t.Fatalf("soft delete: %v %v", kept, err)
		}
		objs = append(objs, obj)
	}
	records := func() map[string]int {
		t.Helper()
		recs, err := s.AuditRecords(ctx, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, r := range recs {
			if r.Event == "key.purge" {
				out[r.Detail["object"]]++
			}
		}
		return out
	}
	steps := 0
	s.purgeStep = func() {
		steps++
		if steps == 1 {
			// Recovered after the purge listed it: the purge leaves it.
			if _, err := s.Recover(ctx, ti.UUID, objs[n-1].UUID); err != nil {
				t.Errorf("recover: %v", err)
			}
		}
		left, err := s.DeletedObjects(ctx, ti.UUID)
		if err != nil {
			t.Error(err)
			return
		}
		rec := records()
		if len(rec) != steps || len(left) != n-1-steps {
			t.Errorf("after %d objects purged: %d recorded, %d left", steps, len(rec), len(left))
		}
		for _, d := range left {
			if rec[d.UUID.String()] != 0 {
				t.Errorf("object %s, not purged yet, is recorded purged", d.UUID)
			}
		}
	}
	later := time.Now().Add(time.Duration(DefaultRetentionDays+1) * 24 * time.Hour)
	purged, err := s.PurgeExpiredAudited(ctx, later, func(d Deleted) AuditNote {
		return AuditNote{Actor: AuditActor{Role: "daemon"}, Event: "key.purge", Detail: map[string]string{"object": d.UUID.String()}}
	})
	if err != nil || len(purged) != n-1 || steps != n-1 {
		t.Fatalf("purged %d (%d steps), want %d: %v", len(purged), steps, n-1, err)
	}
	rec := records()
	for i, obj := range objs {
		want := 1
		if i == n-1 {
			want = 0
		}
		if rec[obj.UUID.String()] != want {
			t.Errorf("object %d: %d purge records, want %d", i, rec[obj.UUID.String()], want)
		}
	}
	if _, err := s.Open(ctx, objs[n-1].ID); err != nil {
		t.Errorf("the recovered object: %v", err)
	}
	if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Errorf("audit verify: %+v %v", rep, err)
	}
}
