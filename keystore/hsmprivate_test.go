package keystore

import (
	"bytes"
	"errors"
	"testing"
)

// TestPublicHSMKeyMadePrivate: an HSM-protected key stored public (as
// versions before this one allowed) opens with the TPM alone until its
// token's next login, which reseals it under the data key, CKA_PRIVATE
// set; a software-protected public key is left as it is.
func TestPublicHSMKeyMadePrivate(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti, err := s.CreateToken(ctx, TokenSpec{Label: "vault", Tier: TierPremium, SOPIN: soPIN, UserPIN: userPIN})
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(label string, hsm bool) Attributes {
		a := keyAttrs(t, label, false)
		if hsm {
			a = append(a, Attribute{Type: AttrHSMProtection, Value: Ulong(protectionHSM)})
		} else {
			a = append(a, Attribute{Type: AttrHSMProtection, Value: Ulong(1)})
		}
		return a
	}
	secret := bytes.Repeat([]byte{7}, 32)
	hsm, err := s.Put(ctx, ti.UUID, attrs("hsm", true), secret)
	if err != nil {
		t.Fatal(err)
	}
	soft, err := s.Put(ctx, ti.UUID, attrs("soft", false), secret)
	if err != nil {
		t.Fatal(err)
	}
	// Before: no login needed, from a cold cache.
	s2 := reopen(t, path, Options{})
	if o, err := s2.Open(ctx, hsm.ID); err != nil || o.Private {
		t.Fatalf("the public HSM key before a login: %v", err)
	}
	if err := s2.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	o, err := s2.Open(ctx, hsm.ID)
	if err != nil || !o.Private || !bytes.Equal(o.Secret, secret) {
		t.Fatalf("after the login: private %v, %v", o != nil && o.Private, err)
	}
	if p, _ := o.Attrs.Bool(AttrPrivate, false); !p {
		t.Fatal("CKA_PRIVATE not set")
	}
	s2.Logout(ti.UUID)
	s3 := reopen(t, path, Options{})
	if _, err := s3.Open(ctx, hsm.ID); !errors.Is(err, ErrNotLoggedIn) {
		t.Fatalf("the HSM key without a login: %v, want ErrNotLoggedIn", err)
	}
	if o, err := s3.Open(ctx, soft.ID); err != nil || o.Private {
		t.Fatalf("the software-protected public key: %v", err)
	}
	// Not logged in, a find of public objects no longer sees it.
	if ids, err := s3.Find(ctx, ti.UUID, Filter{}); err != nil || len(ids) != 1 || ids[0] != soft.ID {
		t.Fatalf("find of public objects: %v, %v; want only the software key", ids, err)
	}
}
