package keystore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// ObjectID is an object's row id: stable for the life of the object in this
// keystore, and what the daemon's handles map to.
type ObjectID int64

// Object is a stored object, authenticated and opened. Objects returned by
// the Store are shared with its cache and must not be modified.
type Object struct {
	ID      ObjectID
	UUID    UUID
	Token   UUID
	Private bool
	Attrs   Attributes
	Secret  []byte // nil for objects without secret material

	// Memo is for the Store's user: a view it derives from the object
	// (parsed attributes, a parsed key), kept with it in the cache. An
	// Object never changes, so neither does what is derived from it; an
	// update makes a new Object.
	Memo atomic.Value

	st *tokenState // the cache checks a private object's token is still logged in
}

// SQLite integers are signed; CK_ULONG values are stored bit for bit.
func u2i(v uint64) int64 { return int64(v) }

// selectObject reads what an open needs: the token and the record (the
// object's identity, its attributes and its seal). The indexed copies of
// attributes are Find's alone.
const selectObject = `SELECT o.token_id, o.uuid, o.record FROM objects o WHERE o.id = ? AND o.deleted_at IS NULL`

type objectRow struct {
	id      int64
	tokenID int64
	uuid    UUID
	attrs   []byte
	sealed  []byte
}

// record encodes an object's stored record.
func record(u UUID, attrs, sealed []byte) []byte {
	b := make([]byte, 0, 20+len(attrs)+len(sealed))
	b = append(b, u[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(attrs)))
	b = append(b, attrs...)
	return append(b, sealed...)
}

// parseRecord splits a record; its parts alias rec.
func (r *objectRow) parseRecord(rec []byte) error {
	if len(rec) < 20 {
		return ErrTampered
	}
	copy(r.uuid[:], rec)
	n := binary.BigEndian.Uint32(rec[16:])
	if uint64(n) > uint64(len(rec)-20) {
		return ErrTampered
	}
	r.attrs = rec[20 : 20+n : 20+n]
	r.sealed = rec[20+n:]
	return nil
}

// decode parses the (not yet authenticated) attributes.
func (r *objectRow) decode() (Attributes, index, error) {
	attrs, err := DecodeAttributes(r.attrs)
	if err != nil {
		return nil, index{}, ErrTampered
	}
	ix, err := attrs.index()
	if err != nil {
		return nil, index{}, ErrTampered
	}
	return attrs, ix, nil
}

// Put seals secret (nil for objects without secret material) for a new object
// with attrs on token, and commits it before returning.
func (s *Store) Put(ctx context.Context, token UUID, attrs Attributes, secret []byte) (*Object, error) {
	u, err := newUUID()
	if err != nil {
		return nil, err
	}
	return s.put(ctx, token, u, attrs, secret, nil)
}

// PutAudited is Put that appends the audit record note makes for the new
// object's uuid in the same transaction (AuditNote says why).
func (s *Store) PutAudited(ctx context.Context, token UUID, attrs Attributes, secret []byte, note func(object UUID) AuditNote) (*Object, error) {
	u, err := newUUID()
	if err != nil {
		return nil, err
	}
	n := note(u)
	return s.put(ctx, token, u, attrs, secret, &n)
}

// PutAs is Put for an object that keeps the identity it had: a key
// restored from a backup. An object with that uuid, live or deleted, is
// ErrObjectExists.
func (s *Store) PutAs(ctx context.Context, token, object UUID, attrs Attributes, secret []byte) (*Object, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM objects WHERE uuid = ?", object[:]).Scan(&n); err != nil {
		return nil, s.dbErr("look up object", err)
	}
	if n > 0 {
		return nil, ErrObjectExists
	}
	return s.put(ctx, token, object, attrs, secret, nil)
}

// openRetries bounds how often Open takes a row or keys again after a
// race with a rotation, a millisecond apart.
const openRetries = 100

// ErrObjectExists is PutAs's error for a uuid in use.
var ErrObjectExists = errors.New("keystore: an object with that uuid exists")

