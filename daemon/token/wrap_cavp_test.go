package token

import (
	"bytes"
	"fmt"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech/mechtest"
)

// TestKeyWrapCAVPThroughDaemon runs the first record of every plaintext
// length of NIST's CAVP key wrap files (and the first that must fail) as
// a client does: C_WrapKey of a key holding the key data, C_UnwrapKey of
// the wrapped key. The mechanism's own tests run every record.
func TestKeyWrapCAVPThroughDaemon(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	for _, file := range mechtest.CAVPFiles() {
		m := uint64(ck.CKM_AES_KEY_WRAP)
		if file.Padded {
			m = ck.CKM_AES_KEY_WRAP_KWP
		}
		seen := map[string]bool{}
		for _, r := range mechtest.LoadCAVP(t, file.Name) {
			// The first record of each length, and its first failing one.
			which := fmt.Sprint(r.PtLen, r.Fail)
			if seen[which] {
				continue
			}
			seen[which] = true
			kek := cl.secret(h, ck.CKK_AES, r.K)
			switch {
			case !file.Decrypt:
				k := cl.secret(h, ck.CKK_GENERIC_SECRET, r.P, AB(ck.CKA_EXTRACTABLE, true))
				if got := cl.wrapKey(ck.CKR_OK, h, M(m), kek, k); !bytes.Equal(got, r.C) {
					t.Errorf("%s COUNT %s (%s bits): C_WrapKey gave %x", file.Name, r.Count, r.PtLen, got)
				}
			case r.Fail:
				if rv, _ := cl.Call("C_UnwrapKey", U(h), M(m), U(kek), B(r.C), T(readable(ck.CKK_GENERIC_SECRET)...), None()); rv != ck.CKR_WRAPPED_KEY_INVALID {
					t.Errorf("%s COUNT %s: C_UnwrapKey of a bad wrap gave %#x", file.Name, r.Count, rv)
				}
			default:
				u := cl.unwrapKey(ck.CKR_OK, h, M(m), kek, r.C, readable(ck.CKK_GENERIC_SECRET)...)
				if got := cl.value(h, u); !bytes.Equal(got, r.P) {
					t.Errorf("%s COUNT %s (%s bits): C_UnwrapKey gave %x", file.Name, r.Count, r.PtLen, got)
				}
			}
		}
	}
}
