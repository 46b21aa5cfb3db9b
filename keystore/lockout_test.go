package keystore

import (
	"bytes"
	"errors"
	"testing"
)

func TestLockout(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{MaxPINFailures: 3})
	ti := newToken(t, s, "lock")
	// Failures through Login and through SetPIN count alike.
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	if err := s.SetPIN(ctx, ti.UUID, RoleUser, []byte("wrong"), []byte("new-pin")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	if got, _ := s.Token(ctx, ti.UUID); got.UserFailures != 2 {
		t.Fatalf("failures = %d, want 2", got.UserFailures)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	// Locked: even the right PIN is refused, without being tried.
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINLocked) {
		t.Fatalf("right PIN on a locked role: %v", err)
	}
	if got, _ := s.Token(ctx, ti.UUID); got.UserFailures != 3 {
		t.Fatalf("a locked attempt counted: %d", got.UserFailures)
	}
	// The SO is not locked, and setting a new user PIN unlocks the user.
	if err := s.Login(ctx, ti.UUID, RoleSO, soPIN); err != nil {
		t.Fatal(err)
	}
	if err := s.InitPIN(ctx, ti.UUID, []byte("fresh-pin")); err != nil {
		t.Fatal(err)
	}
	s.Logout(ti.UUID)
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("fresh-pin")); err != nil {
		t.Fatalf("after SO reset: %v", err)
	}
}

// TestTamperTokenRow edits token rows: every read of the token notices.
func TestTamperTokenRow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, set string }{
		{name: "tier", set: "tier = 2"},
		{name: "label", set: "label = 'evil'"},
		{name: "failure counter", set: "user_failures = 0"},
		{name: "swap PIN records", set: "so_pin = user_pin, user_pin = so_pin"},
		{name: "drop user PIN", set: "user_pin = NULL"},
		{name: "data generation", set: "dk_generation = 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, path := newStore(t, Options{})
			ti := newToken(t, s, "tok")
			if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
				t.Fatal(err)
			}
			s.Close()
			execSQL(t, rawDB(t, path), "UPDATE tokens SET "+tc.set)
			s2 := reopen(t, path, Options{})
			if _, err := s2.Token(ctx, ti.UUID); !errors.Is(err, ErrTampered) {
				t.Fatalf("Token: %v, want ErrTampered", err)
			}
			// The listing still works, and marks it.
			list, err := s2.Tokens(ctx)
			if err != nil || len(list) != 1 || !errors.Is(list[0].Tampered, ErrTampered) || list[0].ID != ti.ID {
				t.Fatalf("Tokens: %+v %v, want the token listed as tampered", list, err)
			}
			if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrTampered) {
				t.Fatalf("Login: %v, want ErrTampered", err)
			}
		})
	}
}

// TestPrivateCacheAfterLogout: a private object in the cache is not served
// once its token is logged out, whatever raced with the logout.
func TestPrivateCacheAfterLogout(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "cache")
	for i := 0; i < 200; i++ {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
		done := make(chan *Object)
		go func() {
			obj, _ := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("private secret material, 32 b.."))
			done <- obj
		}()
		s.Logout(ti.UUID)
		obj := <-done
		if obj == nil {
			continue // the logout came first
		}
		if got, err := s.Open(ctx, obj.ID); err == nil {
			t.Fatalf("iteration %d: private secret %q served after logout", i, got.Secret)
		}
	}
}

func TestPutRefusesNonCanonical(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "canon")
	unsorted := Attributes{{Type: AttrLabel, Value: []byte("x")}, {Type: AttrClass, Value: Ulong(4)}, {Type: AttrPrivate, Value: Bool(false)}}
	if _, err := s.Put(ctx, ti.UUID, unsorted, []byte("secret")); err == nil {
		t.Fatal("unsorted attributes accepted")
	}
	// An empty label is a label: Find must still work after storing it.
	a, _ := NewAttributes(Attribute{Type: AttrClass, Value: Ulong(0)}, Attribute{Type: AttrPrivate, Value: Bool(false)}, Attribute{Type: AttrLabel, Value: nil})
	obj, err := s.Put(ctx, ti.UUID, a, []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := s.Find(ctx, ti.UUID, Filter{Label: []byte{}})
	if err != nil || len(ids) != 1 || ids[0] != obj.ID {
		t.Fatalf("Find by empty label: %v %v", ids, err)
	}
}

func TestClosedStore(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "closed")
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", false), bytes.Repeat([]byte{1}, 16))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Open(ctx, obj.ID); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
	if _, err := s.Find(ctx, ti.UUID, Filter{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Find after Close: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrClosed) {
		t.Fatalf("Login after Close: %v", err)
	}
}

func TestReinit(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "old")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reinit(ctx, ti.UUID, []byte("wrong"), "new"); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("reinit with a wrong SO PIN: %v", err)
	}
	if err := s.Reinit(ctx, ti.UUID, soPIN, "new"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Token(ctx, ti.UUID)
	if err != nil || got.Label != "new" || got.UserPINSet || got.DataGeneration != 2 {
		t.Fatalf("after reinit: %+v %v", got, err)
	}
	if _, err := s.Open(ctx, obj.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("object survived reinit: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINNotInitialized) {
		t.Fatalf("user PIN survived reinit: %v", err)
	}
	if err := s.Login(ctx, ti.UUID, RoleSO, soPIN); err != nil {
		t.Fatalf("SO PIN after reinit: %v", err)
	}
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("0123456789abcdef")); err != nil {
		t.Fatalf("put after reinit: %v", err)
	}
}
