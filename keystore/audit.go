package keystore

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"time"
	"unicode/utf8"

	"hsmemu/internal/reqid"
)

// The audit log is a hash chain in the keystore's audit_log table: each
// record's hash is an HMAC, under a key of the domain (the first master
// key derives the first; each master key rotation starts a new one), over the
// previous record's hash and the record's own content. Without the TPM no
// one can write a record that verifies, so an edited record fails its own
// hash, and a deleted or reordered one breaks the link from its successor.
// What the chain cannot show by itself is the loss of its newest records
// (the table rolled back to an earlier, consistent state): the daemon
// compares with the newest record it wrote itself (at every append and at
// every verification), and `audit verify` prints the head for the
// administrator to keep elsewhere.

// auditLabel names the audit key among the root's derivations.
var auditLabel = []byte("hsmemu/audit/v1")

// AuditActor says who did something: the peer process and, when the event
// concerns a token, the token and the role acting on it.
type AuditActor struct {
	UID   uint32 `json:"uid"`
	PID   int32  `json:"pid"`
	Token string `json:"token,omitempty"` // the token's label
	Role  string `json:"role,omitempty"`  // so, user, admin
	// Remote is the certificate identity ("cn:NAME", "uri:URI") of a
	// client that came over TLS; UID and PID are then what it claimed.
	Remote string `json:"remote,omitempty"`
}

// AuditRecord is one entry of the audit log. Detail never holds a secret:
// labels, ids, mechanisms, outcomes.
type AuditRecord struct {
	Seq      int64             `json:"seq"`
	Time     time.Time         `json:"time"`
	Actor    AuditActor        `json:"actor"`
	Event    string            `json:"event"`
	Detail   map[string]string `json:"detail,omitempty"`
	PrevHash []byte            `json:"prev_hash"`
	Hash     []byte            `json:"hash"`
}

// auditRow is a record as stored: actor and detail as JSON text, which is
// what the hash covers.
type auditRow struct {
	seq            int64
	time           int64 // unix nanoseconds
	actor, event   string
	detail         string
	prevHash, hash []byte
	// bad names a column read with a value of another type than the
	// schema's (a log edited by hand), "" for none. Not stored.
	bad string
}

// scanAuditRow reads a record as whatever the database holds: a log
// edited by hand need not keep the schema's types, and a record of
// another shape is that record's failure (bad), never the whole log's.
// Text columns are taken as their bytes, as the hash covers them.
func scanAuditRow(sc interface{ Scan(...any) error }) (auditRow, error) {
	var r auditRow
	var c [7]any
	if err := sc.Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6]); err != nil {
		return r, err
	}
	note := func(name string) {
		if r.bad == "" {
			r.bad = name
		}
	}
	num := func(v any, name string) int64 {
		n, ok := v.(int64)
		if !ok {
			note(name)
		}
		return n
	}
	text := func(v any, name string) []byte {
		switch v := v.(type) {
		case []byte:
			return v
		case string:
			return []byte(v)
		}
		note(name)
		return nil
	}
	r.seq, r.time = num(c[0], "seq"), num(c[1], "time")
	r.actor, r.event, r.detail = string(text(c[2], "actor")), string(text(c[3], "event")), string(text(c[4], "detail"))
	r.prevHash, r.hash = text(c[5], "prev_hash"), text(c[6], "hash")
	return r, nil
}

