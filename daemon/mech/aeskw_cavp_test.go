package mech

import (
	"bytes"
	"crypto/aes"
	"testing"

	"hsmemu/daemon/mech/mechtest"
)

// TestKeyWrapCAVP runs every record of NIST's CAVP key wrap files (SP
// 800-38F, KWVS: KW and KWP, wrap and unwrap, AES-128/192/256) through
// the mechanism's wrap and unwrap. The token's tests run the first record
// of each plaintext length as C_WrapKey and C_UnwrapKey.
func TestKeyWrapCAVP(t *testing.T) {
	t.Parallel()
	total, failures := 0, 0
	for _, file := range mechtest.CAVPFiles() {
		w := keyWrap{padded: file.Padded}
		iv := kwDefaultIV
		if file.Padded {
			iv = kwpDefaultIV
		}
		for _, r := range mechtest.LoadCAVP(t, file.Name) {
			b, err := aes.NewCipher(r.K)
			if err != nil {
				t.Fatalf("%s COUNT %s: %v", file.Name, r.Count, err)
			}
			total++
			switch {
			case !file.Decrypt:
				got, err := w.seal(b, iv, r.P)
				if err != nil || !bytes.Equal(got, r.C) {
					t.Errorf("%s COUNT %s (%s bits): wrapped %x, %v", file.Name, r.Count, r.PtLen, got, err)
				}
			case r.Fail:
				failures++
				if got, err := w.open(b, iv, r.C); err == nil {
					t.Errorf("%s COUNT %s: an unwrap that must fail gave %x", file.Name, r.Count, got)
				}
			default:
				got, err := w.open(b, iv, r.C)
				if err != nil || !bytes.Equal(got, r.P) {
					t.Errorf("%s COUNT %s (%s bits): unwrapped %x, %v", file.Name, r.Count, r.PtLen, got, err)
				}
			}
		}
	}
	if total != 6000 || failures != 600 {
		t.Fatalf("%d records with %d failures, want 6000 with 600", total, failures)
	}
}
