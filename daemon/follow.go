package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"hsmemu/keystore"
)

// A master key rotation made on another node, followed while this one
// serves (keystore/follow.go). When the rotation begins, this node
// imports the copy of the next master key the rotating node left for its
// import key and attaches it, so that the tokens the rotation moves keep
// opening here, their logins kept; when the rotation switches the domain,
// this node makes that key its own: the old one flushed, its row
// rewritten. A node that saw neither (its notifications lost) imports its
// copy of the current key at the switch, as it would at a start
// (catchUp). What cannot be followed (no copy for this node) is logged
// and leaves the node as a start would: told to join again.

// MasterFollowInterval is how often a serving node reads the root record
// for a rotation it was not told of.
const MasterFollowInterval = 5 * time.Second

// followMaster brings this node up to the rotation the keystore records:
// the keystore's follower (Store.SetMasterFollower) and RunMasterFollow's
// step. Calls are one at a time; a rotation step of this process's own
// (s.rotateMu held) has nothing of another's to follow.
func (s *State) followMaster(ctx context.Context) error {
	s.followMu.Lock()
	defer s.followMu.Unlock()
	if !s.rotateMu.TryLock() {
		return nil
	}
	defer s.rotateMu.Unlock()
	rec, err := s.Store.RootRecord(ctx)
	if err != nil {
		return err
	}
	cur := s.Store.MasterGeneration()
	switch {
	case rec.MasterGeneration > cur:
		return s.followSwitch(ctx, rec, cur)
	case rec.MasterGeneration == cur && rec.Next != nil && (s.next == nil || !bytes.Equal(s.next.DomainID(), rec.Next.Proof)):
		// One held is of a rotation abandoned since, and another begun:
		// its key would derive wrong keys for the tokens this one moves.
		s.dropNext()
		if err := s.loadNext(ctx, rec); err != nil {
			return fmt.Errorf("take the next master key of the rotation under way: %w", err)
		}
		s.logger().Info("took the next master key of a rotation begun on another node", "node", s.Node, "generation", cur+1)
	case rec.MasterGeneration == cur && rec.Next == nil && s.next != nil:
		// Abandoned on another node.
		s.dropNext()
		s.logger().Info("dropped the next master key of a rotation abandoned on another node", "node", s.Node)
	}
	return nil
}

// followSwitch makes the master key the domain switched to (rec) this
// node's, the keystore being on generation cur.
func (s *State) followSwitch(ctx context.Context, rec *keystore.RootRecord, cur uint32) error {
	if s.next == nil || rec.MasterGeneration != cur+1 || !bytes.Equal(s.next.DomainID(), rec.Proof) {
		// The rotation's beginning went by unseen: this node's copy of
		// the key it switched to, as at a start.
		s.dropNext()
		sealed, _, err := s.currentMaster(ctx, rec)
		if err != nil {
			return err
		}
		next, err := s.TPM.Load(sealed)
		if err != nil {
			s.nodeCatchUp = nil
			return fmt.Errorf("load the domain's new master key: %w", err)
		}
		s.next = next
	}
	if _, err := s.Store.FollowMaster(ctx, s.next, s.next.DomainID()); err != nil {
		s.dropNext()
		s.nodeCatchUp = nil
		return fmt.Errorf("take the domain's new master key: %w", err)
	}
	row := rec.Sealed
	if s.nodeCatchUp != nil {
		row = nil // keepCatchUp, below, once the copy's MAC checks
	}
	s.installNext(ctx, rec.MasterGeneration, row)
	s.logger().Info("took the master key a rotation on another node switched the domain to", "node", s.Node, "generation", rec.MasterGeneration)
	if s.nodeCatchUp != nil {
		// The key's MAC is checked now that the domain's keys are the
		// new master's; one that fails is audited, and kept out of this
		// node's row, so its next start refuses it.
		if err := s.keepCatchUp(ctx); err != nil {
			s.nodeCatchUp = nil
			return err
		}
	}
	return nil
}

// dropNext forgets the next master key this node holds, if any:
// detached from the keystore and flushed from the TPM.
func (s *State) dropNext() {
	if s.next != nil {
		s.Store.DetachNext()
		s.next.Close()
	}
	s.next, s.nextOwn = nil, nil
}

// RunMasterFollow follows master key rotations made on other nodes until
// ctx ends: at each change of the domain's rows the keystore reports, and
// every interval in case a notification was lost. A keystore that is not
// shared (SQLite) has nothing to follow. Failures are logged, once per
// distinct error, and tried again.
func (s *State) RunMasterFollow(ctx context.Context, every time.Duration) {
	if s.Store == nil || s.Node == 0 || s.DBPath != "" {
		return
	}
	if every <= 0 {
		every = MasterFollowInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.Store.MasterChanges():
		}
		err := s.followMaster(ctx)
		switch {
		case err == nil:
			last = ""
		case ctx.Err() != nil:
			return
		case err.Error() != last:
			last = err.Error()
			s.logger().Error("following the master key rotation made on another node failed", "err", err)
		}
	}
}

// follower is the keystore's MasterFollower: a step of followMaster,
// asked for by a read that met a token under a master key this node does
// not hold yet.
func (s *State) follower(ctx context.Context) error {
	err := s.followMaster(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		s.logger().Warn("following the master key rotation made on another node failed", "err", err)
	}
	return err
}
