package keystore

import (
	"context"
	"errors"
	"slices"
	"time"
)

// HSM-protected keys are private. A public object's secret is sealed under
// the token KEK, which the TPM derives for anyone who can use it, with no
// PIN: an HSM-protected key that was public (CKA_PRIVATE false, which
// versions before this one let a template ask for) opened with the TPM
// alone. The daemon now makes every HSM-protected key private; one made
// public before is resealed under the token data key, CKA_PRIVATE set, at
// its token's next login, when the data key is at hand.

// AttrHSMProtection is CKA_HSMEMU_PROTECTION (CK_ULONG), and
// protectionHSM its value for an HSM-protected key: the keystore reads it
// to choose the sealing key of such a key.
const (
	AttrHSMProtection uint64 = 0x80000000 | 0x48530001
	protectionHSM     uint64 = 2
)

// Object classes (CKO_PRIVATE_KEY, CKO_SECRET_KEY): the ones that can be
// HSM-protected.
const (
	classPrivateKey = 3
	classSecretKey  = 4
)

// privatizeHSMKeys reseals under the data key every public HSM-protected
// key of a logged-in token, soft-deleted ones included, with CKA_PRIVATE
// set, and returns how many. Object ids stay, so handles do. s.rot is
// read-held.
func (s *Store) privatizeHSMKeys(ctx context.Context, st *tokenState) (int, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT id FROM objects WHERE token_id = ? AND private = 0 AND class IN (?, ?)",
		st.rowID, classPrivateKey, classSecretKey)
	if err != nil {
		return 0, s.dbErr("list public keys", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, s.dbErr("list public keys", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return 0, s.dbErr("list public keys", err)
	}
	n := 0
	for _, id := range ids {
		done, err := s.privatize(ctx, st, id)
		if errors.Is(err, ErrTampered) {
			s.noteTamper(err)
			continue
		}
		if err != nil {
			return n, err
		}
		if done {
			n++
		}
	}
	return n, nil
}

// privatize reseals one object if it is a public HSM-protected key.
func (s *Store) privatize(ctx context.Context, st *tokenState, id int64) (bool, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// The token's row first, as a rotation locks it (sealgate.go); then
	// the object's, which an update on another Store may hold.
	kekGen, dataGen, gated, err := s.lockObjectToken(ctx, tx, ObjectID(id))
	if err != nil {
		return false, err
	}
	r := objectRow{id: id}
	var rec []byte
	if err := tx.QueryRowContext(ctx, "SELECT token_id, record FROM objects WHERE id = ?"+s.eng.forUpdate(), id).Scan(&r.tokenID, &rec); err != nil {
		return false, s.dbErr("read object", err)
	}
	if r.tokenID != st.rowID {
		return false, nil
	}
	if err := r.parseRecord(rec); err != nil {
		return false, tampered("object", UUID{}, id, "record")
	}
	if s.anc.objectBad(id) {
		return false, tampered("object", r.uuid, id, "rows") // resealed, it would pass the next start
	}
	attrs, ix, err := r.decode()
	if err != nil {
		return false, tampered("object", r.uuid, id, "record")
	}
	if p, ok, _ := attrs.Ulong(AttrHSMProtection); ix.private || !ok || p != protectionHSM {
		return false, nil
	}
	if gated {
		s.catchUp(ctx, st, kekGen, dataGen)
	}
	s.mu.RLock()
	sl := st.sealer()
	s.mu.RUnlock()
	secret, err := sl.open(r.uuid, false, r.attrs, r.sealed, nil, nil)
	if err != nil {
		return false, tampered("object", r.uuid, id, "seal")
	}
	defer wipe(secret)
	i := slices.IndexFunc(attrs, func(a Attribute) bool { return a.Type == AttrPrivate })
	if i < 0 {
		return false, tampered("object", r.uuid, id, "record") // public, so it says so
	}
	attrs = slices.Clone(attrs)
	attrs[i] = Attribute{Type: AttrPrivate, Value: Bool(true)}
	enc := attrs.Encode()
	sealed, err := sl.seal(r.uuid, true, enc, secret)
	if err != nil {
		return false, err
	}
	if gated && !sealCurrent(sealed, kekGen, dataGen) {
		// Keys a rotation on another Store replaced: left for the next
		// login.
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, "UPDATE objects SET private = 1, record = ?, updated_at = ? WHERE id = ?",
		record(r.uuid, enc, sealed), time.Now().Unix(), id); err != nil {
		return false, s.dbErr("reseal object", err)
	}
	if err := tx.Commit(); err != nil {
		return false, s.dbErr("commit", err)
	}
	s.cache.remove(ObjectID(id))
	return true, nil
}