// listed is a record for a listing. One whose columns are of another
// type, or whose actor or detail is not the JSON the daemon writes, was
// not written so: it is listed as stored, its actor empty and its detail
// saying what does not read ("unreadable"), and noted as tampering;
// `audit verify` says how it fails its chain. The listing goes on past it.
//
// A listing's reply holds up to a thousand records under the admin
// protocol's frame, so a record is also listed with each field cut as
// appendAuditTx cuts new ones (a log written before fields were bounded
// may hold a label of a MiB), and one the daemon cannot have written for
// its size (more detail than it writes, an event or a hash longer than
// any) is unreadable: one record never takes the listing down.
func (s *Store) listed(r *auditRow) AuditRecord {
	what := r.bad
	if what == "" {
		what = oversized(r)
	}
	if what == "" {
		rec, err := r.record()
		if err == nil && len(rec.Detail) <= maxAuditDetails {
			n := boundNote(AuditNote{Actor: rec.Actor, Detail: rec.Detail})
			rec.Actor, rec.Detail = n.Actor, n.Detail
			return rec
		}
		var a AuditActor
		what = "detail"
		if err != nil && json.Unmarshal([]byte(r.actor), &a) != nil {
			what = "actor"
		}
	}
	s.noteTamper(&TamperError{Kind: "audit record", ID: fmt.Sprintf("record %d", r.seq), What: what})
	rec := AuditRecord{Seq: r.seq, Time: time.Unix(0, r.time), Event: boundField(r.event), PrevHash: r.prevHash, Hash: r.hash,
		Detail: map[string]string{"unreadable": what}}
	if len(rec.PrevHash) > sha256.Size || len(rec.Hash) > sha256.Size {
		rec.PrevHash, rec.Hash = nil, nil
	}
	return rec
}

// maxAuditDetails is more detail fields than any record the daemon
// writes holds (a dozen at most).
const maxAuditDetails = 64

// oversized names a column longer than the daemon writes it, or "".
func oversized(r *auditRow) string {
	switch {
	case len(r.event) > maxAuditField:
		return "event"
	case len(r.prevHash) > sha256.Size:
		return "prev_hash"
	case len(r.hash) > sha256.Size:
		return "hash"
	}
	return ""
}

func (r *auditRow) record() (AuditRecord, error) {
	rec := AuditRecord{Seq: r.seq, Time: time.Unix(0, r.time), Event: r.event, PrevHash: r.prevHash, Hash: r.hash}
	if err := json.Unmarshal([]byte(r.actor), &rec.Actor); err != nil {
		return rec, fmt.Errorf("keystore: audit record %d: actor: %w", r.seq, err)
	}
	if r.detail != "" && r.detail != "null" {
		if err := json.Unmarshal([]byte(r.detail), &rec.Detail); err != nil {
			return rec, fmt.Errorf("keystore: audit record %d: detail: %w", r.seq, err)
		}
	}
	return rec, nil
}

// auditHash is HMAC-SHA256(key, prev_hash | time | actor | event | detail),
// each variable part length-prefixed. The sequence number is not covered:
// it is the order, which the links check.
func auditHash(key []byte, r *auditRow) []byte {
	m := hmac.New(sha256.New, key)
	var b [8]byte
	field := func(p []byte) {
		binary.BigEndian.PutUint32(b[:4], uint32(len(p)))
		m.Write(b[:4])
		m.Write(p)
	}
	field(r.prevHash)
	binary.BigEndian.PutUint64(b[:], uint64(r.time))
	m.Write(b[:])
	field([]byte(r.actor))
	field([]byte(r.event))
	field([]byte(r.detail))
	return m.Sum(nil)
}

// genesis is the previous hash of the first record.
var genesis = make([]byte, sha256.Size)

// auditKey returns a copy of the key of an epoch of the audit chain, for
// the caller to wipe. Epoch 1 is the domain's first master key's; each
// master key rotation starts the next epoch with a fresh key (masterrotate.go).
// The current epoch's key is kept: the Store's copy is wiped when it
// closes, maybe while a record is being written.
func (s *Store) auditKey(ctx context.Context, epoch uint32) ([]byte, error) {
	s.mu.RLock()
	var k []byte
	if s.auditEpoch == epoch {
		k = bytes.Clone(s.auditK)
	}
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if k != nil {
		return k, nil
	}
	k, err := s.domainKey(ctx, epochLabel(auditLabel, epoch))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		wipe(k)
		return nil, ErrClosed
	}
	if epoch == s.masterGen {
		wipe(s.auditK)
		s.auditK, s.auditEpoch = bytes.Clone(k), epoch
	}
	return k, nil
}

