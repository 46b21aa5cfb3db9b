package token

import (
	"testing"
	"time"

	"hsmemu/keystore"
)

// TestRefusalsTake: the first refusal is recorded, those within the
// interval only counted, and the next one after it recorded with their
// count; each token, role and event on its own.
func TestRefusalsTake(t *testing.T) {
	t.Parallel()
	var r refusals
	k := refusalKey{token: keystore.UUID{1}, role: "user", event: "login.locked"}
	other := refusalKey{token: keystore.UUID{1}, role: "so", event: "login.locked"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	every := time.Minute
	check := func(k refusalKey, at time.Duration, wantRec bool, wantN int) {
		t.Helper()
		if rec, n := r.take(k, t0.Add(at), every); rec != wantRec || n != wantN {
			t.Fatalf("at %v: record %v repeats %d, want %v %d", at, rec, n, wantRec, wantN)
		}
	}
	check(k, 0, true, 0)
	check(k, time.Second, false, 0)
	check(k, 59*time.Second, false, 0)
	check(other, 59*time.Second, true, 0)
	check(k, time.Minute, true, 2)
	check(k, time.Minute+time.Second, false, 0)
	check(k, 3*time.Minute, true, 1)
	// A clock set back records at once rather than never.
	check(k, time.Second, true, 0)
}
