package daemon

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"hsmemu/internal/pgtest"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// TestJoinNodes: a domain made in PostgreSQL on node A (its own swtpm),
// joined by node B (another swtpm) with two custodians' shares. A TPM
// not joined is refused, naming `domain join`; after the join, a key
// made through A opens on B, the user's PIN logs in on B (a wrong one
// counted by B's TPM), each node anchors in its own TPM's counter, both
// nodes are listed; a PIN changed on A after the join logs in on B; a
// tampered node row takes down that node alone and is audited; a node
// leaves, the last one cannot.
func TestJoinNodes(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 0, 2)
	ctx := context.Background()
	st := d.stA
	if st.Node != 1 {
		t.Fatalf("the node that provisioned is node %d, want 1", st.Node)
	}
	srv, dsn, cfgA, cfgB := d.srv, d.dsn, d.a, d.node(t)
	so, user := []byte("so-pin-nodes"), []byte("user-pin-nodes")
	ti, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: "vault", Tier: keystore.TierPremium, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)},
		keystore.Attribute{Type: keystore.AttrPrivate, Value: keystore.Bool(true)})
	secret := bytes.Repeat([]byte{7}, 32)
	obj, err := st.Store.Put(ctx, ti.UUID, attrs, secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// B's TPM is no node yet: refused, and told how to join.
	_, err = OpenState(ctx, cfgB)
	if !errors.Is(err, keystore.ErrNotANode) || !errors.Is(err, tpmroot.ErrWrongTPM) || !strings.Contains(err.Error(), "hsmemu domain join") {
		t.Fatalf("a TPM not joined: %v", err)
	}

	res, err := JoinState(ctx, cfgB, shares[:1])
	if !errors.Is(err, escrow.ErrNotEnoughShares) {
		t.Fatalf("join with one share of two: %v", err)
	}
	res, err = JoinState(ctx, cfgB, shares)
	if err != nil {
		t.Fatal(err)
	}
	if res.Node != 2 || res.BoundPINs != 2 || len(res.UnboundPINs) != 0 {
		t.Fatalf("join: %+v; want node 2, 2 PIN records bound", res)
	}
	if _, err := JoinState(ctx, cfgB, shares); !errors.Is(err, ErrAlreadyProvisioned) {
		t.Fatalf("joining twice: %v", err)
	}

	// On B: A's key opens, the user's PIN logs in, counted by B's TPM.
	st, err = OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != 2 || st.Store.LocalNode() != 2 {
		t.Fatalf("B opened as node %d", st.Node)
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
	nodes, err := st.Store.Nodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0].ID != 1 || nodes[1].ID != 2 || nodes[0].Tampered != nil || nodes[1].Tampered != nil {
		t.Fatalf("nodes on B: %+v %v", nodes, err)
	}
	if bytes.Equal(nodes[0].TPMID, nodes[1].TPMID) || !bytes.Equal(nodes[1].TPMID, st.TPM.SRKName()) || len(nodes[1].ImportKey) == 0 {
		t.Fatalf("node rows: %x %x", nodes[0].TPMID, nodes[1].TPMID)
	}
	var ik tpmroot.ImportKey
	if err := ik.UnmarshalBinary(nodes[1].ImportKey); err != nil {
		t.Fatalf("B's import key: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Back on A, after B's writes: A checks its own counter and opens;
	// its PINs log in through its own seal.
	st, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatalf("A after B served: %v", err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatalf("the user's PIN on A: %v", err)
	}
	// A PIN changed on A after B joined reaches B as a duplication blob
	// to B's import key (TestNodePINDuplicates has the rest).
	newUser := []byte("user-pin-nodes-2")
	if err := st.Store.SetPIN(ctx, ti.UUID, keystore.RoleUser, user, newUser); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, newUser); err != nil {
		t.Fatalf("a PIN changed on A, on B: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// B's row edited (one bit of its joined time): B does not start; A
	// does, lists B as tampered and records it.
	// B's row as it is, kept outside the keystore's schema, to be put
	// back once B has left.
	if err := srv.Psql(pgtest.DBName(dsn), "CREATE SCHEMA kept; CREATE TABLE kept.node AS SELECT * FROM nodes WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Psql(pgtest.DBName(dsn), "UPDATE nodes SET joined_at = joined_at # 1 WHERE id = 2"); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenState(ctx, cfgB); !errors.Is(err, keystore.ErrTampered) || !strings.Contains(err.Error(), "this node's row") {
		t.Fatalf("B on its tampered row: %v", err)
	}
	st, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatalf("A beside B's tampered row: %v", err)
	}
	nodes, err = st.Store.Nodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0].Tampered != nil || !errors.Is(nodes[1].Tampered, keystore.ErrTampered) {
		t.Fatalf("nodes on A: %+v %v", nodes, err)
	}
	if err := st.Store.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := st.Store.AuditTail(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		if r.Event == "tamper.detected" && r.Detail["kind"] == "node" && r.Detail["uuid"] == "row 2" {
			found = true
		}
	}
	if !found {
		t.Fatal("no tamper.detected record of node 2")
	}

	// B leaves; A, the last node, cannot.
	if err := st.Store.RemoveNode(ctx, adminActor(), 2); err != nil {
		t.Fatal(err)
	}
	if err := st.Store.RemoveNode(ctx, adminActor(), 1); !errors.Is(err, keystore.ErrLastNode) {
		t.Fatalf("the last node leaving: %v", err)
	}
	if nodes, err := st.Store.Nodes(ctx); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes after B left: %+v %v", nodes, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenState(ctx, cfgB); !errors.Is(err, keystore.ErrNotANode) {
		t.Fatalf("B after it left: %v", err)
	}
	// B's row put back, its MAC whole: B stays out, A serves on.
	if err := srv.Psql(pgtest.DBName(dsn), "INSERT INTO nodes SELECT * FROM kept.node"); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenState(ctx, cfgB); !errors.Is(err, keystore.ErrTampered) || !strings.Contains(err.Error(), "this node's row") {
		t.Fatalf("B on its row put back after it left: %v", err)
	}
	st, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatalf("A beside B's row put back: %v", err)
	}
	defer st.Close()
	nodes, err = st.Store.Nodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0].Tampered != nil || keystore.TamperWhat(nodes[1].Tampered) != "left" {
		t.Fatalf("nodes on A with B's row put back: %+v %v", nodes, err)
	}
}
