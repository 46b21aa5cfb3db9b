package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"hsmemu/daemon/admin"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// A master key rotation has two steps. BeginMasterRotation makes the new
// master key in the TPM (split to custodians when the domain is
// escrowed), records it beside the current one and returns the shares;
// FinishMasterRotation moves every token to it online
// (keystore.RotateMaster) and flushes the old one. Between the two, the
// administrator's command writes the shares out, so that no new master key
// becomes the only one before its shares exist. An unfinished rotation is
// finished by the next FinishMasterRotation or the daemon's next start.

// BeginMasterRotation makes and records the next master key and returns
// its generation and, with custodians, their shares of it.
// keystore.ErrRotationPending means one is under way: finish it.
func (s *State) BeginMasterRotation(ctx context.Context, esc tpmroot.ProvisionOptions) (uint32, []escrow.EncryptedShare, error) {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	rec, err := s.Store.RootRecord(ctx)
	if err != nil {
		return 0, nil, err
	}
	if rec.Next != nil {
		return 0, nil, keystore.ErrRotationPending
	}
	if rec.Escrow != nil && len(esc.Custodians) == 0 {
		return 0, nil, admin.ErrEscrowNeeded
	}
	// A node joining meanwhile makes the keystore refuse the rotation
	// (its copy missing): made again, with one for it.
	var next *tpmroot.Root
	var shares []escrow.EncryptedShare
	for try := 0; ; try++ {
		next, shares, err = s.beginMaster(ctx, esc)
		if !errors.Is(err, keystore.ErrNodesChanged) || try == 2 {
			break
		}
	}
	if err != nil {
		return 0, nil, err
	}
	if err := s.Store.AttachNext(ctx, next, next.DomainID()); err != nil {
		next.Close()
		return 0, nil, err
	}
	s.next = next
	return rec.MasterGeneration + 1, shares, nil
}

// beginMaster makes a new master key in this TPM, with a copy for every
// other node that published an import key (a duplication blob for that
// key: nodes.go, catchUp), and records it as the next one, loaded.
func (s *State) beginMaster(ctx context.Context, esc tpmroot.ProvisionOptions) (*tpmroot.Root, []escrow.EncryptedShare, error) {
	var others []int64
	var newest int64
	esc.ImportKeys = nil
	if s.Node != 0 {
		nodes, err := s.Store.Nodes(ctx)
		if err != nil {
			return nil, nil, err
		}
		for _, n := range nodes {
			newest = max(newest, n.ID)
			if n.ID != s.Node && n.Tampered == nil && len(n.ImportKey) > 0 {
				others = append(others, n.ID)
				esc.ImportKeys = append(esc.ImportKeys, n.ImportKey)
			}
		}
	}
	p, err := s.TPM.Provision(esc)
	if err != nil {
		return nil, nil, fmt.Errorf("make the new master key: %w", err)
	}
	nm := &keystore.NextMaster{Proof: p.Sealed.DomainID, NodeMasters: map[int64][]byte{}, NodesUpTo: newest}
	for i, id := range others {
		if p.Duplicates[i] == nil {
			// Its import key is no key (its row is MACed: that node's
			// own fault): it joins again with shares, as before.
			s.logger().Warn("no copy of the new master key for a node whose import key is unusable", "node", id, "err", p.DuplicateErr[i])
			continue
		}
		nm.NodeMasters[id] = p.Duplicates[i]
	}
	if nm.Sealed, err = p.Sealed.MarshalBinary(); err != nil {
		return nil, nil, err
	}
	if p.Escrowed() {
		if nm.Escrow, err = p.Escrow.MarshalBinary(); err != nil {
			return nil, nil, err
		}
	}
	next, err := s.TPM.Load(p.Sealed)
	if err != nil {
		return nil, nil, err
	}
	if err := s.Store.BeginMasterRotation(ctx, nm); err != nil {
		next.Close()
		return nil, nil, err
	}
	return next, p.Shares, nil
}

// FinishMasterRotation moves the keystore to the master key a rotation
// recorded, and flushes the old one. progress, when not nil, is told how
// many tokens are done. keystore.ErrNoRotation means none is under way.
func (s *State) FinishMasterRotation(ctx context.Context, progress func(done, total int)) (uint32, error) {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	rec, err := s.Store.RootRecord(ctx)
	if err != nil {
		return 0, err
	}
	if rec.Next == nil {
		return 0, keystore.ErrNoRotation
	}
	if s.next == nil {
		// Begun by another run of the daemon, or on another node.
		if err := s.loadNext(ctx, rec); err != nil {
			return 0, err
		}
	}
	if _, err := s.Store.RotateMaster(ctx, progress); err != nil {
		// The next master key stays loaded and attached: the rotation is
		// finished by the next call, or the daemon's next start.
		return 0, err
	}
	s.installNext(ctx, rec.MasterGeneration+1, rec.Next.Sealed)
	return rec.MasterGeneration + 1, nil
}