// auditEpochs returns, for each epoch of the audit chain, its key and the
// first record under it, in order. The caller wipes the keys.
func (s *Store) auditEpochs(ctx context.Context) ([]auditEpoch, error) {
	s.mu.RLock()
	cur := s.masterGen
	s.mu.RUnlock()
	var out []auditEpoch
	for e := uint32(1); e <= cur; e++ {
		ep := auditEpoch{epoch: e, from: 1}
		if e > 1 {
			from, err := s.domainKey(ctx, auditFromLabel(e))
			if err != nil {
				wipeEpochs(out)
				return nil, err
			}
			if len(from) != 8 {
				wipeEpochs(out)
				return nil, ErrTampered
			}
			ep.from = int64(binary.BigEndian.Uint64(from))
		}
		k, err := s.auditKey(ctx, e)
		if err != nil {
			wipeEpochs(out)
			return nil, err
		}
		ep.key = k
		out = append(out, ep)
	}
	return out, nil
}

type auditEpoch struct {
	epoch uint32
	from  int64 // the first record under this epoch's key
	key   []byte
}

func wipeEpochs(eps []auditEpoch) {
	for _, e := range eps {
		wipe(e.key)
	}
}

// keyFor returns the key a record of sequence seq is under.
func keyFor(eps []auditEpoch, seq int64) []byte {
	k := eps[0].key
	for _, e := range eps[1:] {
		if seq >= e.from {
			k = e.key
		}
	}
	return k
}

// Audit appends a record to the audit log, durably, before it returns.
func (s *Store) Audit(ctx context.Context, actor AuditActor, event string, detail map[string]string) (AuditRecord, error) {
	var rec AuditRecord
	err := s.afterFollow(ctx, func() (err error) {
		// One append at a time, and none while a master key rotation
		// moves the chain to its next epoch: a record's key and its place
		// go together.
		s.auditMu.Lock()
		defer s.auditMu.Unlock()
		// Integrity failures met since the last append are recorded
		// first.
		if err := s.auditTamperLocked(ctx); err != nil {
			return err
		}
		rec, err = s.appendAudit(ctx, actor, event, detail)
		return err
	})
	return rec, err
}

// afterFollow runs append, and once more, after following the master key
// rotation another node finished (follow.go), when it found the audit
// chain moved to a new epoch under it.
func (s *Store) afterFollow(ctx context.Context, append func() error) error {
	err := append()
	if !errors.Is(err, errMasterMoved) {
		return err
	}
	if ferr := s.follow(ctx); ferr != nil && !errors.Is(ferr, ErrNoRoot) {
		return errors.Join(err, ferr)
	}
	return append()
}

// appendAudit appends one record in a transaction of its own; auditMu is
// held.
func (s *Store) appendAudit(ctx context.Context, actor AuditActor, event string, detail map[string]string) (AuditRecord, error) {
	key, epoch, err := s.currentAuditKey(ctx)
	if err != nil {
		return AuditRecord{}, err
	}
	defer wipe(key)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return AuditRecord{}, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	row, err := s.appendAuditTx(ctx, tx, key, epoch, AuditNote{Actor: actor, Event: event, Detail: detail})
	if err != nil {
		return AuditRecord{}, err
	}
	if err := tx.Commit(); err != nil {
		return AuditRecord{}, s.dbErr("commit audit record", err)
	}
	s.auditAppended(row)
	return row.record()
}

// currentAuditKey returns a copy of the current epoch's audit key, for the
// caller to wipe; auditMu is held, so no rotation moves the epoch under
// it.
func (s *Store) currentAuditKey(ctx context.Context) ([]byte, uint32, error) {
	s.mu.RLock()
	epoch := s.masterGen
	s.mu.RUnlock()
	k, err := s.auditKey(ctx, epoch)
	return k, epoch, err
}

