package keystore

import (
	"context"
	"crypto/cipher"
	"encoding/binary"
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
	// installingKEK is the KEK generation this Store's own master key
	// rotation is committing for the token (0: none), likewise.
	installingKEK uint32 // guarded by Store.mu
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
// the master key of generation masterGen derives.
func (s *Store) deriveKeys(uuid UUID, gen, masterGen uint32) (*tokenKeys, error) {
	s.mu.RLock()
	root, err := s.rootLocked(masterGen)
	s.mu.RUnlock()
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
func (s *Store) verify(ti *TokenInfo) (*tokenState, error) {
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
			// Rekeyed, the new keys not yet installed; or a generation
			// edited by hand, which its MAC under the keys it names tells.
			if k, err := s.deriveKeys(ti.UUID, ti.KEKGeneration, ti.MasterGeneration); err == nil {
				ok := tokenMACOK(k, ti)
				k.wipe()
				if !ok {
					return nil, tampered("token", ti.UUID, ti.ID, "mac")
				}
			}
			return nil, errNewerKeys
		case !tokenMACOK(keys, ti):
			return nil, tampered("token", ti.UUID, ti.ID, "mac")
		}
		return st, nil
	}
	keys, err := s.deriveKeys(ti.UUID, ti.KEKGeneration, ti.MasterGeneration)
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
	st = &tokenState{rowID: ti.ID, uuid: ti.UUID, keys: keys, dgen: ti.DataGeneration}
	s.tokens[ti.ID] = st
	return st, nil
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
