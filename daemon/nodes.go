package daemon

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// The nodes of the domain (keystore/nodes.go): each TPM that holds the
// master key has a row, found by its SRK's name, with its own sealed copy
// of the master key. `hsmemu init` makes node 1; `hsmemu domain join`
// (JoinState) adds another machine's TPM from custodians' shares, and
// `hsmemu domain recover --db` (RecoverPostgres, recoverpg.go) makes one
// the only node when every node's TPM is lost; a keystore from before
// nodes gets its one row at its next open.

// ErrNotANode is OpenState's error for a TPM that is not a node of the
// domain in the keystore. It wraps keystore.ErrNotANode and
// tpmroot.ErrWrongTPM: the keystore's master key is sealed to other TPMs.
var ErrNotANode = fmt.Errorf("%w (%w)", keystore.ErrNotANode, tpmroot.ErrWrongTPM)

// HeartbeatInterval is how often a serving node records it is alive.
const HeartbeatInterval = 30 * time.Second

// shortTPM is a TPM identity fit to show (keystore.ShortTPMID).
func shortTPM(name []byte) string { return keystore.ShortTPMID(name) }

// loadNodeMaster loads this TPM's master key: from its node row, or, in a
// keystore from before nodes, from the root record. A TPM with no row is
// refused (ErrNotANode), writing nothing. A row whose sealed key is of a
// master key a rotation replaced is brought up to date from the root
// record when the rotation was made on this TPM; otherwise from the copy
// the rotation left for this node (catchUp), and failing that the node
// must join again.
func (s *State) loadNodeMaster(ctx context.Context, rec *keystore.RootRecord) (*tpmroot.Root, error) {
	sealedBytes := rec.Sealed
	n, err := s.Store.NodeCount(ctx)
	if err != nil {
		return nil, err
	}
	srk := s.TPM.SRKName()
	if n > 0 {
		var id int64
		id, sealedBytes, err = s.Store.NodeSealed(ctx, srk)
		if errors.Is(err, keystore.ErrNotANode) {
			hint := "`hsmemu domain join --db ... --share FILE:KEY ...` adds it from the custodians' shares (`hsmemu domain recover --db ...` instead, if every node's TPM is lost)"
			if s.DBPath != "" {
				hint = "a domain in SQLite has one node: `hsmemu domain recover` moves it to a new TPM"
			}
			return nil, fmt.Errorf("%w: this machine's TPM (SRK %s) is not one of the domain's %d node(s); %s", ErrNotANode, shortTPM(srk), n, hint)
		}
		if err != nil {
			return nil, err
		}
		s.Node = id
	}
	var sealed tpmroot.Sealed
	if err := sealed.UnmarshalBinary(sealedBytes); err != nil {
		return nil, fmt.Errorf("read this node's sealed master key: %w", err)
	}
	if n > 0 && !bytes.Equal(sealed.DomainID, rec.Proof) {
		// Not the current master key: a rotation replaced it.
		cur, imported, err := s.currentMaster(ctx, rec)
		if err != nil {
			return nil, err
		}
		sealed = *cur
		if !imported {
			s.nodeFresh = rec.Sealed
		}
	}
	return s.TPM.Load(&sealed)
}

// currentMaster is the current master key's sealed form for this node's
// TPM: the root record's, when this TPM made it (a rotation made on this
// node); otherwise this node's copy of it, imported (catchUp: imported
// true, its MAC checked once attached).
func (s *State) currentMaster(ctx context.Context, rec *keystore.RootRecord) (_ *tpmroot.Sealed, imported bool, _ error) {
	var cur tpmroot.Sealed
	if err := cur.UnmarshalBinary(rec.Sealed); err != nil {
		return nil, false, fmt.Errorf("read stored master key: %w", err)
	}
	if bytes.Equal(cur.SRKName, s.TPM.SRKName()) {
		return &cur, false, nil
	}
	c, err := s.catchUp(ctx, rec, &cur)
	return c, true, err
}

// nodeCatchUp is a master key this node imported at its start from the
// blob a rotation on another node left for it, to check and keep once
// the keystore is attached (attachNode).
type nodeCatchUp struct {
	gen       uint32
	blob, mac []byte
	sealed    []byte
}

