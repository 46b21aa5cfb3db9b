package daemon

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"hsmemu/internal/pgtest"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

// TestNodeMasterRotation: node A rotates the master key while node B is
// stopped; B starts on its own, from the copy the rotation left for its
// import key: a key made before the rotation and one made after open on
// B, the user's PIN logs in, B's row holds the imported key (and B starts
// from it again), and the copy is gone. A second rotation: B's copy with
// its MAC altered refuses B's start, recorded as tamper; with its body
// altered, B's TPM refuses it; put back, B starts. A node that published
// no import key gets no copy and is told to join again. A third
// rotation, begun on A and left unfinished, is finished by B from its
// copy of the next master key; both nodes start on the result.
func TestNodeMasterRotation(t *testing.T) {
	t.Parallel()
	d, shares := newNodeDomain(t, 0, 1)
	srv, dsn, stA := d.srv, d.dsn, d.stA
	ctx := context.Background()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	psql := func(q string) {
		t.Helper()
		if err := srv.Psql(pgtest.DBName(dsn), q); err != nil {
			t.Fatal(err)
		}
	}
	copies := func(node int64) int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM node_masters WHERE node_id = $1", node).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	cfgA, cfgB, cfgC := d.a, d.node(t), d.node(t)
	esc := d.esc

	so, user := []byte("so-pin-mdup"), []byte("user-pin-mdup")
	ti, err := stA.Store.CreateToken(ctx, keystore.TokenSpec{Label: "mdup", Tier: keystore.TierPremium, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	put := func(st *State, secret []byte) keystore.ObjectID {
		t.Helper()
		st.Store.Logout(ti.UUID)
		if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
			t.Fatal(err)
		}
		attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)},
			keystore.Attribute{Type: keystore.AttrPrivate, Value: keystore.Bool(true)})
		obj, err := st.Store.Put(ctx, ti.UUID, attrs, secret)
		if err != nil {
			t.Fatal(err)
		}
		return obj.ID
	}
	before, after := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	objBefore := put(stA, before)
	if err := stA.Close(); err != nil {
		t.Fatal(err)
	}
	if res, err := JoinState(ctx, cfgB, shares); err != nil || res.Node != 2 {
		t.Fatalf("join B: %+v %v", res, err)
	}

	// C: a node that published no import key (its TPM holds the master
	// key, recreated from the shares).
	specC, err := cfgC.tpmSpec()
	if err != nil {
		t.Fatal(err)
	}
	tpmC, err := tpmroot.Open(ctx, specC)
	if err != nil {
		t.Fatal(err)
	}
	sealedC, err := tpmC.Recover(shares)
	if err != nil {
		t.Fatal(err)
	}
	srkC := tpmC.SRKName()
	if err := tpmC.Close(); err != nil {
		t.Fatal(err)
	}
	encC, err := sealedC.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}

	// The rotation, on A, with B and C stopped.
	var objAfter keystore.ObjectID
	rotate := func(want uint32) {
		t.Helper()
		st, err := OpenState(ctx, cfgA)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if want == 2 {
			if _, err := st.Store.AddNode(ctx, keystore.NodeSpec{TPMID: srkC, Sealed: encC}); err != nil {
				t.Fatal(err)
			}
		}
		gen, _, err := st.BeginMasterRotation(ctx, esc)
		if err != nil || gen != want {
			t.Fatalf("begin: %d %v", gen, err)
		}
		if n := copies(2); n != 1 {
			t.Fatalf("B has %d copies of the next master key, want 1", n)
		}
		if n := copies(3); n != 0 {
			t.Fatalf("C, without an import key, has %d copies", n)
		}
		if _, err := st.FinishMasterRotation(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if want == 2 {
			objAfter = put(st, after)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rotate(2)

	// B starts alone on the new master key.
	serves := func(st *State) {
		t.Helper()
		if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
			t.Fatalf("the user's PIN on B: %v", err)
		}
		for id, want := range map[keystore.ObjectID][]byte{objBefore: before, objAfter: after} {
			if got, err := st.Store.Open(ctx, id); err != nil || !bytes.Equal(got.Secret, want) {
				t.Fatalf("object %d on B: %v", id, err)
			}
		}
	}
	stB, err := OpenState(ctx, cfgB)
	if err != nil {
		t.Fatalf("B after a rotation on A: %v", err)
	}
	serves(stB)
	nodes, err := stB.Store.Nodes(ctx)
	if err != nil || len(nodes) != 3 || nodes[1].Tampered != nil {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	var sealedB tpmroot.Sealed
	if err := sealedB.UnmarshalBinary(nodes[1].Sealed); err != nil || sealedB.Version != tpmroot.SealedImportedVersion {
		t.Fatalf("B's row holds a sealed key of version %d (%v), want the imported one", sealedB.Version, err)
	}
	if n := copies(2); n != 0 {
		t.Fatalf("B's copy still there after B took it: %d", n)
	}
	recs, err := stB.Store.AuditTail(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		found = found || (r.Event == "node.master" && r.Detail["node"] == "2" && r.Detail["generation"] == "2")
	}
	if !found {
		t.Fatal("no node.master record of B taking the new master key")
	}
	if err := stB.Close(); err != nil {
		t.Fatal(err)
	}
	// Again, from its row alone.
	if stB, err = OpenState(ctx, cfgB); err != nil {
		t.Fatalf("B again: %v", err)
	}
	serves(stB)
	if err := stB.Close(); err != nil {
		t.Fatal(err)
	}

	// C got no copy: told to join again.
	_, err = OpenState(ctx, cfgC)
	if !errors.Is(err, tpmroot.ErrWrongTPM) || !strings.Contains(err.Error(), "left no copy") || !strings.Contains(err.Error(), "hsmemu domain join") {
		t.Fatalf("C after the rotation: %v", err)
	}

	// A second rotation: B's copy altered.
	rotate(3)
	psql("UPDATE node_masters SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1) WHERE node_id = 2")
	_, err = OpenState(ctx, cfgB)
	if !errors.Is(err, keystore.ErrTampered) || !strings.Contains(err.Error(), "failed its integrity check") || !strings.Contains(err.Error(), "hsmemu domain join") {
		t.Fatalf("B on a copy with its MAC altered: %v", err)
	}
	if n := copies(2); n != 1 {
		t.Fatalf("B's refused copy: %d rows, want it left", n)
	}
	stA, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	recs, err = stA.Store.AuditTail(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	found = false
	for _, r := range recs {
		found = found || (r.Event == "tamper.detected" && r.Detail["kind"] == "node master" && r.Detail["uuid"] == "node 2 generation 3")
	}
	if !found {
		t.Fatal("no tamper.detected record of B's altered copy")
	}
	if err := stA.Close(); err != nil {
		t.Fatal(err)
	}
	psql("UPDATE node_masters SET mac = set_byte(mac, 0, get_byte(mac, 0) # 1) WHERE node_id = 2")
	psql("UPDATE node_masters SET blob = set_byte(blob, 100, get_byte(blob, 100) # 1) WHERE node_id = 2")
	_, err = OpenState(ctx, cfgB)
	if !errors.Is(err, tpmroot.ErrMasterDupRefused) || !errors.Is(err, tpmroot.ErrWrongTPM) || !strings.Contains(err.Error(), "hsmemu domain join") {
		t.Fatalf("B on a copy with its body altered: %v", err)
	}
	psql("UPDATE node_masters SET blob = set_byte(blob, 100, get_byte(blob, 100) # 1) WHERE node_id = 2")
	if stB, err = OpenState(ctx, cfgB); err != nil {
		t.Fatalf("B on its copy put back: %v", err)
	}
	serves(stB)
	if err := stB.Close(); err != nil {
		t.Fatal(err)
	}

	// A rotation begun on A and left there: B finishes it from its copy
	// of the next master key, which A's TPM alone would load otherwise.
	stA, err = OpenState(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	if gen, _, err := stA.BeginMasterRotation(ctx, esc); err != nil || gen != 4 {
		t.Fatalf("begin on A: %d %v", gen, err)
	}
	if err := stA.Close(); err != nil {
		t.Fatal(err)
	}
	if stB, err = OpenState(ctx, cfgB); err != nil {
		t.Fatalf("B while a rotation begun on A is under way: %v", err)
	}
	if gen, err := stB.FinishMasterRotation(ctx, nil); err != nil || gen != 4 {
		t.Fatalf("B finishing A's rotation: %d %v", gen, err)
	}
	serves(stB)
	if n := copies(2); n != 0 {
		t.Fatalf("B's copy still there after B finished the rotation with it: %d", n)
	}
	if err := stB.Close(); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []StateConfig{cfgB, cfgA} {
		st, err := OpenState(ctx, cfg)
		if err != nil {
			t.Fatalf("%s after the rotation B finished: %v", cfg.Dir, err)
		}
		if rec, err := st.Store.RootRecord(ctx); err != nil || rec.MasterGeneration != 4 || rec.Next != nil {
			t.Fatalf("root record: %+v %v", rec, err)
		}
		serves(st)
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