// appendAuditTx appends one record inside tx, under key (the current
// epoch's); auditMu is held until tx ends. Once tx commits, the caller
// tells auditAppended. errMasterMoved: another node moved the chain to a
// new epoch since key was taken.
func (s *Store) appendAuditTx(ctx context.Context, tx *sql.Tx, key []byte, epoch uint32, n AuditNote) (*auditRow, error) {
	n = boundNote(n)
	a, err := json.Marshal(n.Actor)
	if err != nil {
		return nil, err
	}
	if id := reqid.From(ctx); id != "" {
		// The call's request id, which its log lines carry too.
		n.Detail = maps.Clone(n.Detail)
		if n.Detail == nil {
			n.Detail = map[string]string{}
		}
		n.Detail["request_id"] = id
	}
	d := []byte("{}")
	if len(n.Detail) > 0 {
		if d, err = json.Marshal(n.Detail); err != nil {
			return nil, err
		}
	}
	// The head is read under the domain's append lock (PostgreSQL: other
	// daemons append to the same chain), never taken from memory.
	if err := s.eng.lockAudit(ctx, tx); err != nil {
		return nil, s.dbErr("lock audit log", err)
	}
	if err := s.checkEpoch(ctx, tx, epoch); err != nil {
		return nil, err
	}
	row := &auditRow{time: time.Now().UnixNano(), actor: string(a), event: n.Event, detail: string(d)}
	err = tx.QueryRowContext(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&row.seq, &row.prevHash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		row.seq, row.prevHash = 0, genesis
	case err != nil:
		return nil, s.dbErr("read audit head", err)
	}
	if err := s.checkAuditHead(ctx, tx, row.seq, row.prevHash); err != nil {
		return nil, err
	}
	row.seq++
	row.hash = auditHash(key, row)
	if _, err := tx.ExecContext(ctx, "INSERT INTO audit_log (seq, time, actor, event, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
		row.seq, row.time, row.actor, row.event, row.detail, row.prevHash, row.hash); err != nil {
		return nil, s.dbErr("append audit record", err)
	}
	return row, nil
}

// checkAuditHead compares the log's head with the newest record this
// Store wrote. Alone on its database (SQLite), that record must be the
// head; with other Stores appending (PostgreSQL), it must still be in
// the log, unchanged, at or before the head. Anything else means records
// were removed or replaced at the end, which the chain alone cannot
// show. The new record is written all the same; the loss is reported by
// VerifyAudit.
func (s *Store) checkAuditHead(ctx context.Context, tx *sql.Tx, seq int64, hash []byte) error {
	s.mu.RLock()
	mine, mineHash, lost := s.auditHead, s.auditHeadHash, s.auditLost
	s.mu.RUnlock()
	if mine == 0 || lost != "" {
		return nil
	}
	ok := seq == mine && bytes.Equal(hash, mineHash)
	if !ok && s.sync != nil && seq > mine {
		var h []byte
		err := tx.QueryRowContext(ctx, "SELECT hash FROM audit_log WHERE seq = ?", mine).Scan(&h)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return s.dbErr("read audit log", err)
		}
		ok = bytes.Equal(h, mineHash)
	}
	if !ok {
		s.mu.Lock()
		if s.auditLost == "" {
			s.auditLost = fmt.Sprintf("the log ended at record %d when this daemon had written up to record %d: records were removed or replaced at the end", seq, mine)
			if seq > mine {
				s.auditLost = fmt.Sprintf("record %d, written by this daemon, was removed or replaced", mine)
			}
		}
		s.mu.Unlock()
	}
	return nil
}

// auditAppended moves the Store's idea of the log's head to a record whose
// transaction committed.
func (s *Store) auditAppended(row *auditRow) {
	s.mu.Lock()
	s.auditHead, s.auditHeadHash = row.seq, row.hash
	s.mu.Unlock()
	s.stats.noteAudit(row.event)
}

// AuditNote is an audit record to append in the transaction of the write
// it records (PutAudited, SoftDeleteAudited): the write and its record are
// durable together or not at all, so neither a crash nor a full
// filesystem between the two can leave a change without its record, or a
// record of a change that was not made.
type AuditNote struct {
	Actor  AuditActor
	Event  string
	Detail map[string]string
}

// execer is a connection or a transaction, for a write that runs alone or
// with its audit record.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// writeAudited runs write and appends note's record in one transaction,
// committed before it returns; with no note, write runs alone on the
// writer connection. An error from write rolls back both.
func (s *Store) writeAudited(ctx context.Context, note *AuditNote, write func(q execer) error) error {
	if note == nil {
		return write(s.w)
	}
	return s.writeAuditedTx(ctx, note, func(tx *sql.Tx) error { return write(tx) })
}

// writeAuditedTx runs write in a transaction and appends note's record
// in it, committed before it returns; write may fill in note's detail
// (what it learnt writing, an id it made). An error from write rolls
// back both. The write is made again, in a new transaction, should the
// chain have moved to a new epoch under the first.
func (s *Store) writeAuditedTx(ctx context.Context, note *AuditNote, write func(tx *sql.Tx) error) error {
	return s.afterFollow(ctx, func() error { return s.writeAuditedOnce(ctx, note, write) })
}

