package keystore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
)

var ctx = context.Background()

var (
	soPIN   = []byte("so-secret-1")
	userPIN = []byte("user-secret-1")
)

func newToken(t testing.TB, s *Store, label string) TokenInfo {
	t.Helper()
	ti, err := s.CreateToken(ctx, TokenSpec{Label: label, Tier: TierStandard, SOPIN: soPIN, UserPIN: userPIN})
	if err != nil {
		t.Fatal(err)
	}
	return ti
}

// keyAttrs is a minimal secret key object.
func keyAttrs(t testing.TB, label string, private bool) Attributes {
	t.Helper()
	a, err := NewAttributes(
		Attribute{Type: AttrClass, Value: Ulong(4)},      // CKO_SECRET_KEY
		Attribute{Type: AttrKeyType, Value: Ulong(0x1f)}, // CKK_AES
		Attribute{Type: AttrToken, Value: Bool(true)},
		Attribute{Type: AttrPrivate, Value: Bool(private)},
		Attribute{Type: AttrLabel, Value: []byte(label)},
		Attribute{Type: AttrID, Value: []byte{1, 2, 3}},
		Attribute{Type: 0x162, Value: Bool(true)}, // CKA_EXTRACTABLE
		Attribute{Type: 0x103, Value: Bool(true)}, // CKA_SENSITIVE
	)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestTokenLifecycle(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "alpha")
	if ti.Serial == "" || len(ti.Serial) != 16 || !ti.UserPINSet || ti.Tier != TierStandard {
		t.Fatalf("token info %+v", ti)
	}
	if _, err := s.CreateToken(ctx, TokenSpec{Label: "alpha", Tier: TierStandard, SOPIN: soPIN}); !errors.Is(err, ErrTokenExists) {
		t.Fatalf("duplicate label: %v", err)
	}
	got, err := s.TokenByLabel(ctx, "alpha")
	if err != nil || got.UUID != ti.UUID {
		t.Fatalf("TokenByLabel: %v %v", got, err)
	}
	list, err := s.Tokens(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("Tokens: %v %v", list, err)
	}
	if err := s.DeleteToken(ctx, ti.UUID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token(ctx, ti.UUID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted token: %v", err)
	}
}

func TestPINs(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "pins")
	priv, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), nil)
	_ = priv
	if err != nil {
		t.Fatal(err)
	}

	// A wrong PIN cannot open the data key, and counts.
	for i := 1; i <= 2; i++ {
		if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
			t.Fatalf("wrong PIN: %v", err)
		}
		got, _ := s.Token(ctx, ti.UUID)
		if got.UserFailures != i {
			t.Fatalf("failures = %d, want %d", got.UserFailures, i)
		}
	}
	if s.LoggedIn(ti.UUID) {
		t.Fatal("logged in after wrong PIN")
	}
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "p", true), []byte("0123456789abcdef")); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("private put without login: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Token(ctx, ti.UUID); got.UserFailures != 0 {
		t.Fatalf("failures not reset: %d", got.UserFailures)
	}
	secret := bytes.Repeat([]byte{7}, 32)
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "p", true), secret)
	if err != nil {
		t.Fatal(err)
	}
	s.Logout(ti.UUID)
	if _, err := s.Open(ctx, obj.ID); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("private open after logout: %v", err)
	}

	// The user changes their PIN; the old one stops working.
	newUser := []byte("user-secret-2")
	if err := s.SetPIN(ctx, ti.UUID, RoleUser, []byte("wrong"), newUser); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("SetPIN with wrong old PIN: %v", err)
	}
	if err := s.SetPIN(ctx, ti.UUID, RoleUser, userPIN, newUser); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("old PIN after change: %v", err)
	}

	// The SO resets the user PIN, which must open the same data key.
	if err := s.InitPIN(ctx, ti.UUID, []byte("reset-pin")); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("InitPIN without SO: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleSO, soPIN); err != nil {
		t.Fatal(err)
	}
	if err := s.InitPIN(ctx, ti.UUID, []byte("reset-pin")); err != nil {
		t.Fatal(err)
	}
	s.Logout(ti.UUID)
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("reset-pin")); err != nil {
		t.Fatal(err)
	}
	got, err := s.Open(ctx, obj.ID)
	if err != nil || !bytes.Equal(got.Secret, secret) {
		t.Fatalf("open after SO reset: %v", err)
	}
	// A PIN of a length that cannot be right is just a wrong PIN.
	if err := s.Login(ctx, ti.UUID, RoleUser, nil); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("empty PIN: %v", err)
	}
	if err := s.SetPIN(ctx, ti.UUID, RoleUser, []byte("reset-pin"), nil); !errors.Is(err, ErrPINLenRange) {
		t.Fatalf("empty new PIN: %v", err)
	}
}

func TestPINNotInitialized(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti, err := s.CreateToken(ctx, TokenSpec{Label: "fresh", Tier: TierPremium, SOPIN: soPIN})
	if err != nil {
		t.Fatal(err)
	}
	if ti.UserPINSet {
		t.Fatal("user PIN reported set")
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINNotInitialized) {
		t.Fatalf("login before InitPIN: %v", err)
	}
}