// catchUp brings this node up to a master key rotation made on another
// node while it was away: it imports, under its import key, the blob the
// rotation left for it (keystore/nodemasters.go), and returns the
// imported key, which Load then checks computes the domain's proof. The
// blob's MAC is checked, and the node's row rewritten, once the key is
// attached. No blob (a node without an import key, or one the rotation
// did not know), or one the TPM refuses, leaves the node to join again
// with the current master key's shares; nothing is written.
func (s *State) catchUp(ctx context.Context, rec *keystore.RootRecord, cur *tpmroot.Sealed) (*tpmroot.Sealed, error) {
	rejoin := fmt.Sprintf("join again with the current master key's shares (`hsmemu domain leave %d`, then `hsmemu domain join`)", s.Node)
	ik, err := s.Store.NodeImportKey(ctx, s.Node)
	if err != nil {
		return nil, err
	}
	blob, mac, err := s.Store.NodeMaster(ctx, s.Node, rec.MasterGeneration)
	if errors.Is(err, keystore.ErrNotFound) || (err == nil && len(ik) == 0) {
		return nil, fmt.Errorf("%w: node %d's sealed master key is of a master key a rotation replaced (generation %d is current), and the rotation, made on another node, left no copy of the new one for this node: %s",
			tpmroot.ErrWrongTPM, s.Node, rec.MasterGeneration, rejoin)
	}
	if err != nil {
		return nil, err
	}
	imported, err := s.TPM.ImportMaster(ik, blob, cur)
	if errors.Is(err, tpmroot.ErrMasterDupRefused) {
		return nil, fmt.Errorf("%w: node %d's copy of the current master key (generation %d) is refused by its TPM (altered, or not made for this node's import key): %s: %w",
			tpmroot.ErrWrongTPM, s.Node, rec.MasterGeneration, rejoin, err)
	}
	if err != nil {
		return nil, fmt.Errorf("import this node's copy of the current master key: %w", err)
	}
	b, err := imported.MarshalBinary()
	if err != nil {
		return nil, err
	}
	s.nodeCatchUp = &nodeCatchUp{gen: rec.MasterGeneration, blob: blob, mac: mac, sealed: b}
	return imported, nil
}

// keepCatchUp checks the MAC of the blob catchUp imported, now that the
// domain's keys are attached, and makes the imported key this node's:
// its row rewritten, the blob dropped, node.master recorded. A blob that
// fails is recorded (tamper.detected, kind "node master") and this node
// does not start.
func (s *State) keepCatchUp(ctx context.Context) error {
	c := s.nodeCatchUp
	if err := s.Store.CheckNodeMaster(ctx, s.Node, c.gen, c.blob, c.mac); err != nil {
		if errors.Is(err, keystore.ErrTampered) {
			aerr := s.Store.AuditTamper(ctx)
			return errors.Join(fmt.Errorf("node %d's copy of the current master key (generation %d) failed its integrity check; this node does not start on it: join again with the current master key's shares (`hsmemu domain leave %d`, then `hsmemu domain join`): %w",
				s.Node, c.gen, s.Node, err), aerr)
		}
		return err
	}
	if err := s.Store.AdoptNodeMaster(ctx, c.gen, c.sealed); err != nil {
		return fmt.Errorf("record the imported master key in this node's row: %w", err)
	}
	s.nodeCatchUp = nil
	s.logger().Info("took the master key a rotation on another node left for this node", "node", s.Node, "generation", c.gen)
	_, err := s.Store.Audit(ctx, adminActor(), "node.master", map[string]string{"node": fmt.Sprint(s.Node), "generation": fmt.Sprint(c.gen)})
	return err
}

