package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"hsmemu/keystore"
	"hsmemu/tpmroot/escrow"
)

// TestRecoverPostgres: a domain in PostgreSQL made on node A (its own
// swtpm) with custodians, joined by node C, a token with both PINs and a
// key made on A; then both TPMs lost. Recovery onto TPM B is refused
// while A's daemon holds the database and while the nodes' heartbeats are
// recent (nothing written: B is still no node), and with one share of
// two; with two shares and the nodes declared lost it makes B the only
// node, in place: A's key opens on B, both PINs log in (a wrong one
// counted by B's TPM), B anchors in its own counter, the replacement is
// audited and the chain verifies, and B cannot be recovered onto again.
func TestRecoverPostgres(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 0, 2)
	ctx := context.Background()
	st := d.stA
	so, user := []byte("so-pin-recover-pg"), []byte("user-pin-recover-pg")
	ti, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: "vault", Tier: keystore.TierPremium, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)},
		keystore.Attribute{Type: keystore.AttrPrivate, Value: keystore.Bool(true)})
	secret := bytes.Repeat([]byte{5}, 32)
	obj, err := st.Store.Put(ctx, ti.UUID, attrs, secret)
	if err != nil {
		t.Fatal(err)
	}

	// A serves (its keystore open): recovery is refused before it opens
	// B's TPM, and B is no node after.
	cfgB := d.node(t)
	notANode := func(when string) {
		t.Helper()
		if _, err := OpenState(ctx, cfgB); !errors.Is(err, keystore.ErrNotANode) {
			t.Fatalf("B %s: %v", when, err)
		}
	}
	if _, err := RecoverPostgres(ctx, cfgB, shares, RecoverOptions{}); !errors.Is(err, ErrNodesAlive) || !strings.Contains(err.Error(), "has the keystore open") {
		t.Fatalf("recovery while A serves: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	notANode("after a refused recovery")

	// C joins; then nobody holds the database, but both nodes were seen
	// a moment ago: refused, naming them.
	cfgC := d.node(t)
	if _, err := JoinState(ctx, cfgC, shares); err != nil {
		t.Fatal(err)
	}
	_, err = RecoverPostgres(ctx, cfgB, shares, RecoverOptions{})
	if !errors.Is(err, ErrNodesAlive) || !strings.Contains(err.Error(), "node 1 (TPM") || !strings.Contains(err.Error(), "node 2 (TPM") {
		t.Fatalf("recovery with recent heartbeats: %v", err)
	}
	notANode("after a recovery refused for heartbeats")

	// Both TPMs lost.
	for _, dir := range []string{d.a.Dir, cfgC.Dir} {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := RecoverPostgres(ctx, cfgB, shares[:1], RecoverOptions{ReplaceLive: true}); !errors.Is(err, escrow.ErrNotEnoughShares) {
		t.Fatalf("recovery with one share of two: %v", err)
	}
	notANode("after a recovery with too few shares")

	res, err := RecoverPostgres(ctx, cfgB, shares, RecoverOptions{ReplaceLive: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Node != 3 || !slices.Equal(res.Replaced, []int64{1, 2}) || res.ReboundPINs != 2 || len(res.UnboundPINs) != 0 {
		t.Fatalf("recovery: %+v; want node 3 in place of 1 and 2, both PIN records bound", res)
	}
	if _, err := RecoverPostgres(ctx, cfgB, shares, RecoverOptions{ReplaceLive: true}); !errors.Is(err, ErrAlreadyProvisioned) {
		t.Fatalf("recovering onto a node: %v", err)
	}

	st, err = OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Node != 3 {
		t.Fatalf("B opened as node %d", st.Node)
	}
	nodes, err := st.Store.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].ID != 3 || nodes[0].Tampered != nil || !bytes.Equal(nodes[0].TPMID, st.TPM.SRKName()) || len(nodes[0].ImportKey) == 0 {
		t.Fatalf("nodes after recovery: %+v %v", nodes, err)
	}
	before, err := st.TPM.DAInfo()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, []byte("wrong-pin")); !errors.Is(err, keystore.ErrPINIncorrect) {
		t.Fatalf("a wrong PIN on B: %v", err)
	}
	if after, _ := st.TPM.DAInfo(); after.Counter != before.Counter+1 {
		t.Fatalf("B's TPM did not count the wrong PIN: %d, was %d", after.Counter, before.Counter)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatalf("the user's PIN on B: %v", err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleSO, so); err != nil {
		t.Fatalf("the SO's PIN on B: %v", err)
	}
	if got, err := st.Store.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, secret) {
		t.Fatalf("A's key on B: %v", err)
	}
	v, _, err := st.Counter.Value()
	if err != nil {
		t.Fatal(err)
	}
	if st.Anchor.Anchored != v {
		t.Fatalf("B anchored at %d, its TPM's counter is at %d", st.Anchor.Anchored, v)
	}
	rep, err := st.Store.VerifyAudit(ctx)
	if err != nil || !rep.OK {
		t.Fatalf("audit verify on B: %+v %v", rep, err)
	}
	recs, err := st.Store.AuditTail(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	var recovered, reset bool
	for _, r := range recs {
		switch {
		case r.Event == "node.recover":
			recovered = r.Detail["node"] == "3" && r.Detail["replaced"] == "1,2" && r.Detail["tpm"] == keystore.ShortTPMID(st.TPM.SRKName())
		case r.Event == "anchor.reset" && r.Detail["reason"] == "domain recover":
			reset = true
		}
	}
	if !recovered || !reset {
		t.Fatalf("audit after recovery: node.recover %v, anchor.reset %v\n%+v", recovered, reset, recs)
	}
}
