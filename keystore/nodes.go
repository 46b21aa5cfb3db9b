package keystore

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The nodes of a domain. Every TPM that holds the domain's master key is a
// node: one row of the nodes table, found by its TPM's identity, holding
// that TPM's sealed copy of the master key (only that TPM loads it), its
// TPM-resident import key (the key other nodes encrypt to it, created
// under its SRK, fixedTPM), its rollback anchor point (the TPM counter
// this node anchors the keystore in, and the value it last anchored at)
// and when it joined and was last seen. A keystore in SQLite has one
// node; one in PostgreSQL, as many as have joined.
//
// The TPM's identity is its SRK's name: the name of the primary storage
// key the standard template makes under the owner seed, so the same on
// every start, different on every TPM, and new after a TPM2_Clear, which
// also makes every object sealed under the old SRK unloadable: an identity
// that changes exactly when the node's sealed master key stops loading.
// (An endorsement key would survive the clear and name a TPM that no
// longer holds anything of the domain.)
//
// Every column of a row is under a MAC, at full width, under a key of the
// domain's life (HKDF of the first epoch's audit key, carried across
// master key rotations): whoever can write the database but not use the
// master key cannot add a node, move a sealed key or an import key to
// another row, or change a node's anchor point. Values are range-checked
// before the MAC. A row that fails takes down that node alone: the node
// itself refuses to start on it, every other node lists it as tampered and
// records it once (tamper.detected, kind "node").
//
// The table is outside the anchor record's digest (anchorsql.go): a
// heartbeat is no change to anchor, and each row carries its node's own
// anchor point, checked against that node's counter.

const (
	nodeMACInfo   = "hsmemu/nodes/mac/v1"
	nodeMACLabel  = "hsmemu/node/v1"
	maxNodeBlob   = 8192
	maxNodeTime   = 1<<40 - 1 // seconds: the CHECK's bound, far past any clock
	nodeAnchorLen = 4 + 8 + 8
)

// ErrNotANode is OpenNode's error for a TPM that holds no row of the
// domain: it joins with `hsmemu domain join`.
var ErrNotANode = errors.New("keystore: this TPM is not a node of the domain")

// ErrLastNode refuses removing the domain's last node: its keys would
// have no TPM left to open them.
var ErrLastNode = errors.New("keystore: the domain's last node cannot leave it")

// Node is one node of the domain.
type Node struct {
	ID        int64
	TPMID     []byte // the TPM's SRK name
	Sealed    []byte // the master key sealed by that TPM (tpmroot.Sealed)
	ImportKey []byte // the node's TPM-resident import key, TPM-wrapped (tpmroot.ImportKey)
	Joined    time.Time
	LastSeen  time.Time
	// Tampered is set on a row that failed its MAC or its range checks
	// (a TamperError); of the fields above, only ID is to be believed.
	Tampered error

	anchor []byte // handle u32 | anchored u64 | anchored generation u64, or nil before its first anchor
	mac    []byte
}

// NodeSpec is a node to add.
type NodeSpec struct {
	TPMID, Sealed, ImportKey []byte
}

// nodeState is the Store's own node and the nodes' MAC key.
type nodeState struct {
	mu    sync.Mutex
	local int64  // this Store's node id; 0 before AttachNode
	tpmID []byte // its TPM's identity
	key   []byte // the MAC key, once derived
	// left is every id this Store has seen in the list of the nodes
	// that left (nodeleft.go): never forgotten while it runs.
	left map[int64]bool
}

const selectNode = "SELECT id, tpm_id, sealed, import_key, anchor, joined_at, last_seen, mac FROM nodes"

// nodeKey returns the nodes' MAC key, deriving it once.
func (s *Store) nodeKey(ctx context.Context) ([]byte, error) {
	s.nodes.mu.Lock()
	k := s.nodes.key
	s.nodes.mu.Unlock()
	if k != nil {
		return k, nil
	}
	base, err := s.domainKey(ctx, auditLabel)
	if err != nil {
		return nil, fmt.Errorf("keystore: the nodes' key: %w", err)
	}
	defer wipe(base)
	k, err = hkdf.Expand(sha256.New, base, nodeMACInfo, 32)
	if err != nil {
		return nil, err
	}
	s.nodes.mu.Lock()
	defer s.nodes.mu.Unlock()
	if s.nodes.key == nil {
		s.nodes.key = k
	}
	return s.nodes.key, nil
}

