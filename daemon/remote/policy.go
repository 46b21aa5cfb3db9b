package remote

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Limits bound what one identity holds of the daemon, all its connections
// together. Zero fields take the defaults (DefaultLimits).
type Limits struct {
	// Connections open at once; more are refused at their hello.
	Connections int `json:"connections,omitempty"`
	// Sessions open at once, over all its applications; more are
	// CKR_SESSION_COUNT.
	Sessions int `json:"sessions,omitempty"`
	// BytesInFlight is the memory its requests and replies of more than
	// 64 KiB may hold at once (the daemon's per-client share of its
	// memory budget); a call that finds no room in it within the budget's
	// wait gets CKR_DEVICE_MEMORY.
	BytesInFlight int64 `json:"bytes_in_flight,omitempty"`
}

// DefaultLimits are an identity's limits unless the policy says otherwise:
// a pool of connections per process for a few processes, and two of the
// largest requests in flight.
var DefaultLimits = Limits{Connections: 64, Sessions: 4096, BytesInFlight: 32 << 20}

// or fills l's zero fields from d.
func (l Limits) or(d Limits) Limits {
	if l.Connections <= 0 {
		l.Connections = d.Connections
	}
	if l.Sessions <= 0 {
		l.Sessions = d.Sessions
	}
	if l.BytesInFlight <= 0 {
		l.BytesInFlight = d.BytesInFlight
	}
	return l
}

// Entry is what one identity may do.
type Entry struct {
	// Tokens are the labels of the tokens it sees; "*" is every token.
	Tokens []string `json:"tokens"`
	// Admin lets it make admin calls (`hsmemu --server tls://...`), with
	// the rights of the daemon's own user on the local socket, and create
	// tokens through C_InitToken (of labels it sees).
	Admin bool `json:"admin,omitempty"`
	// Limits, where set, replace the policy's for this identity.
	Limits Limits `json:"limits,omitempty"`
}

// Policy maps identities to entries. An identity with no entry sees no
// tokens and may not administer; it still holds the default limits.
type Policy struct {
	Limits     Limits           `json:"limits,omitempty"`
	Identities map[string]Entry `json:"identities"`
}

// Grant is what the policy gives a client: the identity it matched (its
// first, when none matched) and that identity's entry, limits filled in.
type Grant struct {
	Identity string
	Entry    Entry
	Listed   bool // the policy has an entry for it
}

// Lookup finds the first of ids with an entry. ids is never empty for a
// certificate that passed verification with an identity.
func (p *Policy) Lookup(ids []string) Grant {
	base := DefaultLimits
	if p != nil {
		base = p.Limits.or(DefaultLimits)
		for _, id := range ids {
			if e, ok := p.Identities[id]; ok {
				e.Limits = e.Limits.or(base)
				return Grant{Identity: id, Entry: e, Listed: true}
			}
		}
	}
	g := Grant{Entry: Entry{Limits: base}}
	if len(ids) > 0 {
		g.Identity = ids[0]
	}
	return g
}

// LoadPolicy reads a policy file (JSON; docs/remote.md). Unknown fields,
// malformed identities and negative limits are errors.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParsePolicy(b)
}

// ParsePolicy parses a policy file's contents.
func ParsePolicy(b []byte) (*Policy, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if dec.More() {
		return nil, errors.New("policy: trailing data after the JSON object")
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	return &p, nil
}

func (p *Policy) check() error {
	if err := p.Limits.check(); err != nil {
		return fmt.Errorf("policy: limits: %w", err)
	}
	for id, e := range p.Identities {
		if err := CheckIdentity(id); err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		for _, l := range e.Tokens {
			if l == "" || len(l) > 32 {
				return fmt.Errorf("policy: %s: token label %q: want 1 to 32 bytes", id, l)
			}
		}
		if err := e.Limits.check(); err != nil {
			return fmt.Errorf("policy: %s: limits: %w", id, err)
		}
	}
	return nil
}

func (l Limits) check() error {
	if l.Connections < 0 || l.Sessions < 0 || l.BytesInFlight < 0 {
		return errors.New("a limit is negative")
	}
	return nil
}

// Allow adds what a --tls-allow flag says: "IDENTITY=LABEL[,LABEL...]".
// admin marks it an administrator (--tls-admin IDENTITY, which may have
// no labels). An identity given twice gets the union.
func (p *Policy) Allow(flag string, admin bool) error {
	id, labels, hasLabels := strings.Cut(flag, "=")
	if err := CheckIdentity(id); err != nil {
		return err
	}
	if !admin && (!hasLabels || labels == "") {
		return fmt.Errorf("%q: want IDENTITY=LABEL[,LABEL...]", flag)
	}
	if p.Identities == nil {
		p.Identities = map[string]Entry{}
	}
	e := p.Identities[id]
	if hasLabels {
		for _, l := range strings.Split(labels, ",") {
			if l == "" || len(l) > 32 {
				return fmt.Errorf("%q: token label %q: want 1 to 32 bytes", flag, l)
			}
			e.Tokens = append(e.Tokens, l)
		}
	}
	e.Admin = e.Admin || admin
	p.Identities[id] = e
	return nil
}
