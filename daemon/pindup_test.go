package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"hsmemu/keystore"
)

// TestNodePINDuplicates: PIN records written on node A after node B
// joined (a user PIN change, the SO setting the user PIN) log in on B
// through the duplication blobs A made for B's import key, and the old
// PIN does not; a wrong PIN tried on B through a blob is counted by B's
// TPM and in the token's shared count, which A sees. B's blob altered in
// the database, or removed, fails B's check closed (ErrTampered,
// ErrPINNotOnNode; CKR_DEVICE_ERROR through the daemon), recorded in the
// audit log, with no failure counted, while the token's other role on B
// and the PIN on A keep working.
func TestNodePINDuplicates(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 0, 1)
	ctx := context.Background()
	dsn, stA := d.dsn, d.stA
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cfgA, cfgB := d.a, d.node(t)
	// Every login on B presents its PIN to B's binding: none is answered
	// from the PIN cache.
	cfgB.Store.PINCacheTTL = -1

	so, user := []byte("so-pin-dup"), []byte("user-pin-dup")
	ti, err := stA.Store.CreateToken(ctx, keystore.TokenSpec{Label: "dup", Tier: keystore.TierStandard, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	if err := stA.Close(); err != nil {
		t.Fatal(err)
	}
	if res, err := JoinState(ctx, cfgB, shares); err != nil || res.Node != 2 {
		t.Fatalf("join: %+v %v", res, err)
	}
	stA, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	defer stA.Close()
	stB, err := OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	A, B := stA.Store, stB.Store

	// What pin_bindings holds for B's binding of the user PIN.
	bSeal := func() []byte {
		t.Helper()
		var seal []byte
		if err := db.QueryRowContext(ctx, "SELECT seal FROM pin_bindings WHERE token_id = $1 AND role = 1 AND node_id = 2", ti.ID).Scan(&seal); err != nil {
			t.Fatalf("B's binding of the user PIN: %v", err)
		}
		return seal
	}
	failures := func(s *keystore.Store) int {
		t.Helper()
		info, err := s.TokenByID(ctx, ti.ID)
		if err != nil {
			t.Fatal(err)
		}
		return int(info.UserFailures)
	}
	daB := func() uint32 {
		t.Helper()
		info, err := stB.TPM.DAInfo()
		if err != nil {
			t.Fatal(err)
		}
		return info.Counter
	}
	audited := func(s *keystore.Store, event string, match func(map[string]string) bool) bool {
		t.Helper()
		if err := s.AuditTamper(ctx); err != nil {
			t.Fatal(err)
		}
		recs, err := s.AuditTail(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Event == event && match(r.Detail) {
				return true
			}
		}
		return false
	}

	// A changes the user PIN after B joined: B logs in with the new PIN
	// through A's blob, the old one is wrong there, counted by B's TPM and
	// in the token's count, which A reads.
	pin2 := []byte("user-pin-dup-2")
	if err := A.SetPIN(ctx, ti.UUID, keystore.RoleUser, user, pin2); err != nil {
		t.Fatal(err)
	}
	if s := bSeal(); string(s[:4]) != "HSPB" {
		t.Fatalf("B's binding after A's change is %q..., not a duplication blob", s[:4])
	}
	da := daB()
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, user); !errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("the old PIN on B: %v, want ErrPINIncorrect", err)
	}
	if got := daB(); got != da+1 {
		t.Fatalf("B's TPM counted %d, want %d", got, da+1)
	}
	if n := failures(A); n != 1 {
		t.Fatalf("A reads %d user failures after one on B", n)
	}
	if err := A.Login(ctx, ti.UUID, keystore.RoleUser, []byte("wrong on A")); !errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("a wrong PIN on A: %v", err)
	}
	if n := failures(B); n != 2 {
		t.Fatalf("B reads %d user failures after one on each node, want 2", n)
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin2); err != nil {
		t.Fatalf("the new PIN on B: %v", err)
	}
	if n := failures(A); n != 0 {
		t.Fatalf("a login on B left %d failures", n)
	}
	// B kept its own seal of the record in place of the blob.
	if s := bSeal(); string(s[:4]) != "HSPN" {
		t.Fatalf("B's binding after its first login is %q..., not its own seal", s[:4])
	}
	B.Logout(ti.UUID)
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin2); err != nil {
		t.Fatalf("the new PIN on B through its own seal: %v", err)
	}
	if err := A.Login(ctx, ti.UUID, keystore.RoleUser, user); !errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("the old PIN on A: %v", err)
	}

	// B's own seal of the SO's record (made at its join) moved into its
	// binding of the user's: the object loads in B's TPM, so the right
	// user PIN, meeting the SO's authorisation, would count as wrong, in
	// the count every node shares and by B's TPM. B finds the row is not
	// the one it wrote, before the PIN is presented, and records it.
	kept := bSeal()
	B.Logout(ti.UUID)
	if _, err := db.ExecContext(ctx, "UPDATE pin_bindings SET seal = (SELECT seal FROM pin_bindings WHERE token_id = $1 AND role = 0 AND node_id = 2) WHERE token_id = $1 AND role = 1 AND node_id = 2", ti.ID); err != nil {
		t.Fatal(err)
	}
	da, f := daB(), failures(A)
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin2); !errors.Is(err, keystore.ErrTampered) || keystore.TamperWhat(err) != "rows" {
		t.Fatalf("the user PIN on B against the SO's seal: %v, want ErrTampered (rows)", err)
	}
	if n := failures(A); n != f || daB() != da {
		t.Fatalf("a moved seal counted: %d failures, B's TPM %d (was %d)", n, daB(), da)
	}
	if !audited(B, "tamper.detected", func(d map[string]string) bool { return d["kind"] == "pin binding" && d["what"] == "rows" }) {
		t.Fatal("no tamper.detected record of B's moved seal")
	}
	if _, err := db.ExecContext(ctx, "UPDATE pin_bindings SET seal = $2 WHERE token_id = $1 AND role = 1 AND node_id = 2", ti.ID, kept); err != nil {
		t.Fatal(err)
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin2); err != nil {
		t.Fatalf("the user PIN on B, its seal put back: %v", err)
	}

	// The SO sets the user PIN on A: it logs in on B.
	pin3 := []byte("user-pin-dup-3")
	if err := A.Login(ctx, ti.UUID, keystore.RoleSO, so); err != nil {
		t.Fatal(err)
	}
	if err := A.InitPIN(ctx, ti.UUID, pin3); err != nil {
		t.Fatal(err)
	}
	A.Logout(ti.UUID)
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin3); err != nil {
		t.Fatalf("the PIN the SO set on A, on B: %v", err)
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin2); !errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("the PIN the SO replaced, on B: %v", err)
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, pin3); err != nil {
		t.Fatal(err)
	}

	// B's blob altered (one bit of its body): B refuses it before any PIN
	// is tried, and records it; A and B's SO are unaffected.
	pin4 := []byte("user-pin-dup-4")
	if err := A.SetPIN(ctx, ti.UUID, keystore.RoleUser, pin3, pin4); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "UPDATE pin_bindings SET seal = set_byte(seal, 100, get_byte(seal, 100) # 1) WHERE token_id = $1 AND role = 1 AND node_id = 2", ti.ID); err != nil {
		t.Fatal(err)
	}
	da = daB()
	err = B.Login(ctx, ti.UUID, keystore.RoleUser, pin4)
	if !errors.Is(err, keystore.ErrTampered) || errors.Is(err, keystore.ErrPINIncorrect) || keystore.TamperWhat(err) == "" {
		t.Fatalf("an altered blob on B: %v, want ErrTampered", err)
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleUser, []byte("wrong and altered")); !errors.Is(err, keystore.ErrTampered) {
		t.Fatalf("a wrong PIN against an altered blob: %v, want ErrTampered", err)
	}
	if n := failures(A); n != 0 || daB() != da {
		t.Fatalf("an altered blob counted: %d failures, B's TPM %d (was %d)", n, daB(), da)
	}
	if !audited(B, "tamper.detected", func(d map[string]string) bool { return d["kind"] == "pin binding" && d["uuid"] == ti.UUID.String() }) {
		t.Fatal("no tamper.detected record of B's altered blob")
	}
	if err := B.Login(ctx, ti.UUID, keystore.RoleSO, so); err != nil {
		t.Fatalf("the SO on B beside an altered user blob: %v", err)
	}
	B.Logout(ti.UUID)
	if err := A.Login(ctx, ti.UUID, keystore.RoleUser, pin4); err != nil {
		t.Fatalf("the user's PIN on A beside B's altered blob: %v", err)
	}
	if info, err := B.TokenByID(ctx, ti.ID); err != nil || info.Tampered != nil {
		t.Fatalf("the token on B: %+v %v", info, err)
	}

	// B's blob removed: B says it holds no binding, records it, counts
	// nothing.
	pin5 := []byte("user-pin-dup-5")
	if err := A.SetPIN(ctx, ti.UUID, keystore.RoleUser, pin4, pin5); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM pin_bindings WHERE token_id = $1 AND role = 1 AND node_id = 2", ti.ID); err != nil {
		t.Fatal(err)
	}
	da = daB()
	err = B.Login(ctx, ti.UUID, keystore.RoleUser, pin5)
	if !errors.Is(err, keystore.ErrPINNotOnNode) || errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("a missing blob on B: %v, want ErrPINNotOnNode", err)
	}
	if n := failures(A); n != 0 || daB() != da {
		t.Fatalf("a missing blob counted: %d failures, B's TPM %d (was %d)", n, daB(), da)
	}
	if !audited(B, "pin.unbound", func(d map[string]string) bool {
		return d["token"] == ti.UUID.String() && d["role"] == keystore.RoleUser.String() && d["node"] == "2"
	}) {
		t.Fatal("no pin.unbound record of B's missing binding")
	}
	if err := A.Login(ctx, ti.UUID, keystore.RoleUser, pin5); err != nil {
		t.Fatalf("the user's PIN on A: %v", err)
	}
}

