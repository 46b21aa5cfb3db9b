package keystore

import (
	"bytes"
	"database/sql"
	"errors"
	mrand "math/rand/v2"
	"testing"
)

func execSQL(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// getRecord reads an object's record column, split into its parts.
func getRecord(t *testing.T, db *sql.DB, id ObjectID) (UUID, []byte, []byte) {
	t.Helper()
	var rec []byte
	if err := db.QueryRow("SELECT record FROM objects WHERE id = ?", int64(id)).Scan(&rec); err != nil {
		t.Fatal(err)
	}
	var r objectRow
	if err := r.parseRecord(rec); err != nil {
		t.Fatal(err)
	}
	return r.uuid, r.attrs, r.sealed
}

func setRecord(t *testing.T, db *sql.DB, id ObjectID, u UUID, attrs, sealed []byte) {
	t.Helper()
	execSQL(t, db, "UPDATE objects SET record = ? WHERE id = ?", record(u, attrs, sealed), int64(id))
}

// editSealed applies edit to an object's seal.
func editSealed(t *testing.T, db *sql.DB, id ObjectID, edit func([]byte) []byte) {
	t.Helper()
	u, attrs, sealed := getRecord(t, db, id)
	setRecord(t, db, id, u, attrs, edit(sealed))
}

// editAttr rewrites one attribute of a stored object, keeping the
// encoding canonical, so only the seal can notice.
func editAttr(t *testing.T, db *sql.DB, id ObjectID, typ uint64, v []byte) {
	t.Helper()
	u, enc, sealed := getRecord(t, db, id)
	attrs, err := DecodeAttributes(enc)
	if err != nil {
		t.Fatal(err)
	}
	for i := range attrs {
		if attrs[i].Type == typ {
			attrs[i].Value = v
		}
	}
	setRecord(t, db, id, u, attrs.Encode(), sealed)
}

func TestTamper(t *testing.T) {
	t.Parallel()
	type fixture struct {
		db                    *sql.DB
		pub, priv, tag, other ObjectID // other: an object on a second token
		pubTwin               ObjectID // same attributes as pub
	}
	for _, tc := range []struct {
		name   string
		edit   func(t *testing.T, f fixture)
		victim func(f fixture) ObjectID
	}{
		{name: "flip CKA_EXTRACTABLE of sealed key", edit: func(t *testing.T, f fixture) { editAttr(t, f.db, f.priv, 0x162, Bool(false)) }, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "flip CKA_SENSITIVE of public key", edit: func(t *testing.T, f fixture) { editAttr(t, f.db, f.pub, 0x103, Bool(false)) }, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "flip attribute of tagged object", edit: func(t *testing.T, f fixture) { editAttr(t, f.db, f.tag, 0x162, Bool(false)) }, victim: func(f fixture) ObjectID { return f.tag }},
		{name: "relabel in attrs and column", edit: func(t *testing.T, f fixture) {
			editAttr(t, f.db, f.pub, AttrLabel, []byte("evil"))
			execSQL(t, f.db, "UPDATE objects SET label = ? WHERE id = ?", []byte("evil"), int64(f.pub))
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "make private object public", edit: func(t *testing.T, f fixture) {
			editAttr(t, f.db, f.priv, AttrPrivate, Bool(false))
			execSQL(t, f.db, "UPDATE objects SET private = 0 WHERE id = ?", int64(f.priv))
		}, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "swap blobs between objects", edit: func(t *testing.T, f fixture) {
			_, _, twin := getRecord(t, f.db, f.pubTwin)
			editSealed(t, f.db, f.pub, func([]byte) []byte { return twin })
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "swap blobs between tokens", edit: func(t *testing.T, f fixture) {
			_, _, other := getRecord(t, f.db, f.other)
			editSealed(t, f.db, f.pub, func([]byte) []byte { return other })
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "move object to other token", edit: func(t *testing.T, f fixture) {
			execSQL(t, f.db, "UPDATE objects SET token_id = (SELECT token_id FROM objects WHERE id = ?) WHERE id = ?", int64(f.other), int64(f.pub))
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "swap uuid", edit: func(t *testing.T, f fixture) {
			twin, _, _ := getRecord(t, f.db, f.pubTwin)
			_, attrs, sealed := getRecord(t, f.db, f.pub)
			setRecord(t, f.db, f.pub, twin, attrs, sealed)
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "truncate blob", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.priv, func(b []byte) []byte { return b[:len(b)-1] })
		}, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "truncate to header", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.priv, func(b []byte) []byte { return b[:sealHeaderLen] })
		}, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "truncate record", edit: func(t *testing.T, f fixture) {
			execSQL(t, f.db, "UPDATE objects SET record = substr(record, 1, 19) WHERE id = ?", int64(f.priv))
		}, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "attribute length beyond record", edit: func(t *testing.T, f fixture) {
			u, attrs, _ := getRecord(t, f.db, f.pub)
			execSQL(t, f.db, "UPDATE objects SET record = ? WHERE id = ?", record(u, attrs, nil)[:20+len(attrs)-1], int64(f.pub))
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "version byte", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.pub, func(b []byte) []byte { b[0] = 2; return b })
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "kind byte", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.priv, func(b []byte) []byte { b[1] = kindKEK; return b })
		}, victim: func(f fixture) ObjectID { return f.priv }},
		{name: "generation", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.tag, func(b []byte) []byte { b[5] ^= 1; return b })
		}, victim: func(f fixture) ObjectID { return f.tag }},
		{name: "ciphertext bit", edit: func(t *testing.T, f fixture) {
			editSealed(t, f.db, f.pub, func(b []byte) []byte { b[len(b)-20] ^= 0x80; return b })
		}, victim: func(f fixture) ObjectID { return f.pub }},
		{name: "token tier", edit: func(t *testing.T, f fixture) {
			execSQL(t, f.db, "UPDATE tokens SET tier = ? WHERE id = (SELECT token_id FROM objects WHERE id = ?)", int(TierPremium), int64(f.pub))
		}, victim: func(f fixture) ObjectID { return f.pub }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			a := newToken(t, s, "a")
			b := newToken(t, s, "b")
			for _, tok := range []TokenInfo{a, b} {
				if err := s.Login(ctx, tok.UUID, RoleUser, userPIN); err != nil {
					t.Fatal(err)
				}
			}
			put := func(tok TokenInfo, private bool, secret []byte) ObjectID {
				obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", private), secret)
				if err != nil {
					t.Fatal(err)
				}
				return obj.ID
			}
			secret := bytes.Repeat([]byte{0x5a}, 32)
			f := fixture{
				pub:     put(a, false, secret),
				pubTwin: put(a, false, secret),
				priv:    put(a, true, secret),
				tag:     put(a, false, nil),
				other:   put(b, false, secret),
			}
			root, _ := testRoot(t)
			s.Close()
			f.db = rawDB(t, path)
			tc.edit(t, f)

			s2, err := openAt(ctx, path, Options{Argon2: cheapArgon})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if err := s2.Attach(ctx, root, root.DomainID()); err != nil {
				t.Fatal(err)
			}
			for _, tok := range []TokenInfo{a, b} {
				if err := s2.Login(ctx, tok.UUID, RoleUser, userPIN); err != nil && !errors.Is(err, ErrTampered) {
					t.Fatal(err)
				}
			}
			id := tc.victim(f)
			obj, err := s2.Open(ctx, id)
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("open after edit: %v, want ErrTampered", err)
			}
			if obj != nil {
				t.Fatal("material returned for a tampered object")
			}
		})
	}
}

