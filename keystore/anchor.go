package keystore

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
)

// The anchor record. Every row of the keystore is authentic on its own,
// so an earlier copy of a row, or of the whole file, would verify. The
// anchor record closes that: one row, sealed under a key of the domain,
// that accounts for every other row and is tied to a counter outside the
// database (a TPM NV counter, anchorattach.go):
//
//   - generation: bumped by every row written, in the transaction that
//     writes it;
//   - digest: the sum, modulo 2^256, of one term per row of every table
//     but the audit log, each term an HMAC of the row's table and
//     columns (termLocked). Beside the record, each row's term is kept
//     sealed on its own, bound to the row's table and key (anchor_rows):
//     a row put back from an older copy, or added outside hsmemu, no
//     longer matches its entry, and is taken down alone, as a row that
//     fails its own MAC is (a token, or an object); the entries must sum
//     to the digest, so a row put back together with its entry, or a
//     row of the domain's (the root, the carried keys), refuses the
//     whole keystore;
//   - the audit log's head (newest sequence number and hash): its tail
//     cut off shows without --expect-head;
//   - anchored: the counter's value when the record was last anchored,
//     and the generation it was anchored at.
//
// Nothing in the write paths knows about it. The writer connection has
// temporary triggers (never stored in the file, so no one can drop them
// from it) on every table, which fold each row change into the record
// and the row's entry through SQL functions of this package
// (anchorsql.go); a write path added later is
// covered without a line of its own. The triggers are generated from the
// schema as it is (every table, every column), so a migration that adds
// a table or a column is covered too. A term leaves out NULL columns:
// adding a column without a default changes no row's term.
//
// The terms are secret (keyed), and the digest and the entries are
// sealed, not only MACed: whoever reads the file learns no term, so
// cannot find a set of older rows whose terms happen to sum to the same
// digest.
//
// Cost: per row written, an HMAC (its term), an AES-GCM open (its old
// entry) and seal (its new one), an open and a seal of the record, the
// anchor tables' pages in the commit, and the triggers compiled into each
// statement that writes (they are kept short for that); measured in
// docs/performance.md. The hot path (opening keys) writes nothing.

const (
	anchorVersion  = 1
	anchorPlainLen = 8 + 8 + 8 + 4 + 8 + 32 + 32
	anchorBlobLen  = 1 + 4 + gcmNonceLen + anchorPlainLen + gcmTagLen
)

// The anchor's keys, all derived from the audit chain's keys, which come
// in epochs (one per master key) and are carried across master key
// rotations (masterrotate.go):
//
//	term key = HKDF(audit key of epoch 1, "hsmemu/anchor/term/v1")
//	NV auth  = HKDF(audit key of epoch 1, "hsmemu/anchor/nv-auth/v1")
//	state key of epoch e = HKDF(audit key of epoch e, "hsmemu/anchor/state/v1")
//
// The term key and the counter's authorisation are for the domain's life
// (the counter cannot change its authorisation, and every term would
// change with the key); the record is sealed under the current epoch's
// key, so a master key given up (its escrow shares) cannot forge it.
const (
	anchorTermInfo  = "hsmemu/anchor/term/v1"
	anchorAuthInfo  = "hsmemu/anchor/nv-auth/v1"
	anchorStateInfo = "hsmemu/anchor/state/v1"
	anchorAADLabel  = "hsmemu/anchor/v1"
)

// anchorState is the anchor record's content.
type anchorState struct {
	generation  uint64 // row changes since the record was made
	anchored    uint64 // the counter's value at the last anchor; 0 before the first
	anchoredGen uint64 // the generation at the last anchor
	handle      uint32 // the counter's NV index
	auditSeq    uint64 // the audit log's newest record
	auditHash   [32]byte
	digest      [32]byte // the sum of the rows' terms, mod 2^256
}

func (a *anchorState) marshal() []byte {
	b := make([]byte, 0, anchorPlainLen)
	b = binary.BigEndian.AppendUint64(b, a.generation)
	b = binary.BigEndian.AppendUint64(b, a.anchored)
	b = binary.BigEndian.AppendUint64(b, a.anchoredGen)
	b = binary.BigEndian.AppendUint32(b, a.handle)
	b = binary.BigEndian.AppendUint64(b, a.auditSeq)
	b = append(b, a.auditHash[:]...)
	return append(b, a.digest[:]...)
}

