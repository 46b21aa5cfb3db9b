package token

import (
	"bytes"
	"context"
	"database/sql"
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
)

// TestTamperIsolated edits one token's row and one object of another
// token behind the stopped engine's back. The tampered token stays in the
// slot list, says so in its token info, and refuses every call with
// CKR_DEVICE_ERROR; the other token keeps working, its bad object left out
// of finds; each failure is audited once however often it is met.
func TestTamperIsolated(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	victim := cl.NewToken("victim")
	good := cl.NewToken("good")
	h := cl.Open(good, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Create(h, DataObject("keep", true, false, "kept")...)
	cl.Create(h, DataObject("spoil", true, false, "spoiled")...)
	d.stop()

	db, err := sql.Open("sqlite3", "file:"+d.db)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	for _, q := range []string{
		"PRAGMA ignore_check_constraints = ON",
		"UPDATE tokens SET user_failures = user_failures - 4294967296 WHERE label = 'victim'",
		// The spoiled object gets the kept one's record: its uuid column
		// no longer matches.
		"UPDATE objects SET record = (SELECT record FROM objects WHERE label = CAST('keep' AS BLOB)) WHERE label = CAST('spoil' AS BLOB)",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	d.start(t, Config{})
	cl = d.dial(t)
	for round := 0; round < 3; round++ {
		slots := cl.Slots()
		if !slices.Contains(slots, victim) || !slices.Contains(slots, good) {
			t.Fatalf("slots %v, want both tokens listed", slots)
		}
		cl.Must(ck.CKR_OK, "C_GetSlotInfo", U(victim), None())
		info := cl.TokenInfo(victim)
		if !bytes.HasPrefix([]byte(info.Label), []byte("TAMPERED")) ||
			info.Flags&(ck.CKF_USER_PIN_LOCKED|ck.CKF_SO_PIN_LOCKED|ck.CKF_WRITE_PROTECTED) != ck.CKF_USER_PIN_LOCKED|ck.CKF_SO_PIN_LOCKED|ck.CKF_WRITE_PROTECTED {
			t.Fatalf("the tampered token's info: label %q flags %#x", info.Label, info.Flags)
		}
		cl.Must(ck.CKR_DEVICE_ERROR, "C_OpenSession", U(victim), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
		cl.Must(ck.CKR_DEVICE_ERROR, "C_GetMechanismList", U(victim), Out(256))
		cl.Must(ck.CKR_DEVICE_ERROR, "C_InitToken", U(victim), S(SOPIN), Label32("victim"))

		h := cl.Open(good, false)
		cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
		found := cl.Find(h)
		if len(found) != 1 {
			t.Fatalf("found %d objects on the good token, want the one intact", len(found))
		}
		if _, ans := cl.Get(h, found[0], ck.CKA_VALUE); string(ans[0].Value) != "kept" {
			t.Fatalf("the intact object reads %q", ans[0].Value)
		}
		cl.Must(ck.CKR_OK, "C_CloseSession", U(h))
	}
	if n, err := d.store.TamperCount(context.Background()); err != nil || n != 2 {
		t.Fatalf("%d tamper records (%v), want 2: one per failed row", n, err)
	}
}