// TestNodePINJoinWhileWriting: node A changes the user PIN over and over
// while node B joins; every change is committed either before B's row
// (B binds it from its recovery copy) or after (A makes B's blob), so the
// last PIN logs in on B whatever the interleaving.
func TestNodePINJoinWhileWriting(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 1, 2)
	ctx := context.Background()
	stA := d.stA
	defer stA.Close()
	cfgB := d.node(t)
	pin := []byte("user-pin-0")
	ti, err := stA.Store.CreateToken(ctx, keystore.TokenSpec{Label: "race", Tier: keystore.TierStandard, SOPIN: []byte("so-pin-race"), UserPIN: pin})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan error, 1)
	changes := 0
	go func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			next := []byte(fmt.Sprintf("user-pin-%d", i))
			if err := stA.Store.SetPIN(ctx, ti.UUID, keystore.RoleUser, pin, next); err != nil {
				done <- fmt.Errorf("change %d: %w", i, err)
				return
			}
			pin, changes = next, i
		}
	}()
	res, err := JoinState(ctx, cfgB, shares)
	close(stop)
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if changes == 0 {
		t.Fatal("no PIN change ran while B joined")
	}
	t.Logf("%d PIN changes on A while B joined (%d records bound at the join)", changes, res.BoundPINs)
	stB, err := OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer stB.Close()
	if err := stB.Store.Login(ctx, ti.UUID, keystore.RoleUser, pin); err != nil {
		t.Fatalf("the last of %d PINs set on A during the join, on B: %v", changes, err)
	}
}
