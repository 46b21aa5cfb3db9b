package keystore

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order; PRAGMA user_version records how many have
// run. Never edit one that has shipped: add another.
var migrations = []string{
	// 1: the root, tokens, objects and the audit log.
	`
CREATE TABLE root (
	id         INTEGER PRIMARY KEY CHECK (id = 1),
	sealed     BLOB NOT NULL,    -- the TPM-wrapped master key (tpmroot.Sealed)
	domain_id  BLOB NOT NULL,    -- HMAC(master key, "hsmemu/domain/v1"): names the security domain
	escrow     BLOB,             -- escrow metadata; NULL when the master key was not escrowed
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;

CREATE TABLE tokens (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid           BLOB NOT NULL UNIQUE CHECK (length(uuid) = 16),
	label          TEXT NOT NULL UNIQUE,
	serial         TEXT NOT NULL UNIQUE,
	tier           INTEGER NOT NULL,
	kek_generation INTEGER NOT NULL,
	dk_generation  INTEGER NOT NULL,
	so_pin         BLOB NOT NULL,
	user_pin       BLOB,
	so_failures    INTEGER NOT NULL DEFAULT 0,
	user_failures  INTEGER NOT NULL DEFAULT 0,
	mac            BLOB NOT NULL,    -- HMAC over the columns above that carry policy
	created_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE objects (
	id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: a stale handle must not find a new object
	uuid       BLOB NOT NULL UNIQUE CHECK (length(uuid) = 16),
	token_id   INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
	class      INTEGER NOT NULL,
	key_type   INTEGER,
	label      BLOB,
	ckaid      BLOB,
	private    INTEGER NOT NULL,
	-- record: uuid(16) | attrs length u32 | canonical attributes | seal.
	-- One column, so the hot path reads two; the uuid, class, key_type,
	-- label, ckaid and private columns are index copies for lookups.
	record     BLOB NOT NULL,
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX objects_by_class ON objects (token_id, class, key_type, label);
CREATE INDEX objects_by_label ON objects (token_id, label);
CREATE INDEX objects_by_ckaid ON objects (token_id, ckaid);

-- Reserved for the hash-chained audit log.
CREATE TABLE audit_log (
	seq       INTEGER PRIMARY KEY,
	time      INTEGER NOT NULL,
	actor     TEXT NOT NULL,
	event     TEXT NOT NULL,
	detail    TEXT NOT NULL,
	prev_hash BLOB NOT NULL,
	hash      BLOB NOT NULL
) STRICT;
`,
	// 2: soft delete. A token's retention and purge protection are policy,
	// authenticated by the token row's MAC; an object's deletion time is
	// not (whoever can write the file can delete the row outright).
	`
ALTER TABLE tokens ADD COLUMN retention_days INTEGER NOT NULL DEFAULT 90;
ALTER TABLE tokens ADD COLUMN purge_protection INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN deleted_at INTEGER; -- unix seconds; NULL while the object lives
CREATE INDEX objects_deleted ON objects (deleted_at) WHERE deleted_at IS NOT NULL;
`,
	// 3: master key rotation. The root keeps its master key's generation
	// and, once rotated, that key's own domain proof (the domain id stays
	// the first key's); a rotation in progress keeps the next key beside
	// it. Each token says which master derives its KEK and keeps, wrapped,
	// the PIN keys of earlier KEKs its PIN records are still under. Keys
	// the domain must keep across rotations (the audit chain's, the key
	// backups') are carried wrapped under each master in turn.
	`
ALTER TABLE root ADD COLUMN master_generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE root ADD COLUMN master_proof BLOB;
ALTER TABLE root ADD COLUMN next_sealed BLOB;
ALTER TABLE root ADD COLUMN next_proof BLOB;
ALTER TABLE root ADD COLUMN next_escrow BLOB;
ALTER TABLE tokens ADD COLUMN master_generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE tokens ADD COLUMN legacy_pin_keys BLOB;
CREATE TABLE carried (
	label             BLOB NOT NULL,
	master_generation INTEGER NOT NULL,
	sealed            BLOB NOT NULL,
	PRIMARY KEY (label, master_generation)
) STRICT;
`,
	// 4: range checks in the schema. The token row is rebuilt with a CHECK
	// on every value its MAC covers, the same ranges scanToken enforces
	// (checkTokenRange), so no write of ours stores a value a read would
	// refuse. They guard against our own mistakes, not an attacker, who
	// can drop them: reads still check. Rows already out of range are
	// copied as they are (migrate ignores CHECKs while it runs), to be
	// reported as tampered rather than fail the migration. The id
	// sequence is kept, so a deleted token's slot id is never reused.
	`
CREATE TABLE tokens_new (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	uuid              BLOB NOT NULL UNIQUE CHECK (length(uuid) = 16),
	label             TEXT NOT NULL UNIQUE CHECK (length(CAST(label AS BLOB)) BETWEEN 1 AND 32),
	serial            TEXT NOT NULL UNIQUE,
	tier              INTEGER NOT NULL CHECK (tier IN (1, 2)),
	kek_generation    INTEGER NOT NULL CHECK (kek_generation BETWEEN 1 AND 4294967295),
	dk_generation     INTEGER NOT NULL CHECK (dk_generation BETWEEN 1 AND 4294967295),
	so_pin            BLOB NOT NULL,
	user_pin          BLOB,
	so_failures       INTEGER NOT NULL DEFAULT 0 CHECK (so_failures BETWEEN 0 AND 1048576),
	user_failures     INTEGER NOT NULL DEFAULT 0 CHECK (user_failures BETWEEN 0 AND 1048576),
	mac               BLOB NOT NULL CHECK (length(mac) = 32),
	created_at        INTEGER NOT NULL,
	retention_days    INTEGER NOT NULL DEFAULT 90 CHECK (retention_days BETWEEN 0 AND 3650),
	purge_protection  INTEGER NOT NULL DEFAULT 0 CHECK (purge_protection IN (0, 1)),
	master_generation INTEGER NOT NULL DEFAULT 1 CHECK (master_generation BETWEEN 1 AND 4294967295),
	legacy_pin_keys   BLOB
) STRICT;
INSERT INTO tokens_new (id, uuid, label, serial, tier, kek_generation, dk_generation, so_pin, user_pin,
	so_failures, user_failures, mac, created_at, retention_days, purge_protection, master_generation, legacy_pin_keys)
SELECT id, uuid, label, serial, tier, kek_generation, dk_generation, so_pin, user_pin,
	so_failures, user_failures, mac, created_at, retention_days, purge_protection, master_generation, legacy_pin_keys
FROM tokens;
CREATE TEMP TABLE token_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'tokens';
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
DELETE FROM sqlite_sequence WHERE name = 'tokens';
INSERT INTO sqlite_sequence (name, seq) SELECT 'tokens', max(seq) FROM
	(SELECT seq FROM temp.token_seq UNION ALL SELECT max(id) AS seq FROM tokens) HAVING max(seq) IS NOT NULL;
DROP TABLE temp.token_seq;
`,
	// 5: the anchor record (anchor.go): one row, sealed, accounting for
	// every other row and tied to the TPM's counter, and each row's entry
	// (its term, sealed). The writer's temporary triggers keep them; a
	// migration that adds a column to a table keeps every row's anchor
	// term only if the column has no default (NULL columns are left out
	// of the term). A later migration that rewrites rows meets the
	// triggers before the keys are loaded, and fails on a keystore with
	// a record: it has to bring its own re-anchoring of those rows.
	`
CREATE TABLE anchor (
	id    INTEGER PRIMARY KEY CHECK (id = 1),
	state BLOB NOT NULL
) STRICT;
CREATE TABLE anchor_rows (
	tbl  TEXT NOT NULL, -- the row's table
	key  TEXT NOT NULL, -- its primary key, as SQL literals
	term BLOB NOT NULL, -- its term, sealed
	PRIMARY KEY (tbl, key)
) STRICT, WITHOUT ROWID;
`,
	// 6: the find indexes hold live objects only. A token keeps its
	// deleted objects for its retention (90 days by default), so a busy
	// one holds far more deleted objects than live ones, and a find by
	// class walked them all (10 live keys beside 10,000 deleted: 1.08 ms
	// against 47 us). Token-wide work (listing deleted objects, purges,
	// resealing, a token's deletion and its foreign key) keeps an index
	// on the token of its own.
	`
DROP INDEX IF EXISTS objects_by_class;
DROP INDEX IF EXISTS objects_by_label;
DROP INDEX IF EXISTS objects_by_ckaid;
CREATE INDEX IF NOT EXISTS objects_live_by_class ON objects (token_id, class, key_type, label) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS objects_live_by_label ON objects (token_id, label) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS objects_live_by_ckaid ON objects (token_id, ckaid) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS objects_by_token ON objects (token_id, deleted_at);
`,
	// 7: the nodes of the domain (nodes.go): one row per TPM that holds
	// the master key, found by its SRK's name, with its TPM-sealed
	// master key, its TPM-resident import key, its rollback anchor and
	// its times, under a MAC of the domain's. A keystore from before
	// gets its one row at its next open (AdoptNode). The per-node
	// bindings of PIN records (pin_bindings): the same PIN-bound secret,
	// sealed in another node's TPM behind the same authorisation, for
	// the record with that salt.
	`
CREATE TABLE nodes (
	id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: a node that left is not another's
	tpm_id      BLOB NOT NULL UNIQUE CHECK (length(tpm_id) BETWEEN 3 AND 66),
	sealed      BLOB NOT NULL CHECK (length(sealed) BETWEEN 1 AND 8192),
	import_key  BLOB CHECK (length(import_key) BETWEEN 1 AND 8192),
	anchor      BLOB CHECK (length(anchor) = 20),
	joined_at   INTEGER NOT NULL CHECK (joined_at BETWEEN 0 AND 1099511627775),
	last_seen   INTEGER NOT NULL CHECK (last_seen BETWEEN 0 AND 1099511627775),
	mac         BLOB NOT NULL CHECK (length(mac) = 32)
) STRICT;
CREATE TABLE pin_bindings (
	token_id INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
	role     INTEGER NOT NULL CHECK (role IN (0, 1)),
	node_id  INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	salt     BLOB NOT NULL CHECK (length(salt) = 16),
	seal     BLOB NOT NULL CHECK (length(seal) BETWEEN 1 AND 8192),
	PRIMARY KEY (token_id, role, node_id)
) STRICT;
`,
	// 8: the master key of a rotation, for the nodes that did not make
	// it (nodemasters.go): per node and master generation, a
	// TPM2_Import duplication blob for the node's import key, under a MAC
	// of the domain's.
	`
CREATE TABLE node_masters (
	node_id           INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	master_generation INTEGER NOT NULL CHECK (master_generation BETWEEN 2 AND 4294967295),
	blob              BLOB NOT NULL CHECK (length(blob) BETWEEN 1 AND 8192),
	mac               BLOB NOT NULL CHECK (length(mac) = 32),
	PRIMARY KEY (node_id, master_generation)
) STRICT;
`,
	// 9: the token's login epoch (logoutall.go): a logout of every
	// daemon moves it, and a Store holding a login made under an older
	// one ends it. NULL until the first such logout, and without a
	// default, so a row's anchor term stays what it was; the token
	// row's MAC covers it once set.
	`
ALTER TABLE tokens ADD COLUMN login_epoch INTEGER CHECK (login_epoch BETWEEN 1 AND 4294967295);
`,
	// 10: the ids of the nodes that left the domain (nodeleft.go), each
	// a big-endian u64, in increasing order: a node row put back after
	// its node left authenticates by its own MAC, and this list, which
	// the anchor accounts for, is what refuses it. NULL until a node
	// first leaves, and without a default, so the root row's anchor term
	// stays what it was.
	`
ALTER TABLE root ADD COLUMN nodes_left BLOB CHECK (length(nodes_left) BETWEEN 8 AND 524288 AND length(nodes_left) % 8 = 0);
`,
}