// macInput is the row's authenticated encoding: every column but the MAC,
// integers at 64 bits with their sign, byte strings with a presence byte
// and a 64-bit length, so that no two rows share an input.
func (n *Node) macInput() []byte {
	b := append([]byte(nodeMACLabel), 0)
	b = binary.BigEndian.AppendUint64(b, uint64(n.ID))
	for _, f := range [][]byte{n.TPMID, n.Sealed, n.ImportKey, n.anchor} {
		if f == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(n.Joined.Unix()))
	return binary.BigEndian.AppendUint64(b, uint64(n.LastSeen.Unix()))
}

func (n *Node) sum(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(n.macInput())
	return m.Sum(nil)
}

// scanNode reads a row as whatever the database holds, range-checks it
// and leaves the MAC to the caller. A value out of range or of another
// type is a TamperError ("range").
func scanNode(sc interface{ Scan(...any) error }) (Node, error) {
	var n Node
	var id, joined, seen any
	var tpmID, sealed, imp, anc, mac any
	if err := sc.Scan(&id, &tpmID, &sealed, &imp, &anc, &joined, &seen, &mac); err != nil {
		return n, err
	}
	bad := func() (Node, error) {
		return n, &TamperError{Kind: "node", ID: "row " + strconv.FormatInt(n.ID, 10), What: "range"}
	}
	var ok bool
	if n.ID, ok = id.(int64); !ok || n.ID < 1 {
		n.ID = 0
		return bad()
	}
	blob := func(v any, min, max int, null bool) ([]byte, bool) {
		if v == nil {
			return nil, null
		}
		b, ok := v.([]byte)
		if !ok || len(b) < min || len(b) > max {
			return nil, false
		}
		return bytes.Clone(b), true
	}
	clock := func(v any) (time.Time, bool) {
		t, ok := v.(int64)
		return time.Unix(t, 0), ok && t >= 0 && t <= maxNodeTime
	}
	var ok1, ok2, ok3, ok4, ok5, ok6, ok7 bool
	n.TPMID, ok1 = blob(tpmID, 3, 66, false)
	n.Sealed, ok2 = blob(sealed, 1, maxNodeBlob, false)
	n.ImportKey, ok3 = blob(imp, 1, maxNodeBlob, true)
	n.anchor, ok4 = blob(anc, nodeAnchorLen, nodeAnchorLen, true)
	n.mac, ok5 = blob(mac, 32, 32, false)
	n.Joined, ok6 = clock(joined)
	n.LastSeen, ok7 = clock(seen)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return bad()
	}
	return n, nil
}

// verifyNode checks a scanned row's MAC; a row that fails is noted for
// the audit log.
func (s *Store) verifyNode(n *Node, key []byte) error {
	if !hmac.Equal(n.sum(key), n.mac) {
		err := &TamperError{Kind: "node", ID: "row " + strconv.FormatInt(n.ID, 10), What: "mac"}
		s.noteTamper(err)
		return err
	}
	return nil
}

// Nodes lists the domain's nodes, each authenticated: a row that fails
// is listed with Tampered set, and recorded once.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	key, err := s.nodeKey(ctx)
	if err != nil {
		return nil, err
	}
	left, err := s.nodesLeft(ctx, s.r)
	if err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, selectNode+" ORDER BY id")
	if err != nil {
		return nil, s.dbErr("list nodes", err)
	}
	defer rows.Close()
	var out []Node
	for rows.Next() {
		n, err := scanNode(rows)
		var te *TamperError
		switch {
		case err == nil && left[n.ID]:
			n = Node{ID: n.ID, Tampered: s.leftErr(n.ID)}
		case errors.As(err, &te):
			s.noteTamper(err)
			n = Node{ID: n.ID, Tampered: err}
		case err != nil:
			return nil, s.dbErr("list nodes", err)
		default:
			if err := s.verifyNode(&n, key); err != nil {
				n = Node{ID: n.ID, Tampered: err}
			}
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, s.dbErr("list nodes", err)
	}
	return out, nil
}

