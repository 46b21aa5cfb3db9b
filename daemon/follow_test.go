package daemon

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

// TestFollowMasterRotation: node B serves while node A rotates the master
// key. First with B following (RunMasterFollow) and reading a private and
// a public key in a loop throughout: no read fails, B's login holds, B
// takes the next key when the rotation begins and makes it its own at
// the switch (its row rewritten, its copy gone), audits under the new
// epoch, and starts again from its row alone. Then with B idle, its
// follower not running, through a second rotation: B's next audit
// append finds the chain moved, takes its copy of the new key there and
// then, and appends under it; its keys open, its login still holds; the
// chain verifies from both nodes.
func TestFollowMasterRotation(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 0, 1)
	ctx := context.Background()
	stA := d.stA
	so, user := []byte("so-pin-follow"), []byte("user-pin-follow")
	ti, err := stA.Store.CreateToken(ctx, keystore.TokenSpec{Label: "follow", Tier: keystore.TierStandard, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	if err := stA.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	put := func(st *State, private bool, secret []byte) keystore.ObjectID {
		t.Helper()
		attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)},
			keystore.Attribute{Type: keystore.AttrPrivate, Value: keystore.Bool(private)})
		obj, err := st.Store.Put(ctx, ti.UUID, attrs, secret)
		if err != nil {
			t.Fatal(err)
		}
		return obj.ID
	}
	want := map[keystore.ObjectID][]byte{}
	priv, pub := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	want[put(stA, true, priv)] = priv
	want[put(stA, false, pub)] = pub
	if err := stA.Close(); err != nil {
		t.Fatal(err)
	}
	cfgB := d.node(t)
	if res, err := JoinState(ctx, cfgB, shares); err != nil || res.Node != 2 {
		t.Fatalf("join B: %+v %v", res, err)
	}
	if stA, err = OpenState(ctx, d.a); err != nil {
		t.Fatal(err)
	}
	defer stA.Close()
	stB, err := OpenState(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { stB.Close() }()
	if err := stB.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	reads := func(st *State) error {
		for id, w := range want {
			o, err := st.Store.Open(ctx, id)
			if err != nil {
				return err
			}
			if !bytes.Equal(o.Secret, w) {
				t.Errorf("object %d on B: wrong secret", id)
			}
		}
		return nil
	}
	// waitGen waits for st's keystore to be on master generation gen.
	waitGen := func(st *State, gen uint32) {
		t.Helper()
		for end := time.Now().Add(30 * time.Second); st.Store.MasterGeneration() != gen; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("B still on master generation %d, want %d", st.Store.MasterGeneration(), gen)
			}
		}
	}
	copies := func(gen uint32) int {
		t.Helper()
		_, _, err := stA.Store.NodeMaster(ctx, 2, gen)
		if err == nil {
			return 1
		}
		return 0
	}

	// 1. B following, and reading, all through A's rotation.
	fctx, stopFollow := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		stB.RunMasterFollow(fctx, 20*time.Millisecond)
	}()
	var n atomic.Int64
	var readErr atomic.Pointer[error]
	go func() {
		defer wg.Done()
		for fctx.Err() == nil {
			if err := reads(stB); err != nil {
				readErr.CompareAndSwap(nil, &err)
			}
			n.Add(1)
		}
	}()
	gen, _, err := stA.BeginMasterRotation(ctx, d.esc)
	if err != nil || gen != 2 {
		t.Fatalf("begin: %d %v", gen, err)
	}
	if _, err := stA.FinishMasterRotation(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitGen(stB, 2)
	// The step that switched ends before the follower stops.
	stB.followMu.Lock()
	stopFollow()
	stB.followMu.Unlock()
	wg.Wait()
	if p := readErr.Load(); p != nil {
		t.Fatalf("a read on B during the rotation on A failed (%d rounds): %v", n.Load(), *p)
	}
	if n.Load() == 0 {
		t.Fatal("B read nothing")
	}
	if err := reads(stB); err != nil {
		t.Fatalf("B after following: %v", err)
	}
	if _, err := stB.Store.Audit(ctx, adminActor(), "test.after", nil); err != nil {
		t.Fatalf("B's audit append under the new epoch: %v", err)
	}
	nodes, err := stB.Store.Nodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	var sealedB tpmroot.Sealed
	if err := sealedB.UnmarshalBinary(nodes[1].Sealed); err != nil || sealedB.Version != tpmroot.SealedImportedVersion {
		t.Fatalf("B's row holds a sealed key of version %d (%v), want its imported copy", sealedB.Version, err)
	}
	if copies(2) != 0 {
		t.Fatal("B's copy of the new master key still there after B took it")
	}
	// Taking its copy while serving is recorded as a start's is.
	if !nodeMasterRecorded(t, stA, 2, 2) {
		t.Fatal("no node.master record of B taking its copy while it served")
	}
	if err := stB.Close(); err != nil {
		t.Fatal(err)
	}
	if stB, err = OpenState(ctx, cfgB); err != nil {
		t.Fatalf("B again, from its row: %v", err)
	}
	if stB.nodeCatchUp != nil {
		t.Fatal("B imported a copy at its start: its row was not rewritten")
	}
	if err := stB.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	if err := reads(stB); err != nil {
		t.Fatalf("B restarted: %v", err)
	}

	// 2. B idle, its follower not running, through a second rotation.
	if gen, _, err = stA.BeginMasterRotation(ctx, d.esc); err != nil || gen != 3 {
		t.Fatalf("begin: %d %v", gen, err)
	}
	if _, err := stA.FinishMasterRotation(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if g := stB.Store.MasterGeneration(); g != 2 {
		t.Fatalf("idle B on generation %d before its next append, want 2", g)
	}
	if _, err := stB.Store.Audit(ctx, adminActor(), "test.idle", nil); err != nil {
		t.Fatalf("B's first append after a rotation it did not see: %v", err)
	}
	if g := stB.Store.MasterGeneration(); g != 3 {
		t.Fatalf("B on generation %d after its append, want 3", g)
	}
	if err := reads(stB); err != nil {
		t.Fatalf("B after taking the key at its append (its login kept): %v", err)
	}
	if !nodeMasterRecorded(t, stB, 2, 3) {
		t.Fatal("no node.master record of B taking its copy")
	}
	for name, st := range map[string]*State{"A": stA, "B": stB} {
		rep, err := st.Store.VerifyAudit(ctx)
		if err != nil || !rep.OK {
			t.Fatalf("audit verify from %s: %+v %v", name, rep, err)
		}
	}
}

// nodeMasterRecorded reports whether the last records of the audit log,
// read through st, hold node's node.master record of generation gen.
func nodeMasterRecorded(t *testing.T, st *State, node, gen int) bool {
	t.Helper()
	recs, err := st.Store.AuditTail(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Event == "node.master" && r.Detail["node"] == strconv.Itoa(node) && r.Detail["generation"] == strconv.Itoa(gen) {
			return true
		}
	}
	return false
}
