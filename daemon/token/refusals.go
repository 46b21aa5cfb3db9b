package token

import (
	"context"
	"strconv"
	"sync"
	"time"

	"hsmemu/keystore"
)

// A login to a locked role, or while the TPM is in dictionary-attack
// lockout, is refused without the PIN being looked at, so any process
// that may attach (or a remote client) can ask again and again, as fast
// as the socket carries it. Each record is a durable write under the
// audit log's one lock, kept for good: recorded each time, such a loop
// would grow the log without bound and hold back every other write of
// the daemon. So the first refusal is recorded at once, and then at most
// one every refusalAuditEvery for each token, role and event, its
// detail's "repeats" saying how many more were refused since the record
// before it (the metrics count every one: hsmemu_pkcs11_calls_total with
// rv CKR_PIN_LOCKED). Refusals counted after the last record are in no
// record until a later refusal writes one, and in none if the daemon
// stops first.

// DefaultRefusalAuditEvery is Config.RefusalAuditEvery's default.
const DefaultRefusalAuditEvery = time.Minute

type refusalKey struct {
	token       keystore.UUID
	role, event string
}

type refusal struct {
	last    time.Time // of the last record
	pending int       // refusals since it, not recorded
}

// refusals holds, per token, role and event, when one was last recorded.
// It holds an entry per token and role that was ever locked: a few.
type refusals struct {
	mu sync.Mutex
	m  map[refusalKey]*refusal
}

// take counts a refusal at now and says whether to record it, with how
// many refusals since the last record were not.
func (r *refusals) take(k refusalKey, now time.Time, every time.Duration) (record bool, repeats int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[refusalKey]*refusal{}
	}
	f, ok := r.m[k]
	if !ok {
		r.m[k] = &refusal{last: now}
		return true, 0
	}
	if now.Sub(f.last) < every && !now.Before(f.last) {
		f.pending++
		return false, 0
	}
	repeats, f.pending, f.last = f.pending, 0, now
	return true, repeats
}

// auditRefusal records a refused login of role on token (event
// login.locked or login.tpm-lockout) unless one was recorded within
// Config.RefusalAuditEvery; it says whether it did, for the caller's log
// line to follow the record.
func (e *Engine) auditRefusal(ctx context.Context, who keystore.AuditActor, token keystore.UUID, event string) bool {
	record, repeats := e.refused.take(refusalKey{token: token, role: who.Role, event: event}, time.Now(), e.cfg.RefusalAuditEvery)
	if !record {
		return false
	}
	var detail map[string]string
	if repeats > 0 {
		detail = map[string]string{"repeats": strconv.Itoa(repeats)}
	}
	e.audit(ctx, who, token, event, detail)
	return true
}
