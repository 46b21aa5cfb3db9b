package keystore

import (
	"context"
	"crypto/hmac"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Anchoring. The anchor record (anchor.go) accounts for every row; the
// counter ties the record to time. The record holds the counter's value
// it was last anchored at; anchoring writes the next value into the
// record, commits, and only then increments the counter. So:
//
//   - a keystore whose record holds less than the counter is an older
//     copy, put back after a later anchor: refused (ErrRolledBack),
//     naming how many anchors it is behind;
//   - one that holds one more than the counter was anchored by a process
//     that stopped before it incremented: the increment is made now;
//   - writes after the last anchor are in no counter yet: a copy taken
//     within one anchor interval of the newest state is accepted. That is
//     the window, documented in docs/keychain.md.
//
// The daemon anchors at start, every anchor interval when anything was
// written since the last anchor, and when it stops cleanly.

// Counter is the monotonic counter outside the database that the anchor
// record is tied to: in the daemon, the TPM NV counter tpmroot.Counter.
type Counter interface {
	// Value returns the counter's value, and false for a counter never
	// incremented, which has none.
	Value() (uint64, bool, error)
	// Increment adds one and returns the new value.
	Increment() (uint64, error)
}

// ErrRolledBack is the error (as a *RollbackError) for a keystore older
// than its anchor: put back from an older copy, whole or row by row. Such
// a keystore is refused, at start and, when a running daemon finds its
// keystore behind the counter, for every write after. `hsmemu restore`
// re-anchors a backup on purpose (AnchorOptions.Reset).
var ErrRolledBack = errors.New("keystore: the keystore is older than its anchor in the TPM")

// RollbackError says how a keystore was found older than its anchor.
type RollbackError struct {
	// What: "behind" (the record is older than the counter), "rows" (the
	// rows are not the ones the record accounts for), "no record" (the
	// record is gone but the counter is not), "counter" (the counter is
	// not the one the record was anchored in).
	What       string
	Behind     uint64 // "behind": by how many anchors
	Anchored   uint64 // the counter value the record holds
	Counter    uint64 // the counter's value
	Handle     uint32 // the counter's NV index
	Generation uint64 // the record's generation
	Detail     string
}

func (e *RollbackError) Error() string {
	switch e.What {
	case "behind":
		return fmt.Sprintf("keystore: the keystore is %d anchor(s) behind the TPM (it was anchored at %d, the TPM's counter 0x%08x is at %d): an older copy was put back",
			e.Behind, e.Anchored, e.Handle, e.Counter)
	case "rows":
		return fmt.Sprintf("keystore: the keystore's rows are not the ones its anchor record (generation %d) accounts for: a row was put back from an older copy, deleted, or added outside hsmemu",
			e.Generation)
	case "no record":
		return fmt.Sprintf("keystore: the keystore has no anchor record, but the TPM's counter 0x%08x for it is at %d: the record was removed, or a copy from before the keystore was first anchored was put back",
			e.Handle, e.Counter)
	}
	return "keystore: " + e.Detail
}

func (e *RollbackError) Unwrap() error { return ErrRolledBack }

// AnchorOptions say how AttachAnchor ties the keystore to its counter.
type AnchorOptions struct {
	// Handle is the counter's NV index, recorded when the record is made;
	// a record names its own (AnchorHandle).
	Handle uint32
	// Reset re-anchors on purpose a keystore older than its counter (a
	// restored backup is older by design; a recovered domain is in a new
	// TPM): it is anchored at the counter's next value. Reset is the
	// reason, recorded in the audit log as anchor.reset with how many
	// anchors the keystore was behind. It forgives age, never edits: rows
	// that are not the ones the record accounts for, or a record that
	// fails authentication, are refused all the same.
	Reset string
	// Actor is who the audit records name; zero means the daemon itself.
	Actor AuditActor
}

// AnchorReport says what AttachAnchor found and did.
type AnchorReport struct {
	Created    bool     // the record was made now (first start of a keystore, or of this version)
	Reset      bool     // re-anchored on purpose
	Behind     uint64   // how many anchors the keystore was behind (with Reset)
	TPMBehind  uint64   // the counter was behind the record by more than one: the TPM's state was put back
	BadTokens  []int64  // tokens (row ids) whose rows do not match their entries: taken down
	BadObjects []int64  // objects whose rows do not: taken down
	Deleted    []string // rows deleted outside hsmemu ("object row 12")
	AuditLost  string   // the audit log does not end where the record says; "" when it does
	Generation uint64
	Anchored   uint64 // the counter value the keystore is anchored at
	Handle     uint32
	Rows       int64 // rows the record accounts for
}

// AnchorStatus is the anchor record as it stands.
type AnchorStatus struct {
	Generation  uint64 // row changes since the record was made
	Anchored    uint64 // the counter value at the last anchor
	AnchoredGen uint64 // the generation then: Generation - AnchoredGen changes are not anchored yet
	Handle      uint32
	AuditSeq    int64
}

// AnchorHandle returns the NV index the keystore's anchor record names,
// and false for a keystore with no record.
func (s *Store) AnchorHandle(ctx context.Context) (uint32, bool, error) {
	st, _, ok, err := s.readAnchor(ctx, s.r)
	if err == nil && ok {
		err = s.overlayNodePoint(ctx, s.r, &st, 0)
	}
	return st.handle, ok, err
}

// Anchored reports whether AttachAnchor tied the Store to its counter.
func (s *Store) Anchored() bool {
	s.anc.op.Lock()
	defer s.anc.op.Unlock()
	return s.anc.counter != nil
}

// AnchorStatus reads the anchor record; ErrNotFound without one.
func (s *Store) AnchorStatus(ctx context.Context) (AnchorStatus, error) {
	st, _, ok, err := s.readAnchor(ctx, s.r)
	if err == nil && !ok {
		err = ErrNotFound
	}
	if err == nil {
		err = s.overlayNodePoint(ctx, s.r, &st, 0)
	}
	return AnchorStatus{Generation: st.generation, Anchored: st.anchored, AnchoredGen: st.anchoredGen, Handle: st.handle, AuditSeq: int64(st.auditSeq)}, err
}

// attachAnchorKeys loads the anchor's keys when the keystore has a
// record: without them, every write fails. Attach calls it.
func (s *Store) attachAnchorKeys(ctx context.Context) error {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM anchor").Scan(&n); err != nil {
		return s.dbErr("read anchor record", err)
	}
	if n == 0 {
		return nil
	}
	return s.loadAnchorKeys(ctx)
}

