package e2e

import (
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// TestRingDaemonKilledMidCall: through the shared-memory rings, a call in
// flight when the daemon dies fails with CKR_DEVICE_REMOVED, as on the
// socket (docs/protocol.md, "When the daemon is not there"), rather than
// waiting out its timeout; once the daemon is back the module dials
// again, and the old session is gone.
func TestRingDaemonKilledMidCall(t *testing.T) {
	t.Setenv("HSMEMU_TRANSPORT", "ring")
	// The second wrong PIN waits a minute in the daemon: the call is in
	// flight for all of it.
	p, d := withModule(t, "--pin-failure-delay", "1m")
	slot := newToken(t, p, "ring")
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(h, pkcs11.CKU_USER, "wrong-pin"); !is(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatalf("first wrong PIN: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Login(h, pkcs11.CKU_USER, "wrong-again") }()
	// Time for the request to reach the daemon, which then holds it.
	time.Sleep(time.Second)
	d.kill()
	if err := <-done; !is(err, pkcs11.CKR_DEVICE_REMOVED) {
		t.Fatalf("call in flight when the daemon died: %v, want CKR_DEVICE_REMOVED", err)
	}
	d.startAgain()
	if _, err := p.GetSessionInfo(h); !is(err, pkcs11.CKR_SESSION_HANDLE_INVALID) {
		t.Fatalf("old session after the restart: %v, want CKR_SESSION_HANDLE_INVALID", err)
	}
	h, err = p.OpenSession(slotOf(t, p, "ring"), pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatalf("new session after the restart: %v", err)
	}
	if _, err := p.GenerateRandom(h, 32); err != nil {
		t.Fatalf("a call after the restart: %v", err)
	}
}
