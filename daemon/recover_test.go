package daemon

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// TestRecoverRebindsPINs: a domain provisioned with custodians, a token
// whose PINs are bound to its TPM, recovered into a new state directory
// (a new swtpm) with two of the three shares: the same PINs log in there,
// wrong ones are counted by the new TPM, and the token's keys open. After
// a master key rotation, a role not logged in since needs the earlier
// master key's shares too.
func TestRecoverRebindsPINs(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	ctx := context.Background()
	custodians, privs := tpmtest.Custodians(t)
	cheap := keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}}
	esc := tpmroot.ProvisionOptions{Custodians: custodians, Threshold: 2}
	old := t.TempDir()
	st, err := OpenState(ctx, StateConfig{Dir: old, TPM: "managed", Store: cheap, Escrow: esc})
	if err != nil {
		t.Fatal(err)
	}
	if b := st.Store.PINBinding(); !b.Bound || !b.Recoverable {
		t.Fatalf("PIN binding of a new escrowed domain: %+v", b)
	}
	decrypt := func(es []escrow.EncryptedShare, idx ...int) []*escrow.Share {
		var out []*escrow.Share
		for _, i := range idx {
			sh, err := escrow.DecryptShare(es[i].File, privs[es[i].Custodian])
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, sh)
		}
		return out
	}
	gen1 := st.Shares
	so, user := []byte("so-pin-recover"), []byte("user-pin-recover")
	ti, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: "vault", Tier: keystore.TierPremium, SOPIN: so, UserPIN: user})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)})
	secret := bytes.Repeat([]byte{9}, 32)
	obj, err := st.Store.Put(ctx, ti.UUID, attrs, secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	// Recovered with shares 1 and 3 into a new swtpm: both PINs log in.
	check := func(dir string, loginSO bool) {
		t.Helper()
		st, err := OpenState(ctx, StateConfig{Dir: dir, TPM: "managed", Store: cheap})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		before, err := st.TPM.DAInfo()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, []byte("wrong")); !errors.Is(err, keystore.ErrPINIncorrect) {
			t.Fatalf("a wrong PIN on the new TPM: %v", err)
		}
		if after, _ := st.TPM.DAInfo(); after.Counter != before.Counter+1 {
			t.Fatalf("the new TPM did not count the wrong PIN: %d, was %d", after.Counter, before.Counter)
		}
		if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
			t.Fatalf("the user's PIN on the new TPM: %v", err)
		}
		if got, err := st.Store.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, secret) {
			t.Fatalf("the key on the new TPM: %v", err)
		}
		if loginSO {
			if err := st.Store.Login(ctx, ti.UUID, keystore.RoleSO, so); err != nil {
				t.Fatalf("the SO's PIN on the new TPM: %v", err)
			}
		}
	}
	dir1 := t.TempDir()
	res, err := RecoverState(ctx, StateConfig{Dir: dir1, TPM: "managed", Store: cheap}, filepath.Join(old, DatabaseName), decrypt(gen1, 0, 2))
	if err != nil {
		t.Fatal(err)
	}
	if res.ReboundPINs != 2 || len(res.UnboundPINs) != 0 {
		t.Fatalf("recovery: %d rebound, unbound %+v; want 2, none", res.ReboundPINs, res.UnboundPINs)
	}
	check(dir1, true)

	// A master key rotation; then only the user logs in, so the SO's
	// record keeps its copy under the first master key's recovery key.
	st, err = OpenState(ctx, StateConfig{Dir: old, TPM: "managed", Store: cheap})
	if err != nil {
		t.Fatal(err)
	}
	_, gen2, err := st.BeginMasterRotation(ctx, esc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.FinishMasterRotation(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, user); err != nil {
		t.Fatal(err)
	}
	st.Close()

	dir2 := t.TempDir()
	res, err = RecoverState(ctx, StateConfig{Dir: dir2, TPM: "managed", Store: cheap}, filepath.Join(old, DatabaseName), decrypt(gen2, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	if res.ReboundPINs != 1 || len(res.UnboundPINs) != 1 || res.UnboundPINs[0].Role != keystore.RoleSO || res.UnboundPINs[0].MasterGeneration != 1 {
		t.Fatalf("recovery with the current shares only: %d rebound, unbound %+v; want the SO's, under generation 1", res.ReboundPINs, res.UnboundPINs)
	}
	check(dir2, false)

	dir3 := t.TempDir()
	res, err = RecoverState(ctx, StateConfig{Dir: dir3, TPM: "managed", Store: cheap}, filepath.Join(old, DatabaseName),
		append(decrypt(gen2, 1, 2), decrypt(gen1, 0, 1)...))
	if err != nil {
		t.Fatal(err)
	}
	if res.ReboundPINs != 2 || len(res.UnboundPINs) != 0 || len(res.UnusedShares) != 0 {
		t.Fatalf("recovery with both generations' shares: %+v", res)
	}
	check(dir3, true)

	// Shares of the earlier master key alone recover nothing.
	if _, err := RecoverState(ctx, StateConfig{Dir: t.TempDir(), TPM: "managed", Store: cheap}, filepath.Join(old, DatabaseName), decrypt(gen1, 0, 1)); err == nil {
		t.Fatal("recovered from an earlier master key's shares alone")
	}
}
