package keystore

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Master key rotation. A new master key is made in the TPM and recorded
// beside the current one (BeginMasterRotation); then every token is
// rekeyed, one transaction each: a new KEK at the next generation, derived
// from the new master, reseals its public objects and retags its
// secret-less ones, and authenticates its row. Private objects are under
// the token's data key, which does not change. The PIN records are under
// a key mixed from the KEK's PIN key and the stretched PIN, and no PIN is
// at hand: the old PIN key is kept, sealed under the new KEK, until each
// role's next successful PIN check rewraps its record under the new one.
// The keys the domain keeps for life (the audit chain's, the key
// backups') are carried, sealed under the new master. Last, the root
// record switches to the new master. An interrupted rotation is resumed:
// tokens already rekeyed are skipped.

// ErrRotationPending is BeginMasterRotation's error when a rotation is
// already under way: resume it instead.
var ErrRotationPending = errors.New("keystore: a master key rotation is already under way")

// ErrNoRotation is RotateMaster's error when no rotation was begun.
var ErrNoRotation = errors.New("keystore: no master key rotation under way")

// ErrNodesChanged is BeginMasterRotation's error when a node joined after
// the caller made the other nodes' copies of the next master key: begin
// again, with a copy for it too.
var ErrNodesChanged = errors.New("keystore: a node joined while the master key rotation began; begin it again")

var carryLabel = []byte("hsmemu/carry/v1")

// The domain's keys come in epochs, one per master key: epoch 1's are
// derived from the first master key (TPM2_HMAC(master, label)); each
// rotation makes fresh random ones for the next epoch, so a master key
// given up (its shares, say) derives none of the later keys. Older epochs'
// keys are carried for what they protect: the audit records before the
// rotation, the key backups made before it.

// epochLabel names a domain key of an epoch: the bare label for epoch 1.
func epochLabel(base []byte, epoch uint32) []byte {
	if epoch == 1 {
		return base
	}
	l := append(append([]byte(nil), base...), 0)
	return binary.BigEndian.AppendUint32(l, epoch)
}

// auditFromLabel names the first audit record of an epoch (from 2).
func auditFromLabel(epoch uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte("hsmemu/audit-from/v1\x00"), epoch)
}

// firstEpochLabels are the domain keys the first master key derives.
var firstEpochLabels = [][]byte{auditLabel, keyBackupLabel}

func carryAEAD(root Root) (cipher.AEAD, error) {
	k, err := root.DeriveKEK(carryLabel)
	if err != nil {
		return nil, fmt.Errorf("keystore: derive carry key: %w", err)
	}
	defer wipe(k)
	return newGCM(k)
}

func carryAAD(label []byte, gen uint32) []byte {
	aad := append([]byte("hsmemu/carried/v1"), byte(len(label)))
	aad = append(aad, label...)
	return binary.BigEndian.AppendUint32(aad, gen)
}

// domainKey returns a key the domain keeps for life: carried, sealed under
// the current master, once a master rotation happened; derived from the
// master (TPM2_HMAC) before.
func (s *Store) domainKey(ctx context.Context, label []byte) ([]byte, error) {
	s.mu.RLock()
	gen := s.masterGen
	root, err := s.rootLocked(gen)
	s.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	var sealed []byte
	err = s.r.QueryRowContext(ctx, "SELECT sealed FROM carried WHERE label = ? AND master_generation = ?", label, gen).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) && s.rootMoved(ctx, gen) {
		// Another node's rotation switched the domain: its keys are
		// carried under the new master key, which the follower brings
		// (not here: the caller may hold the audit lock, and following
		// appends to the audit log). An audit append follows, then tries
		// again (afterFollow).
		s.signalMaster()
		return nil, fmt.Errorf("keystore: domain key %q: %w", label, errMasterMoved)
	}
	if errors.Is(err, sql.ErrNoRows) {
		if gen > 1 {
			// Every rotation carries the key: one missing was deleted.
			return nil, ErrTampered
		}
		k, err := root.DeriveKEK(label)
		if err != nil {
			return nil, fmt.Errorf("keystore: derive %s: %w", label, err)
		}
		return k, nil
	}
	if err != nil {
		return nil, s.dbErr("read carried key", err)
	}
	a, err := carryAEAD(root)
	if err != nil {
		return nil, err
	}
	if len(sealed) < gcmNonceLen+gcmTagLen {
		return nil, ErrTampered
	}
	k, err := a.Open(nil, sealed[:gcmNonceLen], sealed[gcmNonceLen:], carryAAD(label, gen))
	if err != nil {
		return nil, ErrTampered
	}
	return k, nil
}