// attachNode makes the keystore's node this TPM's row, adopting the
// root record's sealed key as node 1 in a keystore from before nodes.
func (s *State) attachNode(ctx context.Context) error {
	if s.Node == 0 {
		ik, err := s.importKey()
		if err != nil {
			return err
		}
		id, adopted, err := s.Store.AdoptNode(ctx, s.TPM.SRKName(), ik)
		if err != nil {
			return fmt.Errorf("record this TPM as the domain's node: %w", err)
		}
		if !adopted {
			// Provisioned by this open, or raced: find the row again.
			if id, _, err = s.Store.NodeSealed(ctx, s.TPM.SRKName()); err != nil {
				return err
			}
		} else {
			s.logger().Info("recorded this TPM as the domain's node", "node", id, "tpm", shortTPM(s.TPM.SRKName()))
		}
		s.Node = id
	}
	if err := s.Store.AttachNode(ctx, s.Node); err != nil {
		return err
	}
	if err := s.publishImportKey(ctx); err != nil {
		return err
	}
	if s.nodeFresh != nil || s.nodeCatchUp != nil {
		// This node's row is about to take the root record's master key
		// in place of the one it holds: only if a rotation did switch
		// the domain to it (not a root record edited to say so).
		if err := s.Store.CheckSwitched(ctx); err != nil {
			if errors.Is(err, keystore.ErrTampered) {
				aerr := s.Store.AuditTamper(ctx)
				return errors.Join(fmt.Errorf("the root record names a master key (generation %d) no rotation switched the domain to; node %d keeps its row as it is and does not start: %w",
					s.Store.MasterGeneration(), s.Node, err), aerr)
			}
			return err
		}
	}
	if s.nodeFresh != nil {
		if err := s.Store.SetNodeSealed(ctx, s.nodeFresh); err != nil {
			return err
		}
		s.nodeFresh = nil
	}
	if s.nodeCatchUp != nil {
		if err := s.keepCatchUp(ctx); err != nil {
			return err
		}
	}
	return s.Store.Heartbeat(ctx)
}

// publishImportKey gives this node's row an import key if it has none
// (it joined before import keys existed): the other nodes then send it
// what they make for it (master keys, PIN records written from then on).
func (s *State) publishImportKey(ctx context.Context) error {
	have, err := s.Store.NodeImportKey(ctx, s.Node)
	if err != nil || len(have) > 0 {
		return err
	}
	ik, err := s.importKey()
	if err != nil {
		return err
	}
	wrote, err := s.Store.PublishImportKey(ctx, ik)
	if err != nil {
		return fmt.Errorf("publish this node's import key: %w", err)
	}
	if wrote {
		s.logger().Info("published this node's import key: PIN records written from now on log in here", "node", s.Node)
	}
	return nil
}

// importKey creates this TPM's import key, encoded for the node row.
func (s *State) importKey() ([]byte, error) {
	ik, err := s.TPM.CreateImportKey()
	if err != nil {
		return nil, err
	}
	return ik.MarshalBinary()
}

// RunHeartbeat records every interval that this node is alive, until
// ctx ends. Failures are logged and tried again at the next tick.
func (s *State) RunHeartbeat(ctx context.Context, every time.Duration) {
	if s.Store == nil || s.Node == 0 {
		return
	}
	if every <= 0 {
		every = HeartbeatInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.Store.Heartbeat(ctx); err != nil && ctx.Err() == nil {
			s.logger().Warn("recording this node's heartbeat failed", "err", err)
		}
	}
}

// JoinResult is what JoinState did.
type JoinResult struct {
	Domain []byte
	Node   int64  // the new node's id
	TPM    []byte // its TPM's identity (SRK name)
	// BoundPINs counts the PIN records this node can now check, each
	// through a binding of its own made from the record's recovery copy;
	// UnboundPINs are those it could not (as RecoverResult's).
	BoundPINs    int
	UnboundPINs  []keystore.UnboundPIN
	UnusedShares [][]byte
}

