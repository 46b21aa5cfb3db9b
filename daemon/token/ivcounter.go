package token

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"math"
	"math/big"
	"sync"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// IV counters. An AES key used for message-based encryption with a
// generated IV (CKG_GENERATE, CKG_GENERATE_COUNTER) gets its IVs from a
// counter of its own, which must never give a value twice, daemon
// restarts and crashes included (docs/mechanisms.md, "Message-based
// operations"). Its state is the vendor attribute CKA_HSMEMU_IV_COUNTER,
// sealed with the key like every attribute (so an edit of the database
// is caught, not a way to rewind it), holding two numbers:
//
//   - the high-water mark: every value below it may have been handed out;
//   - the limit: the first value that is not this key's.
//
// The daemon hands values out from a block it reserved by writing a
// higher mark first (ivBlock values at a time), so a crash skips at most
// the rest of a block and never reuses one. A token key's reservation
// reads the stored mark and writes the advanced one in one transaction
// with the key's row locked (keystore.Store.UpdateLocked): daemons that
// share a database, and use one key, each get blocks no other got. The
// first use of a key without the attribute starts at a random point below
// 2^62: material that exists in several objects the token cannot connect
// (imported, unwrapped or derived twice, a key restored from a backup)
// then collides only by chance, a chance of about one in 2^62 per value
// used. C_CopyObject, which the token does see, splits the key's range:
// the copy takes the upper half of what is left, the original keeps the
// lower, both written before the copy exists. A change of the key's
// other attributes keeps the stored state as the locked row has it.
//
// Session objects keep the same state in memory, with the object: it
// ends with them.

const (
	// ivBlock is how many values one write of the mark reserves.
	ivBlock = 1 << 20
	// ivStartBound bounds a first use's random start.
	ivStartBound = 1 << 62
)

// ivState is a counter's stored state; ok is false when there is none.
type ivState struct {
	mark, limit uint64
	ok          bool
}

// ivCounter is one key's counter.
type ivCounter struct {
	mu   sync.Mutex
	next uint64 // the next value to hand out
	mark uint64 // the end of this daemon's block: next <= mark; next == mark asks for a block
	// block is how many values a reservation takes (ivBlock but in tests).
	block uint64
	// change applies f to the stored state, atomically with respect to
	// every other change of it (every daemon's); nil for a session
	// object, whose state is mem.
	change func(ctx context.Context, f func(ivState) (ivState, error)) error
	mem    ivState
	// id is a token key's row, where change goes: the key's latest,
	// since a key restored from a backup comes back, with its UUID, in
	// a new row.
	id keystore.ObjectID
}

// encodeIVCounter is CKA_HSMEMU_IV_COUNTER's value.
func encodeIVCounter(mark, limit uint64) []byte {
	v := binary.BigEndian.AppendUint64(nil, mark)
	return binary.BigEndian.AppendUint64(v, limit)
}

// decodeIVCounter reads CKA_HSMEMU_IV_COUNTER; a value that is not two
// numbers in order is not one the token wrote.
func decodeIVCounter(v []byte) (mark, limit uint64, err error) {
	if len(v) != 16 {
		return 0, 0, keystore.ErrTampered
	}
	mark, limit = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
	if mark > limit {
		return 0, 0, keystore.ErrTampered
	}
	return mark, limit, nil
}

// ivStateOf reads a key's state from its attributes.
func ivStateOf(attrs keystore.Attributes) (ivState, error) {
	v, ok := attrs.Get(ck.CKA_HSMEMU_IV_COUNTER)
	if !ok {
		return ivState{}, nil
	}
	mark, limit, err := decodeIVCounter(v)
	return ivState{mark: mark, limit: limit, ok: err == nil}, err
}

// randomStart is a first use's starting point.
func randomStart() uint64 {
	n, err := rand.Int(rand.Reader, big.NewInt(ivStartBound))
	if err != nil {
		panic("token: internal error: no randomness: " + err.Error())
	}
	return n.Uint64()
}

// apply changes the state: the stored one for a token key, mem for a
// session object. c.mu is held.
func (c *ivCounter) apply(ctx context.Context, f func(ivState) (ivState, error)) error {
	if c.change != nil {
		return c.change(ctx, f)
	}
	n, err := f(c.mem)
	if err == nil {
		c.mem = n
	}
	return err
}

// started is s, or a fresh random start when nothing was ever handed out
// or written: any start will do.
func started(s ivState) ivState {
	if !s.ok {
		return ivState{mark: randomStart(), limit: math.MaxUint64, ok: true}
	}
	return s
}