// BeginMasterRotation records the master key a rotation moves to (made in
// the TPM by the caller), and ErrRotationPending if one is under way.
func (s *Store) BeginMasterRotation(ctx context.Context, next *NextMaster) error {
	if next == nil || len(next.Sealed) == 0 || len(next.Proof) == 0 {
		return errors.New("keystore: a next master key needs its sealed blob and its proof")
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// Under the nodes' shared lock, which a join takes exclusively and
	// then refuses a rotation under way (AddNode): a node is either seen
	// here, with its copy, or joins after the rotation. Taken before the
	// root row, as a node's removal takes them (it writes the list of the
	// nodes that left in the root row, nodeleft.go).
	if err := s.eng.lockNodes(ctx, tx, false); err != nil {
		return s.dbErr("lock nodes", err)
	}
	res, err := tx.ExecContext(ctx, "UPDATE root SET next_sealed = ?, next_proof = ?, next_escrow = ?, updated_at = ? WHERE id = 1 AND next_sealed IS NULL",
		next.Sealed, next.Proof, next.Escrow, time.Now().Unix())
	if err != nil {
		return s.dbErr("begin master rotation", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrRotationPending
	}
	if next.NodesUpTo > 0 {
		var newest int64
		if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(id), 0) FROM nodes").Scan(&newest); err != nil {
			return s.dbErr("read nodes", err)
		}
		if newest > next.NodesUpTo {
			return ErrNodesChanged
		}
	}
	// The other nodes' copies of the next master key, with it: a
	// rotation that is recorded has them all.
	if err := s.putNodeMasters(ctx, tx, next.NodeMasters); err != nil {
		return err
	}
	return s.dbErr("commit", tx.Commit())
}

// AttachNext makes the master key of a rotation under way usable; proof is
// its own report of its domain proof, which must be the recorded one.
func (s *Store) AttachNext(ctx context.Context, root Root, proof []byte) error {
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return err
	}
	if rec.Next == nil {
		return ErrNoRotation
	}
	if subtle.ConstantTimeCompare(rec.Next.Proof, proof) != 1 {
		return ErrWrongDomain
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roots[rec.MasterGeneration+1] = root
	return nil
}

// RotateMaster completes the rotation under way: it carries the domain's
// keys, rekeys every token not yet rekeyed, and switches the root record
// to the new master. It returns the generation of the master key it
// replaced, which the caller may now flush from the TPM. progress, when
// not nil, is told how many tokens are done.
func (s *Store) RotateMaster(ctx context.Context, progress func(done, total int)) (uint32, error) {
	s.masterMu.Lock()
	defer s.masterMu.Unlock()
	// One Store moves the domain at a time; one that finds the rotation
	// finished by another meanwhile has nothing to do (ErrNoRotation).
	release, _, err := s.eng.job(ctx, "rotate-master", true)
	if err != nil {
		return 0, err
	}
	defer release()
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return 0, err
	}
	if rec.Next == nil {
		return 0, ErrNoRotation
	}
	// The rotation recorded is the one that was begun, not an abandoned
	// one's state put back (rootcheck.go), before anything moves.
	if err := s.checkRootRow(ctx); err != nil {
		return 0, err
	}
	oldGen, nextGen := rec.MasterGeneration, rec.MasterGeneration+1
	s.mu.RLock()
	next, err := s.rootLocked(nextGen)
	s.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	carry, err := carryAEAD(next)
	if err != nil {
		return 0, err
	}
	var put putCarried = func(q interface {
		ExecContext(context.Context, string, ...any) (sql.Result, error)
	}, label, value []byte) error {
		nonce := make([]byte, gcmNonceLen)
		if _, err := rand.Read(nonce); err != nil {
			return err
		}
		sealed := carry.Seal(nonce, nonce, value, carryAAD(label, nextGen))
		_, err := q.ExecContext(ctx, `INSERT INTO carried (label, master_generation, sealed) VALUES (?, ?, ?)
			ON CONFLICT (label, master_generation) DO UPDATE SET sealed = excluded.sealed`, label, nextGen, sealed)
		return s.dbErr("carry a domain key", err)
	}
	// Up to the last pass, the Store's rot lock is read-held, and each
	// token's held exclusively while it is rekeyed: writes to the others
	// go on (tokenrot.go).
	if err := s.carryAndRekey(ctx, oldGen, next, nextGen, put, progress); err != nil {
		return 0, err
	}
	// The last pass and the switch hold the Store's rot lock
	// exclusively: a token this Store created meanwhile, under the
	// current master key, has committed and is seen by the last pass, and
	// the next is made under the new master key. Tokens another Store
	// created meanwhile are rekeyed with no new one created until the
	// switch commits (CreateToken takes the tokens' lock shared, and is
	// then made again under the new master key).
	s.rot.Lock()
	defer s.rot.Unlock()
	unhold, err := s.eng.holdTokens(ctx)
	if err != nil {
		return 0, err
	}
	defer unhold()
	if err := s.rekeyAll(ctx, next, nextGen, nil); err != nil {
		return 0, err
	}
	switched, err := s.switchMaster(ctx, rec, put)
	if err != nil {
		return 0, err
	}
	if !switched {
		return 0, errors.New("keystore: a token was created under the old master key while the rotation held the tokens' lock; finish the rotation again")
	}
	return oldGen, nil
}

