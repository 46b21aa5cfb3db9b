package keystore

import (
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

// TestRotateMaster: after a master key rotation every object opens under
// the new master alone, both PINs log in (their records rewrapped on the
// way), the audit chain and key backups made before still verify and
// open, and readers working through the rotation never fail. The old
// master no longer opens the keystore.
func TestRotateMaster(t *testing.T) {
	s, path := newStore(t, Options{CacheEntries: -1})
	old, _ := testRoot(t)
	ti := newToken(t, s, "master")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	pub, err := s.Put(ctx, ti.UUID, keyAttrs(t, "pub", false), []byte("public-material"))
	if err != nil {
		t.Fatal(err)
	}
	tagged, err := s.Put(ctx, ti.UUID, keyAttrs(t, "tagged", false), nil)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := s.Put(ctx, ti.UUID, keyAttrs(t, "priv", true), []byte("private-material"))
	if err != nil {
		t.Fatal(err)
	}
	gone, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "gone", false), []byte("deleted-material"))
	s.SoftDelete(ctx, gone.ID)
	auditN(t, s, 3)
	blob, err := s.SealKeyBackup(ctx, []BackupObject{{UUID: priv.UUID, Attrs: priv.Attrs, Secret: priv.Secret}})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.RotateMaster(ctx, nil); !errors.Is(err, ErrNoRotation) {
		t.Fatalf("rotate without a next master: %v", err)
	}
	next, sealed := beginMasterRotation(t, s)
	if err := s.BeginMasterRotation(ctx, &NextMaster{Sealed: sealed, Proof: next.DomainID()}); !errors.Is(err, ErrRotationPending) {
		t.Fatalf("a second rotation: %v", err)
	}
	if err := s.AttachNext(ctx, old, old.DomainID()); !errors.Is(err, ErrWrongDomain) {
		t.Fatalf("attach the wrong next master: %v", err)
	}
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, id := range []ObjectID{pub.ID, tagged.ID, priv.ID} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if _, err := s.Open(ctx, id); err != nil {
					t.Errorf("open during the rotation: %v", err)
					return
				}
				if _, err := s.Token(ctx, ti.UUID); err != nil {
					t.Errorf("token during the rotation: %v", err)
					return
				}
			}
		}()
	}
	var reports int
	oldGen, err := s.RotateMaster(ctx, func(done, total int) { reports++ })
	stop.Store(true)
	wg.Wait()
	if err != nil || oldGen != 1 || reports != 1 {
		t.Fatalf("rotate: gen %d, %d reports, %v", oldGen, reports, err)
	}
	rec, err := s.RootRecord(ctx)
	if err != nil || rec.MasterGeneration != 2 || rec.Next != nil || string(rec.Proof) != string(next.DomainID()) || string(rec.DomainID) != string(old.DomainID()) {
		t.Fatalf("root record after rotation: %+v %v", rec, err)
	}
	auditN(t, s, 2)
	if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK || rep.Records != 5 {
		t.Fatalf("audit across the rotation: %+v %v", rep, err)
	}
	// The first master key derives nothing of the new epoch: not the audit
	// key of the records after the rotation, not the key of a backup made
	// after it.
	oldAudit, _ := old.DeriveKEK(auditLabel)
	recs, _ := s.AuditRecords(ctx, 3, 0)
	r4 := auditRow{seq: recs[0].Seq, time: recs[0].Time.UnixNano(), event: recs[0].Event, prevHash: recs[0].PrevHash}
	a4, _ := json.Marshal(recs[0].Actor)
	d4, _ := json.Marshal(recs[0].Detail)
	r4.actor, r4.detail = string(a4), string(d4)
	if string(auditHash(oldAudit, &r4)) == string(recs[0].Hash) {
		t.Fatal("a record after the rotation is under the first master key's audit key")
	}
	later, err := s.SealKeyBackup(ctx, []BackupObject{{UUID: priv.UUID, Attrs: priv.Attrs, Secret: priv.Secret}})
	if err != nil {
		t.Fatal(err)
	}
	oldBackup, _ := old.DeriveKEK(keyBackupLabel)
	aead, _ := newGCM(oldBackup)
	hl := len(keyBackupMagic) + 1 + len(rec.DomainID) + 4
	if _, err := aead.Open(nil, later[hl:hl+gcmNonceLen], later[hl+gcmNonceLen:], later[:hl]); err == nil {
		t.Fatal("a backup made after the rotation opens with the first master key's backup key")
	}
	if _, err := s.OpenKeyBackup(ctx, later); err != nil {
		t.Fatalf("a backup made after the rotation: %v", err)
	}

	// A cold Store with the new master alone.
	s2, err := openAt(ctx, path, Options{Argon2: cheapArgon, CacheEntries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Attach(ctx, old, old.DomainID()); !errors.Is(err, ErrWrongDomain) {
		t.Fatalf("the old master still attaches: %v", err)
	}
	if err := s2.Attach(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Open(ctx, pub.ID); err != nil {
		t.Fatalf("public object under the new KEK: %v", err)
	}
	if _, err := s2.Open(ctx, tagged.ID); err != nil {
		t.Fatalf("tagged object under the new KEK: %v", err)
	}
	if err := s2.Login(ctx, ti.UUID, RoleUser, []byte("wrong-pin")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("wrong PIN on a legacy record: %v", err)
	}
	for _, r := range []struct {
		role Role
		pin  []byte
	}{{role: RoleUser, pin: userPIN}, {role: RoleSO, pin: soPIN}} {
		if err := s2.Login(ctx, ti.UUID, r.role, r.pin); err != nil {
			t.Fatalf("login as %v after the rotation: %v", r.role, err)
		}
	}
	got, err := s2.Open(ctx, priv.ID)
	if err != nil || string(got.Secret) != "private-material" {
		t.Fatalf("private object: %v", err)
	}
	if _, err := s2.Recover(ctx, ti.UUID, gone.UUID); err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Open(ctx, gone.ID); err != nil || string(got.Secret) != "deleted-material" {
		t.Fatalf("deleted object: %v", err)
	}
	after, err := s2.Token(ctx, ti.UUID)
	if err != nil || after.KEKGeneration != 2 || after.MasterGeneration != 2 || after.legacyPINKeys != nil {
		t.Fatalf("token after both logins: gen %d master %d legacy %v, %v", after.KEKGeneration, after.MasterGeneration, after.legacyPINKeys != nil, err)
	}
	if rep, err := s2.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("audit in a cold store: %+v %v", rep, err)
	}
	if objs, err := s2.OpenKeyBackup(ctx, blob); err != nil || string(objs[0].Secret) != "private-material" {
		t.Fatalf("key backup from before the rotation: %v", err)
	}
	// A token made after the rotation is under the new master.
	ti2, err := s2.CreateToken(ctx, TokenSpec{Label: "after", Tier: TierStandard, SOPIN: soPIN, UserPIN: userPIN})
	if err != nil || ti2.MasterGeneration != 2 {
		t.Fatalf("new token: %+v %v", ti2, err)
	}
}
