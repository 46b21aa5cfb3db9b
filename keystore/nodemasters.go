package keystore

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// A rotation's master key for the nodes that did not make it. The node
// that rotates makes the new master secret in software, and besides
// creating the key in its own TPM makes, for every other node that
// published an import key, a TPM2_Import duplication blob of the same
// master key for that import key (tpmroot.ProvisionOptions.ImportKeys).
// The blobs are stored in node_masters, by node and master generation, in
// the transaction that records the rotation (BeginMasterRotation); an
// aborted rotation drops them, and the switch to the new master key drops
// those of older generations.
//
// A node that starts with a sealed key of an older generation than the
// domain's takes its blob of the current one: it imports it under its
// import key (the TPM checks the blob's integrity, and the imported key
// must compute the domain's proof), attaches it, checks the row's MAC,
// and only then rewrites its own node row with the imported key and drops
// the blob (AdoptNodeMaster). The MAC, HMAC-SHA256 under a key of the
// domain's life (the nodes' MAC key, HKDF) over the node, the generation
// and the blob, refuses a blob the database was given by anyone else: a
// blob is encrypted to a published key, so anyone could make one. It is
// checked after the import because its key is carried under the master
// key the blob holds: a node behind by a rotation holds no key of the
// domain before it.

const (
	nodeMasterMACInfo  = "hsmemu/node-master/mac/v1"
	nodeMasterMACLabel = "hsmemu/node-master/v1"
)

func (s *Store) nodeMasterKey(ctx context.Context) ([]byte, error) {
	base, err := s.nodeKey(ctx)
	if err != nil {
		return nil, err
	}
	return hkdf.Expand(sha256.New, base, nodeMasterMACInfo, 32)
}

func nodeMasterMAC(key []byte, node int64, gen uint32, blob []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(nodeMasterMACLabel))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(node)))
	m.Write(binary.BigEndian.AppendUint32(nil, gen))
	m.Write(blob)
	return m.Sum(nil)
}

// putNodeMasters writes, in tx, the blobs of the master key of the
// generation after the root's current one, by node. The nodes are read
// under their shared lock; a node gone meanwhile gets nothing.
func (s *Store) putNodeMasters(ctx context.Context, tx *sql.Tx, blobs map[int64][]byte) error {
	if len(blobs) == 0 {
		return nil
	}
	var cur int64
	if err := tx.QueryRowContext(ctx, "SELECT master_generation FROM root WHERE id = 1").Scan(&cur); err != nil {
		return s.dbErr("read master generation", err)
	}
	gen := uint32(cur + 1)
	key, err := s.nodeMasterKey(ctx)
	if err != nil {
		return err
	}
	if err := s.eng.lockNodes(ctx, tx, false); err != nil {
		return s.dbErr("lock nodes", err)
	}
	for node, blob := range blobs {
		if node < 1 || len(blob) == 0 || len(blob) > maxNodeBlob {
			return fmt.Errorf("keystore: node %d's %d-byte master key blob out of range", node, len(blob))
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO node_masters (node_id, master_generation, blob, mac)
			SELECT id, ?, ?, ? FROM nodes WHERE id = ?
			ON CONFLICT (node_id, master_generation) DO UPDATE SET blob = excluded.blob, mac = excluded.mac`,
			int64(gen), blob, nodeMasterMAC(key, node, gen, blob), node)
		if err != nil {
			return s.dbErr("write a node's master key", err)
		}
	}
	return nil
}

// NodeMaster returns node's blob of the master key of generation gen and
// its MAC, as stored, before anything can check them (ErrNotFound when
// there is none): the TPM checks the blob as it imports it, and
// CheckNodeMaster the MAC once the imported key is attached.
func (s *Store) NodeMaster(ctx context.Context, node int64, gen uint32) (blob, mac []byte, err error) {
	err = s.r.QueryRowContext(ctx, "SELECT blob, mac FROM node_masters WHERE node_id = ? AND master_generation = ?", node, int64(gen)).Scan(&blob, &mac)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, s.dbErr("read a node's master key", err)
	}
	// Range-checked before anything parses it (the schema's CHECKs can be
	// dropped by whoever owns the database).
	if len(blob) == 0 || len(blob) > maxNodeBlob || len(mac) != 32 {
		te := &TamperError{Kind: "node master", ID: fmt.Sprintf("node %d generation %d", node, gen), What: "range"}
		s.noteTamper(te)
		return nil, nil, te
	}
	return blob, mac, nil
}

// NodeImportKey returns node's import key as its row holds it (nil when
// it published none), before the row can be authenticated: the node's
// TPM loads it only if it is its own, and AttachNode checks the row.
func (s *Store) NodeImportKey(ctx context.Context, node int64) ([]byte, error) {
	var ik []byte
	err := s.r.QueryRowContext(ctx, "SELECT import_key FROM nodes WHERE id = ?", node).Scan(&ik)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotANode
	}
	if err != nil {
		return nil, s.dbErr("read node", err)
	}
	if len(ik) > maxNodeBlob {
		te := &TamperError{Kind: "node", ID: "row " + strconv.FormatInt(node, 10), What: "range"}
		s.noteTamper(te)
		return nil, te
	}
	return ik, nil
}

// CheckNodeMaster checks the MAC of node's blob of the master key of
// generation gen, with the domain's keys attached. One that fails is a
// TamperError (kind "node master"), noted for the audit log.
func (s *Store) CheckNodeMaster(ctx context.Context, node int64, gen uint32, blob, mac []byte) error {
	key, err := s.nodeMasterKey(ctx)
	if err != nil {
		return err
	}
	if !hmac.Equal(mac, nodeMasterMAC(key, node, gen, blob)) {
		te := &TamperError{Kind: "node master", ID: fmt.Sprintf("node %d generation %d", node, gen), What: "mac"}
		s.noteTamper(te)
		return te
	}
	return nil
}

// AdoptNodeMaster makes sealed, the master key of generation gen this
// node imported from its blob, its row's sealed key, and drops its blobs
// up to that generation, in one transaction.
func (s *Store) AdoptNodeMaster(ctx context.Context, gen uint32, sealed []byte) error {
	return s.setNodeSealed(ctx, sealed, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "DELETE FROM node_masters WHERE node_id = ? AND master_generation <= ?", s.LocalNode(), int64(gen))
		return s.dbErr("drop this node's master key blob", err)
	})
}