func TestObjects(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "objs")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	pubSecret := []byte("public object secret material...")
	pub, err := s.Put(ctx, ti.UUID, keyAttrs(t, "pub", false), pubSecret)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := s.Put(ctx, ti.UUID, keyAttrs(t, "priv", true), []byte("private object secret material.."))
	if err != nil {
		t.Fatal(err)
	}
	tagged, err := s.Put(ctx, ti.UUID, keyAttrs(t, "tagged", false), nil)
	if err != nil {
		t.Fatal(err)
	}

	// A second Store on the same file has a cold cache: every open is a
	// real unseal.
	s.Close()
	s = reopen(t, path, Options{})
	if _, err := s.Open(ctx, priv.ID); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("private object without login: %v", err)
	}
	if got, err := s.Open(ctx, pub.ID); err != nil || !bytes.Equal(got.Secret, pubSecret) {
		t.Fatalf("public object without login: %v", err)
	}
	if got, err := s.Open(ctx, tagged.ID); err != nil || got.Secret != nil {
		t.Fatalf("tagged object: %v %v", got, err)
	}

	// Find by label, class, CKA_ID; private objects only when asked.
	class := uint64(4)
	for _, tc := range []struct {
		name string
		f    Filter
		want []ObjectID
	}{
		{name: "all public", f: Filter{}, want: []ObjectID{pub.ID, tagged.ID}},
		{name: "all", f: Filter{IncludePrivate: true}, want: []ObjectID{pub.ID, priv.ID, tagged.ID}},
		{name: "label", f: Filter{Label: []byte("priv"), IncludePrivate: true}, want: []ObjectID{priv.ID}},
		{name: "label hidden", f: Filter{Label: []byte("priv")}, want: nil},
		{name: "class and id", f: Filter{Class: &class, ID: []byte{1, 2, 3}}, want: []ObjectID{pub.ID, tagged.ID}},
		{name: "no match", f: Filter{ID: []byte{9}}, want: nil},
	} {
		got, err := s.Find(ctx, ti.UUID, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(tc.want) {
			t.Fatalf("%s: got %v, want %v", tc.name, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("%s: got %v, want %v", tc.name, got, tc.want)
			}
		}
	}

	// Update re-seals under the new attributes; the cache follows.
	if _, err := s.Open(ctx, pub.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, pub.ID, keyAttrs(t, "renamed", false), nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Open(ctx, pub.ID)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := got.Attrs.Get(AttrLabel); string(l) != "renamed" || !bytes.Equal(got.Secret, pubSecret) {
		t.Fatalf("after update: label %q", l)
	}
	// Turning a public object private needs the data key.
	if err := s.Update(ctx, pub.ID, keyAttrs(t, "renamed", true), nil); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("make private without login: %v", err)
	}
	if err := s.Delete(ctx, pub.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, pub.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted object: %v", err)
	}
	if err := s.Delete(ctx, pub.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

func TestReopenColdCache(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "reopen")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{0x42}, 32)
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), secret)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	root, _ := testRoot(t)
	s2, err := openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Open(ctx, obj.ID); !errors.Is(err, ErrNoRoot) {
		t.Fatalf("open before Attach: %v", err)
	}
	if err := s2.Attach(ctx, root, []byte("another domain")); !errors.Is(err, ErrWrongDomain) {
		t.Fatalf("attach of another domain: %v", err)
	}
	if err := s2.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	got, err := s2.Open(ctx, obj.ID)
	if err != nil || !bytes.Equal(got.Secret, secret) {
		t.Fatalf("reopened: %v", err)
	}
	if err := s2.SetRootRecord(ctx, &RootRecord{Sealed: []byte{1}, DomainID: []byte("other")}); !errors.Is(err, ErrWrongDomain) {
		t.Fatalf("root of another domain written over: %v", err)
	}
}

func TestCacheBounded(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{CacheEntries: 8})
	ti := newToken(t, s, "cache")
	var ids []ObjectID
	for i := 0; i < 30; i++ {
		obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte{byte(i), 1, 2, 3})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, obj.ID)
	}
	for round := 0; round < 3; round++ {
		for i, id := range ids {
			obj, err := s.Open(ctx, id)
			if err != nil || obj.Secret[0] != byte(i) {
				t.Fatalf("open %d: %v", i, err)
			}
			if n := s.cache.len(); n > 8 {
				t.Fatalf("cache holds %d entries, bound 8", n)
			}
		}
	}
}

func TestDefaultArgon2(t *testing.T) {
	t.Parallel()
	if err := DefaultArgon2.validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Argon2Params{{}, {Time: 1, MemoryKiB: 1, Threads: 1}, {Time: 1000, MemoryKiB: 64, Threads: 1}, {Time: 1, MemoryKiB: 1 << 30, Threads: 1}} {
		if p.validate() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestFileModes(t *testing.T) {
	sqliteOnly(t, "the keystore's files")
	t.Parallel()
	s, path := newStore(t, Options{})
	newToken(t, s, "modes")
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
}