func (a *anchorState) unmarshal(b []byte) error {
	if len(b) != anchorPlainLen {
		return errors.New("anchor record: wrong length")
	}
	a.generation = binary.BigEndian.Uint64(b)
	a.anchored = binary.BigEndian.Uint64(b[8:])
	a.anchoredGen = binary.BigEndian.Uint64(b[16:])
	a.handle = binary.BigEndian.Uint32(b[24:])
	a.auditSeq = binary.BigEndian.Uint64(b[28:])
	copy(a.auditHash[:], b[36:68])
	copy(a.digest[:], b[68:100])
	if a.anchoredGen > a.generation || a.auditSeq > math.MaxInt64 {
		return errors.New("anchor record: out of range")
	}
	return nil
}

// blobEpoch reads the epoch a sealed record names (not yet authenticated).
func blobEpoch(blob []byte) (uint32, error) {
	if len(blob) != anchorBlobLen || blob[0] != anchorVersion {
		return 0, errors.New("anchor record: not a sealed record")
	}
	return binary.BigEndian.Uint32(blob[1:5]), nil
}

func anchorAAD(epoch uint32) []byte {
	aad := append([]byte(anchorAADLabel), anchorVersion)
	return binary.BigEndian.AppendUint32(aad, epoch)
}

// anchor holds the anchor's keys and the counter, for the SQL functions
// the triggers call and for the anchoring itself. Its lock is held only
// around computations, never around a database or TPM call.
type anchor struct {
	mu        sync.Mutex
	termKey   []byte              // nil until loaded
	stateKeys map[uint32][]byte   // by epoch
	refused   error               // set when the keystore was found rolled back while in use: every write fails
	epoch     uint32              // the epoch new entries are sealed under
	cols      map[string][]string // each anchored table's columns, in order, as the triggers pass them

	// A trigger's fold in progress: entry or drop starts it, apply folds
	// it into the record. A trigger's statements run one after another on
	// the one writer connection, nothing between; one that failed half
	// way leaves nothing the next trigger's entry or drop keeps.
	pendIn, pendOut [32]byte

	// Rows found not to match their entries at start, taken down.
	anyBad     atomic.Bool
	badTokens  map[int64]bool // by row id
	badObjects map[int64]bool

	// op orders anchoring (Anchor, AttachAnchor) against itself.
	op      sync.Mutex
	counter Counter // nil until AttachAnchor
	last    uint64  // the counter value this Store last anchored at
}

func newAnchor() *anchor {
	return &anchor{stateKeys: map[uint32][]byte{}, badTokens: map[int64]bool{}, badObjects: map[int64]bool{}, cols: map[string][]string{}}
}

// errAnchorKeys is what a write gets on a keystore with an anchor record
// whose keys are not loaded: Attach loads them.
var errAnchorKeys = errors.New("keystore: the anchor record's keys are not loaded (the keystore is not attached to its root)")

func (a *anchor) wipe() {
	a.mu.Lock()
	defer a.mu.Unlock()
	wipe(a.termKey)
	a.termKey = nil
	for e, k := range a.stateKeys {
		wipe(k)
		delete(a.stateKeys, e)
	}
}

// open authenticates and decodes a sealed record; a.mu is held.
func (a *anchor) openLocked(blob []byte) (anchorState, uint32, error) {
	var st anchorState
	epoch, err := blobEpoch(blob)
	if err != nil {
		return st, 0, err
	}
	k, ok := a.stateKeys[epoch]
	if !ok {
		return st, 0, errAnchorKeys
	}
	aead, err := newGCM(k)
	if err != nil {
		return st, 0, err
	}
	plain, err := aead.Open(nil, blob[5:5+gcmNonceLen], blob[5+gcmNonceLen:], anchorAAD(epoch))
	if err != nil {
		return st, 0, errors.New("anchor record: failed authentication")
	}
	return st, epoch, st.unmarshal(plain)
}

// sealLocked seals a record under the key of epoch; a.mu is held.
func (a *anchor) sealLocked(st *anchorState, epoch uint32) ([]byte, error) {
	k, ok := a.stateKeys[epoch]
	if !ok {
		return nil, errAnchorKeys
	}
	aead, err := newGCM(k)
	if err != nil {
		return nil, err
	}
	blob := make([]byte, 5, anchorBlobLen)
	blob[0] = anchorVersion
	binary.BigEndian.PutUint32(blob[1:], epoch)
	nonce := make([]byte, gcmNonceLen)
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, err
	}
	blob = append(blob, nonce...)
	return aead.Seal(blob, nonce, st.marshal(), anchorAAD(epoch)), nil
}

