package keystore

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// TestLogoutAll, on either engine: a logout of every daemon ends the
// Store's own login at once (its private objects refused, no more sealed
// under it), moves the token's epoch under its MAC, and leaves the token
// to log in again; an edit of the epoch is caught by the MAC.
func TestLogoutAll(t *testing.T) {
	t.Parallel()
	s, loc := newStore(t, Options{})
	ti := newToken(t, s, "everywhere")
	other := newToken(t, s, "beside")
	var told []UUID
	s.OnLoginsEnded(func(u UUID) { told = append(told, u) })
	for _, u := range []UUID{ti.UUID, other.UUID} {
		if err := s.Login(ctx, u, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("sixteen byte key"))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.Put(ctx, other.UUID, keyAttrs(t, "k", true), []byte("sixteen byte key"))
	if err != nil {
		t.Fatal(err)
	}
	for want := uint32(1); want <= 2; want++ {
		epoch, err := s.LogoutAll(ctx, ti.UUID)
		if err != nil || epoch != want {
			t.Fatalf("LogoutAll: epoch %d, %v; want %d", epoch, err, want)
		}
		if s.LoggedIn(ti.UUID) {
			t.Fatal("still logged in after the logout of every daemon")
		}
		if _, err := s.Open(ctx, obj.ID); !errors.Is(err, ErrNotLoggedIn) {
			t.Fatalf("Open of a private key after LogoutAll: %v, want ErrNotLoggedIn", err)
		}
		if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "k2", true), []byte("sixteen byte key")); !errors.Is(err, ErrNotLoggedIn) {
			t.Fatalf("Put of a private key after LogoutAll: %v, want ErrNotLoggedIn", err)
		}
		if _, err := s.Open(ctx, kept.ID); err != nil {
			t.Fatalf("the other token's login: %v", err)
		}
		got, err := s.Token(ctx, ti.UUID)
		if err != nil || got.LoginEpoch != want {
			t.Fatalf("the token row: epoch %d, %v; want %d", got.LoginEpoch, err, want)
		}
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatalf("login after LogoutAll: %v", err)
		}
		if _, err := s.Open(ctx, obj.ID); err != nil {
			t.Fatalf("Open after logging in again: %v", err)
		}
	}
	if len(told) != 0 {
		t.Fatalf("OnLoginsEnded told of the Store's own logout: %v", told)
	}
	if _, err := s.LogoutAll(ctx, UUID{1}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LogoutAll of no token: %v, want ErrNotFound", err)
	}

	// The epoch is the row's, under its MAC: reopened, the token verifies;
	// an epoch edited, or removed, does not.
	s.Close()
	s = reopen(t, loc, Options{})
	if got, err := s.Token(ctx, ti.UUID); err != nil || got.LoginEpoch != 2 {
		t.Fatalf("reopened: epoch %d, %v", got.LoginEpoch, err)
	}
	db := rawDB(t, loc)
	for _, edit := range []string{"1", "3", "NULL", "0", "4294967298"} {
		execSQL(t, db, "UPDATE tokens SET login_epoch = "+edit+" WHERE id = ?", ti.ID)
		if _, err := s.TokenByID(ctx, ti.ID); !errors.Is(err, ErrTampered) {
			t.Fatalf("login_epoch = %s: %v, want ErrTampered", edit, err)
		}
	}
	execSQL(t, db, "UPDATE tokens SET login_epoch = 2 WHERE id = ?", ti.ID)
	if _, err := s.TokenByID(ctx, ti.ID); err != nil {
		t.Fatalf("the epoch put back: %v", err)
	}
	// A row that never had an epoch keeps the MAC it had.
	execSQL(t, db, "UPDATE tokens SET login_epoch = 1 WHERE id = ?", other.ID)
	if _, err := s.TokenByID(ctx, other.ID); !errors.Is(err, ErrTampered) {
		t.Fatalf("an epoch given to a row without one: %v, want ErrTampered", err)
	}
}