// readAnchor reads and opens the anchor record; ok is false without one.
// A record that fails authentication is a TamperError.
func (s *Store) readAnchor(ctx context.Context, q querier) (anchorState, uint32, bool, error) {
	var blob []byte
	lock := ""
	if _, ok := q.(*sql.Tx); ok {
		// A writer's transaction writes the record back: with other
		// writers (PostgreSQL), it holds the record until it commits, as
		// the fold of every write does (pganchor.go).
		lock = s.eng.forUpdate()
	}
	err := q.QueryRowContext(ctx, "SELECT state FROM anchor WHERE id = 1"+lock).Scan(&blob)
	if errors.Is(err, sql.ErrNoRows) {
		return anchorState{}, 0, false, nil
	}
	if err != nil {
		return anchorState{}, 0, false, s.dbErr("read anchor record", err)
	}
	s.anc.mu.Lock()
	loaded := s.anc.termKey != nil
	st, epoch, err := s.anc.openLocked(blob)
	s.anc.mu.Unlock()
	if errors.Is(err, errAnchorKeys) && !loaded {
		return st, 0, true, err
	}
	if err != nil {
		// Every epoch's key up to the current one is loaded: a record
		// naming another epoch was edited too.
		return st, 0, true, &TamperError{Kind: "keystore", ID: "anchor record", What: "mac"}
	}
	return st, epoch, true, nil
}

// anchorJob names the singleton job of anchoring. A node anchors in a
// counter of its own and writes its own point (nodeanchor.go), the
// record under its row lock (readAnchor), so nodes anchor side by side:
// the job is the node's. Stores that are no nodes share one counter, and
// one job.
func (s *Store) anchorJob() string {
	if id := s.LocalNode(); id != 0 {
		return fmt.Sprintf("anchor/node-%d", id)
	}
	return "anchor"
}

// writeAnchor seals st under the current epoch's key and writes it.
func (s *Store) writeAnchor(ctx context.Context, tx *sql.Tx, st *anchorState) error {
	s.mu.RLock()
	epoch := s.masterGen
	s.mu.RUnlock()
	s.anc.mu.Lock()
	blob, err := s.anc.sealLocked(st, epoch)
	if err == nil {
		s.anc.epoch = epoch
	}
	s.anc.mu.Unlock()
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO anchor (id, state) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state", blob)
	if err != nil {
		return s.dbErr("write anchor record", err)
	}
	return s.saveNodePoint(ctx, tx, st)
}

