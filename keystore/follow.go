package keystore

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/binary"
	"errors"
	"time"
)

// Following a master key rotation made by another Store on the same
// database (another node of the domain, docs/cluster.md). That Store
// rekeys each token under the next master key, then switches the root
// record to it. A Store that keeps serving meanwhile needs the next
// master key too, which only its own TPM can give it (its copy of the
// key, left by the rotating node for its import key): the daemon does
// that, as the Store's follower. The Store asks for it when it meets a
// token rekeyed under a master key it does not hold, when its change
// notifications say the domain's rows changed (MasterChanges), and when
// it finds the root record switched under it (an audit append, a domain
// key gone); the follower then attaches the next key (AttachNext), or
// makes the new one current (FollowMaster). A token's login survives:
// its data key does not change with the master key.

// MasterFollower brings a Store up to the master key rotation recorded in
// its database, if one was made elsewhere: attaching the next master key
// of a rotation under way, or making the one a finished rotation switched
// to current. It returns nil when there is nothing to follow.
type MasterFollower func(ctx context.Context) error

// errMasterMoved is an audit append's error when the root record switched
// to a new master key (and audit epoch) since the Store took its key: the
// record must go under the new epoch's key, once the Store follows.
var errMasterMoved = errors.New("keystore: the master key was rotated on another node; this node has not taken the new key yet")

type followingKey struct{}

// SetMasterFollower registers f, called as described above. Calls are
// not serialised by the Store: f is.
func (s *Store) SetMasterFollower(f MasterFollower) {
	s.mu.Lock()
	s.follower = f
	s.mu.Unlock()
}

// MasterChanges is signalled (never blocking, at most one signal pending)
// when another Store changed the domain's rows, or when changes may have
// been missed: a rotation may have begun, been abandoned or finished.
func (s *Store) MasterChanges() <-chan struct{} { return s.masterCh }

func (s *Store) signalMaster() {
	select {
	case s.masterCh <- struct{}{}:
	default:
	}
}

// followRetry is how long after the follower failed the Store asks it
// again: a node that cannot follow (no copy of the key for it) is not
// asked at every read.
const followRetry = time.Second

// follow asks the follower to bring the Store up to the domain's master
// key. It is not asked again from within itself, nor again within
// followRetry of a failure (that failure is returned).
func (s *Store) follow(ctx context.Context) error {
	s.mu.RLock()
	f, failed, ferr := s.follower, s.followFailed, s.followErr
	s.mu.RUnlock()
	if f == nil || ctx.Value(followingKey{}) != nil {
		return ErrNoRoot
	}
	if ferr != nil && time.Since(failed) < followRetry {
		return ferr
	}
	err := f(context.WithValue(ctx, followingKey{}, true))
	s.mu.Lock()
	s.followFailed, s.followErr = time.Now(), err
	s.mu.Unlock()
	return err
}

// MasterGeneration is the generation of the master key the Store uses.
func (s *Store) MasterGeneration() uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.masterGen
}

// DetachNext forgets the next master key of a rotation abandoned
// elsewhere (AbortMasterRotation on another node); the caller flushes it.
func (s *Store) DetachNext() {
	s.mu.Lock()
	delete(s.roots, s.masterGen+1)
	s.mu.Unlock()
}

// FollowMaster makes root the current master key, the root record having
// switched to it on another Store: proof is root's own report of its
// domain proof, which must be the record's. It returns the generation
// the Store used before (0: it was up to date already), whose key the
// caller may flush: no token is under it any more.
func (s *Store) FollowMaster(ctx context.Context, root Root, proof []byte) (uint32, error) {
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return 0, err
	}
	if subtle.ConstantTimeCompare(rec.Proof, proof) != 1 {
		return 0, ErrWrongDomain
	}
	if rec.MasterGeneration > s.MasterGeneration() {
		if err := s.checkSwitched(ctx, root, rec.MasterGeneration); err != nil {
			return 0, err
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	old := s.masterGen
	if rec.MasterGeneration <= old {
		s.mu.Unlock()
		return 0, nil
	}
	for g := range s.roots {
		if g < rec.MasterGeneration {
			delete(s.roots, g)
		}
	}
	s.roots[rec.MasterGeneration] = root
	s.masterGen, s.escrowed = rec.MasterGeneration, rec.Escrow != nil
	s.mu.Unlock()
	// The new epoch's anchor key: other nodes seal the rows' entries
	// under it.
	return old, s.attachAnchorKeys(ctx)
}

// checkEpoch makes sure, inside a transaction that holds the audit lock,
// that the root record is still at the generation whose audit key the
// record is sealed under. Only a Store sharing its database can find it
// moved.
func (s *Store) checkEpoch(ctx context.Context, tx execer, epoch uint32) error {
	if s.sync == nil {
		return nil
	}
	var gen int64
	if err := tx.QueryRowContext(ctx, "SELECT master_generation FROM root WHERE id = 1").Scan(&gen); err != nil {
		return s.dbErr("read master generation", err)
	}
	if gen != int64(epoch) {
		s.signalMaster()
		return errMasterMoved
	}
	return nil
}

// rootMoved reports whether the root record's master key is newer than
// the Store's: what the Store derives from its own then is gone.
func (s *Store) rootMoved(ctx context.Context, gen uint32) bool {
	if s.sync == nil {
		return false
	}
	var cur int64
	err := s.r.QueryRowContext(ctx, "SELECT master_generation FROM root WHERE id = 1").Scan(&cur)
	return err == nil && cur > int64(gen)
}

// CheckSwitched makes sure that the root record's master key, the one
// the Store is attached to, is in force because a rotation switched the
// domain to it (checkSwitched): the daemon checks it at start before it
// rewrites its node row with that key.
func (s *Store) CheckSwitched(ctx context.Context) error {
	s.mu.RLock()
	gen := s.masterGen
	root, err := s.rootLocked(gen)
	s.mu.RUnlock()
	if err != nil {
		return err
	}
	return s.checkSwitched(ctx, root, gen)
}

// checkSwitched makes sure the domain was switched to generation gen by
// a rotation, not by whoever writes the root record: the switch writes,
// in its transaction, the first audit record of the new epoch, sealed
// under root's carry key (switchMaster), which nobody without the new
// master key can make. The root record alone names a next master key's
// proof from the rotation's beginning on, so without this a root record
// edited to say "switched" in the middle of a rotation had a following
// node flush the master key every unmoved token is still under, and
// write the next one into its row. A switch without its record is a
// TamperError (kind "keystore", what "switch"), noted.
func (s *Store) checkSwitched(ctx context.Context, root Root, gen uint32) error {
	if gen < 2 {
		return nil
	}
	bad := func() error {
		te := &TamperError{Kind: "keystore", ID: "root", What: "switch"}
		s.noteTamper(te)
		return te
	}
	label := auditFromLabel(gen)
	var sealed []byte
	err := s.r.QueryRowContext(ctx, "SELECT sealed FROM carried WHERE label = ? AND master_generation = ?", label, int64(gen)).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return bad()
	}
	if err != nil {
		return s.dbErr("read carried key", err)
	}
	a, err := carryAEAD(root)
	if err != nil {
		return err
	}
	if len(sealed) < gcmNonceLen+gcmTagLen {
		return bad()
	}
	from, err := a.Open(nil, sealed[:gcmNonceLen], sealed[gcmNonceLen:], carryAAD(label, gen))
	if err != nil || len(from) != 8 || binary.BigEndian.Uint64(from) < 1 {
		return bad()
	}
	return nil
}