// putCarried seals a domain key under the next master key, in the
// carried keys.
type putCarried func(q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, label, value []byte) error

// carryAndRekey carries the domain's keys under the next master key, and
// rekeys every token, with the Store's rot lock read-held.
func (s *Store) carryAndRekey(ctx context.Context, oldGen uint32, next Root, nextGen uint32, put putCarried, progress func(done, total int)) error {
	s.rot.RLock()
	defer s.rot.RUnlock()
	// Every key of the domain so far, under the next master key.
	labels := firstEpochLabels
	if oldGen > 1 {
		var err error
		if labels, err = s.carriedLabels(ctx, oldGen); err != nil {
			return err
		}
	}
	for _, label := range labels {
		k, err := s.domainKey(ctx, label)
		if err != nil {
			return err
		}
		err = put(s.w, label, k)
		wipe(k)
		if err != nil {
			return err
		}
	}
	// And the next epoch's, fresh. (A resumed rotation makes them again:
	// nothing uses them before the switch.)
	for _, base := range firstEpochLabels {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return err
		}
		err := put(s.w, epochLabel(base, nextGen), k)
		wipe(k)
		if err != nil {
			return err
		}
	}
	return s.rekeyAll(ctx, next, nextGen, progress)
}

// rekeyAll rekeys every token not yet under the next master key, each
// with its rotation lock held exclusively. s.rot is held (read-held up to
// the last pass).
func (s *Store) rekeyAll(ctx context.Context, next Root, nextGen uint32, progress func(done, total int)) error {
	tokens, err := s.Tokens(ctx)
	if err != nil {
		return err
	}
	for i, ti := range tokens {
		if ti.Tampered != nil {
			// Moving on without it would leave it under a master key
			// about to be flushed: the rotation waits for it to be dealt
			// with (restored from a backup, or deleted).
			return fmt.Errorf("keystore: the token in row %d cannot be rekeyed: %w", ti.ID, ti.Tampered)
		}
		if ti.MasterGeneration != nextGen {
			err := s.rekeyLocked(ctx, ti, next, nextGen)
			if errors.Is(err, ErrNotFound) {
				// Deleted since the listing (writes to it go on
				// while the others are rekeyed): nothing to move.
				err = nil
			}
			if err != nil {
				return fmt.Errorf("keystore: rekey token %q: %w", ti.Label, err)
			}
		}
		if progress != nil {
			progress(i+1, len(tokens))
		}
	}
	return nil
}

// rekeyLocked is rekeyToken with the token's rotation lock held
// exclusively, released however it ends: a panic left in it (answered
// by the administrator's handler, which serves on) would stop every
// later write to the token.
func (s *Store) rekeyLocked(ctx context.Context, ti TokenInfo, next Root, nextGen uint32) error {
	l := s.tokenRot(ti.UUID)
	l.Lock()
	defer l.Unlock()
	return s.rekeyToken(ctx, ti, next, nextGen)
}