// refusedLoggedOut checks that s refuses the private object id as not
// logged in, at the latest for every Open begun a bound after ack.
func refusedLoggedOut(t *testing.T, s *Store, id ObjectID, ack time.Time) time.Duration {
	t.Helper()
	deadline := ack.Add(s.opts.Invalidation)
	for {
		start := time.Now()
		_, err := s.Open(ctx, id)
		if errors.Is(err, ErrNotLoggedIn) {
			return start.Sub(ack)
		}
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if start.After(deadline) {
			t.Fatalf("the private key was still served %v after the logout of every daemon was acknowledged (bound %v)", start.Sub(ack), s.opts.Invalidation)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestClusterLogoutAll: a logout of every daemon on one Store ends the
// logins on the others within the bound, and they are told
// (OnLoginsEnded): notified; with the notifications lost (the generation
// check); with the listener hung (the lease: the first private open past
// it reads the row). A login being made on one while another logs every
// daemon out never survives the logout it raced with.
func TestClusterLogoutAll(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 3, Options{})
	a, b, c := st[0], st[1], st[2]
	ti := newToken(t, a, "cluster")
	var mu sync.Mutex
	told := map[*Store]int{}
	for _, s := range st {
		s.OnLoginsEnded(func(u UUID) {
			if u == ti.UUID {
				mu.Lock()
				told[s]++
				mu.Unlock()
			}
		})
	}
	if err := a.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("sixteen byte key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		break_ func()
		mend   func()
	}{
		{"notified", func() {}, func() {}},
		{"notifications lost", func() { b.sync.drop.Store(true); c.sync.drop.Store(true) },
			func() { b.sync.drop.Store(false); c.sync.drop.Store(false) }},
		{"listener hung", func() { b.sync.hang.Store(true); c.sync.hang.Store(true) },
			func() { b.sync.hang.Store(false); c.sync.hang.Store(false) }},
	} {
		for _, s := range []*Store{b, c} {
			if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Open(ctx, obj.ID); err != nil {
				t.Fatalf("%s: the key, logged in: %v", tc.name, err)
			}
		}
		mu.Lock()
		clear(told)
		mu.Unlock()
		tc.break_()
		if _, err := a.LogoutAll(ctx, ti.UUID); err != nil {
			t.Fatal(err)
		}
		ack := time.Now()
		for _, s := range []*Store{b, c} {
			took := refusedLoggedOut(t, s, obj.ID, ack)
			t.Logf("%s: logged out %v after the logout of every daemon", tc.name, took.Round(time.Microsecond))
			if s.LoggedIn(ti.UUID) {
				t.Fatalf("%s: LoggedIn after the refusal", tc.name)
			}
		}
		mu.Lock()
		if told[b] != 1 || told[c] != 1 || told[a] != 0 {
			t.Fatalf("%s: told %d and %d times on the others, %d on the one that logged out; want 1, 1, 0", tc.name, told[b], told[c], told[a])
		}
		mu.Unlock()
		tc.mend()
	}

	// Logins on b raced with logouts on a: whichever order each pair
	// took, a login b still holds once the notifications are in is one
	// made under the row's newest epoch.
	for i := range 20 {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := b.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil && !errors.Is(err, ErrNotLoggedIn) {
				t.Errorf("login %d: %v", i, err)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := a.LogoutAll(ctx, ti.UUID); err != nil {
				t.Errorf("logout %d: %v", i, err)
			}
		}()
		wg.Wait()
	}
	if t.Failed() {
		return
	}
	row, err := a.Token(ctx, ti.UUID)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * testBound)
	for {
		b.mu.RLock()
		var lepoch uint32
		in := false
		for _, s := range b.tokens {
			if s.uuid == ti.UUID && s.loggedIn() {
				in, lepoch = true, s.lepoch
			}
		}
		b.mu.RUnlock()
		if !in || lepoch == row.LoginEpoch {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b holds a login of epoch %d, the row's is %d, %v after the last logout", lepoch, row.LoginEpoch, 2*testBound)
		}
		time.Sleep(time.Millisecond)
	}
}