// rowCheck is what the check of the rows against their entries found.
type rowCheck struct {
	total      [32]byte // the rows' terms summed
	rows       int64
	badTokens  []int64  // token rows that do not match their entries
	badObjects []int64  // object rows that do not match theirs
	deleted    []string // entries whose row is gone
	repaired   bool     // the entries were written again from the rows
}

// checkRows checks the rows against their entries and the record, or,
// for a keystore without a record (fresh), makes their entries. The
// entries summing to the record are as written: a row that does not
// match its entry was put back, edited or added outside hsmemu, and is
// taken down, a token's or an object's alone; one of the domain's refuses
// the keystore. Entries that do not sum to the record, over rows that do,
// were edited alone: they are written again. Neither summing to it (a
// row put back with its entry) refuses the keystore.
func (s *Store) checkRows(ctx context.Context, tx *sql.Tx, st *anchorState, fresh bool) (rowCheck, error) {
	var rc rowCheck
	entries := map[string][]byte{}
	var entrySum [32]byte
	failed := 0
	if !fresh {
		rows, err := tx.QueryContext(ctx, "SELECT tbl, key, term FROM anchor_rows")
		if err != nil {
			return rc, s.dbErr("read anchor entries", err)
		}
		for rows.Next() {
			var table, key string
			var blob []byte
			if err := rows.Scan(&table, &key, &blob); err != nil {
				rows.Close()
				return rc, s.dbErr("read anchor entries", err)
			}
			s.anc.mu.Lock()
			term, err := s.anc.openEntryLocked(table, key, blob)
			s.anc.mu.Unlock()
			if err != nil {
				failed++
				continue
			}
			entries[table+"\x00"+key] = term
			addTerm(&entrySum, term)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return rc, s.dbErr("read anchor entries", err)
		}
	}
	rewrite := fresh || failed > 0 || entrySum != st.digest
	var all []anchoredRow // kept to write the entries again, when they are
	var flagged []anchoredRow
	err := s.eng.scanRows(ctx, tx, s.anc, func(r *anchoredRow) error {
		addTerm(&rc.total, r.term)
		rc.rows++
		k := r.table + "\x00" + r.key
		if e, ok := entries[k]; !ok || !hmac.Equal(e, r.term) {
			flagged = append(flagged, *r)
		}
		delete(entries, k)
		if rewrite {
			all = append(all, *r)
		}
		return nil
	})
	if err != nil {
		return rc, err
	}
	refuse := &RollbackError{What: "rows", Anchored: st.anchored, Handle: st.handle, Generation: st.generation}
	switch {
	case fresh || (rewrite && rc.total == st.digest):
		if !fresh {
			s.noteTamper(&TamperError{Kind: "keystore", ID: "anchor entries", What: "mac"})
			rc.repaired = true
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM anchor_rows"); err != nil {
			return rc, s.dbErr("write anchor entries", err)
		}
		for _, r := range all {
			s.anc.mu.Lock()
			blob, err := s.anc.sealEntryLocked(r.table, r.key, r.term)
			s.anc.mu.Unlock()
			if err != nil {
				return rc, err
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO anchor_rows (tbl, key, term) VALUES (?, ?, ?)", r.table, r.key, blob); err != nil {
				return rc, s.dbErr("write anchor entries", err)
			}
		}
		return rc, nil
	case rewrite:
		return rc, refuse
	}
	for _, r := range flagged {
		id, err := strconv.ParseInt(r.key, 10, 64)
		switch {
		case r.table == "objects" && err == nil:
			rc.badObjects = append(rc.badObjects, id)
		case r.table == "tokens" && err == nil:
			rc.badTokens = append(rc.badTokens, id)
		case r.token.Valid:
			rc.badTokens = append(rc.badTokens, r.token.Int64) // a row of a token's: the token goes
		default:
			return rc, refuse // a row of the domain's
		}
	}
	for k := range entries {
		table, key, _ := strings.Cut(k, "\x00")
		if table != "objects" && table != "tokens" {
			return rc, refuse
		}
		// Deleted outside hsmemu: a key lost, not disclosed, as ever.
		kind := strings.TrimSuffix(table, "s")
		rc.deleted = append(rc.deleted, kind+" row "+key)
		s.noteTamper(&TamperError{Kind: kind, ID: "row " + key, What: "deleted"})
	}
	return rc, nil
}

