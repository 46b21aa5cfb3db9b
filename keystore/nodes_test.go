package keystore

import (
	"bytes"
	"errors"
	"testing"
)

// fakeTPMID is an SRK name for a node of the tests: the keystore only
// stores and compares it.
func fakeTPMID(b byte) []byte { return append([]byte{0, 0x0b}, bytes.Repeat([]byte{b}, 32)...) }

// TestNodesAnchorPerNode: node 1 adopts the root record's key; node 2
// is added and anchors in a counter of its own, with a reset. Each node
// checks only its own counter: writes and anchors on node 2 do not make
// node 1 look rolled back, and a copy of the keystore put back after
// node 2 anchored again is refused by node 2 and accepted by node 1,
// whose counter did not move since. A heartbeat keeps the row's MAC.
func TestNodesAnchorPerNode(t *testing.T) {
	t.Parallel()
	s1, loc := newStore(t, Options{})
	id1, adopted, err := s1.AdoptNode(ctx, fakeTPMID(1), []byte("import key 1"))
	if err != nil || !adopted || id1 != 1 {
		t.Fatalf("adopt: %d %v %v", id1, adopted, err)
	}
	if _, again, err := s1.AdoptNode(ctx, fakeTPMID(1), nil); err != nil || again {
		t.Fatalf("adopting twice: %v %v", again, err)
	}
	if err := s1.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	c1, h1 := newCounter(t, s1)
	if _, err := s1.AttachAnchor(ctx, c1, AnchorOptions{Handle: h1}); err != nil {
		t.Fatal(err)
	}
	rec, err := s1.RootRecord(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s1.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("import key 2")})
	if err != nil || id2 != 2 {
		t.Fatalf("add node: %d %v", id2, err)
	}
	if _, err := s1.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed}); err == nil {
		t.Fatal("a TPM added twice")
	}
	// A join that fails half way takes its row back.
	id3, err := s1.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(3), Sealed: rec.Sealed})
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.ForgetNode(ctx, id3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s1.NodeSealed(ctx, fakeTPMID(3)); !errors.Is(err, ErrNotANode) {
		t.Fatalf("a node forgotten: %v", err)
	}
	ti := newToken(t, s1, "n")
	if _, err := s1.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s1.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	s1.Close()

	// Node 2: its first anchor, in its own counter, then writes.
	s2 := reopen(t, loc, Options{})
	if id, sealed, err := s2.NodeSealed(ctx, fakeTPMID(2)); err != nil || id != id2 || !bytes.Equal(sealed, rec.Sealed) {
		t.Fatalf("node 2's row: %d %v", id, err)
	}
	if _, _, err := s2.NodeSealed(ctx, fakeTPMID(3)); !errors.Is(err, ErrNotANode) {
		t.Fatalf("a TPM with no row: %v", err)
	}
	if err := s2.AttachNode(ctx, id2); err != nil {
		t.Fatal(err)
	}
	c2, h2 := newCounter(t, s2)
	rep, err := s2.AttachAnchor(ctx, c2, AnchorOptions{Handle: h2, Reset: "domain join"})
	if err != nil || !rep.Reset {
		t.Fatalf("node 2's first anchor: %+v %v", rep, err)
	}
	if v, _, _ := c2.Value(); rep.Anchored != v {
		t.Fatalf("node 2 anchored at %d, its counter is at %d", rep.Anchored, v)
	}
	if err := s2.Login(ctx, ti.UUID, RoleUser, []byte("wrong-pin-0")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	if did, err := s2.Anchor(ctx); err != nil || !did {
		t.Fatalf("node 2 anchors: %v %v", did, err)
	}
	nodes, err := s2.Nodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0].Tampered != nil || nodes[1].Tampered != nil || !bytes.Equal(nodes[1].ImportKey, []byte("import key 2")) {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	s2.Close()

	// Node 1 after node 2's writes: its own counter, not behind.
	s1 = reopen(t, loc, Options{})
	if err := s1.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.AttachAnchor(ctx, c1, AnchorOptions{Handle: h1}); err != nil {
		t.Fatalf("node 1 after node 2 wrote: %v", err)
	}
	s1.Close()

	// A copy; then node 2 writes and anchors again; the copy put back:
	// node 2 finds it behind its counter, node 1, whose counter did not
	// move since, takes it.
	old := copyKeystore(t, loc)
	s2 = reopen(t, loc, Options{})
	if err := s2.AttachNode(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.AttachAnchor(ctx, c2, AnchorOptions{Handle: h2}); err != nil {
		t.Fatal(err)
	}
	if err := s2.Login(ctx, ti.UUID, RoleUser, []byte("wrong-pin-0")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	if did, err := s2.Anchor(ctx); err != nil || !did {
		t.Fatalf("node 2 anchors again: %v %v", did, err)
	}
	s2.Close()
	putBack(t, old, loc)
	s2 = reopen(t, loc, Options{})
	if err := s2.AttachNode(ctx, id2); err != nil {
		t.Fatal(err)
	}
	var re *RollbackError
	if _, err := s2.AttachAnchor(ctx, c2, AnchorOptions{Handle: h2}); !errors.As(err, &re) || re.What != "behind" || re.Behind != 1 {
		t.Fatalf("node 2 on the older copy: %v", err)
	}
	s2.Close()
	s1 = reopen(t, loc, Options{})
	if err := s1.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.AttachAnchor(ctx, c1, AnchorOptions{Handle: h1}); err != nil {
		t.Fatalf("node 1 on a copy as new as its own last anchor: %v", err)
	}
	s1.Close()
}

// TestNodeRowTampered: a node row edited in any column fails its MAC, or
// its range check, and takes down that node alone: AttachNode refuses
// it, the listing marks it and records it once, the other node attaches.
func TestNodeRowTampered(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, sql, what string }{
		{"joined", "UPDATE nodes SET joined_at = joined_at + 1 WHERE id = 2", "mac"},
		{"last seen", "UPDATE nodes SET last_seen = last_seen - 4294967296 WHERE id = 2", "range"},
		{"sealed", "UPDATE nodes SET sealed = substr(sealed, 1, length(sealed) - 1) WHERE id = 2", "mac"},
		{"import key", "UPDATE nodes SET import_key = NULL WHERE id = 2", "mac"},
		{"anchor", "UPDATE nodes SET anchor = (SELECT anchor FROM nodes WHERE id = 1) WHERE id = 2", "mac"},
		{"tpm", "UPDATE nodes SET tpm_id = substr(tpm_id, 1, 33) WHERE id = 2", "mac"},
		{"swapped", "UPDATE nodes SET id = 3 WHERE id = 2", "mac"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s, loc := newStore(t, Options{})
			id1 := firstNode(t, s)
			ch, h := newCounter(t, s)
			if _, err := s.AttachAnchor(ctx, ch, AnchorOptions{Handle: h}); err != nil {
				t.Fatal(err)
			}
			rec, _ := s.RootRecord(ctx)
			if _, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("ik2")}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			execSQL(t, rawDB(t, loc), c.sql)
			s = reopen(t, loc, Options{})
			bad := int64(2)
			if c.name == "swapped" {
				bad = 3
			}
			if err := s.AttachNode(ctx, bad); !errors.Is(err, ErrTampered) {
				t.Fatalf("attach the tampered node: %v", err)
			}
			if err := s.AttachNode(ctx, id1); err != nil {
				t.Fatalf("attach the other node: %v", err)
			}
			nodes, err := s.Nodes(ctx)
			if err != nil || len(nodes) != 2 || nodes[0].Tampered != nil || nodes[1].ID != bad {
				t.Fatalf("nodes: %+v %v", nodes, err)
			}
			var te *TamperError
			if !errors.As(nodes[1].Tampered, &te) || te.Kind != "node" || te.What != c.what {
				t.Fatalf("node %d: %v, want %s", bad, nodes[1].Tampered, c.what)
			}
			if err := s.AuditTamper(ctx); err != nil {
				t.Fatal(err)
			}
			if n, err := s.TamperCount(ctx); err != nil || n == 0 {
				t.Fatalf("tamper.detected records: %d %v", n, err)
			}
			// The other node works on, and removes the bad one.
			if err := s.Heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveNode(ctx, AuditActor{Role: "admin"}, bad); err != nil {
				t.Fatal(err)
			}
			if err := s.RemoveNode(ctx, AuditActor{Role: "admin"}, id1); !errors.Is(err, ErrLastNode) {
				t.Fatalf("the last node: %v", err)
			}
		})
	}
}

