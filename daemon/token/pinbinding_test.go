package token

import (
	"fmt"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// TestPINBindingRV: a node that cannot check a PIN record through its
// binding (none held, or an altered duplication blob) answers
// CKR_DEVICE_ERROR, never CKR_PIN_INCORRECT: no PIN was tried.
func TestPINBindingRV(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("%w: token %q's user PIN record", keystore.ErrPINNotOnNode, "t"),
		&keystore.TamperError{Kind: "pin binding", ID: "x", What: "duplication blob mac (node 2, user PIN)"},
	} {
		if rv, _ := rvOf(err); rv != ck.CKR_DEVICE_ERROR {
			t.Errorf("%v: CK_RV %#x, want CKR_DEVICE_ERROR", err, rv)
		}
	}
}
