package keystore

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestFollowFakeSwitch: in the middle of a master key rotation, whoever
// writes the database edits the root record to say the domain switched
// to the next master key (its sealed key and proof are in the record from
// the rotation's beginning on). A following Store refuses to follow it
// (a TamperError, kind "keystore", what "switch"), keeps its master key
// and opens the token's key, which was never moved; CheckSwitched, what
// a starting node asks before it rewrites its row, refuses it too. With
// the record put back, the rotation finishes and the Store follows the
// real switch, which CheckSwitched takes.
func TestFollowFakeSwitch(t *testing.T) {
	a, loc := newStore(t, Options{})
	ti := newToken(t, a, "fake-switch")
	obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("never-moved-material"))
	if err != nil {
		t.Fatal(err)
	}
	b := reopen(t, loc, Options{CacheEntries: -1})
	next, _ := beginMasterRotation(t, a)
	for _, s := range []*Store{a, b} {
		if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
			t.Fatal(err)
		}
	}

	raw := rawDB(t, loc)
	var oldSealed, oldProof []byte
	if err := raw.QueryRow("SELECT sealed, coalesce(master_proof, domain_id) FROM root WHERE id = 1").Scan(&oldSealed, &oldProof); err != nil {
		t.Fatal(err)
	}
	execSQL(t, raw, `UPDATE root SET sealed = next_sealed, master_proof = next_proof, escrow = next_escrow,
		master_generation = master_generation + 1, next_sealed = NULL, next_proof = NULL, next_escrow = NULL WHERE id = 1`)
	_, err = b.FollowMaster(ctx, next, next.DomainID())
	var te *TamperError
	if !errors.As(err, &te) || te.Kind != "keystore" || te.What != "switch" {
		t.Fatalf("following a switch no rotation made: %v, want refused (switch)", err)
	}
	if g := b.MasterGeneration(); g != 1 {
		t.Fatalf("the follower is on generation %d, want 1", g)
	}
	if got, err := b.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, obj.Secret) {
		t.Fatalf("the unmoved key on the follower: %v", err)
	}

	// A starting node on the edited record.
	c, err := openAt(ctx, loc, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Attach(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckSwitched(ctx); !errors.As(err, &te) || te.What != "switch" {
		t.Fatalf("a node starting on the edited record: %v, want refused (switch)", err)
	}

	// The record put back: the rotation finishes, and b follows it.
	execSQL(t, raw, `UPDATE root SET next_sealed = sealed, next_proof = master_proof, next_escrow = escrow,
		sealed = ?, master_proof = ?, escrow = NULL, master_generation = 1 WHERE id = 1`, oldSealed, oldProof)
	if _, err := a.RotateMaster(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.FollowMaster(ctx, next, next.DomainID()); err != nil {
		t.Fatalf("following the rotation's switch: %v", err)
	}
	if g := b.MasterGeneration(); g != 2 {
		t.Fatalf("the follower is on generation %d, want 2", g)
	}
	if err := b.CheckSwitched(ctx); err != nil {
		t.Fatalf("after the rotation's switch: %v", err)
	}
	if err := b.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := b.TamperCount(ctx); err != nil || n == 0 {
		t.Fatalf("tamper.detected records: %d %v", n, err)
	}
}

// TestRotationStatePutBack: a master key rotation begun, then abandoned;
// its state in the root record (the next key, sealed by this TPM, which
// loads it still, and its proof) put back by whoever writes the database.
// RotateMaster, as `rotate master --resume` runs it, refuses the root row
// (a TamperError, kind "keystore", what "rows") before it moves any token,
// and a write of the daemon's over the row is refused too, so that none
// makes it good; put back as the daemon left it, the root row is written
// again.
func TestRotationStatePutBack(t *testing.T) {
	s, loc := newStore(t, Options{})
	c, h := newCounter(t, s)
	if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatal(err)
	}
	ti := newToken(t, s, "put-back")
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("abandoned-rotation"))
	if err != nil {
		t.Fatal(err)
	}
	next, sealed := beginMasterRotation(t, s)
	if err := s.AbortMasterRotation(ctx); err != nil {
		t.Fatal(err)
	}
	raw := rawDB(t, loc)
	execSQL(t, raw, "UPDATE root SET next_sealed = ?, next_proof = ? WHERE id = 1", sealed, next.DomainID())
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	_, err = s.RotateMaster(ctx, nil)
	var te *TamperError
	if !errors.As(err, &te) || te.Kind != "keystore" || te.What != "rows" {
		t.Fatalf("resuming an abandoned rotation put back: %v, want refused (rows)", err)
	}
	if g := s.MasterGeneration(); g != 1 {
		t.Fatalf("on generation %d after the refusal, want 1", g)
	}
	if got, err := s.TokenByID(ctx, ti.ID); err != nil || got.MasterGeneration != 1 {
		t.Fatalf("the token after the refusal: master generation %d, %v", got.MasterGeneration, err)
	}
	// (SQLite's driver keeps only the text of the anchor function's error.)
	if err := s.AbortMasterRotation(ctx); err == nil || !strings.Contains(err.Error(), "root failed authentication (rows)") {
		t.Fatalf("a write over the root row put back: %v, want refused (rows)", err)
	}
	execSQL(t, raw, "UPDATE root SET next_sealed = NULL, next_proof = NULL WHERE id = 1")
	if got, err := s.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, obj.Secret) {
		t.Fatalf("the key: %v", err)
	}
	if err := s.BeginMasterRotation(ctx, &NextMaster{Sealed: sealed, Proof: next.DomainID()}); err != nil {
		t.Fatalf("a rotation begun again once the row is as the daemon left it: %v", err)
	}
	if err := s.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.TamperCount(ctx); err != nil || n == 0 {
		t.Fatalf("tamper.detected records: %d %v", n, err)
	}
}
