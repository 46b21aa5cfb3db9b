package keystore

import (
	"bytes"
	"crypto/rand"
	"database/sql"
	"path/filepath"
	"testing"
	"time"
)

// The hot-path benchmarks and their floors, measured the same way in the
// same process. Run them together:
//
//	go test -run '^$' -bench 'Open|Seal|Floor' ./keystore/

func benchKey(b *testing.B, opts Options) (*Store, ObjectID) {
	s, _ := newStore(b, opts)
	ti := newToken(b, s, "bench")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		b.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(b, "aes", true), key)
	if err != nil {
		b.Fatal(err)
	}
	return s, obj.ID
}

// BenchmarkOpenWarm opens a stored AES-256 key that is in the cache.
func BenchmarkOpenWarm(b *testing.B) {
	s, id := benchKey(b, Options{})
	if _, err := s.Open(ctx, id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Open(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenCold opens it with the cache disabled: one SQLite point read,
// the attribute checks and one AES-GCM open per call.
func BenchmarkOpenCold(b *testing.B) {
	s, id := benchKey(b, Options{CacheEntries: -1})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Open(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSeal stores a new AES-256 key: seal plus a committed, fsynced
// insert.
func BenchmarkSeal(b *testing.B) {
	s, id := benchKey(b, Options{})
	obj, _ := s.Open(ctx, id)
	attrs := keyAttrs(b, "aes", true)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Put(ctx, obj.Token, attrs, obj.Secret); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorGCM is a bare AES-256-GCM open of 32 bytes.
func BenchmarkFloorGCM(b *testing.B) {
	aead, _ := newGCM(bytes.Repeat([]byte{1}, 32))
	nonce := make([]byte, gcmNonceLen)
	aad := make([]byte, 80)
	ct := aead.Seal(nil, nonce, make([]byte, 32), aad)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := aead.Open(nil, nonce, ct, aad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorSQLite is a bare indexed point read of one row of the same
// size as a stored key, with the keystore's connection settings.
func BenchmarkFloorSQLite(b *testing.B) {
	path := filepath.Join(b.TempDir(), "floor.db")
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=10000"
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)"); err != nil {
		b.Fatal(err)
	}
	row := make([]byte, 250) // attrs and sealed blob of a stored AES-256 key
	for i := 1; i <= 1000; i++ {
		if _, err := db.Exec("INSERT INTO t (id, v) VALUES (?, ?)", i, row); err != nil {
			b.Fatal(err)
		}
	}
	stmt, err := db.Prepare("SELECT v FROM t WHERE id = ?")
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	var v []byte
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := stmt.QueryRow(500).Scan(&v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLogin measures a login (C_Login's PIN check and data key
// unwrap), with the records version 2 (Argon2id alone) and bound to the
// TPM (Argon2id, then TPM2_Load and TPM2_Unseal in a salted session), cold
// (no PIN cache: every login stretches and, bound, asks the TPM) and warm
// (the PIN cache holds what the first login found). With the tests' cheap
// Argon2id the difference is the TPM's cost; with the default, a real
// login's.
//
//	go test -run '^$' -bench Login ./keystore/
func BenchmarkLogin(b *testing.B) {
	root, _ := testRoot(b)
	for _, argon := range []struct {
		name string
		p    Argon2Params
	}{{"cheap", cheapArgon}, {"default", DefaultArgon2}} {
		for _, rec := range []struct {
			name string
			root Root
		}{{"v2", kekOnly{root}}, {"bound", root}} {
			for _, cache := range []struct {
				name string
				ttl  time.Duration
			}{{"cold", -1}, {"warm", time.Hour}} {
				b.Run(argon.name+"/"+rec.name+"/"+cache.name, func(b *testing.B) {
					s, _ := benchStore(b, rec.root, Options{Argon2: argon.p, PINCacheTTL: cache.ttl})
					ti := newToken(b, s, "bench")
					if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
						b.Fatal(err)
					}
					b.ResetTimer()
					for b.Loop() {
						s.Logout(ti.UUID)
						if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// benchStore is a keystore attached to root, the shared TPM's master key
// as a root of any kind.
func benchStore(b *testing.B, root Root, opts Options) (*Store, string) {
	r, sealed := testRoot(b)
	path := filepath.Join(b.TempDir(), "keystore.db")
	s, err := Open(ctx, path, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealed, DomainID: r.DomainID()}); err != nil {
		b.Fatal(err)
	}
	if err := s.Attach(ctx, root, r.DomainID()); err != nil {
		b.Fatal(err)
	}
	return s, path
}
