// Package reqid gives a call a request id that ties the daemon's log lines
// for it to the audit records it writes (their detail's "request_id").
//
// An admin call gets one when it arrives. A PKCS#11 call gets one only if
// it needs one, when it writes an audit record: the hot path then costs
// nothing more than clearing a slot per call. A module connection's
// context carries one Slot for all its calls, made once (WithSlot), and
// the server clears it before each call (Slot.Reset); a connection serves
// one call at a time, so the slot needs no lock.
package reqid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
)

// Slot holds the id of the call being served, or "" until one is needed.
type Slot struct{ id string }

// Reset forgets the last call's id.
func (s *Slot) Reset() { s.id = "" }

type key struct{}

// New returns a fresh id: 16 hex digits.
func New() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// With returns ctx carrying id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, key{}, &Slot{id: id})
}

// WithSlot returns ctx carrying an empty slot, for a connection's calls.
func WithSlot(ctx context.Context) (context.Context, *Slot) {
	s := &Slot{}
	return context.WithValue(ctx, key{}, s), s
}

// From returns the id ctx carries, or "".
func From(ctx context.Context) string {
	if s, ok := ctx.Value(key{}).(*Slot); ok {
		return s.id
	}
	return ""
}

// Ensure returns the id ctx carries, giving its slot a new one if it has
// none yet. Without a slot (background work such as the purger) each call
// returns a new id, kept nowhere.
func Ensure(ctx context.Context) string {
	s, ok := ctx.Value(key{}).(*Slot)
	if !ok {
		return New()
	}
	if s.id == "" {
		s.id = New()
	}
	return s.id
}
