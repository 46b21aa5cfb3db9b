package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

// Tampering. The database is not trusted: whoever holds the file can edit
// any row. Every read authenticates what it returns, and a row that fails
// (its MAC, its seal, a value out of range, an index copy that disagrees
// with the sealed record) is ErrTampered, as a TamperError saying which
// row and what failed. A failure takes down that row alone: a tampered
// token is listed but unusable, a tampered object is left out of finds
// and refused by opens, and everything else keeps working.
//
// Each failure is recorded in the audit log once per process, as a
// tamper.detected record (kind, uuid, what failed). Reads note failures
// as they meet them, whatever locks they hold, and the records are
// written by AuditTamper, which the daemon calls where a call ends, and
// by every audit append before its own record.

// TamperError says which row failed authentication and how.
type TamperError struct {
	Kind string // "token" or "object"
	ID   string // the row's uuid, or "row N" when its uuid is itself unreadable
	What string // what failed: "mac", "range", "seal", "uuid column", "record", "index"
}

func (e *TamperError) Error() string {
	return fmt.Sprintf("keystore: %s %s failed authentication (%s): database edited or corrupted", e.Kind, e.ID, e.What)
}

func (e *TamperError) Unwrap() error { return ErrTampered }

// tampered makes a TamperError for a token or object row.
func tampered(kind string, id UUID, rowID int64, what string) *TamperError {
	e := &TamperError{Kind: kind, ID: id.String(), What: what}
	if id == (UUID{}) {
		e.ID = fmt.Sprintf("row %d", rowID)
	}
	return e
}

// tamperLog holds the failures noted and not yet audited, and those
// audited, so each is recorded once.
type tamperLog struct {
	mu      sync.Mutex
	seen    map[string]bool
	pending []*TamperError
	events  []AuditNote // other failures to record (noteEvent)
	any     atomic.Bool // pending or events is not empty: AuditTamper's fast path
}

// noteTamper records err if it is a TamperError met for the first time.
// It takes only its own lock: any read may call it.
func (s *Store) noteTamper(err error) {
	var te *TamperError
	if !errors.As(err, &te) {
		return
	}
	key := te.Kind + "/" + te.ID + "/" + te.What
	s.tamper.mu.Lock()
	defer s.tamper.mu.Unlock()
	if s.tamper.seen == nil {
		s.tamper.seen = map[string]bool{}
	}
	if s.tamper.seen[key] {
		return
	}
	s.tamper.seen[key] = true
	s.tamper.pending = append(s.tamper.pending, te)
	s.tamper.any.Store(true)
}

// noteEvent queues an audit record of a failure that is no tampering
// (a PIN record this node holds no binding of), once per key per
// process, for AuditTamper to write. Like noteTamper it takes only its
// own lock.
func (s *Store) noteEvent(key, event string, detail map[string]string) {
	s.tamper.mu.Lock()
	defer s.tamper.mu.Unlock()
	if s.tamper.seen == nil {
		s.tamper.seen = map[string]bool{}
	}
	if s.tamper.seen[key] {
		return
	}
	s.tamper.seen[key] = true
	who := AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "daemon"}
	s.tamper.events = append(s.tamper.events, AuditNote{Actor: who, Event: event, Detail: detail})
	s.tamper.any.Store(true)
}

// noteUnbound records that this node met a PIN record it holds no
// binding of (pin.unbound), once per record.
func (s *Store) noteUnbound(ti *TokenInfo, role Role, salt []byte) {
	node := strconv.FormatInt(s.LocalNode(), 10)
	s.noteEvent(fmt.Sprintf("unbound/%s/%d/%x", ti.UUID, role, salt), "pin.unbound",
		map[string]string{"token": ti.UUID.String(), "role": role.String(), "node": node})
}

// AuditTamper writes the tamper.detected records of failures noted since
// the last call. The caller holds no keystore lock and no transaction.
// With nothing noted it costs one atomic load: the daemon calls it at the
// end of every call.
func (s *Store) AuditTamper(ctx context.Context) error {
	if !s.tamper.any.Load() {
		return nil
	}
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	return s.auditTamperLocked(ctx)
}

// auditTamperLocked is AuditTamper with auditMu held.
func (s *Store) auditTamperLocked(ctx context.Context) error {
	if !s.tamper.any.Load() {
		return nil
	}
	s.tamper.mu.Lock()
	pending, events := s.tamper.pending, s.tamper.events
	s.tamper.pending, s.tamper.events = nil, nil
	s.tamper.any.Store(false)
	s.tamper.mu.Unlock()
	who := AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "daemon"}
	for i, te := range pending {
		detail := map[string]string{"kind": te.Kind, "uuid": te.ID, "what": te.What}
		if _, err := s.appendAudit(ctx, who, "tamper.detected", detail); err != nil {
			// Not written: noted again for the next try.
			s.tamper.mu.Lock()
			s.tamper.pending = append(pending[i:], s.tamper.pending...)
			s.tamper.events = append(events, s.tamper.events...)
			s.tamper.any.Store(true)
			s.tamper.mu.Unlock()
			return err
		}
	}
	for i, n := range events {
		if _, err := s.appendAudit(ctx, n.Actor, n.Event, n.Detail); err != nil {
			s.tamper.mu.Lock()
			s.tamper.events = append(events[i:], s.tamper.events...)
			s.tamper.any.Store(true)
			s.tamper.mu.Unlock()
			return err
		}
	}
	return nil
}

// TamperCount is how many tamper.detected records the audit log holds.
func (s *Store) TamperCount(ctx context.Context) (int64, error) {
	var n int64
	err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM audit_log WHERE event = 'tamper.detected'").Scan(&n)
	return n, s.dbErr("count tamper records", err)
}

// TamperWhat says what failed in a TamperError err wraps ("mac", "range",
// "seal", ...), or "" when err is none.
func TamperWhat(err error) string {
	var te *TamperError
	if errors.As(err, &te) {
		return te.What
	}
	return ""
}
