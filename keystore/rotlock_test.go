package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// TestWritesDuringRekeyOfAnotherToken: while a master key rotation on
// the Store rekeys token A (held there by the test), writes to token B
// through the same Store complete: objects put and updated, a PIN
// changed, its data key rotated, its policy set; a token is created and
// another deleted. Writes to A wait for A's rekey. Once the rotation
// ends, every token is under the new master key, the token created
// during it included, and everything written opens. On the engine under
// test. Not parallel: it rotates the master key.
func TestWritesDuringRekeyOfAnotherToken(t *testing.T) {
	s, _ := newStore(t, Options{CacheEntries: -1})
	a := newToken(t, s, "rekey held")
	b := newToken(t, s, "written")
	gone := newToken(t, s, "deleted")
	newB := []byte("user-secret-2")
	put := func(tok UUID, label string, private bool, secret string) *Object {
		t.Helper()
		o, err := s.Put(ctx, tok, keyAttrs(t, label, private), []byte(secret))
		if err != nil {
			t.Fatalf("put %s: %v", label, err)
		}
		return o
	}
	for _, tok := range []UUID{a.UUID, b.UUID} {
		if err := s.Login(ctx, tok, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	want := map[ObjectID][]byte{}
	for i := range 4 {
		for _, tok := range []UUID{a.UUID, b.UUID} {
			o := put(tok, fmt.Sprint("before", i), i%2 == 0, fmt.Sprint("before ", i))
			want[o.ID] = o.Secret
		}
	}

	next, _ := beginMasterRotation(t, s)
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s.rekeyHold = func(tok UUID) {
		if tok == a.UUID {
			once.Do(func() { close(held) })
			<-release
		}
	}
	rotated := make(chan error, 1)
	go func() {
		_, err := s.RotateMaster(ctx, nil)
		rotated <- err
	}()
	<-held

	// Writes to A, begun now, wait for its rekey.
	var aObj *Object
	aPut, aRotated := make(chan error, 1), make(chan error, 1)
	go func() {
		var err error
		aObj, err = s.Put(ctx, a.UUID, keyAttrs(t, "during", true), []byte("put during A's rekey"))
		aPut <- err
	}()
	go func() {
		_, err := s.RotateDataKey(ctx, a.UUID, soPIN, userPIN, nil)
		aRotated <- err
	}()

	// Writes to B go on: each returns while A's rekey is held.
	for i := range 3 {
		o := put(b.UUID, fmt.Sprint("during", i), i%2 == 0, fmt.Sprint("during ", i))
		want[o.ID] = o.Secret
	}
	var upd ObjectID
	for id := range want {
		if o, err := s.Open(ctx, id); err == nil && o.Token == b.UUID {
			upd = id
			break
		}
	}
	want[upd] = []byte("updated during A's rekey")
	if err := s.UpdateLocked(ctx, upd, func(cur *Object) (Attributes, []byte, error) { return cur.Attrs, want[upd], nil }); err != nil {
		t.Fatalf("update on B: %v", err)
	}
	if err := s.SetPIN(ctx, b.UUID, RoleUser, userPIN, newB); err != nil {
		t.Fatalf("PIN change on B: %v", err)
	}
	if _, err := s.RotateDataKey(ctx, b.UUID, soPIN, newB, nil); err != nil {
		t.Fatalf("data key rotation of B: %v", err)
	}
	if err := s.Login(ctx, b.UUID, RoleUser, newB); err != nil {
		t.Fatalf("login on B: %v", err)
	}
	days := 30
	if err := s.SetPolicy(ctx, b.UUID, &days, nil); err != nil {
		t.Fatalf("policy of B: %v", err)
	}
	made := newToken(t, s, "made during")
	if err := s.DeleteToken(ctx, gone.UUID); err != nil {
		t.Fatalf("delete a token: %v", err)
	}
	select {
	case err := <-aPut:
		t.Fatalf("a put on A returned (%v) while A's rekey was held", err)
	case err := <-aRotated:
		t.Fatalf("a data key rotation of A returned (%v) while A's rekey was held", err)
	case err := <-rotated:
		t.Fatalf("the rotation returned (%v) while A's rekey was held", err)
	default:
	}

	close(release)
	if err := <-rotated; err != nil {
		t.Fatalf("rotation: %v", err)
	}
	if err := <-aPut; err != nil {
		t.Fatalf("put on A after its rekey: %v", err)
	}
	if err := <-aRotated; err != nil {
		t.Fatalf("data key rotation of A after its rekey: %v", err)
	}
	want[aObj.ID] = aObj.Secret

	tokens, err := s.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 3 {
		t.Fatalf("%d tokens after the rotation, want 3", len(tokens))
	}
	for _, ti := range tokens {
		if ti.MasterGeneration != 2 || ti.Tampered != nil {
			t.Errorf("token %q: master generation %d, tampered %v", ti.Label, ti.MasterGeneration, ti.Tampered)
		}
	}
	// Logins made afresh: every PIN record, the one changed during the
	// rotation included, opens the data key its token holds now.
	for _, l := range []struct {
		tok UUID
		pin []byte
	}{{a.UUID, userPIN}, {b.UUID, newB}, {made.UUID, userPIN}} {
		s.Logout(l.tok)
		if err := s.Login(ctx, l.tok, RoleUser, l.pin); err != nil {
			t.Fatalf("login after the rotation: %v", err)
		}
	}
	if err := s.Login(ctx, b.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINIncorrect) {
		t.Fatalf("login on B with its PIN before the change: %v", err)
	}
	for id, secret := range want {
		o, err := s.Open(ctx, id)
		if err != nil {
			t.Fatalf("object %d after the rotation: %v", id, err)
		}
		if !bytes.Equal(o.Secret, secret) {
			t.Fatalf("object %d holds %q, want %q", id, o.Secret, secret)
		}
	}
	o := put(made.UUID, "after", true, "on the token made during")
	if got, err := s.Open(ctx, o.ID); err != nil || !bytes.Equal(got.Secret, o.Secret) {
		t.Fatalf("object on the token made during the rotation: %v", err)
	}
	if s.tamper.any.Load() {
		t.Error("integrity failures noted")
	}
}

// TestCreateDuringMasterRotation: tokens created on the Store that
// rotates the master key, while it rekeys the others token after token
// and then makes its last pass and switch, all end under the new master
// key: each is rekeyed by the last pass or made after the switch. On the
// engine under test (on SQLite only the Store's rot lock orders them).
// Not parallel: it rotates the master key.
func TestCreateDuringMasterRotation(t *testing.T) {
	s, _ := newStore(t, Options{CacheEntries: -1})
	for i := range 12 {
		newToken(t, s, fmt.Sprintf("before-%d", i)) // a rotation that takes a moment
	}
	first := make(chan struct{})
	var made []UUID
	var werr error
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ti, err := s.CreateToken(ctx, TokenSpec{Label: fmt.Sprintf("during-%d", i), Tier: TierStandard, SOPIN: soPIN, UserPIN: userPIN})
			if err != nil {
				werr = fmt.Errorf("create %d: %w", i, err)
				return
			}
			made = append(made, ti.UUID)
			if i == 0 {
				close(first)
			}
		}
	}()
	var once sync.Once
	s.rekeyHold = func(UUID) {
		// The first rekey waits for a creation under the current master
		// key: at least one token is the last pass's.
		once.Do(func() { <-first })
	}
	err := rotateMasterOnce(t, s, s)
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("rotation: %v", err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	t.Logf("%d tokens created during the rotation and after", len(made))
	tokens, err := s.Tokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 12+len(made) {
		t.Fatalf("%d tokens, want %d", len(tokens), 12+len(made))
	}
	for _, ti := range tokens {
		if ti.MasterGeneration != 2 || ti.Tampered != nil {
			t.Fatalf("token %q: master generation %d, tampered %v", ti.Label, ti.MasterGeneration, ti.Tampered)
		}
	}
	for _, u := range []UUID{made[0], made[len(made)-1]} {
		if err := s.Login(ctx, u, RoleUser, userPIN); err != nil {
			t.Fatalf("login on a token made during the rotation: %v", err)
		}
	}
}
