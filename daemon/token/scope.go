package token

import (
	"sync"
	"sync/atomic"

	"hsmemu/cryptoki/ck"
	"hsmemu/internal/budget"
	"hsmemu/keystore"
)

// Scope is what a remote client identity may see (docs/remote.md): the
// tokens named by their labels, and whether it may create tokens (the
// free slot). Applications attached with a nil Scope (the local socket,
// whose peers the daemon trusts by uid) see every token.
//
// One Scope is shared by every application of an identity: it counts their
// sessions together against the identity's limit. The daemon may change
// what it grants (a policy reloaded on SIGHUP) while applications run;
// sessions already open stay open.
type Scope struct {
	// Identity names the client: "cn:NAME" or "uri:URI".
	Identity string

	mu     sync.RWMutex
	all    bool
	labels map[string]bool
	create bool
	limit  int // sessions of all its applications together; 0: no limit

	sessions atomic.Int64
	// mem is its applications' share of the session budget, made at
	// their first session (sessionShare).
	mem *budget.Budget
}

// NewScope returns a scope for identity; Grant says what it sees.
func NewScope(identity string) *Scope { return &Scope{Identity: identity} }

// Grant sets what the scope sees: the tokens labelled labels ("*" for
// every token), whether it may create tokens through C_InitToken on the
// free slot, and how many sessions its applications may hold together
// (0 for no limit of its own).
func (s *Scope) Grant(labels []string, create bool, maxSessions int) {
	m := map[string]bool{}
	all := false
	for _, l := range labels {
		if l == "*" {
			all = true
		}
		m[l] = true
	}
	s.mu.Lock()
	s.all, s.labels, s.create, s.limit = all, m, create, maxSessions
	s.mu.Unlock()
}

// Sessions is how many sessions the scope's applications hold.
func (s *Scope) Sessions() int { return int(s.sessions.Load()) }

// Sees says whether the scope shows the token labelled label.
func (s *Scope) Sees(label string) bool {
	if s == nil {
		return true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.all || s.labels[label]
}

// seesFree says whether the scope shows the free slot, where C_InitToken
// creates tokens.
func (s *Scope) seesFree() bool {
	if s == nil {
		return true
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.create
}

// takeSession counts a session in, or refuses it over the limit.
func (s *Scope) takeSession() error {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	limit := s.limit
	s.mu.RUnlock()
	if n := s.sessions.Add(1); limit > 0 && n > int64(limit) {
		s.sessions.Add(-1)
		return ck.Error(ck.CKR_SESSION_COUNT)
	}
	return nil
}

func (s *Scope) dropSession() {
	if s != nil {
		s.sessions.Add(-1)
	}
}

// visible is the scope's check on a token found in a slot: a token it
// does not see is no token at all (CKR_SLOT_ID_INVALID), as if the slot
// did not exist. A tampered row's label is not believed: such a token is
// shown only to a scope that sees every token.
func (s *Scope) visible(ti keystore.TokenInfo, err error) bool {
	if s == nil {
		return true
	}
	if err != nil {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.all
	}
	return s.Sees(ti.Label)
}

// sessionShare is the scope's share of the session budget, of size
// bytes (sessmem.go); nil, no share of its own, for no scope.
func (s *Scope) sessionShare(size int64) *budget.Budget {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		s.mem = budget.New(size)
	}
	return s.mem
}
