package daemon

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
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

// TestSetAttributeAudited: a token object's attributes changed by
// C_SetAttributeValue (a key's usage widened, its label or id changed)
// leave a record naming the object and the attributes changed, never
// their values; a session object's change leaves none.
func TestSetAttributeAudited(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	cl := d.dial(t)
	slot := cl.NewToken("modified")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN),
		T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("signing")), AB(ck.CKA_DECRYPT, false)), None())[3].Ulong
	sess := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16)), None())[3].Ulong
	before := len(events(t, d))
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(key), T(AB(ck.CKA_DECRYPT, true), A(ck.CKA_ID, []byte{0xfe, 0xed})))
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(sess), T(A(ck.CKA_LABEL, []byte("session"))))
	got := events(t, d, SOPIN, UserPIN)
	if !slices.Equal(got[before:], []string{"key.modify"}) {
		t.Fatalf("records after the changes: %v, want one key.modify", got[before:])
	}
	recs, err := d.st.Store.AuditRecords(ctx, int64(before), 0)
	if err != nil {
		t.Fatal(err)
	}
	r := recs[0]
	if r.Detail["attributes"] != "0x102,0x105" || r.Detail["label"] != "signing" || r.Detail["id"] != "feed" ||
		len(r.Detail["object"]) != 32 || r.Actor.Token != "modified" || r.Actor.Role != "user" {
		t.Fatalf("key.modify record: %+v", r)
	}
}

// TestAuditHoldsNoValue: the values an application gives in templates
// (a key's CKA_VALUE, a data object's), changed by C_SetAttributeValue
// and copied, never reach a record, in any encoding; PINs, wrong ones
// included, neither.
func TestAuditHoldsNoValue(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	cl := d.dial(t)
	slot := cl.NewToken("values")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin-value"))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	keyValue := bytes.Repeat([]byte{0xa5, 0x5a, 0xc3, 0x3c}, 8)
	key := cl.Must(ck.CKR_OK, "C_CreateObject", U(h), T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
		AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("imported")), A(ck.CKA_VALUE, keyValue), AB(ck.CKA_EXTRACTABLE, false)), None())[2].Ulong
	data := cl.Must(ck.CKR_OK, "C_CreateObject", U(h), T(DataObject("note", true, true, "data-object-value")...), None())[2].Ulong
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(data), T(A(ck.CKA_VALUE, []byte("changed-data-value"))))
	cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(key), T(A(ck.CKA_LABEL, []byte("copied"))), None())
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(key), U(key), Out(1024))
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(key))
	secrets := []string{SOPIN, UserPIN, "wrong-pin-value", "data-object-value", "changed-data-value",
		string(keyValue), hex.EncodeToString(keyValue), base64.StdEncoding.EncodeToString(keyValue)}
	got := events(t, d, secrets...)
	for _, want := range []string{"key.import", "object.create", "object.modify", "key.copy", "export.refused", "key.destroy"} {
		if !slices.Contains(got, want) {
			t.Fatalf("no %s record: %v", want, got)
		}
	}
}
