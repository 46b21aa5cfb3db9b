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
}

// SchemaVersion is the schema this build writes.
var SchemaVersion = len(migrations)

func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("keystore: begin migration: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("keystore: read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("keystore: database schema version %d is newer than this build's %d; upgrade hsmemu", v, len(migrations))
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
