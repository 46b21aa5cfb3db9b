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
// the rest of a block and never reuses one. The first use of a key
// without the attribute starts at a random point below 2^62: material
// that exists in several objects the token cannot connect (imported,
// unwrapped or derived twice, a key restored from a backup) then
// collides only by chance, a chance of about one in 2^62 per value used.
// C_CopyObject, which the token does see, splits the key's range: the
// copy takes the upper half of what is left, the original keeps the
// lower, both written before the copy exists.
//
// Session objects keep the same state in memory, with the object: it
// ends with them.

const (
	// ivBlock is how many values one write of the mark reserves.
	ivBlock = 1 << 20
	// ivStartBound bounds a first use's random start.
	ivStartBound = 1 << 62
)

// ivCounter is one key's counter.
type ivCounter struct {
	mu     sync.Mutex
	loaded bool
	next   uint64 // the next value to hand out
	mark   uint64 // values below it may have been handed out: next <= mark <= limit
	limit  uint64
	// persist writes the mark and the limit before they are relied on;
	// nil for a session object.
	persist func(ctx context.Context, mark, limit uint64) error
	// load reads the stored state; ok is false when there is none.
	load func(ctx context.Context) (mark, limit uint64, ok bool, err error)
	// id is a token key's row, where persist and load go: the key's
	// latest, since a key restored from a backup comes back, with its
	// UUID, in a new row.
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

// randomStart is a first use's starting point.
func randomStart() uint64 {
	n, err := rand.Int(rand.Reader, big.NewInt(ivStartBound))
	if err != nil {
		panic("token: internal error: no randomness: " + err.Error())
	}
	return n.Uint64()
}

// ready loads the state once. c.mu is held.
func (c *ivCounter) ready(ctx context.Context) error {
	if c.loaded {
		return nil
	}
	mark, limit, ok, err := c.load(ctx)
	if err != nil {
		return err
	}
	if !ok {
		// Nothing was ever handed out, or written: any start will do.
		mark, limit = randomStart(), math.MaxUint64
	}
	c.next, c.mark, c.limit, c.loaded = mark, mark, limit, true
	return nil
}

// take hands out the next value, writing a new mark first when the block
// is used up. At the limit it is CKR_KEY_EXHAUSTED (PKCS#11 3.1's code for
// a key whose uses are counted and spent): the counter never wraps.
func (c *ivCounter) take(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(ctx); err != nil {
		return 0, err
	}
	if c.next >= c.limit {
		return 0, ck.Errorf(ck.CKR_KEY_EXHAUSTED, "the key's IV counter reached its limit")
	}
	if c.next == c.mark {
		mark := c.limit
		if c.limit-c.mark > ivBlock {
			mark = c.mark + ivBlock
		}
		if c.persist != nil {
			if err := c.persist(ctx, mark, c.limit); err != nil {
				return 0, err
			}
		}
		c.mark = mark
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
	if err := c.ready(ctx); err != nil {
		return nil, err
	}
	// Values below the mark stay the original's: they may be in use.
	mid := c.mark + (c.limit-c.mark)/2
	if c.persist != nil {
		if err := c.persist(ctx, c.mark, mid); err != nil {
			return nil, err
		}
	}
	copyLimit := c.limit
	c.limit = mid
	return encodeIVCounter(mid, copyLimit), nil
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
			v, ok := o.attrs.Get(ck.CKA_HSMEMU_IV_COUNTER)
			ref.mem.ivs = &ivCounter{load: func(context.Context) (uint64, uint64, bool, error) {
				if !ok {
					return 0, 0, false, nil
				}
				mark, limit, err := decodeIVCounter(v)
				return mark, limit, err == nil, err
			}}
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
		c = &ivCounter{id: ref.id}
		c.load = func(ctx context.Context) (uint64, uint64, bool, error) {
			obj, err := e.store.Open(ctx, c.id)
			if err != nil {
				return 0, 0, false, err
			}
			v, ok := obj.Attrs.Get(ck.CKA_HSMEMU_IV_COUNTER)
			if !ok {
				return 0, 0, false, nil
			}
			mark, limit, err := decodeIVCounter(v)
			return mark, limit, err == nil, err
		}
		c.persist = func(ctx context.Context, mark, limit uint64) error {
			return e.writeIVCounter(ctx, c.id, encodeIVCounter(mark, limit))
		}
		e.ivs.m[stored.UUID] = c
	}
	return c, nil
}

// writeIVCounter stores a token key's counter state, its other
// attributes as they are now. The counter's lock is held, so no other
// write of the state races it; setAttributes takes the same lock and
// carries the stored state over.
func (e *Engine) writeIVCounter(ctx context.Context, id keystore.ObjectID, v []byte) error {
	obj, err := e.store.Open(ctx, id)
	if err != nil {
		return err
	}
	attrs, err := withAttr(obj.Attrs, ck.CKA_HSMEMU_IV_COUNTER, v)
	if err != nil {
		return err
	}
	return e.store.Update(ctx, id, attrs, nil)
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
