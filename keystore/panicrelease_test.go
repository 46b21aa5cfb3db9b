package keystore

import (
	"testing"
)

// TestRekeyPanicReleasesToken: a panic while a master key rotation
// rekeys a token (answered by the administrator's handler, which serves
// on) releases the token's rotation lock. Held, it stopped every later
// write to the token, and the rotation's next attempt.
func TestRekeyPanicReleasesToken(t *testing.T) {
	s, _ := newStore(t, Options{CacheEntries: -1})
	ti := newToken(t, s, "panic")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	next, _ := beginMasterRotation(t, s)
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	s.rekeyHold = func(UUID) { panic("injected") }
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the rotation did not panic")
			}
		}()
		s.RotateMaster(ctx, nil)
	}()
	s.rekeyHold = nil

	l := s.tokenRot(ti.UUID)
	if !l.TryLock() {
		t.Fatal("the token's rotation lock is still held after the panic")
	}
	l.Unlock()
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "after", true), []byte("after the panic")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateMaster(ctx, nil); err != nil {
		t.Fatal(err)
	}
}