// TestReplaceNodes: the domain's nodes (one of them with a tampered row,
// one with a PIN binding and a master key copy) replaced by one new
// node, as `domain recover` on PostgreSQL does: every old row goes with
// its bindings and copies, the new row authenticates and takes the next
// id, and node.recover records it in a chain that verifies. A new row
// out of range changes nothing.
func TestReplaceNodes(t *testing.T) {
	t.Parallel()
	s, loc := newStore(t, Options{})
	firstNode(t, s)
	rec, _ := s.RootRecord(ctx)
	id2, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("ik2")})
	if err != nil {
		t.Fatal(err)
	}
	ti := newToken(t, s, "r")
	if _, err := s.w.ExecContext(ctx, "INSERT INTO pin_bindings (token_id, role, node_id, salt, seal) VALUES (?, ?, ?, ?, ?)",
		ti.ID, int64(RoleUser), id2, bytes.Repeat([]byte{1}, 16), []byte("seal")); err != nil {
		t.Fatal(err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.putNodeMasters(ctx, tx, map[int64][]byte{id2: []byte("blob")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	execSQL(t, rawDB(t, loc), "UPDATE nodes SET joined_at = joined_at + 1 WHERE id = 2")
	s = reopen(t, loc, Options{})
	defer s.Close()
	count := func(table string) int {
		t.Helper()
		var n int
		if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count("pin_bindings") != 1 || count("node_masters") != 1 {
		t.Fatal("no binding or master key copy to replace")
	}

	id, removed, err := s.ReplaceNodes(ctx, AuditActor{Role: "admin"}, NodeSpec{TPMID: fakeTPMID(3), Sealed: rec.Sealed, ImportKey: []byte("ik3")},
		map[string]string{"rotation_aborted": "true"})
	if err != nil || id != 3 || len(removed) != 2 || removed[0] != 1 || removed[1] != 2 {
		t.Fatalf("replace: %d %v %v", id, removed, err)
	}
	if count("pin_bindings") != 0 || count("node_masters") != 0 {
		t.Fatal("the old nodes' bindings or master key copies are left")
	}
	if err := s.AttachNode(ctx, id); err != nil {
		t.Fatal(err)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].ID != 3 || nodes[0].Tampered != nil || !bytes.Equal(nodes[0].TPMID, fakeTPMID(3)) {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	for _, b := range []byte{1, 2} {
		if _, _, err := s.NodeSealed(ctx, fakeTPMID(b)); !errors.Is(err, ErrNotANode) {
			t.Fatalf("TPM %d after the replacement: %v", b, err)
		}
	}
	tail, err := s.AuditTail(ctx, 1)
	if err != nil || len(tail) != 1 {
		t.Fatal(tail, err)
	}
	if r := tail[0]; r.Event != "node.recover" || r.Detail["node"] != "3" || r.Detail["replaced"] != "1,2" || r.Detail["tpm"] != ShortTPMID(fakeTPMID(3)) || r.Detail["rotation_aborted"] != "true" {
		t.Fatalf("the record: %+v", r)
	}
	if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}

	if _, _, err := s.ReplaceNodes(ctx, AuditActor{Role: "admin"}, NodeSpec{TPMID: []byte{1}, Sealed: rec.Sealed}, nil); err == nil {
		t.Fatal("a node row out of range replaced the nodes")
	}
	if nodes, err := s.Nodes(ctx); err != nil || len(nodes) != 1 || nodes[0].ID != 3 {
		t.Fatalf("nodes after a refused replacement: %+v %v", nodes, err)
	}
	if after, err := s.AuditTail(ctx, 1); err != nil || after[0].Seq != tail[0].Seq {
		t.Fatalf("a refused replacement recorded: %+v %v", after, err)
	}
}

// TestJoinDuringRotationBegin: a rotation's copies of the next master key
// are made for the nodes there are when it begins. One begun with copies
// made before a node joined is refused (ErrNodesChanged, nothing
// recorded); a join while a rotation is under way is refused
// (ErrRotationPending) until it ends.
func TestJoinDuringRotationBegin(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	id1 := firstNode(t, s)
	rec, _ := s.RootRecord(ctx)
	id2, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("ik2")})
	if err != nil {
		t.Fatal(err)
	}
	next := func(upTo int64) *NextMaster {
		return &NextMaster{Sealed: []byte("next sealed"), Proof: []byte("next proof"), NodesUpTo: upTo}
	}
	if err := s.BeginMasterRotation(ctx, next(id1)); !errors.Is(err, ErrNodesChanged) {
		t.Fatalf("a rotation that saw node %d only, node %d there: %v", id1, id2, err)
	}
	if rec, err := s.RootRecord(ctx); err != nil || rec.Next != nil {
		t.Fatalf("the refused rotation was recorded: %+v %v", rec.Next, err)
	}
	if err := s.BeginMasterRotation(ctx, next(id2)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(3), Sealed: rec.Sealed, ImportKey: []byte("ik3")}); !errors.Is(err, ErrRotationPending) {
		t.Fatalf("a join during a rotation: %v", err)
	}
	if err := s.AbortMasterRotation(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(3), Sealed: rec.Sealed, ImportKey: []byte("ik3")}); err != nil {
		t.Fatalf("a join once the rotation was abandoned: %v", err)
	}
}

