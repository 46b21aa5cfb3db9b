package keystore

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"testing"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// TestRecoveryIntoNewTPM provisions a keystore on TPM A with the master key
// escrowed 2-of-3, then loses A: two custodians bring the domain into TPM B,
// and everything sealed on A opens on B.
func TestRecoveryIntoNewTPM(t *testing.T) {
	t.Parallel()
	tpmA := tpmtest.Start(t)
	tpmB := tpmtest.Start(t)

	custodians, privs := tpmtest.Custodians(t)
	prov, err := tpmA.Provision(tpmroot.ProvisionOptions{Custodians: custodians, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !prov.Escrowed() || len(prov.Shares) != 3 {
		t.Fatalf("escrowed=%v shares=%d", prov.Escrowed(), len(prov.Shares))
	}
	rootA, err := tpmA.Load(prov.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer rootA.Close()
	sealedA, _ := prov.Sealed.MarshalBinary()
	meta, _ := prov.Escrow.MarshalBinary()

	path := newLocation(t)
	s, err := openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealedA, DomainID: rootA.DomainID(), Escrow: meta}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, rootA, rootA.DomainID()); err != nil {
		t.Fatal(err)
	}
	type stored struct {
		id     ObjectID
		token  UUID
		secret []byte
	}
	var objs []stored
	var tokens []UUID
	for _, label := range []string{"one", "two"} {
		ti := newToken(t, s, label)
		tokens = append(tokens, ti.UUID)
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
		for i, private := range []bool{true, false} {
			secret := bytes.Repeat([]byte{byte(i + 1)}, 32)
			obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, label, private), secret)
			if err != nil {
				t.Fatal(err)
			}
			objs = append(objs, stored{id: obj.ID, token: ti.UUID, secret: secret})
		}
	}
	s.Close()

	// TPM A is gone. TPM B cannot load A's master key.
	var sealed tpmroot.Sealed
	if err := sealed.UnmarshalBinary(sealedA); err != nil {
		t.Fatal(err)
	}
	if _, err := tpmB.Load(&sealed); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("load on another TPM: %v, want ErrWrongTPM", err)
	}

	decrypt := func(i int) *escrow.Share {
		sh, err := escrow.DecryptShare(prov.Shares[i].File, privs[prov.Shares[i].Custodian])
		if err != nil {
			t.Fatal(err)
		}
		return sh
	}
	if _, err := tpmB.Recover([]*escrow.Share{decrypt(0)}); !errors.Is(err, escrow.ErrNotEnoughShares) {
		t.Fatalf("recover from one share: %v, want ErrNotEnoughShares", err)
	}
	sealedB, err := tpmB.Recover([]*escrow.Share{decrypt(0), decrypt(2)})
	if err != nil {
		t.Fatal(err)
	}
	rootB, err := tpmB.Load(sealedB)
	if err != nil {
		t.Fatal(err)
	}
	defer rootB.Close()
	if !bytes.Equal(rootB.DomainID(), rootA.DomainID()) {
		t.Fatal("recovered domain differs")
	}

	s, err = openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, _ := sealedB.MarshalBinary()
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: b, DomainID: rootB.DomainID(), Escrow: meta}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, rootB, rootB.DomainID()); err != nil {
		t.Fatal(err)
	}
	// The PIN records are bound to TPM A: they do not open on B until
	// their recovery copies bring them there.
	if err := s.Login(ctx, tokens[0], RoleUser, userPIN); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("login on B before rebinding: %v, want ErrWrongTPM", err)
	}
	rk, err := tpmroot.RecoveryKey([]*escrow.Share{decrypt(1), decrypt(2)})
	if err != nil {
		t.Fatal(err)
	}
	n, left, used, err := s.RebindPINs(ctx, []*ecdh.PrivateKey{rk})
	if err != nil || n != 4 || len(left) != 0 || used[0] != 4 {
		t.Fatalf("RebindPINs: %d rebound, left %+v, %v; want 4, none", n, left, err)
	}
	for _, tok := range tokens {
		if err := s.Login(ctx, tok, RoleSO, soPIN); err != nil {
			t.Fatal(err)
		}
		if err := s.Login(ctx, tok, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
			t.Fatalf("a wrong PIN on B: %v", err)
		}
		if err := s.Login(ctx, tok, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range objs {
		got, err := s.Open(ctx, o.id)
		if err != nil {
			t.Fatalf("object %d after recovery: %v", o.id, err)
		}
		if !bytes.Equal(got.Secret, o.secret) {
			t.Fatalf("object %d: wrong secret after recovery", o.id)
		}
	}
}
