package keystore

import (
	"context"
	"database/sql"
	"encoding/binary"
)

// Each node anchors the keystore in a counter of its own TPM. The anchor
// record (anchor.go) stays one, folded by every writer: its generation,
// digest and audit head are the domain's. What is a node's own is the
// point: which counter, the value it last anchored at and the generation
// then. It is kept in the node's row, under the row's MAC, and read over
// the record's own fields wherever the record is anchored (AttachAnchor,
// Anchor), so that each node checks only its own counter. Without a node
// attached (a keystore opened by a tool, before AttachNode) the record's
// fields stand, as before nodes. A node that has not anchored yet (just
// joined) reads as a pending record does (anchored at 0): its first
// anchor takes its counter's next value.

// overlayNodePoint reads this node's point over st's. A node whose point
// says it anchored a later generation than the record holds finds the
// record older than its own last anchor: a *RollbackError. A node with
// no point yet takes handle, when not 0, as its counter's.
func (s *Store) overlayNodePoint(ctx context.Context, q querier, st *anchorState, handle uint32) error {
	id := s.LocalNode()
	if id == 0 {
		return nil
	}
	n, err := s.readNode(ctx, q, id)
	if err != nil {
		return err
	}
	if n.anchor == nil {
		st.anchored, st.anchoredGen = 0, 0
		if handle != 0 {
			st.handle = handle
		}
		return nil
	}
	st.handle = binary.BigEndian.Uint32(n.anchor)
	st.anchored = binary.BigEndian.Uint64(n.anchor[4:])
	st.anchoredGen = binary.BigEndian.Uint64(n.anchor[12:])
	if st.anchoredGen > st.generation {
		return &RollbackError{What: "rows", Anchored: st.anchored, Handle: st.handle, Generation: st.generation}
	}
	return nil
}

// saveNodePoint writes st's point into this node's row, in tx.
func (s *Store) saveNodePoint(ctx context.Context, tx *sql.Tx, st *anchorState) error {
	if s.LocalNode() == 0 {
		return nil
	}
	return s.updateLocalNode(ctx, tx, func(n *Node) {
		n.anchor = encodeNodeAnchor(st.handle, st.anchored, st.anchoredGen)
	})
}