func (s *Store) put(ctx context.Context, token, u UUID, attrs Attributes, secret []byte, note *AuditNote) (*Object, error) {
	defer s.writing(token)()
	// Work from the canonical encoding: what is sealed is exactly what a
	// later open decodes, whatever order or aliasing the caller's slice had.
	enc := attrs.Encode()
	stored, err := DecodeAttributes(enc)
	if err != nil {
		return nil, fmt.Errorf("keystore: attributes not canonical (sorted, unique, bounded): %w", err)
	}
	ix, err := stored.index()
	if err != nil {
		return nil, err
	}
	for try := 0; ; try++ {
		// Sealed under keys a rotation on another Store retired before
		// the insert: sealed again under the ones it installed.
		obj, err := s.putOnce(ctx, token, u, enc, stored, ix, secret, note)
		if !errors.Is(err, errTokenMoved) || try >= sealRetries || ctx.Err() != nil {
			return obj, err
		}
	}
}

// putOnce reads the token, seals and inserts: put's one try.
func (s *Store) putOnce(ctx context.Context, token, u UUID, enc []byte, stored Attributes, ix index, secret []byte, note *AuditNote) (*Object, error) {
	ti, st, err := s.token(ctx, s.r, "uuid = ?", token[:])
	if err != nil {
		return nil, err
	}
	// The epoch is read before the data key: a logout between the two
	// then keeps this object out of the cache.
	epoch := s.cache.currentEpoch()
	if ix.private && len(secret) > 0 {
		// The row was read just now: a login it says was ended
		// everywhere seals nothing more.
		s.endLogin(st.rowID, ti.LoginEpoch, true)
	}
	s.mu.RLock()
	sl := st.sealer()
	s.mu.RUnlock()
	sealed, err := sl.seal(u, ix.private, enc, secret)
	if err != nil {
		return nil, err
	}
	now := time.Now().Unix()
	rec := record(u, enc, sealed)
	// On PostgreSQL the insert is gated on the token row (sealgate.go).
	gated := s.gated()
	var id int64
	err = s.writeAudited(ctx, note, func(q execer) error {
		var err error
		if gated {
			gen, data := sealGen(sealed)
			err = q.QueryRowContext(ctx, insertObjectGated(data),
				u[:], u2i(ix.class), ix.keyTypeColumn(), ix.label, ix.id, ix.private, rec, now, now, ti.ID, gen).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				return errTokenMoved
			}
		} else {
			err = q.QueryRowContext(ctx, `INSERT INTO objects
			(uuid, token_id, class, key_type, label, ckaid, private, record, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				u[:], ti.ID, u2i(ix.class), ix.keyTypeColumn(), ix.label, ix.id, ix.private, rec, now, now).Scan(&id)
		}
		if s.eng.unique(err) {
			return ErrObjectExists
		}
		return s.dbErr("insert object", err)
	})
	if errors.Is(err, errTokenMoved) {
		s.tokenMoved(ctx, ti.ID)
	}
	if err != nil {
		return nil, err
	}
	obj := &Object{ID: ObjectID(id), UUID: u, Token: token, Private: ix.private, Attrs: stored, st: st}
	if len(secret) > 0 {
		obj.Secret = bytes.Clone(secret)
	}
	s.cache.put(obj, epoch)
	return obj, nil
}

// Open returns the object with its secret material unsealed. This is the hot
// path: a cache hit costs a map lookup; a miss reads one row, checks it and
// opens its seal. A private object needs its token logged in.
func (s *Store) Open(ctx context.Context, id ObjectID) (*Object, error) {
	if obj, ok := s.cache.get(id); ok && (!obj.Private || obj.st.open.Load()) && s.cacheFresh() {
		s.stats.hits.Add(1)
		return obj, nil
	}
	s.stats.misses.Add(1)
	epoch := s.cache.currentEpoch()
	r, err := s.readObject(ctx, id)
	if errors.Is(err, ErrNotFound) {
		err = s.notLive(ctx, id) // deleted, or marked so behind the daemon's back
	}
	if err == nil {
		err = s.resurrected(ctx, r.id, r.uuid) // deleted when last known
	}
	if err != nil {
		s.noteTamper(err)
		return nil, err
	}
	obj, err := s.openRow(ctx, &r)
	for try := 0; try < openRetries && ctx.Err() == nil && (errors.Is(err, errNewerKeys) || errors.Is(err, errStaleRow)); try++ {
		// A rotation raced with this open. A stale row was rewritten by a
		// commit whose keys are installed: read it again. Keys older than
		// the row are about to be replaced (the rotation installs them
		// right after its commit): take them again, a moment later. The
		// generation check left the seal intact either way.
		if try > 0 {
			time.Sleep(time.Millisecond)
		}
		if errors.Is(err, errNewerKeys) && s.sync != nil {
			if try == 0 {
				// Another Store may have replaced the token's data key: a
				// token whose generation moved is logged out here.
				s.revalidateToken(ctx, r.tokenID) //nolint:errcheck // read again below
			}
			// Or rekeyed it under its master key rotation: the token's
			// row names the keys, installed once it checks.
			s.refreshKeys(ctx, r.tokenID)
		}
		if errors.Is(err, errStaleRow) {
			if r, err = s.readObject(ctx, id); err != nil {
				s.noteTamper(err)
				return nil, err
			}
		}
		obj, err = s.openRow(ctx, &r)
	}
	if errors.Is(err, errStaleRow) || errors.Is(err, errNewerKeys) {
		// Still out of step after the retries: a seal whose generation
		// no rotation explains.
		err = tampered("object", r.uuid, r.id, "generation")
	}
	if err != nil {
		if errors.Is(err, ErrTampered) {
			var te *TamperError
			if !errors.As(err, &te) {
				err = tampered("object", r.uuid, r.id, "seal")
			}
			s.noteTamper(err)
		}
		return nil, err
	}
	s.cache.put(obj, epoch)
	return obj, nil
}

// readObject is the miss path's one point read. It scans into RawBytes and
// copies the record once: database/sql would otherwise copy it twice. The
// rows are closed before returning, so the connection is back in the pool
// before anything else is read.
func (s *Store) readObject(ctx context.Context, id ObjectID) (objectRow, error) {
	r := objectRow{id: int64(id)}
	rows, err := s.openStmt.QueryContext(ctx, int64(id))
	if err != nil {
		return r, s.dbErr("read object", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return r, s.dbErr("read object", err)
		}
		return r, ErrNotFound
	}
	var tokenID any
	var uuid, rec sql.RawBytes
	if err := rows.Scan(&tokenID, &uuid, &rec); err != nil {
		return r, s.dbErr("read object", err)
	}
	// Read as whatever the database holds: a row edited to another type
	// fails alone, as tampering, and is recorded.
	var ok bool
	if r.tokenID, ok = tokenID.(int64); !ok {
		return r, tampered("object", UUID{}, r.id, "type of token_id")
	}
	if err := r.parseRecord(bytes.Clone(rec)); err != nil {
		return r, tampered("object", UUID{}, r.id, "record")
	}
	// The uuid column is an index copy, unique per row; the sealed record
	// holds the uuid its seal is bound to. A row copied under a new id and
	// uuid column (two handles on one key) fails here.
	if !bytes.Equal(uuid, r.uuid[:]) {
		return r, tampered("object", r.uuid, r.id, "uuid column")
	}
	return r, rows.Close()
}

// openRow authenticates a row and opens its seal. The secret is decrypted
// in place, so the returned object shares the row's one buffer.
func (s *Store) openRow(ctx context.Context, r *objectRow) (*Object, error) {
	if s.anc.objectBad(r.id) {
		return nil, tampered("object", r.uuid, r.id, "rows") // not the row its anchor entry accounts for
	}
	attrs, ix, err := r.decode()
	if err != nil {
		return nil, err
	}
	st, err := s.state(ctx, r.tokenID)
	if err != nil {
		return nil, err
	}
	if ix.private && s.sync != nil {
		// Past the lease, a logout of every daemon may not have been
		// heard: the row says.
		if err := s.loginCurrent(ctx, st); err != nil {
			return nil, err
		}
	}
	s.mu.RLock()
	sl := st.sealer()
	s.mu.RUnlock()
	var scratch [160]byte
	secret, err := sl.open(r.uuid, ix.private, r.attrs, r.sealed, nil, scratch[:0])
	if err != nil {
		return nil, err
	}
	return &Object{ID: ObjectID(r.id), UUID: r.uuid, Token: st.uuid, Private: ix.private, Attrs: attrs, Secret: secret, st: st}, nil
}

// Update replaces an object's attributes and, when secret is not nil, its
// secret material, resealing so the seal covers the new attributes. The
// daemon decides which changes PKCS#11 allows; the keystore only makes them
// atomic and authenticated.
func (s *Store) Update(ctx context.Context, id ObjectID, attrs Attributes, secret []byte) error {
	return s.UpdateLocked(ctx, id, func(*Object) (Attributes, []byte, error) { return attrs, secret, nil })
}

// UpdateLocked is a read-modify-write of an object: change gets the
// object as stored now, read in the writing transaction with its row
// locked (FOR UPDATE on PostgreSQL; SQLite's one writer serialises), and
// returns the attributes to store and the secret (nil keeps it). Two
// calls on one object, from this Store or any other on the database,
// never both see the same state: what a counter among the attributes
// hands out is handed out once (the IV counters of docs/mechanisms.md).
// An error from change rolls back and is returned as is. change runs
// with the write transaction open: it must not call the Store. It may be
// called again, on the object as it is then, when a rotation on another
// Store moved the token's keys under the first call (sealgate.go): only
// the call whose write commits counts.
func (s *Store) UpdateLocked(ctx context.Context, id ObjectID, change func(cur *Object) (Attributes, []byte, error)) error {
	token, err := s.objectToken(ctx, id)
	if err != nil {
		return err
	}
	defer s.writing(token)()
	for try := 0; ; try++ {
		err := s.updateLockedOnce(ctx, id, change)
		if !errors.Is(err, errTokenMoved) || try >= sealRetries || ctx.Err() != nil {
			return err
		}
	}
}

// updateLockedOnce is UpdateLocked's one try.
func (s *Store) updateLockedOnce(ctx context.Context, id ObjectID, change func(cur *Object) (Attributes, []byte, error)) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.dbErr("begin", err)
	}
	defer tx.Rollback()
	// The token's row first, as a rotation locks it (sealgate.go).
	kekGen, dataGen, gated, err := s.lockObjectToken(ctx, tx, id)
	if err != nil {
		return err
	}
	r := objectRow{id: int64(id)}
	var uuid, rec []byte
	if err := tx.QueryRowContext(ctx, selectObject+s.eng.forUpdate(), int64(id)).Scan(&r.tokenID, &uuid, &rec); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		return s.dbErr("read object", err)
	}
	if err := r.parseRecord(rec); err != nil {
		return tampered("object", UUID{}, r.id, "record")
	}
	if !bytes.Equal(uuid, r.uuid[:]) {
		return tampered("object", r.uuid, r.id, "uuid column")
	}
	st, err := s.state(ctx, r.tokenID)
	if err != nil {
		return err
	}
	if gated {
		// The row is as the token's locked row says: the keys it
		// names open it, and seal what replaces it.
		s.catchUp(ctx, st, kekGen, dataGen)
	}
	old, err := s.openRow(ctx, &r)
	if err != nil {
		return err
	}
	attrs, secret, err := change(old)
	if err != nil {
		return err
	}
	enc := attrs.Encode()
	stored, err := DecodeAttributes(enc)
	if err != nil {
		return fmt.Errorf("keystore: attributes not canonical (sorted, unique, bounded): %w", err)
	}
	ix, err := stored.index()
	if err != nil {
		return err
	}
	s.mu.RLock()
	sl := st.sealer()
	s.mu.RUnlock()
	if secret == nil {
		secret = old.Secret
	}
	sealed, err := sl.seal(old.UUID, ix.private, enc, secret)
	if err != nil {
		return err
	}
	if gated && !sealCurrent(sealed, kekGen, dataGen) {
		s.tokenMoved(ctx, r.tokenID)
		return errTokenMoved
	}
	_, err = tx.ExecContext(ctx, `UPDATE objects SET class = ?, key_type = ?, label = ?, ckaid = ?, private = ?,
		record = ?, updated_at = ? WHERE id = ?`,
		u2i(ix.class), ix.keyTypeColumn(), ix.label, ix.id, ix.private, record(old.UUID, enc, sealed), time.Now().Unix(), int64(id))
	if err != nil {
		return s.dbErr("update object", err)
	}
	if err := tx.Commit(); err != nil {
		return s.dbErr("commit", err)
	}
	s.cache.remove(id)
	return nil
}

// Delete removes an object.
func (s *Store) Delete(ctx context.Context, id ObjectID) error {
	res, err := s.w.ExecContext(ctx, "DELETE FROM objects WHERE id = ?", int64(id))
	if err != nil {
		return s.dbErr("delete object", err)
	}
	s.cache.remove(id)
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// Filter selects objects of one token by their indexed attributes; nil
// fields match anything. Matching on other attributes is the caller's.
type Filter struct {
	Class          *uint64
	KeyType        *uint64
	Label          []byte
	ID             []byte
	IncludePrivate bool
}

func (f *Filter) match(ix index) bool {
	return (f.Class == nil || *f.Class == ix.class) &&
		(f.KeyType == nil || ix.hasKeyType && *f.KeyType == ix.keyType) &&
		(f.Label == nil || ix.label != nil && bytes.Equal(f.Label, ix.label)) &&
		(f.ID == nil || ix.id != nil && bytes.Equal(f.ID, ix.id)) &&
		(f.IncludePrivate || !ix.private)
}

// Find returns the ids of a token's objects that match f, in creation order.
// SQLite narrows the search on the indexed columns; each candidate's
// attributes are then checked against the columns and the filter, so an
// edited column never gives a wrong answer: the row is left out and noted
// as tampered. (Open checks the attributes themselves against the seal.)
func (s *Store) Find(ctx context.Context, token UUID, f Filter) ([]ObjectID, error) {
	shape, where, args := findConditions(token, f)
	stmt, err := s.findStmt(ctx, shape, where)
	if err != nil {
		return nil, err
	}
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return nil, s.dbErr("find", err)
	}
	defer rows.Close()
	var ids []ObjectID
	for rows.Next() {
		var c indexColumns
		var class, keyType, label, ckaid, private any
		var uuid, rec sql.RawBytes
		if err := rows.Scan(&c.id, &class, &keyType, &label, &ckaid, &private, &uuid, &rec); err != nil {
			return nil, s.dbErr("find", err)
		}
		// A row that fails is left out, and noted: it takes down itself
		// alone, not the search.
		if bad := c.set(class, keyType, label, ckaid, private); bad != "" {
			s.noteTamper(tampered("object", UUID{}, c.id, "type of "+bad))
			continue
		}
		var r objectRow
		if err := r.parseRecord(rec); err != nil {
			s.noteTamper(tampered("object", UUID{}, c.id, "record"))
			continue
		}
		if !bytes.Equal(uuid, r.uuid[:]) {
			s.noteTamper(tampered("object", r.uuid, c.id, "uuid column"))
			continue
		}
		if s.anc.objectBad(c.id) {
			s.noteTamper(tampered("object", r.uuid, c.id, "rows"))
			continue
		}
		if err := s.resurrected(ctx, c.id, r.uuid); errors.Is(err, ErrTampered) || errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		a, err := DecodeAttributes(r.attrs)
		if err != nil {
			s.noteTamper(tampered("object", r.uuid, c.id, "record"))
			continue
		}
		ix, err := a.index()
		if err != nil || !c.match(ix) {
			s.noteTamper(tampered("object", r.uuid, c.id, "index"))
			continue
		}
		if f.match(ix) {
			ids = append(ids, ObjectID(c.id))
		}
	}
	return ids, rows.Err()
}

// keyTypeColumn is the key_type column's value: NULL without CKA_KEY_TYPE.
func (ix *index) keyTypeColumn() any {
	if !ix.hasKeyType {
		return nil
	}
	return u2i(ix.keyType)
}

// indexColumns are a row's indexed copies of its attributes.
type indexColumns struct {
	id      int64
	class   int64
	keyType sql.NullInt64
	label   []byte
	ckaid   []byte
	private int64
}

// set fills the index columns from the values the database holds, which
// a file edited by hand need not keep at the schema's types (the find
// reads them as they are, so that such a row fails alone). It returns the
// first column of another type, or "".
func (c *indexColumns) set(class, keyType, label, ckaid, private any) string {
	var ok bool
	if c.class, ok = class.(int64); !ok {
		return "class"
	}
	switch v := keyType.(type) {
	case nil:
	case int64:
		c.keyType = sql.NullInt64{Int64: v, Valid: true}
	default:
		return "key_type"
	}
	if c.label, ok = label.([]byte); !ok && label != nil {
		return "label"
	}
	if c.ckaid, ok = ckaid.([]byte); !ok && ckaid != nil {
		return "ckaid"
	}
	if c.private, ok = private.(int64); !ok {
		return "private"
	}
	return ""
}

// match reports whether the columns are a faithful copy of ix.
func (c *indexColumns) match(ix index) bool {
	return c.class == u2i(ix.class) &&
		c.keyType.Valid == ix.hasKeyType &&
		(!ix.hasKeyType || c.keyType.Int64 == u2i(ix.keyType)) &&
		bytes.Equal(c.label, ix.label) && (c.label == nil) == (ix.label == nil) &&
		bytes.Equal(c.ckaid, ix.id) && (c.ckaid == nil) == (ix.id == nil) &&
		(c.private != 0) == ix.private
}

// findConditions returns a find's shape (which conditions its query has:
// one prepared statement per shape), its conditions and its arguments.
func findConditions(token UUID, f Filter) (shape int, where []string, args []any) {
	args = []any{token[:]}
	if f.Class != nil {
		where, args, shape = append(where, "o.class = ?"), append(args, u2i(*f.Class)), shape|1
	}
	if f.KeyType != nil {
		where, args, shape = append(where, "o.key_type = ?"), append(args, u2i(*f.KeyType)), shape|2
	}
	if f.Label != nil {
		where, args, shape = append(where, "o.label = ?"), append(args, f.Label), shape|4
	}
	if f.ID != nil {
		where, args, shape = append(where, "o.ckaid = ?"), append(args, f.ID), shape|8
	}
	if !f.IncludePrivate {
		where, shape = append(where, "o.private = 0"), shape|16
	}
	return shape, where, args
}

// findQuery is the find query of a shape. It walks an index of live
// objects only (schema 6): a token keeps its deleted objects for its
// retention, so there may be many more of them than of live ones, and a
// find must not pay for them.
func (s *Store) findQuery(shape int, where []string) string {
	from := "objects o" + s.eng.findIndex(shape)
	q := `SELECT o.id, o.class, o.key_type, o.label, o.ckaid, o.private, o.uuid, o.record
		FROM ` + from + ` JOIN tokens t ON t.id = o.token_id WHERE t.uuid = ? AND o.deleted_at IS NULL`
	if len(where) > 0 {
		q += " AND " + strings.Join(where, " AND ")
	}
	return q + " ORDER BY o.id"
}

// findStmt returns the prepared find query of a shape, preparing it on
// first use: preparing the join costs more than running it.
func (s *Store) findStmt(ctx context.Context, shape int, where []string) (*sql.Stmt, error) {
	if st, ok := s.finds.Load(shape); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.r.PrepareContext(ctx, s.findQuery(shape, where))
	if err != nil {
		return nil, s.dbErr("find", err)
	}
	if prev, loaded := s.finds.LoadOrStore(shape, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}