func (s *Store) writeAuditedOnce(ctx context.Context, note *AuditNote, write func(tx *sql.Tx) error) error {
	// As Audit: one append at a time, integrity failures met since the
	// last append first.
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	if err := s.auditTamperLocked(ctx); err != nil {
		return err
	}
	key, epoch, err := s.currentAuditKey(ctx)
	if err != nil {
		return err
	}
	defer wipe(key)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	if err := write(tx); err != nil {
		return err
	}
	row, err := s.appendAuditTx(ctx, tx, key, epoch, *note)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
	}
	s.auditAppended(row)
	return nil
}

// AuditRecords returns up to limit records with seq > after, oldest first.
// A limit of zero or less means all of them.
func (s *Store) AuditRecords(ctx context.Context, after int64, limit int) ([]AuditRecord, error) {
	if limit <= 0 {
		limit = math.MaxInt64 // PostgreSQL has no negative LIMIT for "all"
	}
	rows, err := s.r.QueryContext(ctx, "SELECT seq, time, actor, event, detail, prev_hash, hash FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", after, limit)
	if err != nil {
		return nil, s.dbErr("read audit log", err)
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		r, err := scanAuditRow(rows)
		if err != nil {
			return nil, s.dbErr("read audit log", err)
		}
		out = append(out, s.listed(&r))
	}
	return out, s.dbErr("read audit log", rows.Err())
}

// AuditTail returns the newest n records, oldest first.
func (s *Store) AuditTail(ctx context.Context, n int) ([]AuditRecord, error) {
	var last int64
	if err := s.r.QueryRowContext(ctx, "SELECT coalesce(max(seq), 0) FROM audit_log").Scan(&last); err != nil {
		return nil, s.dbErr("read audit head", err)
	}
	return s.AuditRecords(ctx, max(0, last-int64(n)), n)
}

// AuditReport is the outcome of walking the chain.
type AuditReport struct {
	Records int64  `json:"records"`
	Head    []byte `json:"head,omitempty"` // the newest record's hash
	HeadSeq int64  `json:"head_seq"`
	// OK is false when the chain is broken; then BadSeq is the first record
	// found wrong (or, for records lost at the end, the newest one left)
	// and Problem says what is wrong with it.
	OK      bool   `json:"ok"`
	BadSeq  int64  `json:"bad_seq,omitempty"`
	Problem string `json:"problem,omitempty"`
}