// loadNext loads the next master key of the rotation rec records, begun
// by another run of the daemon or on another node (whose TPM alone loads
// the key it recorded: this node imports its own copy), and attaches it
// to the keystore.
func (s *State) loadNext(ctx context.Context, rec *keystore.RootRecord) error {
	var sealed tpmroot.Sealed
	if err := sealed.UnmarshalBinary(rec.Next.Sealed); err != nil {
		return fmt.Errorf("read the next master key: %w", err)
	}
	if s.Node != 0 && !bytes.Equal(sealed.SRKName, s.TPM.SRKName()) {
		imported, err := s.importNext(ctx, rec, &sealed)
		if err != nil {
			return err
		}
		sealed = *imported
	}
	next, err := s.TPM.Load(&sealed)
	if err != nil {
		return fmt.Errorf("load the next master key: %w", err)
	}
	if err := s.Store.AttachNext(ctx, next, next.DomainID()); err != nil {
		next.Close()
		return err
	}
	s.next = next
	return nil
}

// installNext makes the next master key the daemon's, the keystore having
// switched to it (generation gen), flushes the old one, and records the
// new one in this node's row: its own copy when it imported one, else
// sealed (the key this node's TPM made, as the root record holds it);
// nil sealed leaves the row to the caller.
func (s *State) installNext(ctx context.Context, gen uint32, sealed []byte) {
	old := s.Root
	s.Root, s.next = s.next, nil
	if old != nil {
		old.Close()
	}
	switch {
	case s.nextOwn != nil:
		// Imported from this node's copy: its row holds it now, and
		// the copy goes. Should this fail, the next start imports the
		// copy again (loadNodeMaster), and records it then.
		if err := s.Store.AdoptNodeMaster(ctx, gen, s.nextOwn); err != nil {
			s.logger().Warn("recording the new master key in this node's row failed; the next start does it", "err", err)
		} else if _, err := s.Store.Audit(ctx, adminActor(), "node.master", map[string]string{"node": fmt.Sprint(s.Node), "generation": fmt.Sprint(gen)}); err != nil {
			// As a start that takes its copy records it (keepCatchUp).
			s.logger().Warn("recording node.master in the audit log failed", "err", err)
		}
		s.nextOwn = nil
	case s.Node != 0 && sealed != nil:
		// This node's row holds the new master key now; should this
		// write fail, the next start takes it from the root record,
		// which the rotation switched (loadNodeMaster).
		if err := s.Store.SetNodeSealed(ctx, sealed); err != nil {
			s.logger().Warn("recording the new master key in this node's row failed; the next start does it", "err", err)
		}
	}
}

// importNext takes this node's copy of the next master key of a rotation
// begun on another node (whose TPM alone loads the key it recorded), so
// that this node can finish it: the copy's MAC is checked first (the
// current master key is attached), then its TPM imports it; the imported
// key's sealed form is kept for this node's row once the rotation is
// done. No copy, or one refused, leaves the rotation to the node that
// began it.
func (s *State) importNext(ctx context.Context, rec *keystore.RootRecord, next *tpmroot.Sealed) (*tpmroot.Sealed, error) {
	gen := rec.MasterGeneration + 1
	there := "finish it on the node that began it (`hsmemu rotate master --resume` there, or its next start)"
	blob, mac, err := s.Store.NodeMaster(ctx, s.Node, gen)
	if errors.Is(err, keystore.ErrNotFound) {
		return nil, fmt.Errorf("%w: the master key rotation under way was begun on another node and left no copy of the next master key for this node: %s", tpmroot.ErrWrongTPM, there)
	}
	if err != nil {
		return nil, err
	}
	if err := s.Store.CheckNodeMaster(ctx, s.Node, gen, blob, mac); err != nil {
		return nil, errors.Join(fmt.Errorf("node %d's copy of the next master key (generation %d) failed its integrity check: %s: %w", s.Node, gen, there, err), s.Store.AuditTamper(ctx))
	}
	ik, err := s.Store.NodeImportKey(ctx, s.Node)
	if err != nil {
		return nil, err
	}
	imported, err := s.TPM.ImportMaster(ik, blob, next)
	if err != nil {
		return nil, fmt.Errorf("import this node's copy of the next master key: %s: %w", there, err)
	}
	if s.nextOwn, err = imported.MarshalBinary(); err != nil {
		return nil, err
	}
	return imported, nil
}

// AbortMasterRotation forgets a rotation begun and not yet moving the
// keystore (keystore.ErrRotationStarted otherwise), and flushes its key.
func (s *State) AbortMasterRotation(ctx context.Context) error {
	s.rotateMu.Lock()
	defer s.rotateMu.Unlock()
	if err := s.Store.AbortMasterRotation(ctx); err != nil {
		return err
	}
	s.dropNext()
	return nil
}