// switchMaster switches the root record to the next master key once no
// token is left under the current one (false, with nothing written,
// should one be). s.rot (exclusively) and the tokens' lock are held.
func (s *Store) switchMaster(ctx context.Context, rec *RootRecord, put putCarried) (bool, error) {
	oldGen, nextGen := rec.MasterGeneration, rec.MasterGeneration+1
	// The audit chain moves to the next epoch with the switch: no record
	// is appended between them, and the first one after is under the new
	// key.
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// Under the domain's audit lock: another node's append either
	// commits before the first record of the new epoch is fixed, or
	// finds the switch made (checkEpoch) and appends under the new key.
	if err := s.eng.lockAudit(ctx, tx); err != nil {
		return false, s.dbErr("lock audit log", err)
	}
	var behind int64
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM tokens WHERE master_generation <> ?", int64(nextGen)).Scan(&behind); err != nil {
		return false, s.dbErr("count tokens", err)
	}
	if behind > 0 {
		return false, nil
	}
	var from int64
	if err := tx.QueryRowContext(ctx, "SELECT coalesce(max(seq), 0) + 1 FROM audit_log").Scan(&from); err != nil {
		return false, s.dbErr("read audit head", err)
	}
	if err := put(tx, auditFromLabel(nextGen), binary.BigEndian.AppendUint64(nil, uint64(from))); err != nil {
		return false, err
	}
	// The new generation is in force in memory before the switch commits,
	// and back out if it does not: a carried key is never looked up under
	// a generation whose rows the switch has deleted.
	s.mu.Lock()
	wasEscrowed := s.escrowed
	s.masterGen, s.escrowed = nextGen, rec.Next.Escrow != nil
	s.mu.Unlock()
	committed := false
	defer func() {
		if !committed {
			s.mu.Lock()
			s.masterGen, s.escrowed = oldGen, wasEscrowed
			s.mu.Unlock()
		}
	}()
	if _, err := tx.ExecContext(ctx, `UPDATE root SET sealed = next_sealed, master_proof = next_proof, escrow = next_escrow,
		master_generation = ?, next_sealed = NULL, next_proof = NULL, next_escrow = NULL, updated_at = ? WHERE id = 1`, nextGen, time.Now().Unix()); err != nil {
		return false, s.dbErr("switch master key", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM carried WHERE master_generation < ?", nextGen); err != nil {
		return false, s.dbErr("drop old carried keys", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM node_masters WHERE master_generation < ?", nextGen); err != nil {
		return false, s.dbErr("drop old nodes' master keys", err)
	}
	if err := tx.Commit(); err != nil {
		return false, s.dbErr("commit", err)
	}
	committed = true
	s.mu.Lock()
	delete(s.roots, oldGen)
	s.mu.Unlock()
	// The new epoch's anchor key, before other nodes, following, seal
	// entries under it. Should it fail, the anchor job loads it.
	s.attachAnchorKeys(ctx) //nolint:errcheck // see above
	return true, nil
}

// rekeyToken moves a token to a new KEK derived from the next master key.
// s.rot is held, and the token's rotation lock exclusively.
func (s *Store) rekeyToken(ctx context.Context, ti TokenInfo, next Root, nextGen uint32) error {
	if s.rekeyHold != nil {
		s.rekeyHold(ti.UUID)
	}
	st, err := s.state(ctx, ti.ID)
	if err != nil {
		return err
	}
	s.mu.RLock()
	old := st.keys
	s.mu.RUnlock()
	gen := ti.KEKGeneration + 1
	kek, err := next.DeriveKEK(kekLabel(ti.UUID, gen))
	if err != nil {
		return fmt.Errorf("derive KEK: %w", err)
	}
	keys, err := newTokenKeys(kek, gen)
	wipe(kek)
	if err != nil {
		return err
	}
	installed := false
	defer func() {
		if !installed {
			keys.wipe()
		}
	}()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// The token's row first, before the objects are read: a write that
	// seals on another Store holds it FOR SHARE until it commits, so
	// every object sealed under the old KEK is read below, and none is
	// written under it after (sealgate.go).
	cur, _, err := s.token(ctx, tx, "id = ?"+s.eng.forUpdate(), ti.ID)
	if err != nil {
		return err
	}
	if cur.KEKGeneration != ti.KEKGeneration {
		// One master key rotation at a time in the domain (its job):
		// no other moved the KEK. (The data key may have been replaced
		// on another Store since the listing: no concern of a rekey,
		// which takes the PIN records from the locked row.)
		return ErrTampered
	}
	// Public objects' secrets are under the KEK's seal key and secret-less
	// objects under its MAC key; private objects' are under the data key,
	// which stays.
	from, to := sealer{token: ti.UUID, keys: old}, sealer{token: ti.UUID, keys: keys}
	if _, err := s.reseal(ctx, tx, ti.ID, func(kind byte) bool { return kind != kindData }, from, to, nil); err != nil {
		return err
	}
	// The PIN keys the records are under stay, sealed under the new KEK.
	keys.legacy = map[uint32][]byte{}
	for _, rec := range [][]byte{cur.soPIN, cur.userPIN} {
		if rec == nil {
			continue
		}
		g, ok := recordGen(rec)
		pk, ok2 := old.pinKeyFor(g)
		if !ok || !ok2 {
			return ErrTampered
		}
		keys.legacy[g] = append([]byte(nil), pk...)
	}
	legacy, err := keys.sealLegacy(ti.UUID)
	if err != nil {
		return err
	}
	cur.KEKGeneration, cur.MasterGeneration, cur.legacyPINKeys = gen, nextGen, legacy
	cur.mac = tokenMAC(keys, &cur)
	if _, err := tx.ExecContext(ctx, "UPDATE tokens SET kek_generation = ?, master_generation = ?, legacy_pin_keys = ?, mac = ? WHERE id = ?",
		cur.KEKGeneration, cur.MasterGeneration, cur.legacyPINKeys, cur.mac, cur.ID); err != nil {
		return s.dbErr("rekey token", err)
	}
	// The notification of this commit, which may come before the keys
	// are installed below, keeps the token (a KEK generation moved
	// forward: revalidateToken), and a reader in between installs them
	// itself (installNewer).
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
	}
	// The old keys are dropped, not wiped: a reader may still hold them,
	// and will read its row again when they no longer match it.
	s.mu.Lock()
	if st.keys.generation < keys.generation {
		st.keys = keys
	} else {
		keys.wipe()
	}
	s.mu.Unlock()
	installed = true
	return nil
}