// TestTamperIndexColumns edits only the indexed copies of attributes. Open
// never reads them, so it keeps returning the authenticated object; Find
// checks them against the attributes and reports the edit.
func TestTamperIndexColumns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, set string
		arg       any
		private   bool
	}{
		{name: "label", set: "label = ?", arg: []byte("evil"), private: false},
		{name: "CKA_ID", set: "ckaid = ?", arg: []byte{9}, private: false},
		{name: "class", set: "class = ?", arg: 3, private: false},
		{name: "key type", set: "key_type = NULL", arg: nil, private: false},
		{name: "private", set: "private = 0", arg: nil, private: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			ti := newToken(t, s, "a")
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", tc.private), []byte("secret material of this key....."))
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			db := rawDB(t, path)
			args := []any{}
			if tc.arg != nil {
				args = append(args, tc.arg)
			}
			execSQL(t, db, "UPDATE objects SET "+tc.set+" WHERE id = ?", append(args, int64(obj.ID))...)

			root, _ := testRoot(t)
			s2, err := openAt(ctx, path, Options{Argon2: cheapArgon})
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if err := s2.Attach(ctx, root, root.DomainID()); err != nil {
				t.Fatal(err)
			}
			// Find leaves the row out, and notes it.
			if ids, err := s2.Find(ctx, ti.UUID, Filter{}); err != nil || len(ids) != 0 {
				t.Fatalf("Find after edit: %v %v, want the object left out", ids, err)
			}
			if n := len(s2.tamper.pending); n != 1 {
				t.Fatalf("%d tamper failures noted, want 1", n)
			}
			if !tc.private {
				got, err := s2.Open(ctx, obj.ID)
				if err != nil || !got.Attrs.Equal(obj.Attrs) {
					t.Fatalf("Open after column edit: %v", err)
				}
			} else if _, err := s2.Open(ctx, obj.ID); !errors.Is(err, ErrNotLoggedIn) {
				t.Fatalf("private object opened without login: %v", err)
			}
		})
	}
}

// FuzzOpenMutatedBlob mutates a sealed blob and its attribute encoding: the
// open must never succeed on anything but the original, and never panic.
func FuzzOpenMutatedBlob(f *testing.F) {
	keys, err := newTokenKeys(bytes.Repeat([]byte{1}, 32), 1)
	if err != nil {
		f.Fatal(err)
	}
	dk, _ := newGCM(bytes.Repeat([]byte{2}, 32))
	// Fuzzing workers each run this setup: the nonces must come out the
	// same in every one of them.
	sl := sealer{token: UUID{1}, keys: keys, data: dk, dgen: 1, rand: mrand.NewChaCha8([32]byte{3})}
	obj := UUID{2}
	attrs := []byte("canonical attributes")
	type orig struct {
		private bool
		blob    []byte
	}
	var origs []orig
	for _, c := range []struct {
		private bool
		secret  []byte
	}{{private: false, secret: []byte("public secret")}, {private: true, secret: []byte("private secret")}, {private: false, secret: nil}} {
		blob, err := sl.seal(obj, c.private, attrs, c.secret)
		if err != nil {
			f.Fatal(err)
		}
		origs = append(origs, orig{private: c.private, blob: blob})
		f.Add(c.private, blob, attrs)
	}
	f.Fuzz(func(t *testing.T, private bool, blob, a []byte) {
		_, err := sl.open(obj, private, a, bytes.Clone(blob), nil, nil)
		if err == nil {
			for _, o := range origs {
				// A tag does not depend on the private flag; the flag
				// itself is one of the attributes the tag covers.
				if (o.private == private || blob[1] == kindTag) && bytes.Equal(o.blob, blob) && bytes.Equal(a, attrs) {
					return
				}
			}
			t.Fatalf("mutated blob opened: private=%v blob=%x attrs=%q", private, blob, a)
		}
	})
}