// NodeCount counts the node rows, authenticated or not: zero is a
// keystore from before nodes, whose one node AdoptNode makes.
func (s *Store) NodeCount(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM nodes").Scan(&n); err != nil {
		return 0, s.dbErr("count nodes", err)
	}
	return n, nil
}

// NodeSealed returns the id and the sealed master key of the node whose
// TPM is tpmID, before anything can authenticate the row (the master key
// it holds is what authenticates rows): the TPM checks the sealed key as
// it loads it (it must be sealed under this SRK and compute the domain's
// proof), and AttachNode checks the row's MAC once the key is attached.
// ErrNotANode when the TPM has no row.
func (s *Store) NodeSealed(ctx context.Context, tpmID []byte) (int64, []byte, error) {
	var id int64
	var sealed []byte
	err := s.r.QueryRowContext(ctx, "SELECT id, sealed FROM nodes WHERE tpm_id = ?", tpmID).Scan(&id, &sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, ErrNotANode
	}
	if err != nil {
		return 0, nil, s.dbErr("read node", err)
	}
	// Range-checked before the TPM parses it: the schema's CHECKs can be
	// dropped by whoever owns the database.
	if id < 1 || len(sealed) == 0 || len(sealed) > maxNodeBlob {
		te := &TamperError{Kind: "node", ID: "row " + strconv.FormatInt(id, 10), What: "range"}
		s.noteTamper(te)
		return 0, nil, te
	}
	return id, sealed, nil
}

