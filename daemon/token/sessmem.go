package token

import (
	"hsmemu/cryptoki/ck"
	"hsmemu/internal/budget"
)

// What sessions hold in the daemon's memory, between calls and for as
// long as a client likes: their session objects (a CKO_DATA of 16 MiB
// is one C_CreateObject) and their searches' results. Token objects are
// the keystore's; these are the engine's alone, so they are charged to
// the session budget (Config.SessionBudget) from the call that makes
// them to the one that drops them, whichever application holds them
// (docs/reliability.md, "Memory bounds"). The sessions themselves, 150
// bytes each (BenchmarkSessionMemory), are counted instead
// (Config.MaxAllSessions).

const (
	// DefaultSessionBudget holds 500 session objects of 256 KiB, or
	// 50,000 RSA keys, or a million searches of 16 results.
	DefaultSessionBudget = 128 << 20
	// DefaultMaxAllSessions is 16 applications at their MaxSessions, in
	// 150 MiB.
	DefaultMaxAllSessions = 1 << 20
)

const (
	// objectBase and attrCost are a session object's charge besides its
	// values: the view and its index, each attribute's slice header,
	// type and map entry.
	objectBase = 512
	attrCost   = 64
	// handleCost is a search result's charge.
	handleCost = 8
)

// errSessionMemory is the answer when the session budget is spent.
var errSessionMemory = ck.Errorf(ck.CKR_DEVICE_MEMORY, "the sessions' memory budget is spent")

// objectCost is what a session object holding o is charged.
func objectCost(o *Object) int64 {
	n := int64(objectBase)
	for _, a := range o.attrs {
		n += attrCost + int64(len(a.Value))
	}
	for _, a := range o.secret {
		n += attrCost + int64(len(a.Value))
	}
	return n
}

// remoteShare: a remote identity's applications together may hold at
// most this part of the session budget, so that one tenant that spends
// its share leaves the others room for their searches and objects.
const remoteShare = 8

// sessCharge is where what a session holds is charged: the session
// budget, and first, for a remote client, its identity's share of it.
type sessCharge struct{ all, share *budget.Budget }

// sessCharge is where app's sessions are charged.
func (e *Engine) sessCharge(app *App) sessCharge {
	return sessCharge{all: e.sessMem, share: app.Scope.sessionShare(e.cfg.SessionBudget / remoteShare)}
}

func (c sessCharge) take(n int64) bool {
	if !c.share.TryAcquire(n) {
		return false
	}
	if !c.all.TryAcquire(n) {
		c.share.Release(n)
		return false
	}
	return true
}

func (c sessCharge) give(n int64) {
	c.share.Release(n)
	c.all.Release(n)
}

// charge takes n bytes of mem for a session object that is about to
// hold them.
func (so *sessionObject) charge(mem sessCharge, n int64) error {
	if !mem.take(n) {
		return errSessionMemory
	}
	so.mem, so.charged = mem, n
	return nil
}

// recharge brings a session object's charge to what o, its new value,
// holds; on error it keeps its old value and charge.
func (so *sessionObject) recharge(o *Object) error {
	n := objectCost(o)
	switch {
	case n > so.charged:
		if !so.mem.take(n - so.charged) {
			return errSessionMemory
		}
	case n < so.charged:
		so.mem.give(so.charged - n)
	}
	so.charged = n
	return nil
}

// uncharge gives a dropped session object's charge back.
func (so *sessionObject) uncharge() {
	so.mem.give(so.charged)
	so.charged = 0
}

// setFind makes op the session's search, charged for its results.
// s.mu is held.
func (s *session) setFind(op *findOp) error {
	n := int64(len(op.handles)) * handleCost
	if !s.mem.take(n) {
		return errSessionMemory
	}
	op.charged = n
	s.find = op
	return nil
}

// endFind ends the session's search, if any, and gives its charge back.
// s.mu is held.
func (s *session) endFind() {
	if s.find != nil {
		s.mem.give(s.find.charged)
		s.find = nil
	}
}

// SessionMemory is what the session budget holds now, and its size.
func (e *Engine) SessionMemory() (used, size int64) { return e.sessMem.Used(), e.sessMem.Size() }
