package daemon

import (
	"slices"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

// TestLockedLoginsRecordedOnce: a login to a locked role is refused
// without the PIN being looked at, so any process that may attach can
// ask as fast as it likes. One refusal a while is recorded, not each:
// the log does not grow with the loop.
func TestLockedLoginsRecordedOnce(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{MaxPINFailures: 3, RefusalAuditEvery: 24 * time.Hour})
	cl := d.dial(t)
	slot := cl.NewToken("flooded")
	h := cl.Open(slot, true)
	for range 3 {
		cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin"))
	}
	before := len(events(t, d))
	for range 200 {
		cl.Must(ck.CKR_PIN_LOCKED, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	}
	got := events(t, d, SOPIN, UserPIN, "wrong-pin")
	if n := len(got) - before; n != 1 || got[len(got)-1] != "login.locked" {
		t.Fatalf("%d records after 200 refused logins, want one login.locked: %v", n, got[before:])
	}
	if i := slices.Index(got, "pin.lockout"); i < 0 {
		t.Fatalf("no pin.lockout: %v", got)
	}
	if rep, err := d.st.Store.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
