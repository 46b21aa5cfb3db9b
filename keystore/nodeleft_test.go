package keystore

import (
	"errors"
	"testing"
)

// TestNodeLeftReplayed: a node that left the domain stays out of it when
// whoever writes the database puts its row back, MAC and all (the MAC is
// under a key of the domain's life, so the old row still authenticates
// by itself). The row is listed as tampered (kind "node", what "left")
// and recorded, so that a master key rotation or a PIN write makes it no
// copy (both take their recipients from Nodes, untampered ones only);
// the node does not attach; the other nodes are unaffected. The list of
// nodes that left is the root record's, which the anchor accounts for:
// set back while a Store serves, the Store goes on refusing the node
// (it remembers every node it saw leave), and a Store starting on the
// database so edited is refused by its anchor.
func TestNodeLeftReplayed(t *testing.T) {
	t.Parallel()
	s, loc := newStore(t, Options{})
	id1 := firstNode(t, s)
	c, h := newCounter(t, s)
	if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
		t.Fatal(err)
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := byte(2); i <= 3; i++ {
		if _, err := s.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(i), Sealed: rec.Sealed, ImportKey: []byte{'i', 'k', '0' + i}}); err != nil {
			t.Fatal(err)
		}
	}
	raw := rawDB(t, loc)
	var row [8]any
	ptrs := make([]any, len(row))
	for i := range row {
		ptrs[i] = &row[i]
	}
	if err := raw.QueryRow(selectNode + " WHERE id = 2").Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveNode(ctx, AuditActor{Role: "admin"}, 2); err != nil {
		t.Fatal(err)
	}
	replay := func() {
		t.Helper()
		execSQL(t, raw, "INSERT INTO nodes (id, tpm_id, sealed, import_key, anchor, joined_at, last_seen, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row[:]...)
	}
	replay()

	// recipients are the nodes a rotation or a PIN write on node 1 makes
	// copies for.
	recipients := func(s *Store) []int64 {
		t.Helper()
		nodes, err := s.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, n := range nodes {
			if n.ID == 2 {
				var te *TamperError
				if !errors.As(n.Tampered, &te) || te.Kind != "node" || te.What != "left" {
					t.Errorf("node 2 put back: %v, want tampered (left)", n.Tampered)
				}
			}
			if n.ID != id1 && n.Tampered == nil && len(n.ImportKey) > 0 {
				ids = append(ids, n.ID)
			}
		}
		return ids
	}
	if ids := recipients(s); len(ids) != 1 || ids[0] != 3 {
		t.Fatalf("copies would go to nodes %v, want [3]", ids)
	}
	s2 := reopen(t, loc, Options{})
	if err := s2.AttachNode(ctx, 2); !errors.Is(err, ErrTampered) {
		t.Fatalf("node 2 attaching on its row put back: %v", err)
	}
	if err := s2.AttachNode(ctx, 3); err != nil {
		t.Fatalf("node 3: %v", err)
	}
	s2.Close()
	if err := s.AuditTamper(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := s.TamperCount(ctx); err != nil || n == 0 {
		t.Fatalf("tamper.detected records: %d %v", n, err)
	}
	// Removed again, it stays one entry of the list.
	if err := s.RemoveNode(ctx, AuditActor{Role: "admin"}, 2); err != nil {
		t.Fatal(err)
	}
	var left []byte
	if err := raw.QueryRow("SELECT nodes_left FROM root WHERE id = 1").Scan(&left); err != nil || len(left) != 8 {
		t.Fatalf("nodes_left: %x %v", left, err)
	}

	// The row put back again, and the list out of range: recorded, and
	// the ids the Store saw stand.
	replay()
	execSQL(t, raw, "UPDATE root SET nodes_left = ? WHERE id = 1", []byte{0, 0, 0, 0, 0, 0, 0})
	if ids := recipients(s); len(ids) != 1 || ids[0] != 3 {
		t.Fatalf("with the list out of range, copies would go to nodes %v, want [3]", ids)
	}

	// The list set back under a serving Store.
	execSQL(t, raw, "UPDATE root SET nodes_left = NULL WHERE id = 1")
	if ids := recipients(s); len(ids) != 1 || ids[0] != 3 {
		t.Fatalf("with the list set back, copies would go to nodes %v, want [3]", ids)
	}
	s.Close()
	s3 := reopen(t, loc, Options{})
	if err := s3.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	var re *RollbackError
	if _, err := s3.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); !errors.As(err, &re) || re.What != "rows" {
		t.Fatalf("a Store starting on the list set back: %v, want refused (rows)", err)
	}
}