// AttachAnchor ties the keystore to its counter c, at start: it checks
// the anchor record against the rows, the audit log and the counter, and
// refuses a keystore older than its anchor with a *RollbackError (unless
// opts.Reset); a keystore without a record (new, or of an earlier
// version) gets one. Then it anchors when anything is not anchored yet.
// The Store keeps c for Anchor.
func (s *Store) AttachAnchor(ctx context.Context, c Counter, opts AnchorOptions) (AnchorReport, error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
	s.anc.op.Lock()
	defer s.anc.op.Unlock()
	rep := AnchorReport{Handle: opts.Handle}
	// One Store anchors at a time in a counter, from reading it to
	// incrementing it (Anchor).
	release, _, err := s.eng.job(ctx, s.anchorJob(), true)
	if err != nil {
		return rep, err
	}
	defer release()
	if err := s.loadAnchorKeys(ctx); err != nil {
		return rep, err
	}
	v, written, err := c.Value()
	if err != nil {
		return rep, fmt.Errorf("keystore: read the anchor counter: %w", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return rep, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	st, epoch, has, err := s.readAnchor(ctx, tx)
	if err == nil && has {
		err = s.overlayNodePoint(ctx, tx, &st, opts.Handle)
	}
	if err != nil {
		return rep, err
	}
	var logSeq int64
	var logHash []byte
	if err := tx.QueryRowContext(ctx, "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&logSeq, &logHash); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return rep, s.dbErr("read audit head", err)
	}
	s.mu.RLock()
	cur := s.masterGen
	s.mu.RUnlock()

	fresh := false // the record is made now, or re-anchored on purpose
	var rc rowCheck
	switch {
	case !has:
		if written && opts.Reset == "" {
			return rep, &RollbackError{What: "no record", Counter: v, Handle: opts.Handle}
		}
		fresh, rep.Created, rep.Reset = true, opts.Reset == "", opts.Reset != ""
		st = anchorState{handle: opts.Handle}
		if rc, err = s.checkRows(ctx, tx, &st, true); err != nil {
			return rep, err
		}
		st.digest = rc.total
	case st.handle != opts.Handle:
		return rep, fmt.Errorf("keystore: the anchor record names the counter 0x%08x, not 0x%08x", st.handle, opts.Handle)
	default:
		behind := uint64(0)
		if written && st.anchored != 0 && v > st.anchored {
			behind = v - st.anchored
		}
		replaced := !written && st.anchored != 0
		// Older is what Reset forgives; edited is not.
		if rc, err = s.checkRows(ctx, tx, &st, false); err != nil {
			if re, ok := err.(*RollbackError); ok {
				re.Counter = v
			}
			return rep, err
		}
		if opts.Reset == "" {
			switch {
			case replaced:
				return rep, &RollbackError{What: "counter", Anchored: st.anchored, Handle: st.handle, Detail: fmt.Sprintf(
					"the keystore was anchored at %d in the TPM's counter 0x%08x, which has never been incremented since it was defined: it is not the counter the keystore was anchored in (it was deleted and defined again)",
					st.anchored, st.handle)}
			case behind > 0:
				return rep, &RollbackError{What: "behind", Behind: behind, Anchored: st.anchored, Counter: v, Handle: st.handle, Generation: st.generation}
			}
		} else {
			fresh = true
			rep.Reset, rep.Behind = true, behind
		}
		if written && st.anchored > v+1 && opts.Reset == "" {
			rep.TPMBehind = st.anchored - v
		}
	}
	headMatches := int64(st.auditSeq) == logSeq && (logSeq == 0 || hmac.Equal(st.auditHash[:], logHash))
	if !fresh && !headMatches {
		rep.AuditLost = fmt.Sprintf("the log ends at record %d, and the keystore's anchor record says it ended at record %d: records were removed or replaced at the end", logSeq, st.auditSeq)
	}
	if fresh || !headMatches {
		// A fresh record takes the log as it is; a log that lost its
		// tail is reported (below), and the record follows the log from
		// now on, as every append does.
		st.auditSeq = uint64(logSeq)
		st.auditHash = [32]byte{}
		copy(st.auditHash[:], logHash)
	}
	rep.Rows, rep.BadTokens, rep.BadObjects, rep.Deleted = rc.rows, rc.badTokens, rc.badObjects, rc.deleted

	// Anchor: the record first, then the counter.
	switch {
	case !written:
		// A counter with no value yet: its first value is the TPM's to
		// choose, so the record is written pending (anchored 0), the
		// counter incremented, and the record completed. A start that
		// finds a pending record and a counter with a value finishes it.
		st.anchored = 0
		if err := s.writeAnchor(ctx, tx, &st); err != nil {
			return rep, err
		}
		if err := tx.Commit(); err != nil {
			return rep, s.dbErr("commit", err)
		}
		first, err := c.Increment()
		if err != nil {
			return rep, fmt.Errorf("keystore: anchor: %w", err)
		}
		if err := s.setAnchored(ctx, first); err != nil {
			return rep, err
		}
		st.anchored = first
	case fresh || rc.repaired || st.anchored == 0 || st.anchored > v+1 || st.anchored == v+1 ||
		st.generation != st.anchoredGen || epoch != cur || !headMatches:
		target := v + 1
		st.anchored, st.anchoredGen = target, st.generation
		if err := s.writeAnchor(ctx, tx, &st); err != nil {
			return rep, err
		}
		if err := tx.Commit(); err != nil {
			return rep, s.dbErr("commit", err)
		}
		got, err := c.Increment()
		if err != nil {
			return rep, fmt.Errorf("keystore: anchor: %w", err)
		}
		if got != target {
			return rep, fmt.Errorf("keystore: anchor: the counter went to %d, not %d: something else increments it", got, target)
		}
	default:
		tx.Rollback() // anchored already, nothing written since
	}
	rep.Generation, rep.Anchored = st.generation, st.anchored
	s.anc.counter, s.anc.last = c, st.anchored
	if len(rep.BadTokens)+len(rep.BadObjects) > 0 {
		// Taken down as rows that fail their MAC are: a token listed,
		// marked and unusable (verify refuses it), an object left out
		// (openRow and Find refuse it), each recorded when met.
		s.anc.mu.Lock()
		for _, id := range rep.BadTokens {
			s.anc.badTokens[id] = true
		}
		for _, id := range rep.BadObjects {
			s.anc.badObjects[id] = true
		}
		s.anc.anyBad.Store(true)
		s.anc.mu.Unlock()
		s.mu.Lock()
		for _, id := range rep.BadTokens {
			if t, ok := s.tokens[id]; ok {
				t.wipe()
				delete(s.tokens, id)
			}
		}
		s.mu.Unlock()
		s.cache.purge(func(*Object) bool { return true })
	}

	s.mu.Lock()
	if rep.AuditLost == "" {
		s.auditHead, s.auditHeadHash = logSeq, logHash
	} else if s.auditLost == "" {
		s.auditLost = rep.AuditLost
	}
	s.mu.Unlock()
	if rep.AuditLost != "" {
		s.noteTamper(&TamperError{Kind: "audit log", ID: "record " + strconv.FormatInt(logSeq, 10), What: "tail"})
	}

	if err := s.loadTombstones(ctx); err != nil {
		return rep, err
	}
	who := opts.Actor
	if who == (AuditActor{}) {
		who = AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "daemon"}
	}
	counter := fmt.Sprintf("0x%08x", opts.Handle)
	switch {
	case rep.Created:
		_, err = s.Audit(ctx, who, "anchor.create", map[string]string{"counter": counter, "anchored": strconv.FormatUint(st.anchored, 10), "rows": strconv.FormatInt(rc.rows, 10)})
	case rep.Reset:
		_, err = s.Audit(ctx, who, "anchor.reset", map[string]string{
			"reason": opts.Reset, "counter": counter, "anchored": strconv.FormatUint(st.anchored, 10),
			"behind": strconv.FormatUint(rep.Behind, 10),
		})
	case rep.TPMBehind > 0:
		_, err = s.Audit(ctx, who, "anchor.reset", map[string]string{
			"reason": "the TPM's counter was behind the keystore: the TPM's state was put back", "counter": counter,
			"anchored": strconv.FormatUint(st.anchored, 10), "tpm_behind": strconv.FormatUint(rep.TPMBehind, 10),
		})
	}
	return rep, err
}

// setAnchored completes a pending record with the counter's first value.
func (s *Store) setAnchored(ctx context.Context, v uint64) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	st, _, ok, err := s.readAnchor(ctx, tx)
	if err == nil && ok {
		err = s.overlayNodePoint(ctx, tx, &st, 0)
	}
	if err != nil {
		return err
	}
	if !ok || st.anchored != 0 {
		return errors.New("keystore: anchor: the pending record changed")
	}
	st.anchored, st.anchoredGen = v, st.generation
	if err := s.writeAnchor(ctx, tx, &st); err != nil {
		return err
	}
	return s.dbErr("commit", tx.Commit())
}