// A row's entry is its term, sealed on its own and bound to the row:
//
//	version u8 | epoch u32 | nonce | AES-256-GCM(state key of epoch, term, aad = label | version | table | key | epoch)
const anchorEntryLen = 1 + 4 + gcmNonceLen + 32 + gcmTagLen

func entryAAD(table, key string, epoch uint32) []byte {
	aad := append([]byte("hsmemu/anchor/row/v1"), anchorVersion)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(table)))
	aad = append(aad, table...)
	aad = binary.BigEndian.AppendUint32(aad, uint32(len(key)))
	aad = append(aad, key...)
	return binary.BigEndian.AppendUint32(aad, epoch)
}

// openEntryLocked authenticates a row's entry and returns its term; a.mu
// is held.
func (a *anchor) openEntryLocked(table, key string, blob []byte) ([]byte, error) {
	if len(blob) != anchorEntryLen || blob[0] != anchorVersion {
		return nil, errors.New("anchor entry: not a sealed entry")
	}
	epoch := binary.BigEndian.Uint32(blob[1:5])
	k, ok := a.stateKeys[epoch]
	if !ok {
		return nil, errAnchorKeys
	}
	aead, err := newGCM(k)
	if err != nil {
		return nil, err
	}
	term, err := aead.Open(nil, blob[5:5+gcmNonceLen], blob[5+gcmNonceLen:], entryAAD(table, key, epoch))
	if err != nil || len(term) != 32 {
		return nil, errors.New("anchor entry: failed authentication")
	}
	return term, nil
}

// sealEntryLocked seals a row's term under the current epoch's key; a.mu
// is held.
func (a *anchor) sealEntryLocked(table, key string, term []byte) ([]byte, error) {
	k, ok := a.stateKeys[a.epoch]
	if !ok {
		return nil, errAnchorKeys
	}
	aead, err := newGCM(k)
	if err != nil {
		return nil, err
	}
	blob := make([]byte, 5, anchorEntryLen)
	blob[0] = anchorVersion
	binary.BigEndian.PutUint32(blob[1:], a.epoch)
	nonce := make([]byte, gcmNonceLen)
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, err
	}
	blob = append(blob, nonce...)
	return aead.Seal(blob, nonce, term, entryAAD(table, key, a.epoch)), nil
}

// entry is a row's new entry (SQL: hsmemu_anchor_entry(table, key,
// entry as it was or NULL, columns...)): the term of the row's columns,
// sealed. It starts a fold: the old entry's term out, the new one in.
//
// An update passes the row's columns as they were after its new ones
// (twice as many columns): the row it replaces must be the one its entry
// accounts for. A row changed behind the daemon's back while it serves
// (another session on PostgreSQL, the file written under it) is found by
// the next start, unless a write of the daemon's first gave it a fresh
// entry over the version put back: that write is refused, and the row
// taken down now, as the start would.
func (a *anchor) entry(table, key string, oldEntry any, cols ...any) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refused != nil {
		return nil, a.refused
	}
	if err := a.rewriteLocked(table, key); err != nil {
		return nil, err
	}
	var was []any
	if n := len(a.cols[table]); n > 0 && len(cols) == 2*n {
		cols, was = cols[:n], cols[n:]
	}
	a.pendIn, a.pendOut = [32]byte{}, [32]byte{}
	if err := a.dropLocked(table, key, oldEntry); err != nil {
		return nil, err
	}
	// Token and object rows, and the root row: their writes carry the
	// row's content over (a read-modify-write, a soft delete, a reseal;
	// the root row's rotation state and list of the nodes that left,
	// which an update of its other columns would otherwise make good),
	// where another table's rows are written whole (a PIN binding
	// replaced by a newer one), which launders nothing, or are the
	// domain's, which the start refuses the keystore over.
	if e, ok := oldEntry.([]byte); ok && len(e) > 0 && was != nil && (table == "objects" || table == "tokens" || table == "root") {
		t, err := a.termLocked(table, was)
		if err != nil {
			return nil, err
		}
		var one [32]byte
		addTerm(&one, t)
		if !hmac.Equal(one[:], a.pendOut[:]) {
			return nil, a.changedLocked(table, key)
		}
	}
	t, err := a.termLocked(table, cols)
	if err != nil {
		return nil, err
	}
	addTerm(&a.pendIn, t)
	return a.sealEntryLocked(table, key, t)
}

