// Package keystore stores tokens and their objects in SQLite (embedded,
// the default) or PostgreSQL (OpenDB), every secret sealed under a key
// chain that ends in the TPM. The logic is written once; what differs
// between the two databases is the engine (engine.go): each has its own
// schema and migrations, errors, planner hints, and the part of the
// anchor that runs inside the database (sqlite.go and anchorsql.go;
// postgres.go, pgschema.go and pganchor.go).
//
// A token's KEK is TPM2_HMAC(master key, "hsmemu/kek/v1" ‖ token uuid ‖
// generation), computed by the Root and never stored. From it come three
// keys, separated by HKDF: one seals the secret material of public objects
// (AES-256-GCM), one tags objects that have no secret (HMAC-SHA256) and the
// token row itself, and one feeds the PIN records. Each token also has a
// random data key that seals its private objects; it is stored twice, wrapped
// under HKDF(KEK, Argon2id(PIN, salt)) for the SO PIN and for the user PIN,
// so it is in memory only while someone is logged in.
//
// Every seal and tag binds the object to where it belongs: the associated
// data is the blob's header (format version, kind, key generation), the
// token uuid, the object uuid and the SHA-256 of the canonical encoding of
// all its attributes. Flipping CKA_EXTRACTABLE in the database, moving a blob
// to another object or token, or truncating it, makes the open fail with
// ErrTampered; it never yields the material.
//
// What a row cannot show by itself is its age: an older copy of a row, or
// of the whole file, authenticates too. The anchor record (anchor.go)
// accounts for every row, kept by triggers in the transaction of each
// write, and is tied to a TPM counter that only goes up (AttachAnchor,
// Anchor): a keystore older than its anchor is ErrRolledBack, and a row
// that is not the one written is taken down like a row that fails its MAC.
//
// Opening a key is the hot path of the whole daemon: a bounded cache keeps
// opened objects, so a second use costs a map lookup, and a miss costs one
// indexed SQLite read and one AES-GCM open. Updates, deletes and logouts
// invalidate the cache.
//
// SQLite runs in WAL mode with synchronous=FULL, PostgreSQL with
// synchronous_commit=on (and a server with fsync off is refused): a write
// that returned is on disk. There is one writer connection, so writes
// never contend for a lock among themselves, and a pool of readers beside
// it.
package keystore