// ErrRotationStarted refuses to abort a rotation that has begun moving
// tokens: it can only be finished.
var ErrRotationStarted = errors.New("keystore: the master key rotation has begun moving tokens; finish it")

// RotationStarted reports whether the rotation under way has begun moving
// the keystore (RotateMaster ran, and stopped before the end).
func (s *Store) RotationStarted(ctx context.Context) (bool, error) {
	rec, err := s.RootRecord(ctx)
	if err != nil || rec.Next == nil {
		return false, err
	}
	var n int
	err = s.r.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM carried WHERE master_generation = ?) +
		(SELECT count(*) FROM tokens WHERE master_generation = ?)`, rec.MasterGeneration+1, rec.MasterGeneration+1).Scan(&n)
	return n > 0, s.dbErr("read rotation state", err)
}

// AbortMasterRotation forgets a rotation that has not begun moving the
// keystore, and detaches its master key, which the caller may flush.
func (s *Store) AbortMasterRotation(ctx context.Context) error {
	// Not while this Store's rotation runs, which holds the rot lock
	// only read-held up to its last pass.
	s.masterMu.Lock()
	defer s.masterMu.Unlock()
	s.rot.Lock()
	defer s.rot.Unlock()
	started, err := s.RotationStarted(ctx)
	if err != nil {
		return err
	}
	if started {
		return ErrRotationStarted
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return err
	}
	if rec.Next == nil {
		return ErrNoRotation
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "UPDATE root SET next_sealed = NULL, next_proof = NULL, next_escrow = NULL, updated_at = ? WHERE id = 1", time.Now().Unix()); err != nil {
		return s.dbErr("abort master rotation", err)
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM node_masters WHERE master_generation > ?", rec.MasterGeneration); err != nil {
		return s.dbErr("abort master rotation", err)
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
	}
	s.mu.Lock()
	delete(s.roots, rec.MasterGeneration+1)
	s.mu.Unlock()
	return nil
}

// carriedLabels lists the domain keys carried under a master generation.
func (s *Store) carriedLabels(ctx context.Context, gen uint32) ([][]byte, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT label FROM carried WHERE master_generation = ? ORDER BY label", gen)
	if err != nil {
		return nil, s.dbErr("list carried keys", err)
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var l []byte
		if err := rows.Scan(&l); err != nil {
			return nil, s.dbErr("list carried keys", err)
		}
		out = append(out, l)
	}
	return out, s.dbErr("list carried keys", rows.Err())
}