// TestPublishImportKey: a node with no import key (one that joined before
// import keys existed) publishes one, once, under its row's MAC; one it
// has is never replaced.
func TestPublishImportKey(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	id1, _, err := s.AdoptNode(ctx, fakeTPMID(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	if ik, err := s.NodeImportKey(ctx, id1); err != nil || len(ik) != 0 {
		t.Fatalf("import key before: %q %v", ik, err)
	}
	if wrote, err := s.PublishImportKey(ctx, []byte("ik1")); err != nil || !wrote {
		t.Fatalf("publish: %v %v", wrote, err)
	}
	if wrote, err := s.PublishImportKey(ctx, []byte("another")); err != nil || wrote {
		t.Fatalf("publish again: %v %v", wrote, err)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Tampered != nil || string(nodes[0].ImportKey) != "ik1" {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	if _, err := s.PublishImportKey(ctx, nil); err == nil {
		t.Fatal("an empty import key published")
	}
}

// TestNodeReadsRange: what a node reads of its row and its master key
// copy before anything can authenticate them (its sealed key, its import
// key, its copy of a rotation's master key, all handed to its TPM) is
// range-checked first, whatever the schema's CHECKs say: a value out of
// range is a TamperError ("range"), noted, and the other node reads its
// own as before.
func TestNodeReadsRange(t *testing.T) {
	t.Parallel()
	s, loc := newStore(t, Options{})
	id1 := firstNode(t, s)
	rec, err := s.RootRecord(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("ik2")}); err != nil {
		t.Fatal(err)
	}
	raw := rawDB(t, loc)
	huge := make([]byte, maxNodeBlob+1)
	execSQL(t, raw, "UPDATE nodes SET import_key = ?, sealed = ? WHERE id = 2", huge, huge)
	execSQL(t, raw, "INSERT INTO node_masters (node_id, master_generation, blob, mac) VALUES (2, 2, ?, ?), (2, 3, ?, ?)",
		huge, make([]byte, 32), []byte("blob"), make([]byte, 31))
	isRange := func(what string, err error) {
		t.Helper()
		var te *TamperError
		if !errors.As(err, &te) || te.What != "range" {
			t.Errorf("%s: %v, want a TamperError (range)", what, err)
		}
	}
	ik, err := s.NodeImportKey(ctx, 2)
	isRange("import key", err)
	if ik != nil {
		t.Errorf("import key out of range returned (%d bytes)", len(ik))
	}
	_, sealed, err := s.NodeSealed(ctx, fakeTPMID(2))
	isRange("sealed key", err)
	if sealed != nil {
		t.Errorf("sealed key out of range returned (%d bytes)", len(sealed))
	}
	_, _, err = s.NodeMaster(ctx, 2, 2)
	isRange("master key copy", err)
	_, _, err = s.NodeMaster(ctx, 2, 3)
	isRange("master key copy's MAC", err)
	if id, sealed, err := s.NodeSealed(ctx, fakeTPMID(1)); err != nil || id != id1 || len(sealed) == 0 {
		t.Fatalf("node 1's sealed key: %d %v", id, err)
	}
	if ik, err := s.NodeImportKey(ctx, id1); err != nil || string(ik) != "ik1" {
		t.Fatalf("node 1's import key: %q %v", ik, err)
	}
}

// firstNode makes s's database a domain of one node, fakeTPMID(1), and
// s that node; it returns the node's id.
func firstNode(t *testing.T, s *Store) int64 {
	t.Helper()
	id, _, err := s.AdoptNode(ctx, fakeTPMID(1), []byte("ik1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AttachNode(ctx, id); err != nil {
		t.Fatal(err)
	}
	return id
}
