package admin

import (
	"bytes"
	"fmt"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// checkRestored holds a post-quantum key in a backup to the checks its
// material passes when C_CreateObject or C_UnwrapKey makes it
// (mech.CompletePQCKey): among them an ML-DSA private key given without
// its seed signs for its own public key. A backup opens only in its own
// security domain, so its material was once the token's; but a key taken
// before a check existed, an expanded ML-DSA key whose t0 is another's
// for one, would come back unchecked and sign signatures no verifier of
// its public key accepts. The error names the key type and class, never
// the material. Other key types are stored as backed up.
func checkRestored(o keystore.BackupObject) error {
	if kt, _, _ := o.Attrs.Ulong(ck.CKA_KEY_TYPE); kt != ck.CKK_ML_DSA && kt != ck.CKK_ML_KEM && kt != ck.CKK_SLH_DSA {
		return nil
	}
	v, err := token.View(&keystore.Object{Attrs: o.Attrs, Secret: o.Secret})
	if err != nil {
		return adminapi.Errorf(adminapi.CodeTampered, "a backup object's secret attributes do not decode")
	}
	kt, class := v.KeyType(), v.Class()
	// A copy: CompletePQCKey adds a value computed from a seed, and the
	// view's attributes are the backup's.
	m := map[uint64][]byte{}
	for _, t := range []uint64{ck.CKA_PARAMETER_SET, ck.CKA_SEED, ck.CKA_VALUE} {
		if val, ok := v.Attr(t); ok {
			m[t] = bytes.Clone(val)
		}
	}
	defer func() {
		for _, val := range m {
			clear(val)
		}
	}()
	if err := mech.CompletePQCKey(class, kt, m); err != nil {
		what := "public key"
		if class == ck.CKO_PRIVATE_KEY {
			what = "private key"
		}
		name := mech.PQCSetName(kt, ulongOf(m[ck.CKA_PARAMETER_SET]))
		if name == "" {
			name = fmt.Sprintf("key type 0x%x", kt)
		}
		return adminapi.Errorf(adminapi.CodeRefused, "the backup's %s %s fails the checks a key created now passes (%v): it is not restored", name, what, err)
	}
	return nil
}