// take hands out the next value, reserving a new block first when this
// one is used up. At the limit it is CKR_KEY_EXHAUSTED (PKCS#11 3.1's
// code for a key whose uses are counted and spent): the counter never
// wraps.
func (c *ivCounter) take(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next == c.mark {
		var next, mark uint64
		err := c.apply(ctx, func(s ivState) (ivState, error) {
			s = started(s)
			if s.mark >= s.limit {
				return s, ck.Errorf(ck.CKR_KEY_EXHAUSTED, "the key's IV counter reached its limit")
			}
			// The block starts at the stored mark, not at this daemon's:
			// another may have reserved since.
			next, mark = s.mark, s.limit
			if s.limit-s.mark > c.block {
				mark = s.mark + c.block
			}
			return ivState{mark: mark, limit: s.limit, ok: true}, nil
		})
		if err != nil {
			return 0, err
		}
		// Only once the new mark is written.
		c.next, c.mark = next, mark
	}
	v := c.next
	c.next++
	return v, nil
}

// split gives a copy of the key the upper half of what is left of the
// range, written for the original first, and returns the copy's state.
func (c *ivCounter) split(ctx context.Context) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []byte
	err := c.apply(ctx, func(s ivState) (ivState, error) {
		s = started(s)
		// Values below the stored mark stay the original's: they may be
		// in use, here or by another daemon.
		mid := s.mark + (s.limit-s.mark)/2
		out = encodeIVCounter(mid, s.limit)
		return ivState{mark: s.mark, limit: mid, ok: true}, nil
	})
	return out, err
}

// ivCounters are the counters of the token keys in use, by the object's
// UUID (which is never reused), shared by every application. A destroyed
// key's stays: a message-based process may still hold it, and the key
// may be recovered, or restored from a backup; one counter per key keeps
// them from ever handing out the same value (a restored key goes on from
// where this daemon left it, not from the backup's state, which the
// restore drops).
type ivCounters struct {
	mu sync.Mutex
	m  map[keystore.UUID]*ivCounter
}

// hasIVCounter says whether an object is a key that gets one: an AES key.
func hasIVCounter(o *Object) bool {
	return o.Class() == ck.CKO_SECRET_KEY && o.KeyType() == ck.CKK_AES
}

// ivCounterOf returns the counter of the key behind ref, made on first
// use.
func (e *Engine) ivCounterOf(ctx context.Context, app *App, ref *handle, o *Object) (*ivCounter, error) {
	if ref.mem != nil {
		app.mu.Lock()
		defer app.mu.Unlock()
		if ref.mem.ivs == nil {
			// The state the object was made with (a copy's range), if any.
			st, err := ivStateOf(o.attrs)
			if err != nil {
				return nil, err
			}
			ref.mem.ivs = &ivCounter{mem: st, block: e.ivBlock}
		}
		return ref.mem.ivs, nil
	}
	stored, err := e.store.Open(ctx, ref.id)
	if err != nil {
		return nil, err
	}
	e.ivs.mu.Lock()
	defer e.ivs.mu.Unlock()
	if e.ivs.m == nil {
		e.ivs.m = map[keystore.UUID]*ivCounter{}
	}
	c, ok := e.ivs.m[stored.UUID]
	if ok {
		defer func() {
			// After e.ivs.mu: c.mu may be held across a write.
			c.mu.Lock()
			c.id = ref.id
			c.mu.Unlock()
		}()
	} else {
		c = &ivCounter{id: ref.id, block: e.ivBlock}
		c.change = func(ctx context.Context, f func(ivState) (ivState, error)) error {
			return e.store.UpdateLocked(ctx, c.id, func(cur *keystore.Object) (keystore.Attributes, []byte, error) {
				st, err := ivStateOf(cur.Attrs)
				if err != nil {
					return nil, nil, err
				}
				n, err := f(st)
				if err != nil {
					return nil, nil, err
				}
				attrs, err := withAttr(cur.Attrs, ck.CKA_HSMEMU_IV_COUNTER, encodeIVCounter(n.mark, n.limit))
				return attrs, nil, err
			})
		}
		e.ivs.m[stored.UUID] = c
	}
	return c, nil
}

// withAttr is attrs with attribute t set to v (removed for nil).
func withAttr(attrs keystore.Attributes, t uint64, v []byte) (keystore.Attributes, error) {
	out := make([]keystore.Attribute, 0, len(attrs)+1)
	for _, a := range attrs {
		if a.Type != t {
			out = append(out, a)
		}
	}
	if v != nil {
		out = append(out, keystore.Attribute{Type: t, Value: v})
	}
	return keystore.NewAttributes(out...)
}
