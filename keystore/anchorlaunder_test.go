package keystore

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"hsmemu/tpmroot"
)

// TestAnchorBadRowNotLaundered: an object row put back from an older
// copy is taken down at start; no write of the Store may rewrite it,
// since the write would give it a fresh anchor entry and the next start
// would take the old version (its earlier attributes, CKA_EXTRACTABLE
// back on) as good. Each write path that would touch the row without
// opening it refuses it as tampered, and the next start still finds it.
func TestAnchorBadRowNotLaundered(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		private bool
		write   func(s *Store, tok TokenInfo, obj *Object) error
	}{
		{"soft delete", false, func(s *Store, tok TokenInfo, obj *Object) error {
			_, err := s.SoftDelete(ctx, obj.ID)
			return err
		}},
		{"data key rotation", true, func(s *Store, tok TokenInfo, obj *Object) error {
			_, err := s.RotateDataKey(ctx, tok.UUID, soPIN, userPIN, nil)
			return err
		}},
		{"any other write", false, func(s *Store, tok TokenInfo, obj *Object) error {
			// A path that does not check first meets the anchor's guard.
			_, err := s.w.ExecContext(ctx, "UPDATE objects SET updated_at = updated_at + 1 WHERE id = ?", int64(obj.ID))
			if err != nil && strings.Contains(err.Error(), "failed authentication (rows)") {
				return ErrTampered
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path, c, h := anchoredStore(t)
			tok := newToken(t, s, "victim")
			if err := s.Login(ctx, tok.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", tc.private), []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			db := rawDB(t, path)
			u, attrs, sealed := getRecord(t, db, obj.ID)
			// CKA_EXTRACTABLE turned off, as C_SetAttributeValue may.
			if err := s.Update(ctx, obj.ID, notExtractable(obj.Attrs), nil); err != nil {
				t.Fatal(err)
			}
			s.Close()
			setRecord(t, db, obj.ID, u, attrs, sealed) // the row as it was, extractable

			s2 := startFindsBad(t, path, c, h, obj.ID, "start")
			if err := s2.Login(ctx, tok.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			if err := tc.write(s2, tok, obj); !errors.Is(err, ErrTampered) {
				t.Fatalf("%s over the row put back: %v, want ErrTampered", tc.name, err)
			}
			if tc.name == "soft delete" {
				// Had it been hidden, bringing it back must not launder it either.
				if _, err := s2.Recover(ctx, tok.UUID, obj.UUID); err == nil {
					t.Fatal("recovered a live object")
				}
			}
			if _, err := s2.Anchor(ctx); err != nil {
				t.Fatal(err)
			}
			s2.Close()

			s3 := startFindsBad(t, path, c, h, obj.ID, "next start (the row put back laundered?)")
			if err := s3.Login(ctx, tok.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			if got, err := s3.Open(ctx, obj.ID); TamperWhat(err) != "rows" {
				var ext []byte
				if got != nil {
					ext, _ = got.Attrs.Get(0x162)
				}
				t.Fatalf("open after %s: %v (extractable %v), want tampered (rows)", tc.name, err, ext)
			}
		})
	}
}

// TestAnchorRowReplacedWhileServing: an object row put back from an older
// copy while the Store serves (another session on PostgreSQL, the file
// written under it) is not in the start's findings; a write of the
// Store's over it would give it a fresh entry, and no start would ever
// find it. The write is refused, the row taken down at once, and the
// next start finds it too.
func TestAnchorRowReplacedWhileServing(t *testing.T) {
	t.Parallel()
	s, path, c, h := anchoredStore(t)
	tok := newToken(t, s, "victim")
	obj, err := s.Put(ctx, tok.UUID, keyAttrs(t, "k", false), []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.Put(ctx, tok.UUID, keyAttrs(t, "other", false), []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, path)
	u, attrs, sealed := getRecord(t, db, obj.ID)
	if err := s.Update(ctx, obj.ID, notExtractable(obj.Attrs), nil); err != nil {
		t.Fatal(err)
	}
	setRecord(t, db, obj.ID, u, attrs, sealed) // behind the Store's back

	if _, err := s.SoftDelete(ctx, obj.ID); err == nil {
		t.Fatal("soft delete over the row put back succeeded")
	}
	if _, err := s.Open(ctx, obj.ID); TamperWhat(err) != "rows" {
		t.Fatalf("open after the refused write: %v, want tampered (rows)", err)
	}
	// Writes to every other row go on.
	if err := s.Update(ctx, other.ID, keyAttrs(t, "other2", false), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2 := startFindsBad(t, path, c, h, obj.ID, "next start (want the row put back found)")
	if got, err := s2.Open(ctx, other.ID); err != nil || string(got.Secret) != "other" {
		t.Fatalf("the other object: %v", err)
	}
}

// notExtractable is attrs with CKA_EXTRACTABLE turned off, as
// C_SetAttributeValue may.
func notExtractable(attrs []Attribute) []Attribute {
	later := slices.Clone(attrs)
	for i := range later {
		if later[i].Type == 0x162 { // CKA_EXTRACTABLE
			later[i] = Attribute{Type: 0x162, Value: Bool(false)}
		}
	}
	return later
}

// startFindsBad reopens the keystore at path and attaches its anchor,
// which must find exactly the object id bad.
func startFindsBad(t *testing.T, path string, c *tpmroot.Counter, h uint32, id ObjectID, what string) *Store {
	t.Helper()
	s := reopen(t, path, Options{})
	rep, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h})
	if err != nil || !slices.Equal(rep.BadObjects, []int64{int64(id)}) {
		t.Fatalf("%s: %+v %v", what, rep, err)
	}
	return s
}
