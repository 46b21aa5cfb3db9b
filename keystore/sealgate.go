package keystore

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
)

// Seals against rotations on other Stores. A rotation (a token's data
// key, the master key) reseals a token's objects in one transaction. A
// seal made under the keys it replaces must not be written once the
// rotation has read the objects it reseals: it would stay under keys the
// rotation's commit retires, an acknowledged write that no longer opens.
// Within a Store its rotation locks order them (tokenrot.go). Across
// Stores on PostgreSQL the token row does: a rotation takes it FOR
// UPDATE first, before it reads anything it reseals, and a write that
// seals takes it FOR SHARE in its own transaction, first, and writes
// only while the row still names the generation its seal was made
// under. Either the write commits first, and the rotation, waiting for
// the row, then reads and reseals it; or the rotation commits first,
// and the write finds the generation moved and is made again under the
// keys the row now names (a data key replaced elsewhere logs the token
// out here: the write is then refused as not logged in). SQLite has one
// Store per file: its statements are unchanged.

// errTokenMoved is a sealing write's finding that the token's key
// generations moved since it sealed: another Store's rotation committed
// in between. The write is made again (sealRetries).
var errTokenMoved = errors.New("keystore: the token's keys were rotated under the write")

// sealRetries bounds how often a write is made again after a rotation on
// another Store: each try follows a rotation that committed, and
// rotations of one token are one at a time.
const sealRetries = 10

// sealGen returns the key generation a sealed blob was made under, and
// whether it is the data key's (a private object's secret material) or
// the KEK's (a public object's, or a tag).
func sealGen(sealed []byte) (gen uint32, data bool) {
	if len(sealed) < sealHeaderLen {
		return 0, false
	}
	return binary.BigEndian.Uint32(sealed[2:]), sealed[1] == kindData
}

// sealCurrent reports whether a blob was sealed under the generation of
// its key that the token row names (kekGen, dataGen).
func sealCurrent(sealed []byte, kekGen, dataGen uint32) bool {
	gen, data := sealGen(sealed)
	if data {
		return gen == dataGen
	}
	return gen == kekGen
}

// insertObjectGated is put's insert on PostgreSQL: the object is
// inserted only while its token's row, locked FOR SHARE by the same
// statement, names the generation the seal was made under (the last
// argument, against kek_generation or dk_generation). No row back: the
// generation moved.
func insertObjectGated(data bool) string {
	col := "kek_generation"
	if data {
		col = "dk_generation"
	}
	return `INSERT INTO objects
			(uuid, token_id, class, key_type, label, ckaid, private, record, created_at, updated_at)
			SELECT ?, t.id, ?, ?, ?, ?, ?, ?, ?, ? FROM tokens t WHERE t.id = ? AND t.` + col + ` = ? FOR SHARE RETURNING id`
}

// gated reports whether a sealing write takes its token's row FOR SHARE
// (PostgreSQL), and is made again when the row moved.
func (s *Store) gated() bool { return s.eng.forShare() != "" && !s.ungated }

// lockObjectToken, on PostgreSQL, takes the row of object id's token FOR
// SHARE in tx, before the object's own row is locked (a rotation locks
// the token's row, then writes its objects' rows), and returns the key
// generations it names. gated is false on SQLite, which locks nothing.
func (s *Store) lockObjectToken(ctx context.Context, tx *sql.Tx, id ObjectID) (kekGen, dataGen uint32, gated bool, err error) {
	if !s.gated() {
		return 0, 0, false, nil
	}
	var kg, dg int64
	err = tx.QueryRowContext(ctx, "SELECT t.kek_generation, t.dk_generation FROM tokens t WHERE t.id = (SELECT token_id FROM objects WHERE id = ?)"+s.eng.forShare(), int64(id)).Scan(&kg, &dg)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, true, ErrNotFound
	}
	if err != nil {
		return 0, 0, true, s.dbErr("lock token", err)
	}
	// Out of range is no generation a seal has: the write is refused
	// after its retries, and the row's read through token() says why.
	return uint32(max(0, min(kg, 1<<32-1))), uint32(max(0, min(dg, 1<<32-1))), true, nil
}

// catchUp brings what the Store holds of a token up to the generations
// its locked row names: the newer KEK's keys (installNewer, through a
// read of the row), and, when the data key moved, a logout here (a
// write under it is then refused as not logged in).
func (s *Store) catchUp(ctx context.Context, st *tokenState, kekGen, dataGen uint32) {
	s.mu.RLock()
	kg, dg, in := st.keys.generation, st.dgen, st.loggedIn()
	s.mu.RUnlock()
	if kg < kekGen {
		s.refreshKeys(ctx, st.rowID)
	}
	if in && dg != dataGen {
		s.revalidateToken(ctx, st.rowID) //nolint:errcheck // a failure drops it all
	}
}

// tokenMoved is what a write does before it is made again after
// errTokenMoved: take the keys the token's row names now.
func (s *Store) tokenMoved(ctx context.Context, rowID int64) {
	s.refreshKeys(ctx, rowID)
	s.revalidateToken(ctx, rowID) //nolint:errcheck // a failure drops it all
}
