package daemon

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// TestAdminRestoreChecksPQC: a key backup's post-quantum material passes
// the checks C_CreateObject makes before it is restored. A backup of this
// domain holding an ML-DSA-65 private key without its seed whose t0 is
// another key's (as the token took before its pairwise-consistency test)
// is refused (CodeRefused) and restores nothing; the same key without its
// seed, t0 its own, restores.
func TestAdminRestoreChecksPQC(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("rc-so-1234"), []byte("rc-user-1234")
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "std", Tier: "standard", SOPIN: so, UserPIN: user}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "std", UserPIN: user, Type: "ml-dsa-65", KeyOptions: adminapi.KeyOptions{Label: "mld"}}, nil); err != nil {
		t.Fatal(err)
	}
	ref := adminapi.KeyRef{Token: "std", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "mld"}}
	var bk adminapi.KeyBackup
	if err := a.Call(adminapi.OpKeyBackup, ref, &bk); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyDelete, ref, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "std", SOPIN: so, KeySelector: ref.KeySelector}, nil); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	objs, err := d.st.Store.OpenKeyBackup(ctx, bk.Blob)
	if err != nil {
		t.Fatal(err)
	}
	// reseal is the backup with the private key's seed dropped and its
	// expanded key passed through edit.
	reseal := func(edit func(val []byte)) []byte {
		t.Helper()
		var out []keystore.BackupObject
		found := false
		for _, o := range objs {
			class, _, _ := o.Attrs.Ulong(ck.CKA_CLASS)
			if class != ck.CKO_PRIVATE_KEY {
				out = append(out, o)
				continue
			}
			sec, err := keystore.DecodeAttributes(o.Secret)
			if err != nil {
				t.Fatal(err)
			}
			var kept keystore.Attributes
			for _, at := range sec {
				switch at.Type {
				case ck.CKA_SEED:
					continue
				case ck.CKA_VALUE:
					v := bytes.Clone(at.Value)
					edit(v)
					at.Value, found = v, true
				}
				kept = append(kept, at)
			}
			out = append(out, keystore.BackupObject{UUID: o.UUID, Attrs: o.Attrs, Secret: kept.Encode()})
		}
		if !found {
			t.Fatal("no private key value in the backup")
		}
		blob, err := d.st.Store.SealKeyBackup(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		return blob
	}
	// t0 follows ρ, K, tr (128 bytes), s1 and s2 (11 polynomials of 128).
	const t0At = 128 + 11*128
	_, other := mldsa65.NewKeyFromSeed(&[32]byte{7})
	otherVal, _ := other.MarshalBinary()
	bad := reseal(func(v []byte) { copy(v[t0At:], otherVal[t0At:]) })
	good := reseal(func([]byte) {})

	keys := func() int {
		var l []adminapi.Key
		if err := a.Call(adminapi.OpKeyList, adminapi.KeyList{Token: "std", UserPIN: user}, &l); err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "std", UserPIN: user, Blob: bad}, nil); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("a backup with another key's t0: %v, want %s", err, adminapi.CodeRefused)
	}
	if n := keys(); n != 0 {
		t.Fatalf("the refused restore left %d keys", n)
	}
	var back []adminapi.Key
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "std", UserPIN: user, Blob: good}, &back); err != nil || len(back) != 2 ||
		!slices.ContainsFunc(back, func(k adminapi.Key) bool { return k.ParameterSet == "ML-DSA-65" }) {
		t.Fatalf("the expanded key, t0 its own: %+v %v", back, err)
	}
}