// migrationsWithoutFKs are the migrations that rebuild a table other
// tables refer to: dropping the old one with foreign keys on would cascade
// to the rows that refer to it.
var migrationsWithoutFKs = map[int]bool{4: true}

// SchemaVersion is the schema this build writes.
var SchemaVersion = len(migrations)

// migrate brings the schema up to date in one transaction, on a
// connection of its own: foreign keys are off while it runs (SQLite
// ignores the pragma inside a transaction, so it is set before) and CHECK
// constraints are not enforced on the rows it copies; both are on again
// once it ends. Rows that refer to a missing token are left to the reads
// that meet them, like any other edit of the file.
func migrate(ctx context.Context, db *sql.DB) (err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("keystore: begin migration: %w", err)
	}
	defer conn.Close()
	var v int
	if err := conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("keystore: read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("keystore: database schema version %d is newer than this build's %d; upgrade hsmemu", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	rebuild := false
	for i := v; i < len(migrations); i++ {
		rebuild = rebuild || migrationsWithoutFKs[i+1]
	}
	if rebuild {
		if _, err := conn.ExecContext(ctx, "PRAGMA foreign_keys = OFF; PRAGMA ignore_check_constraints = ON"); err != nil {
			return fmt.Errorf("keystore: prepare migration: %w", err)
		}
		defer func() {
			_, rerr := conn.ExecContext(context.Background(), "PRAGMA foreign_keys = ON; PRAGMA ignore_check_constraints = OFF")
			if err == nil && rerr != nil {
				err = fmt.Errorf("keystore: finish migration: %w", rerr)
			}
		}()
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("keystore: begin migration: %w", err)
	}
	defer tx.Rollback()
	// Read again under the write lock: another process may have migrated.
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("keystore: read schema version: %w", err)
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("keystore: migration %d: %w", i+1, err)
		}
	}
	if v < len(migrations) {
		// PRAGMA does not take parameters; the value is our own integer.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
			return fmt.Errorf("keystore: set schema version: %w", err)
		}
	}
	return tx.Commit()
}