// VerifyAudit walks the whole chain and reports the first record that was
// edited, deleted or moved, and records lost at the end that this Store
// wrote itself. It reads the log once, as a stream, keeping no record but
// the one it reads (the log is kept for good, and may hold millions), and
// looks up a broken link's predecessor only when there is one.
func (s *Store) VerifyAudit(ctx context.Context) (AuditReport, error) {
	eps, err := s.auditEpochs(ctx)
	if err != nil {
		return AuditReport{}, err
	}
	defer wipeEpochs(eps)
	// The newest record this Store wrote, read before the log: a record
	// appended while the log is read is then never taken for one lost.
	s.mu.RLock()
	head, headHash := s.auditHead, s.auditHeadHash
	s.mu.RUnlock()
	rows, err := s.r.QueryContext(ctx, "SELECT seq, time, actor, event, detail, prev_hash, hash FROM audit_log ORDER BY seq")
	if err != nil {
		return AuditReport{}, s.dbErr("read audit log", err)
	}
	defer rows.Close()
	rep := AuditReport{OK: true}
	bad := func(seq int64, problem string) (AuditReport, error) {
		rep.OK, rep.BadSeq, rep.Problem = false, seq, problem
		return rep, nil
	}
	// An edit (a record against its own hash) anywhere is reported
	// before a broken link: the first of each is kept.
	var edited, unlinked string
	var editedSeq, unlinkedSeq int64
	var lostPrev []byte // the predecessor a record names, where the chain breaks
	prev, prevSeq := genesis, int64(0)
	var headAt []byte // the hash of record head, as the log holds it
	for rows.Next() {
		r, err := scanAuditRow(rows)
		if err != nil {
			return AuditReport{}, s.dbErr("read audit log", err)
		}
		rep.Records++
		if edited == "" {
			switch {
			case r.bad != "":
				edited, editedSeq = fmt.Sprintf("record %d was edited: its %s is not of the type the log stores", r.seq, r.bad), r.seq
			case !hmac.Equal(auditHash(keyFor(eps, r.seq), &r), r.hash):
				edited, editedSeq = fmt.Sprintf("record %d was edited: its content does not match its hash", r.seq), r.seq
			}
		}
		if unlinked != "" {
			continue
		}
		switch {
		case !bytes.Equal(r.prevHash, prev):
			unlinkedSeq, lostPrev = r.seq, r.prevHash
			if r.seq != prevSeq+1 {
				unlinked = fmt.Sprintf("records deleted: %d to %d are missing before record %d", prevSeq+1, r.seq-1, r.seq)
			} else {
				unlinked = fmt.Sprintf("a record was deleted before record %d (the rest were renumbered)", r.seq)
			}
		case r.seq != prevSeq+1:
			unlinked, unlinkedSeq = fmt.Sprintf("record %d follows record %d: the sequence was edited", r.seq, prevSeq), r.seq
		default:
			prev, prevSeq = r.hash, r.seq
			if r.seq == head {
				headAt = r.hash
			}
		}
	}
	if err := rows.Err(); err != nil {
		return AuditReport{}, s.dbErr("read audit log", err)
	}
	rows.Close()
	if edited != "" {
		return bad(editedSeq, edited)
	}
	if unlinked != "" {
		if lostPrev != nil {
			// A record whose predecessor is elsewhere in the log was
			// moved; one whose predecessor is nowhere follows a deletion.
			var at int64
			err := s.r.QueryRowContext(ctx, "SELECT seq FROM audit_log WHERE hash = ? ORDER BY seq LIMIT 1", lostPrev).Scan(&at)
			switch {
			case err == nil:
				unlinked = fmt.Sprintf("records were reordered: record %d belongs after record %d", unlinkedSeq, at)
			case !errors.Is(err, sql.ErrNoRows):
				return AuditReport{}, s.dbErr("read audit log", err)
			}
		}
		return bad(unlinkedSeq, unlinked)
	}
	rep.HeadSeq = prevSeq
	if prevSeq > 0 {
		rep.Head = prev
	}
	s.mu.RLock()
	lost := s.auditLost
	s.mu.RUnlock()
	switch {
	case lost != "":
		return bad(prevSeq, lost)
	case prevSeq < head:
		return bad(prevSeq, fmt.Sprintf("records %d to %d, written by this daemon, are missing from the end", prevSeq+1, head))
	case head > 0 && !bytes.Equal(headAt, headHash):
		return bad(head, fmt.Sprintf("record %d is not the one this daemon wrote: records were replaced at the end", head))
	}
	return rep, nil
}

// maxAuditField bounds each field of a record (a detail's value, the
// actor's token label and identity). Some are the application's to
// choose (an object's label may be an attribute's 1 MiB), and the log
// keeps every record for good: without a bound, a loop creating and
// destroying one object would grow it by megabytes a turn, after the
// object itself is purged. A label longer than this is no name an
// administrator reads; its first part and its length are kept.
const maxAuditField = 1024

// boundField cuts v to maxAuditField bytes, at a character's boundary,
// and says how long it was.
func boundField(v string) string {
	if len(v) <= maxAuditField {
		return v
	}
	cut := maxAuditField
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", v[:cut], len(v))
}

// boundNote is n with each field bounded, its detail copied when one is
// cut (the caller's map is left as it was).
func boundNote(n AuditNote) AuditNote {
	n.Actor.Token, n.Actor.Remote, n.Actor.Role = boundField(n.Actor.Token), boundField(n.Actor.Remote), boundField(n.Actor.Role)
	n.Event = boundField(n.Event)
	for k, v := range n.Detail {
		if len(v) > maxAuditField || len(k) > maxAuditField {
			d := make(map[string]string, len(n.Detail))
			for k, v := range n.Detail {
				d[boundField(k)] = boundField(v)
			}
			n.Detail = d
			break
		}
	}
	return n
}