// readNode reads and authenticates one node row.
func (s *Store) readNode(ctx context.Context, q querier, id int64) (Node, error) {
	key, err := s.nodeKey(ctx)
	if err != nil {
		return Node{}, err
	}
	left, err := s.nodesLeft(ctx, q)
	if err != nil {
		return Node{}, err
	}
	n, err := scanNode(q.QueryRowContext(ctx, selectNode+" WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return n, ErrNotFound
	}
	if err == nil && left[n.ID] {
		return Node{ID: n.ID}, s.leftErr(n.ID)
	}
	if err != nil {
		s.noteTamper(err)
		if errors.Is(err, ErrTampered) {
			return n, err
		}
		return n, s.dbErr("read node", err)
	}
	return n, s.verifyNode(&n, key)
}

// writeNode writes n's row under a fresh MAC: inserted when n.ID is 0
// (the new id returned), updated otherwise.
func (s *Store) writeNode(ctx context.Context, tx *sql.Tx, n *Node) (int64, error) {
	key, err := s.nodeKey(ctx)
	if err != nil {
		return 0, err
	}
	if n.ID == 0 {
		// The id is in the MAC: take it first, then write the row whole.
		err := tx.QueryRowContext(ctx, `INSERT INTO nodes (tpm_id, sealed, import_key, anchor, joined_at, last_seen, mac)
			VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`, n.TPMID, n.Sealed, n.ImportKey, n.anchor, n.Joined.Unix(), n.LastSeen.Unix(), make([]byte, 32)).Scan(&n.ID)
		if err != nil {
			if s.eng.unique(err) {
				return 0, errors.New("keystore: this TPM is a node of the domain already")
			}
			return 0, s.dbErr("add node", err)
		}
		left, err := s.nodesLeft(ctx, tx)
		if err != nil {
			return 0, err
		}
		if left[n.ID] {
			// Ids are never reused: the sequence was set back.
			return 0, s.leftErr(n.ID)
		}
	}
	n.mac = n.sum(key)
	res, err := tx.ExecContext(ctx, `UPDATE nodes SET tpm_id = ?, sealed = ?, import_key = ?, anchor = ?, joined_at = ?, last_seen = ?, mac = ? WHERE id = ?`,
		n.TPMID, n.Sealed, n.ImportKey, n.anchor, n.Joined.Unix(), n.LastSeen.Unix(), n.mac, n.ID)
	if err != nil {
		return 0, s.dbErr("write node", err)
	}
	if k, err := res.RowsAffected(); err == nil && k != 1 {
		return 0, ErrNotFound
	}
	return n.ID, nil
}

// AddNode adds a node to the domain and returns its id. The root must be
// attached (the row's MAC is the domain's).
func (s *Store) AddNode(ctx context.Context, spec NodeSpec) (int64, error) {
	return s.addNode(ctx, spec, true)
}

// addNode adds a node's row; joining refuses a master key rotation under
// way (ErrRotationPending), whose copies of the next master key were
// made for the nodes there were when it began.
func (s *Store) addNode(ctx context.Context, spec NodeSpec, joining bool) (int64, error) {
	n, err := newNodeRow(spec)
	if err != nil {
		return 0, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// Exclusive: a PIN record written at the same time either saw this
	// node (and made its binding) or commits before the node exists,
	// and so before it binds the records it reads (pindup.go).
	if err := s.eng.lockNodes(ctx, tx, true); err != nil {
		return 0, s.dbErr("lock nodes", err)
	}
	if joining {
		var pending bool
		if err := tx.QueryRowContext(ctx, "SELECT next_sealed IS NOT NULL FROM root WHERE id = 1").Scan(&pending); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, s.dbErr("read root", err)
		}
		if pending {
			return 0, ErrRotationPending
		}
	}
	id, err := s.writeNode(ctx, tx, n)
	if err != nil {
		return 0, err
	}
	return id, s.dbErr("commit node", tx.Commit())
}

// newNodeRow is the row of a node joining now, range-checked.
func newNodeRow(spec NodeSpec) (*Node, error) {
	now := time.Now().Truncate(time.Second)
	n := &Node{TPMID: spec.TPMID, Sealed: spec.Sealed, ImportKey: spec.ImportKey, Joined: now, LastSeen: now}
	if len(n.TPMID) < 3 || len(n.TPMID) > 66 || len(n.Sealed) == 0 || len(n.Sealed) > maxNodeBlob || len(n.ImportKey) > maxNodeBlob {
		return nil, errors.New("keystore: a node's TPM identity, sealed key or import key out of range")
	}
	if len(n.ImportKey) == 0 {
		n.ImportKey = nil
	}
	return n, nil
}

// AdoptNode gives a keystore with no node its first: this TPM, with the
// root record's sealed key (a keystore from before nodes, or one just
// provisioned), anchored where the anchor record says. It returns the id; a keystore with nodes is left as it is.
func (s *Store) AdoptNode(ctx context.Context, tpmID, importKey []byte) (int64, bool, error) {
	if n, err := s.NodeCount(ctx); err != nil || n > 0 {
		return 0, false, err
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return 0, false, err
	}
	id, err := s.addNode(ctx, NodeSpec{TPMID: tpmID, Sealed: rec.Sealed, ImportKey: importKey}, false)
	if err != nil {
		return 0, false, err
	}
	// The anchor record's point becomes the node's: it is the counter
	// this TPM anchored the keystore in.
	st, _, ok, err := s.readAnchor(ctx, s.r)
	if err != nil || !ok || st.anchored == 0 {
		return id, true, err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	n, err := s.readNode(ctx, tx, id)
	if err != nil {
		return 0, false, err
	}
	n.anchor = encodeNodeAnchor(st.handle, st.anchored, st.anchoredGen)
	if _, err := s.writeNode(ctx, tx, &n); err != nil {
		return 0, false, err
	}
	return id, true, s.dbErr("commit node", tx.Commit())
}

// AttachNode makes id this Store's node once its row authenticates: its
// PIN bindings are the ones PIN checks use, its anchor point the one
// anchoring reads and writes, and Heartbeat updates it. A row that fails
// is recorded (tamper.detected) and refused: this node does not start on
// it, and no other node is affected.
func (s *Store) AttachNode(ctx context.Context, id int64) error {
	n, err := s.readNode(ctx, s.r, id)
	if err != nil {
		if errors.Is(err, ErrTampered) {
			aerr := s.AuditTamper(ctx)
			return errors.Join(fmt.Errorf("keystore: this node's row (node %d) failed its integrity check; this node does not start on it (the other nodes are unaffected): leave and join again, or restore the row: %w", id, err), aerr)
		}
		return err
	}
	s.nodes.mu.Lock()
	s.nodes.local, s.nodes.tpmID = id, n.TPMID
	s.nodes.mu.Unlock()
	return nil
}

// LocalNode is this Store's node id, 0 before AttachNode.
func (s *Store) LocalNode() int64 {
	s.nodes.mu.Lock()
	defer s.nodes.mu.Unlock()
	return s.nodes.local
}

// updateLocalNode rewrites this node's row with change applied, in tx.
func (s *Store) updateLocalNode(ctx context.Context, tx *sql.Tx, change func(n *Node)) error {
	id := s.LocalNode()
	if id == 0 {
		return errors.New("keystore: no node attached")
	}
	n, err := s.readNode(ctx, tx, id)
	if err != nil {
		return err
	}
	change(&n)
	_, err = s.writeNode(ctx, tx, &n)
	return err
}

// Heartbeat records that this node is alive now.
func (s *Store) Heartbeat(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := s.updateLocalNode(ctx, tx, func(n *Node) { n.LastSeen = time.Now().Truncate(time.Second) }); err != nil {
		return err
	}
	return s.dbErr("commit node", tx.Commit())
}

// PublishImportKey gives this node's row the import key ik, when it has
// none (a node that joined before import keys existed): from then on the
// other nodes make it copies of the master key a rotation moves to, and
// duplication blobs of the PIN records they write. Under the nodes' lock,
// exclusive as for a join: a PIN record written meanwhile either saw the
// key or was committed before it. It reports whether it wrote.
func (s *Store) PublishImportKey(ctx context.Context, ik []byte) (bool, error) {
	if len(ik) == 0 || len(ik) > maxNodeBlob {
		return false, errors.New("keystore: an import key out of range")
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := s.eng.lockNodes(ctx, tx, true); err != nil {
		return false, s.dbErr("lock nodes", err)
	}
	wrote := false
	if err := s.updateLocalNode(ctx, tx, func(n *Node) {
		if len(n.ImportKey) == 0 {
			n.ImportKey, wrote = bytes.Clone(ik), true
		}
	}); err != nil {
		return false, err
	}
	if !wrote {
		return false, nil
	}
	return true, s.dbErr("commit node", tx.Commit())
}

// SetNodeSealed replaces this node's sealed master key: after a master
// key rotation made on this node, its TPM holds the new one.
func (s *Store) SetNodeSealed(ctx context.Context, sealed []byte) error {
	return s.setNodeSealed(ctx, sealed, nil)
}

// setNodeSealed replaces this node's sealed master key and runs also, if
// given, in the same transaction.
func (s *Store) setNodeSealed(ctx context.Context, sealed []byte, also func(*sql.Tx) error) error {
	if len(sealed) == 0 || len(sealed) > maxNodeBlob {
		return errors.New("keystore: a sealed master key out of range")
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := s.updateLocalNode(ctx, tx, func(n *Node) { n.Sealed = bytes.Clone(sealed) }); err != nil {
		return err
	}
	if also != nil {
		if err := also(tx); err != nil {
			return err
		}
	}
	return s.dbErr("commit node", tx.Commit())
}

// RemoveNode removes node id from the domain, with its PIN bindings, and
// records it (node.leave). The last node that authenticates cannot leave
// (ErrLastNode). The node's TPM keeps the master key it loaded until it is
// cleared: leaving stops it opening the domain through hsmemu, and a
// master key rotation is what retires the key itself.
func (s *Store) RemoveNode(ctx context.Context, actor AuditActor, id int64) error {
	list, err := s.Nodes(ctx)
	if err != nil {
		return err
	}
	found, others := false, 0
	for _, n := range list {
		switch {
		case n.ID == id:
			found = true
		case n.Tampered == nil:
			others++
		}
	}
	if !found {
		return ErrNotFound
	}
	if others == 0 {
		return ErrLastNode
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// Exclusive: no PIN record is being written with a binding for it.
	if err := s.eng.lockNodes(ctx, tx, true); err != nil {
		return s.dbErr("lock nodes", err)
	}
	// The bindings and master key copies first: a database without
	// foreign keys on still drops them with the node.
	for _, q := range []string{"DELETE FROM pin_bindings WHERE node_id = ?", "DELETE FROM node_masters WHERE node_id = ?"} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return s.dbErr("remove node", err)
		}
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM nodes WHERE id = ?", id); err != nil {
		return s.dbErr("remove node", err)
	}
	if err := s.recordNodesLeft(ctx, tx, id); err != nil {
		return err
	}
	if err := s.dbErr("commit", tx.Commit()); err != nil {
		return err
	}
	_, err = s.Audit(ctx, actor, "node.leave", map[string]string{"node": strconv.FormatInt(id, 10)})
	return err
}

// ForgetNode removes node id and its PIN bindings without a record: a
// join that failed half way takes back the row it added.
func (s *Store) ForgetNode(ctx context.Context, id int64) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := s.eng.lockNodes(ctx, tx, true); err != nil {
		return s.dbErr("lock nodes", err)
	}
	for _, q := range []string{"DELETE FROM pin_bindings WHERE node_id = ?", "DELETE FROM node_masters WHERE node_id = ?", "DELETE FROM nodes WHERE id = ?"} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return s.dbErr("forget node", err)
		}
	}
	// Its TPM may hold the master key (a join taken back after loading
	// it): its row put back is refused as any node's that left.
	if err := s.recordNodesLeft(ctx, tx, id); err != nil {
		return err
	}
	return s.dbErr("commit", tx.Commit())
}

