package keystore

import (
	"context"
	"database/sql"
	"errors"
	"sync"
)

// The rotation locks within a Store. A rotation moves one token at a time
// (a token's data key; the master key, token after token), so it holds
// that token's lock exclusively, and the Store's rot lock read-held; a
// write that seals, writes a token row or installs a key holds both
// read-held, the token's after the Store's. A rotation thus waits for the
// writes to the token it moves, and they for it, while writes to the
// other tokens go on. What no single token orders (the creation of a
// token, the anchor, a master key rotation's last pass and switch) holds
// the Store's lock alone: read-held by the first two, exclusively by the
// last, which is short. Neither lock is taken twice on one path: a
// pending exclusive holder blocks new readers.

// tokenRot returns the rotation lock of the token. A token's lock stays
// after the token is deleted (a few bytes; a rotation's listing may still
// name it).
func (s *Store) tokenRot(token UUID) *sync.RWMutex {
	if l, ok := s.tokRot.Load(token); ok {
		return l.(*sync.RWMutex)
	}
	l, _ := s.tokRot.LoadOrStore(token, new(sync.RWMutex))
	return l.(*sync.RWMutex)
}

// writing takes what a write to the token holds: the Store's rot lock and
// the token's, both read-held. It returns their release.
func (s *Store) writing(token UUID) func() {
	s.rot.RLock()
	l := s.tokenRot(token)
	l.RLock()
	return func() {
		l.RUnlock()
		s.rot.RUnlock()
	}
}

// rotating takes what a rotation of the token holds: the Store's rot
// lock read-held, the token's exclusively. It returns their release.
func (s *Store) rotating(token UUID) func() {
	s.rot.RLock()
	l := s.tokenRot(token)
	l.Lock()
	return func() {
		l.Unlock()
		s.rot.RUnlock()
	}
}

// objectToken returns the uuid of the token an object is on, for the
// lock a write to the object takes; ErrNotFound when there is no object.
func (s *Store) objectToken(ctx context.Context, id ObjectID) (UUID, error) {
	var u UUID
	var b []byte
	err := s.r.QueryRowContext(ctx, "SELECT t.uuid FROM tokens t WHERE t.id = (SELECT token_id FROM objects WHERE id = ?)", int64(id)).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return u, ErrNotFound
	}
	if err != nil {
		return u, s.dbErr("read object's token", err)
	}
	if len(b) != len(u) {
		return u, tampered("object", UUID{}, int64(id), "token uuid")
	}
	copy(u[:], b)
	return u, nil
}