// drop starts the fold of a deleted row: its entry's term out (SQL:
// hsmemu_anchor_drop(table, key, entry)).
func (a *anchor) drop(table, key string, oldEntry any) (any, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refused != nil {
		return nil, a.refused
	}
	a.pendIn, a.pendOut = [32]byte{}, [32]byte{}
	return nil, a.dropLocked(table, key, oldEntry)
}

func (a *anchor) dropLocked(table, key string, oldEntry any) error {
	switch e := oldEntry.(type) {
	case nil:
	case []byte:
		if len(e) > 0 {
			t, err := a.openEntryLocked(table, key, e)
			if err != nil {
				return err
			}
			addTerm(&a.pendOut, t)
		}
	default:
		return errors.New("keystore: anchor: bad entry")
	}
	return nil
}

// apply folds a trigger's changes into a sealed record (SQL:
// hsmemu_anchor_apply(state)): what went out of the entries out of the
// digest, what came in in, and the generation bumped. What goes out is
// the entries' terms, not the rows': the record stays the sum of the
// entries whatever a row became behind its back.
func (a *anchor) apply(blob []byte) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refused != nil {
		return nil, a.refused
	}
	st, epoch, err := a.openLocked(blob)
	if err != nil {
		return nil, err
	}
	subTerm(&st.digest, a.pendOut[:])
	addTerm(&st.digest, a.pendIn[:])
	a.pendIn, a.pendOut = [32]byte{}, [32]byte{}
	if st.generation == math.MaxUint64 {
		return nil, errors.New("keystore: anchor: generation exhausted")
	}
	st.generation++
	return a.sealLocked(&st, epoch)
}

// tokenRows refuses a token whose row was found not to match its entry.
func (a *anchor) tokenRows(ti *TokenInfo) error {
	if !a.anyBad.Load() {
		return nil
	}
	a.mu.Lock()
	bad := a.badTokens[ti.ID]
	a.mu.Unlock()
	if bad {
		return tampered("token", ti.UUID, ti.ID, "rows")
	}
	return nil
}

// rewriteLocked refuses a write to a token or object row the check at
// start found not to match its entry: the write would give the row a
// fresh entry, and the next start would take the row put back (an older
// version, another token's) as good. Such a row stays down until it is
// deleted, which drops its entry. The write paths check first and say
// which row (a TamperError); this is the guard for any path that does
// not, whatever the engine. a.mu is held.
func (a *anchor) rewriteLocked(table, key string) error {
	if !a.anyBad.Load() || (table != "objects" && table != "tokens") {
		return nil
	}
	id, err := strconv.ParseInt(key, 10, 64)
	switch {
	case err != nil:
		return nil
	case table == "objects" && a.badObjects[id]:
		return tampered("object", UUID{}, id, "rows")
	case table == "tokens" && a.badTokens[id]:
		return tampered("token", UUID{}, id, "rows")
	}
	return nil
}

// changedLocked takes down a token or object row found, as it was being
// written, not to match its entry, and returns the write's error. a.mu
// is held.
func (a *anchor) changedLocked(table, key string) error {
	id, err := strconv.ParseInt(key, 10, 64)
	switch {
	case err == nil && table == "objects":
		a.badObjects[id] = true
		a.anyBad.Store(true)
		return tampered("object", UUID{}, id, "rows")
	case err == nil && table == "tokens":
		a.badTokens[id] = true
		a.anyBad.Store(true)
		return tampered("token", UUID{}, id, "rows")
	}
	if table == "root" {
		return &TamperError{Kind: "keystore", ID: "root", What: "rows"}
	}
	return &TamperError{Kind: "row of " + table, ID: key, What: "rows"}
}

// objectBad reports whether an object's row was found not to match its
// entry. Without any such row it costs one atomic load: the hot path's
// misses call it.
func (a *anchor) objectBad(id int64) bool {
	if !a.anyBad.Load() {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.badObjects[id]
}

// term is a row's term (SQL: hsmemu_anchor_term(table, columns...)),
// for the check at start, which reads the rows as the triggers see them.
func (a *anchor) term(table string, cols ...any) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.termLocked(table, cols)
}

