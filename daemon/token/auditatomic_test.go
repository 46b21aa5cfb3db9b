package token

import (
	"database/sql"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
)

// refuseAudit makes every append to the audit log of the keystore at db
// fail, as a full filesystem or a crash between a write and its record
// would, until the returned function is called.
func refuseAudit(t *testing.T, db string) (allow func()) {
	t.Helper()
	conn, err := sql.Open("sqlite3", "file:"+db+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Exec(`CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit refused'); END`); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := conn.Exec(`DROP TRIGGER refuse_audit`); err != nil {
			t.Fatal(err)
		}
	}
}

// TestObjectWriteAndAuditAtomic: a token object's creation and its
// destruction commit with their audit records or not at all. Before, the
// record was a second commit: a kill -9 between the two (daemon/chaos
// TestKill9) left objects no record speaks of, and a create whose record
// failed was acknowledged.
func TestObjectWriteAndAuditAtomic(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("atomic")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	kept := cl.Create(h, DataObject("kept", true, true, "v")...)

	allow := refuseAudit(t, d.db)
	if rv, _ := cl.Call("C_CreateObject", U(h), T(DataObject("unrecorded", true, true, "v")...), None()); rv == ck.CKR_OK {
		t.Error("C_CreateObject succeeded without its audit record")
	}
	if rv, _ := cl.Call("C_GenerateKey", U(h), M(ck.CKM_GENERIC_SECRET_KEY_GEN),
		T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AB(ck.CKA_TOKEN, true), AU(ck.CKA_VALUE_LEN, 32), A(ck.CKA_LABEL, []byte("unrecorded"))), None()); rv == ck.CKR_OK {
		t.Error("C_GenerateKey succeeded without its audit record")
	}
	if rv, _ := cl.Call("C_DestroyObject", U(h), U(kept)); rv == ck.CKR_OK {
		t.Error("C_DestroyObject succeeded without its audit record")
	}
	allow()
	if got := cl.Find(h, A(ck.CKA_LABEL, []byte("unrecorded"))); len(got) != 0 {
		t.Errorf("objects created without their audit record: %v", got)
	}
	if got := cl.Find(h, A(ck.CKA_LABEL, []byte("kept"))); len(got) != 1 {
		t.Errorf("the object whose destroy was refused: %v", got)
	}
	// And with the log writable, both work and are recorded.
	cl.Create(h, DataObject("recorded", true, true, "v")...)
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(kept))
	recs, err := d.store.AuditTail(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Event != "object.create" || recs[0].Detail["label"] != "recorded" || recs[1].Event != "object.destroy" || recs[1].Detail["label"] != "kept" {
		t.Errorf("the last audit records: %+v", recs)
	}
}