// Anchor anchors the keystore in its counter when anything was written
// since the last anchor (or a master key rotation moved the record's
// key), and reports whether it did. It first checks that neither the
// record nor the counter moved behind the Store's back: a counter ahead
// of the record (another copy of this keystore anchoring on this TPM) or
// a record older than the last anchor (the file replaced) is a
// *RollbackError, after which every write of this Store fails. A counter
// that refuses the increment (a TPM rate limiting its NV writes) leaves
// the record one ahead, which the next call catches up.
func (s *Store) Anchor(ctx context.Context) (bool, error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
	s.anc.op.Lock()
	defer s.anc.op.Unlock()
	c := s.anc.counter
	if c == nil {
		return false, errors.New("keystore: not anchored (AttachAnchor)")
	}
	if err := s.anchorRefused(); err != nil {
		return false, err
	}
	// One Store anchors at a time in a counter (anchorJob: each node's
	// own, or the one that Stores that are no nodes share), from reading
	// it to incrementing it. When another Store is anchoring in the same
	// counter, its anchor covers this Store's writes committed so far.
	release, ok, err := s.eng.job(ctx, s.anchorJob(), false)
	if err != nil || !ok {
		return false, err
	}
	defer release()
	// After a master key rotation the record moves to the new epoch's
	// key, loaded here, outside any transaction.
	s.mu.RLock()
	cur := s.masterGen
	s.mu.RUnlock()
	s.anc.mu.Lock()
	_, loaded := s.anc.stateKeys[cur]
	s.anc.mu.Unlock()
	if !loaded {
		if err := s.loadAnchorKeys(ctx); err != nil {
			return false, err
		}
	}
	v, written, err := c.Value()
	if err != nil {
		return false, fmt.Errorf("keystore: read the anchor counter: %w", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, s.dbErr("begin", err)
	}
	defer tx.Rollback()
	st, epoch, ok, err := s.readAnchor(ctx, tx)
	if err == nil && ok {
		err = s.overlayNodePoint(ctx, tx, &st, 0)
	}
	if err != nil {
		return false, err
	}
	switch {
	case !ok:
		return false, s.refuse(&RollbackError{What: "no record", Counter: v, Handle: st.handle})
	case st.anchored < s.anc.last:
		return false, s.refuse(&RollbackError{What: "behind", Behind: s.anc.last - st.anchored, Anchored: st.anchored, Counter: v, Handle: st.handle, Generation: st.generation})
	case !written:
		return false, s.refuse(&RollbackError{What: "counter", Anchored: st.anchored, Handle: st.handle, Detail: fmt.Sprintf(
			"the TPM's counter 0x%08x has no value any more: it was deleted and defined again", st.handle)})
	case v > st.anchored:
		return false, s.refuse(&RollbackError{What: "behind", Behind: v - st.anchored, Anchored: st.anchored, Counter: v, Handle: st.handle, Generation: st.generation})
	}
	if st.anchored == v && st.generation == st.anchoredGen && epoch == cur {
		return false, nil
	}
	target := v + 1
	st.anchored, st.anchoredGen = target, st.generation
	if err := s.writeAnchor(ctx, tx, &st); err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, s.dbErr("commit", err)
	}
	s.anc.last = target
	got, err := c.Increment()
	if err != nil {
		return false, fmt.Errorf("keystore: anchor: %w", err)
	}
	if got != target {
		return false, s.refuse(&RollbackError{What: "counter", Anchored: target, Counter: got, Handle: st.handle, Detail: fmt.Sprintf(
			"the TPM's counter 0x%08x went to %d when this daemon anchored at %d: something else increments it (another copy of this keystore?)", st.handle, got, target)})
	}
	return true, nil
}

// refuse makes every later write of the Store fail with err.
func (s *Store) refuse(err error) error {
	s.anc.mu.Lock()
	if s.anc.refused == nil {
		s.anc.refused = err
	}
	s.anc.mu.Unlock()
	return err
}

func (s *Store) anchorRefused() error {
	s.anc.mu.Lock()
	defer s.anc.mu.Unlock()
	return s.anc.refused
}

// DropAnchor removes the anchor record, for a keystore about to be
// anchored anew elsewhere (`hsmemu domain recover` moves it to another
// TPM, whose counter AttachAnchor with Reset then defines). Its writes
// until then are not accounted for.
func (s *Store) DropAnchor(ctx context.Context) error {
	_, err := s.w.ExecContext(ctx, "DELETE FROM anchor; DELETE FROM anchor_rows")
	return s.dbErr("drop anchor record", err)
}