// ReplaceNodes makes spec the domain's one node, for `hsmemu domain
// recover` on a keystore in PostgreSQL whose nodes' TPMs are lost: in one
// transaction, every node row (tampered ones too) is removed with its PIN
// bindings and master key copies, the new row added, and the change
// recorded (node.recover: the new node, its TPM, the nodes replaced,
// beside detail). It returns the new node's id and the ids removed. The
// root must be attached.
func (s *Store) ReplaceNodes(ctx context.Context, actor AuditActor, spec NodeSpec, detail map[string]string) (int64, []int64, error) {
	n, err := newNodeRow(spec)
	if err != nil {
		return 0, nil, err
	}
	var removed []int64
	note := &AuditNote{Actor: actor, Event: "node.recover"}
	err = s.writeAuditedTx(ctx, note, func(tx *sql.Tx) error {
		// Exclusive, as adding and removing a node take it: no PIN record
		// is being written with a binding for a node going away.
		if err := s.eng.lockNodes(ctx, tx, true); err != nil {
			return s.dbErr("lock nodes", err)
		}
		var err error
		if removed, err = s.nodeIDs(ctx, tx); err != nil {
			return err
		}
		// The bindings and master key copies first: a database without
		// foreign keys on still drops them with the nodes.
		for _, q := range []string{"DELETE FROM pin_bindings", "DELETE FROM node_masters", "DELETE FROM nodes"} {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return s.dbErr("replace nodes", err)
			}
		}
		if err := s.recordNodesLeft(ctx, tx, removed...); err != nil {
			return err
		}
		id, err := s.writeNode(ctx, tx, n)
		if err != nil {
			return err
		}
		ids := make([]string, len(removed))
		for i, r := range removed {
			ids[i] = strconv.FormatInt(r, 10)
		}
		note.Detail = map[string]string{"node": strconv.FormatInt(id, 10), "tpm": ShortTPMID(n.TPMID), "replaced": strings.Join(ids, ",")}
		for k, v := range detail {
			note.Detail[k] = v
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return n.ID, removed, nil
}

// DropNodes removes every node and PIN binding, for a keystore copied
// into a new TPM (`hsmemu domain recover`), whose one node is added then.
func (s *Store) DropNodes(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	ids, err := s.nodeIDs(ctx, tx)
	if err != nil {
		return err
	}
	for _, q := range []string{"DELETE FROM pin_bindings", "DELETE FROM node_masters", "DELETE FROM nodes"} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return s.dbErr("drop nodes", err)
		}
	}
	if err := s.recordNodesLeft(ctx, tx, ids...); err != nil {
		return err
	}
	return s.dbErr("commit", tx.Commit())
}

func encodeNodeAnchor(handle uint32, anchored, gen uint64) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 0, nodeAnchorLen), handle)
	b = binary.BigEndian.AppendUint64(b, anchored)
	return binary.BigEndian.AppendUint64(b, gen)
}

// ShortTPM is the node's TPM identity fit to show: the first 8 bytes of
// its SRK name's digest, in hex.
func (n *Node) ShortTPM() string { return ShortTPMID(n.TPMID) }

// ShortTPMID is ShortTPM of an SRK name.
func ShortTPMID(name []byte) string {
	if len(name) > 2 {
		name = name[2:] // the name's hash algorithm
	}
	if len(name) > 8 {
		name = name[:8]
	}
	return fmt.Sprintf("%x", name)
}
