package keystore

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
)

// What the Store keeps in memory of a token: the keys derived from its
// KEK through the master key, and the data key while logged in.

// tokenState is what the Store holds in memory for a token it has touched:
// the keys derived from its KEK and, while someone is logged in, the token
// data key.
type tokenState struct {
	rowID   int64
	uuid    UUID
	keys    *tokenKeys
	dataKey []byte      // guarded by Store.mu
	data    cipher.AEAD // guarded by Store.mu
	dgen    uint32      // guarded by Store.mu
	// installing is the data key generation this Store's own rotation
	// is committing (0: none): its notification is not another's change.
	installing uint32 // guarded by Store.mu
	// epoch is the newest login epoch the Store knows the token's row to
	// have (logoutall.go); lepoch is the one the current login was made
	// under. A login under an older epoch than the row's is ended.
	epoch, lepoch uint32 // guarded by Store.mu
	// open mirrors data != nil for the cache's lock-free check that a
	// cached private object's token is still logged in.
	open atomic.Bool
}

func (t *tokenState) loggedIn() bool { return t.data != nil }

func (t *tokenState) logout() {
	wipe(t.dataKey)
	t.dataKey, t.data = nil, nil
	t.open.Store(false)
}

func (t *tokenState) wipe() {
	t.logout()
	t.keys.wipe()
}

func (t *tokenState) sealer() sealer {
	return sealer{token: t.uuid, keys: t.keys, data: t.data, dgen: t.dgen}
}

func kekLabel(token UUID, generation uint32) []byte {
	l := append([]byte("hsmemu/kek/v1"), token[:]...)
	return binary.BigEndian.AppendUint32(l, generation)
}

func (s *Store) rootOrErr() (Root, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rootLocked(s.masterGen)
}

// rootLocked returns the master key of a generation. s.mu is held.
func (s *Store) rootLocked(gen uint32) (Root, error) {
	if s.closed {
		return nil, ErrClosed
	}
	r, ok := s.roots[gen]
	if !ok {
		return nil, ErrNoRoot
	}
	return r, nil
}

// deriveKeys derives a token's keys from its KEK of generation gen, which
// the master key of generation masterGen derives. A master key newer than
// the Store's is one a rotation made elsewhere: the follower is asked for
// it (follow.go).
func (s *Store) deriveKeys(ctx context.Context, uuid UUID, gen, masterGen uint32) (*tokenKeys, error) {
	s.mu.RLock()
	root, err := s.rootLocked(masterGen)
	cur := s.masterGen
	s.mu.RUnlock()
	if errors.Is(err, ErrNoRoot) && masterGen > cur {
		if ferr := s.follow(ctx); ferr != nil && !errors.Is(ferr, ErrNoRoot) {
			return nil, ferr
		}
		s.mu.RLock()
		root, err = s.rootLocked(masterGen)
		s.mu.RUnlock()
	}
	if err != nil {
		return nil, err
	}
	kek, err := root.DeriveKEK(kekLabel(uuid, gen))
	if err != nil {
		return nil, fmt.Errorf("keystore: derive KEK: %w", err)
	}
	defer wipe(kek)
	return newTokenKeys(kek, gen)
}

// verify checks a token row's MAC, deriving the token's keys through the
// root the first time the token is seen. Only a row that passes makes the
// token's state known to the Store.
func (s *Store) verify(ctx context.Context, ti *TokenInfo) (*tokenState, error) {
	if err := s.anc.tokenRows(ti); err != nil {
		return nil, err // its rows are not the ones the anchor record accounts for
	}
	s.mu.RLock()
	st, ok := s.tokens[ti.ID]
	var keys *tokenKeys
	if ok {
		keys = st.keys
	}
	s.mu.RUnlock()
	if ok {
		switch {
		case st.uuid != ti.UUID:
			return nil, tampered("token", ti.UUID, ti.ID, "uuid column")
		case ti.KEKGeneration < keys.generation:
			return nil, errStaleRow // read before a master key rotation rekeyed it
		case ti.KEKGeneration > keys.generation:
			// Rekeyed by a master key rotation: by this Store, whose new
			// keys are about to be installed, or by another, whose are
			// installed here (a login stays: the data key is the same);
			// or a generation edited by hand, which its MAC under the
			// keys it names tells.
			return s.installNewer(ctx, st, ti)
		case !tokenMACOK(keys, ti):
			return nil, tampered("token", ti.UUID, ti.ID, "mac")
		}
		return st, nil
	}
	keys, err := s.deriveKeys(ctx, ti.UUID, ti.KEKGeneration, ti.MasterGeneration)
	if err != nil {
		return nil, err
	}
	if !tokenMACOK(keys, ti) {
		keys.wipe()
		return nil, tampered("token", ti.UUID, ti.ID, "mac")
	}
	if err := keys.openLegacy(ti.UUID, ti.legacyPINKeys); err != nil {
		keys.wipe()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		keys.wipe()
		return nil, ErrClosed
	}
	if st, ok := s.tokens[ti.ID]; ok {
		keys.wipe()
		return st, nil
	}
	st = &tokenState{rowID: ti.ID, uuid: ti.UUID, keys: keys, dgen: ti.DataGeneration, epoch: ti.LoginEpoch}
	s.tokens[ti.ID] = st
	return st, nil
}

// installNewer installs in st the keys of the newer KEK generation ti's
// row names, once the row's MAC checks under them. A master key the
// Store cannot get (no copy for this node, say) leaves the keys as they
// are: errNewerKeys, read again a little later. The old keys are dropped,
// not wiped: a reader may hold them.
func (s *Store) installNewer(ctx context.Context, st *tokenState, ti *TokenInfo) (*tokenState, error) {
	k, err := s.deriveKeys(ctx, ti.UUID, ti.KEKGeneration, ti.MasterGeneration)
	if err != nil {
		return nil, errNewerKeys
	}
	if !tokenMACOK(k, ti) {
		k.wipe()
		return nil, tampered("token", ti.UUID, ti.ID, "mac")
	}
	if err := k.openLegacy(ti.UUID, ti.legacyPINKeys); err != nil {
		k.wipe()
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		k.wipe()
		return nil, ErrClosed
	}
	if st.keys.generation < k.generation {
		st.keys = k
	} else {
		k.wipe()
	}
	return st, nil
}

// refreshKeys reads a token's row once and installs the newer keys it
// names, if it checks under them (installNewer); anything else is left
// for the caller's own read to meet.
func (s *Store) refreshKeys(ctx context.Context, rowID int64) {
	ti, err := scanToken(s.r.QueryRowContext(ctx, selectToken+" WHERE id = ?", rowID))
	if err == nil {
		s.verify(ctx, &ti) //nolint:errcheck // see above
	}
}

// state returns the in-memory state of the token with the given row id,
// reading and authenticating its row the first time.
func (s *Store) state(ctx context.Context, rowID int64) (*tokenState, error) {
	s.mu.RLock()
	t, ok := s.tokens[rowID]
	s.mu.RUnlock()
	if ok {
		return t, nil
	}
	_, st, err := s.token(ctx, s.r, "id = ?", rowID)
	return st, err
}