// JoinState adds this machine's TPM (cfg.TPM, its state under cfg.Dir)
// to the domain whose keystore is cfg.DB, a PostgreSQL database: from
// custodians' decrypted shares of the current master key (at least its
// threshold) it recreates the master key in this TPM, creates the node's
// import key, adds the node's row, makes this node's binding of every PIN
// record from its recovery copy (shares of earlier master keys, given
// beside, open copies made before a rotation), and anchors the keystore
// in a counter of this TPM. The daemon that serves the database must be
// stopped meanwhile (one daemon per database, for now).
func JoinState(ctx context.Context, cfg StateConfig, shares []*escrow.Share) (res *JoinResult, err error) {
	if kind, _, err := keystore.ParseDB(cfg.DB); err != nil {
		return nil, err
	} else if kind != keystore.EnginePostgres {
		return nil, errors.New("a domain joins nodes in a PostgreSQL keystore (--db postgres://...); a keystore in SQLite has one node, and `hsmemu domain recover` moves it to a new TPM")
	}
	st, rec, err := openNewNode(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	// The copies of a rotation's next master key are made for the nodes
	// there are when it begins: a node joining during one would get
	// none. AddNode checks again, under the nodes' lock.
	rotating := fmt.Errorf("%w: finish it (`hsmemu rotate master --resume`) before joining", keystore.ErrRotationPending)
	if rec.Next != nil {
		return nil, rotating
	}
	nm, err := st.loadFromShares(ctx, rec, shares)
	if err != nil {
		return nil, err
	}
	srk := st.TPM.SRKName()
	if st.Node, err = st.Store.AddNode(ctx, keystore.NodeSpec{TPMID: srk, Sealed: nm.sealed, ImportKey: nm.importKey}); err != nil {
		if errors.Is(err, keystore.ErrRotationPending) {
			return nil, rotating
		}
		return nil, err
	}
	defer func() {
		if err != nil {
			// Not joined: the row goes, and the join can be made again.
			if ferr := st.Store.ForgetNode(context.Background(), st.Node); ferr != nil {
				err = errors.Join(err, ferr)
			}
		}
	}()
	res = &JoinResult{Domain: rec.DomainID, Node: st.Node, TPM: srk}
	if res.BoundPINs, res.UnboundPINs, res.UnusedShares, err = st.bindNode(ctx, nm); err != nil {
		return nil, err
	}
	if _, err := st.Store.Audit(ctx, adminActor(), "node.join", map[string]string{
		"node": fmt.Sprint(st.Node), "tpm": shortTPM(srk), "pins_bound": fmt.Sprint(res.BoundPINs)}); err != nil {
		return nil, err
	}
	// This node anchors the keystore in a counter of its own TPM, from now.
	if _, _, err := anchor(ctx, st.TPM, st.Store, st.Root.DomainID(), "domain join", st.logger()); err != nil {
		return nil, fmt.Errorf("anchor the keystore in this TPM: %w", err)
	}
	return res, nil
}

// openNewNode opens cfg's TPM (its state under cfg.Dir) and the domain's
// keystore cfg.DB, for the TPM to become a node of it (JoinState,
// RecoverPostgres): the keystore must hold a domain, and the TPM must not
// be one of its nodes yet. The caller closes the State.
func openNewNode(ctx context.Context, cfg StateConfig) (_ *State, _ *keystore.RootRecord, err error) {
	if cfg.Dir == "" {
		return nil, nil, errors.New("no state directory given")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create state directory: %w", err)
	}
	spec, err := cfg.tpmSpec()
	if err != nil {
		return nil, nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	st := &State{Spec: spec, log: log}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if st.TPM, err = tpmroot.OpenWith(ctx, spec, tpmroot.Options{Logger: log}); err != nil {
		return nil, nil, err
	}
	if err := configureManagedDA(st.TPM, spec, cfg.DA, log); err != nil {
		return nil, nil, err
	}
	if st.Store, err = keystore.OpenDB(ctx, cfg.DB, cfg.Store); err != nil {
		return nil, nil, err
	}
	rec, err := st.Store.RootRecord(ctx)
	if errors.Is(err, keystore.ErrNotProvisioned) {
		return nil, nil, errors.New("the database holds no security domain: `hsmemu init --db ...` creates one")
	}
	if err != nil {
		return nil, nil, err
	}
	srk := st.TPM.SRKName()
	if _, _, err := st.Store.NodeSealed(ctx, srk); err == nil {
		return nil, nil, fmt.Errorf("%w: this machine's TPM (SRK %s) is a node of the domain already", ErrAlreadyProvisioned, shortTPM(srk))
	} else if !errors.Is(err, keystore.ErrNotANode) {
		return nil, nil, err
	}
	return st, rec, nil
}

// newNodeMaster is the master key a new node recreated from custodians'
// shares: its sealed form for the node's row, the node's import key, and
// the PIN recovery keys the shares gave (the current master key's first,
// then those of earlier ones, olderIDs).
type newNodeMaster struct {
	sealed, importKey []byte
	keys              []*ecdh.PrivateKey
	olderIDs          [][]byte
}

// loadFromShares recreates the keystore's current master key in this
// TPM from custodians' decrypted shares (at least its threshold; shares
// of earlier master keys beside them open older PIN records' recovery
// copies), checks it computes the domain's proof, loads it and attaches
// the keystore, and creates this TPM's import key. Nothing is written.
func (st *State) loadFromShares(ctx context.Context, rec *keystore.RootRecord, shares []*escrow.Share) (*newNodeMaster, error) {
	current, olderIDs, older, err := sortShares(rec, shares)
	if err != nil {
		return nil, err
	}
	keys, err := recoveryKeys(current, olderIDs, older)
	if err != nil {
		return nil, err
	}
	sealed, err := st.TPM.Recover(current)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sealed.DomainID, rec.Proof) {
		return nil, errors.New("the shares recreate another master key than the domain's")
	}
	b, err := sealed.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if st.Root, err = st.TPM.Load(sealed); err != nil {
		return nil, err
	}
	if err := st.Store.Attach(ctx, st.Root, st.Root.DomainID()); err != nil {
		return nil, err
	}
	ik, err := st.importKey()
	if err != nil {
		return nil, err
	}
	return &newNodeMaster{sealed: b, importKey: ik, keys: keys, olderIDs: olderIDs}, nil
}

// bindNode attaches the keystore to st.Node, the row just written for
// this TPM, and makes this node's binding of every PIN record from its
// recovery copy (keystore.BindNodePINs). It returns how many it bound,
// those it could not, and the earlier master keys whose shares opened
// none.
func (st *State) bindNode(ctx context.Context, nm *newNodeMaster) (bound int, left []keystore.UnboundPIN, unused [][]byte, err error) {
	if err := st.Store.AttachNode(ctx, st.Node); err != nil {
		return 0, nil, nil, err
	}
	var used []int
	if bound, left, used, err = st.Store.BindNodePINs(ctx, nm.keys); err != nil {
		return 0, nil, nil, fmt.Errorf("bind the PIN records in this TPM: %w", err)
	}
	for i := 1; i < len(nm.keys); i++ {
		if used[i] == 0 {
			unused = append(unused, nm.olderIDs[i-1])
		}
	}
	return bound, left, unused, nil
}

// sortShares splits shares into the current master key's and earlier
// master keys' (by master key, in the order first given), as domain
// recovery and join take them.
func sortShares(rec *keystore.RootRecord, shares []*escrow.Share) (current []*escrow.Share, olderIDs [][]byte, older map[string][]*escrow.Share, err error) {
	older = map[string][]*escrow.Share{}
	for _, sh := range shares {
		switch {
		case bytes.Equal(sh.DomainID, rec.Proof):
			current = append(current, sh)
		case rec.MasterGeneration == 1:
			return nil, nil, nil, fmt.Errorf("a share of domain %x is not of this keystore's domain %x", sh.DomainID[:8], rec.DomainID[:8])
		default:
			if _, ok := older[string(sh.DomainID)]; !ok {
				olderIDs = append(olderIDs, sh.DomainID)
			}
			older[string(sh.DomainID)] = append(older[string(sh.DomainID)], sh)
		}
	}
	if len(current) == 0 {
		return nil, nil, nil, fmt.Errorf("a share of master key %x is not of this keystore's current master key %x (generation %d): shares of a master key before a rotation are void for recovering it (given beside the current one's, they rebind PIN records not logged in to since)",
			olderIDs[0][:8], rec.Proof[:8], rec.MasterGeneration)
	}
	return current, olderIDs, older, nil
}

// recoveryKeys derives the PIN recovery key of the current master key,
// then of each earlier one, from their shares: older shares that do not
// recombine fail before anything is written.
func recoveryKeys(current []*escrow.Share, olderIDs [][]byte, older map[string][]*escrow.Share) ([]*ecdh.PrivateKey, error) {
	groups := [][]*escrow.Share{current}
	for _, id := range olderIDs {
		groups = append(groups, older[string(id)])
	}
	var keys []*ecdh.PrivateKey
	for _, group := range groups {
		k, err := tpmroot.RecoveryKey(group)
		if err != nil {
			return nil, fmt.Errorf("the shares of master key %x: %w", group[0].DomainID[:8], err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
