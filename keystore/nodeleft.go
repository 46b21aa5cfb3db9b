package keystore

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
)

// The nodes that left. A node row's MAC is under a key of the domain's
// life and covers the row alone, so the row of a node that left (domain
// leave, a join taken back, a recovery replacing it), put back by
// whoever writes the database, authenticates by itself: without more, the
// next master key rotation would make that node a copy of the new master
// key (the rotation meant to retire it), and every PIN record written
// meanwhile a duplication blob for its TPM. What refuses it is the list of
// the ids of the nodes that left, in the root record (nodes_left: each a
// big-endian u64, in increasing order), written in the transaction that
// removes them. The root row is anchored: the list set back (the column
// emptied, an older value put back) is found by the anchor's check at the
// next start, which refuses the keystore; and a Store that is serving
// remembers every id it has seen in the list, so setting it back under a
// serving node changes nothing there, and is recorded. Ids are never
// reused, so an id once in the list names no node for good.
//
// A row of a node that left is listed as tampered (kind "node", what
// "left"), recorded once, and refused by AttachNode; it is no other
// node's concern. The list is read with the rows, at each listing.

const maxNodesLeft = 1 << 16 // the CHECK's bound, 524288 bytes

// decodeNodesLeft range-checks the list as stored.
func decodeNodesLeft(b []byte) ([]int64, bool) {
	if b == nil {
		return nil, true
	}
	if len(b) == 0 || len(b)%8 != 0 || len(b)/8 > maxNodesLeft {
		return nil, false
	}
	ids := make([]int64, 0, len(b)/8)
	for i := 0; i < len(b); i += 8 {
		v := binary.BigEndian.Uint64(b[i:])
		if int64(v) < 1 || (len(ids) > 0 && int64(v) <= ids[len(ids)-1]) {
			return nil, false
		}
		ids = append(ids, int64(v))
	}
	return ids, true
}

func encodeNodesLeft(ids []int64) []byte {
	b := make([]byte, 0, 8*len(ids))
	for _, id := range ids {
		b = binary.BigEndian.AppendUint64(b, uint64(id))
	}
	return b
}

// nodesLeft reads the ids of the nodes that left, with every id this
// Store saw in the list before: one it no longer holds was set back
// (recorded as tampering, and still counted as left). A list out of
// range is recorded and read as the ids this Store saw before: the
// nodes and the PIN writes go on, and no node this Store saw leave is
// let back (the anchor refuses the edited root row at the next start).
func (s *Store) nodesLeft(ctx context.Context, q querier) (map[int64]bool, error) {
	var raw []byte
	err := q.QueryRowContext(ctx, "SELECT nodes_left FROM root WHERE id = 1").Scan(&raw)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, s.dbErr("read the nodes that left", err)
	}
	ids, ok := decodeNodesLeft(raw)
	if !ok {
		s.noteTamper(&TamperError{Kind: "keystore", ID: "root", What: "nodes left"})
	}
	s.nodes.mu.Lock()
	defer s.nodes.mu.Unlock()
	if s.nodes.left == nil {
		s.nodes.left = map[int64]bool{}
	}
	now := make(map[int64]bool, len(ids))
	for _, id := range ids {
		now[id] = true
	}
	for id := range s.nodes.left {
		if ok && !now[id] {
			s.noteTamper(&TamperError{Kind: "keystore", ID: "root", What: "nodes left set back (node " + strconv.FormatInt(id, 10) + ")"})
		}
	}
	for id := range now {
		s.nodes.left[id] = true
	}
	out := make(map[int64]bool, len(s.nodes.left))
	for id := range s.nodes.left {
		out[id] = true
	}
	return out, nil
}

// leftErr is the error of a row of a node that left, noted.
func (s *Store) leftErr(id int64) error {
	err := &TamperError{Kind: "node", ID: "row " + strconv.FormatInt(id, 10), What: "left"}
	s.noteTamper(err)
	return err
}

// recordNodesLeft adds ids to the list, in tx, which holds the nodes'
// lock exclusively (every change of the list does, so the read here is
// the list's latest).
func (s *Store) recordNodesLeft(ctx context.Context, tx *sql.Tx, ids ...int64) error {
	if len(ids) == 0 {
		return nil
	}
	var raw []byte
	if err := tx.QueryRowContext(ctx, "SELECT nodes_left FROM root WHERE id = 1").Scan(&raw); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil // no root: nothing to protect yet
		}
		return s.dbErr("read the nodes that left", err)
	}
	cur, ok := decodeNodesLeft(raw)
	if !ok {
		// Written again whole, from what this Store saw and ids.
		s.noteTamper(&TamperError{Kind: "keystore", ID: "root", What: "nodes left"})
	}
	s.nodes.mu.Lock()
	for id := range s.nodes.left {
		cur = append(cur, id) // never drop one this Store saw
	}
	s.nodes.mu.Unlock()
	cur = append(cur, ids...)
	slices.Sort(cur)
	cur = slices.Compact(cur)
	if len(cur) > maxNodesLeft {
		return errors.New("keystore: too many nodes have left the domain to record another")
	}
	if _, err := tx.ExecContext(ctx, "UPDATE root SET nodes_left = ? WHERE id = 1", encodeNodesLeft(cur)); err != nil {
		return s.dbErr("record the nodes that left", err)
	}
	return nil
}

// nodeIDs lists the ids of the node rows, in tx.
func (s *Store) nodeIDs(ctx context.Context, tx *sql.Tx) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, "SELECT id FROM nodes ORDER BY id")
	if err != nil {
		return nil, s.dbErr("list nodes", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, s.dbErr("list nodes", err)
		}
		ids = append(ids, id)
	}
	return ids, s.dbErr("list nodes", rows.Err())
}