// termLocked is HMAC(term key, table | each non-NULL column's name and
// value, typed), the columns in the table's order; a.mu is held. A NULL
// column is left out, as if the column were not there.
func (a *anchor) termLocked(table string, vals []any) ([]byte, error) {
	if a.termKey == nil {
		return nil, errAnchorKeys
	}
	names, ok := a.cols[table]
	if !ok || len(names) != len(vals) {
		return nil, fmt.Errorf("keystore: anchor: %d columns of %s", len(vals), table)
	}
	m := hmac.New(sha256.New, a.termKey)
	var b [9]byte
	str := func(tag byte, p string) {
		b[0] = tag
		binary.BigEndian.PutUint64(b[1:], uint64(len(p)))
		m.Write(b[:])
		io.WriteString(m, p)
	}
	str('T', table)
	for i, v := range vals {
		switch v := v.(type) {
		case nil:
			continue
		case int64:
			str('c', names[i])
			b[0] = 'i'
			binary.BigEndian.PutUint64(b[1:], uint64(v))
			m.Write(b[:])
		case float64:
			str('c', names[i])
			b[0] = 'f'
			binary.BigEndian.PutUint64(b[1:], math.Float64bits(v))
			m.Write(b[:])
		case string:
			str('c', names[i])
			str('s', v)
		case []byte:
			str('c', names[i])
			str('b', string(v))
		default:
			return nil, fmt.Errorf("keystore: anchor: column %s of %s holds a %T", names[i], table, v)
		}
	}
	return m.Sum(nil), nil
}

// audit records a new audit log head in a sealed record.
func (a *anchor) audit(blob []byte, seq int64, hash []byte) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refused != nil {
		return nil, a.refused
	}
	st, epoch, err := a.openLocked(blob)
	if err != nil {
		return nil, err
	}
	if seq <= 0 || len(hash) != 32 || st.generation == math.MaxUint64 {
		return nil, errors.New("keystore: anchor: bad audit head")
	}
	st.auditSeq = uint64(seq)
	copy(st.auditHash[:], hash)
	st.generation++
	return a.sealLocked(&st, epoch)
}

// addTerm and subTerm add and subtract a term, big-endian, mod 2^256. A
// sum rather than an exclusive or: two copies of a row must not cancel.
func addTerm(sum *[32]byte, t []byte) {
	var c uint16
	for i := 31; i >= 0; i-- {
		c += uint16(sum[i]) + uint16(t[i])
		sum[i] = byte(c)
		c >>= 8
	}
}

func subTerm(sum *[32]byte, t []byte) {
	var borrow int16
	for i := 31; i >= 0; i-- {
		d := int16(sum[i]) - int16(t[i]) - borrow
		borrow = 0
		if d < 0 {
			d += 256
			borrow = 1
		}
		sum[i] = byte(d)
	}
}

// loadAnchorKeys derives the anchor's keys from the domain's: the term key
// and the state key of every epoch from 1 to the current one.
// (epochLabel(auditLabel, 1) is auditLabel: epoch 1's key is base.)
func (s *Store) loadAnchorKeys(ctx context.Context) error {
	s.mu.RLock()
	cur := s.masterGen
	s.mu.RUnlock()
	base, err := s.domainKey(ctx, auditLabel)
	if err != nil {
		return fmt.Errorf("keystore: anchor keys: %w", err)
	}
	defer wipe(base)
	term, err := hkdf.Expand(sha256.New, base, anchorTermInfo, 32)
	if err != nil {
		return err
	}
	keys := map[uint32][]byte{}
	for e := uint32(1); e <= cur; e++ {
		ak, err := base, error(nil)
		if e > 1 {
			ak, err = s.domainKey(ctx, epochLabel(auditLabel, e))
		}
		if err != nil {
			wipe(term)
			for _, k := range keys {
				wipe(k)
			}
			return fmt.Errorf("keystore: anchor keys: %w", err)
		}
		keys[e], err = hkdf.Expand(sha256.New, ak, anchorStateInfo, 32)
		if e > 1 {
			wipe(ak)
		}
		if err != nil {
			return err
		}
	}
	s.anc.mu.Lock()
	defer s.anc.mu.Unlock()
	wipe(s.anc.termKey)
	s.anc.termKey = term
	s.anc.epoch = cur
	for e, k := range keys {
		wipe(s.anc.stateKeys[e])
		s.anc.stateKeys[e] = k
	}
	return nil
}

// AnchorAuth is the authorisation value of the keystore's anchor counter
// (see tpmroot.Counter): the same for the domain's life, in every copy of
// its keystore. The caller wipes it.
func (s *Store) AnchorAuth(ctx context.Context) ([]byte, error) {
	base, err := s.domainKey(ctx, auditLabel)
	if err != nil {
		return nil, fmt.Errorf("keystore: anchor authorisation: %w", err)
	}
	defer wipe(base)
	return hkdf.Expand(sha256.New, base, anchorAuthInfo, 32)
}
