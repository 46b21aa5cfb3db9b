package daemon

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
)

// events returns the audit log's event names, oldest first, and fails the
// test if any record holds one of the secrets.
func events(t *testing.T, d *testDaemon, secrets ...string) []string {
	t.Helper()
	recs, err := d.st.Store.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		b, _ := json.Marshal(r)
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Fatalf("audit record %d holds a secret: %s", r.Seq, b)
			}
		}
		out = append(out, r.Event)
	}
	return out
}

// TestAuditEvents drives the PKCS#11 calls that must leave a record and
// checks the log has them, in order, with no PIN in any.
func TestAuditEvents(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{MaxPINFailures: 3})
	cl := d.dial(t)
	slot := cl.NewToken("audited")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin-1"))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	aes := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN),
		T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("kek")), AB(ck.CKA_WRAP, true)), None())[3].Ulong
	locked := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN),
		T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("locked")), AB(ck.CKA_EXTRACTABLE, false)), None())[3].Ulong
	// A session key leaves no record.
	cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 16)), None())
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(aes), U(locked), Out(1024))
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(locked))
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	for range 3 {
		cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin-2"))
	}
	cl.Must(ck.CKR_PIN_LOCKED, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	got := events(t, d, SOPIN, UserPIN, "wrong-pin")
	want := []string{"anchor.create", "token.create", "login.success", "pin.init",
		"login.failure", "login.success", "key.generate", "key.generate", "export.refused", "key.destroy",
		"login.failure", "login.failure", "login.failure", "pin.lockout", "login.locked"}
	if !slices.Equal(got, want) {
		t.Fatalf("events\n got %v\nwant %v", got, want)
	}
	recs, _ := d.st.Store.AuditRecords(ctx, 0, 0)
	gen := recs[6]
	if gen.Actor.Token != "audited" || gen.Actor.Role != "user" || gen.Actor.PID != int32(os.Getpid()) ||
		gen.Detail["label"] != "kek" || gen.Detail["class"] != "secret-key" || len(gen.Detail["object"]) != 32 {
		t.Fatalf("key.generate record: %+v", gen)
	}
	if ref := recs[8]; ref.Detail["label"] != "locked" || ref.Detail["call"] != "C_WrapKey" {
		t.Fatalf("export.refused record: %+v", ref)
	}
	if recs[9].Detail["object"] != recs[7].Detail["object"] {
		t.Fatalf("destroyed %s, generated %s", recs[9].Detail["object"], recs[7].Detail["object"])
	}
	if rep, err := d.st.Store.VerifyAudit(ctx); err != nil || !rep.OK || rep.Records != int64(len(want)) {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func adminDial(t *testing.T, d *testDaemon) *adminapi.Client {
	t.Helper()
	a, err := adminapi.Dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// code is the admin error code of err, or "" for nil.
func code(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	var ae *adminapi.Error
	if !errors.As(err, &ae) {
		t.Fatalf("not an admin error: %v", err)
	}
	return ae.Code
}

func TestAdminTokens(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{MaxPINFailures: 2})
	a := adminDial(t, d)
	so, user := []byte("admin-so-1"), []byte("admin-user-1")

	var tok adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "vault", Tier: "premium", SOPIN: so, UserPIN: user}, &tok); err != nil {
		t.Fatal(err)
	}
	if tok.Label != "vault" || tok.Tier != "premium" || !tok.UserPINSet || tok.Slot == 0 || len(tok.Serial) != 16 {
		t.Fatalf("created %+v", tok)
	}
	for _, c := range []struct {
		args adminapi.TokenCreate
		want string
	}{
		{args: adminapi.TokenCreate{Label: "vault", Tier: "standard", SOPIN: so}, want: adminapi.CodeExists},
		{args: adminapi.TokenCreate{Label: "x", Tier: "gold", SOPIN: so}, want: adminapi.CodeBadRequest},
		{args: adminapi.TokenCreate{Label: "", Tier: "standard", SOPIN: so}, want: adminapi.CodeBadRequest},
		{args: adminapi.TokenCreate{Label: strings.Repeat("l", 33), Tier: "standard", SOPIN: so}, want: adminapi.CodeBadRequest},
		{args: adminapi.TokenCreate{Label: "x", Tier: "standard", SOPIN: []byte("abc")}, want: adminapi.CodePINInvalid},
	} {
		if got := code(t, a.Call(adminapi.OpTokenCreate, c.args, nil)); got != c.want {
			t.Errorf("create %q/%q: %q, want %q", c.args.Label, c.args.Tier, got, c.want)
		}
	}

	// The module sees the token the admin made, and logs in with its PIN.
	cl := d.dial(t)
	h := cl.Open(uint64(tok.Slot), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))

	var shown adminapi.Token
	if err := a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: "vault"}, &shown); err != nil {
		t.Fatal(err)
	}
	if shown.Sessions != 1 || !shown.LoggedIn {
		t.Fatalf("shown %+v", shown)
	}
	var st adminapi.Status
	if err := a.Call(adminapi.OpStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Tokens) != 1 || st.Apps != 1 || st.Sessions != 1 || st.Audit.Records == 0 {
		t.Fatalf("status %+v", st)
	}
	// Deleting a token in use is refused; with the session gone it works,
	// with the right SO PIN only.
	if got := code(t, a.Call(adminapi.OpTokenDelete, adminapi.TokenDelete{Label: "vault", SOPIN: so}, nil)); got != adminapi.CodeInUse {
		t.Fatalf("delete in use: %q", got)
	}
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))

	// PINs: a wrong old PIN counts; two lock the user; the SO unlocks
	// without changing it; reset replaces it.
	newUser := []byte("admin-user-2")
	if got := code(t, a.Call(adminapi.OpPINChange, adminapi.PINChange{Label: "vault", Role: "user", Old: []byte("nope-nope"), New: newUser}, nil)); got != adminapi.CodePINIncorrect {
		t.Fatalf("change with a wrong PIN: %q", got)
	}
	a.Call(adminapi.OpPINChange, adminapi.PINChange{Label: "vault", Role: "user", Old: []byte("nope-nope"), New: newUser}, nil)
	if got := code(t, a.Call(adminapi.OpPINChange, adminapi.PINChange{Label: "vault", Role: "user", Old: user, New: newUser}, nil)); got != adminapi.CodePINLocked {
		t.Fatalf("change when locked: %q", got)
	}
	if got := code(t, a.Call(adminapi.OpPINUnlock, adminapi.PINUnlock{Label: "vault", Role: "user", SOPIN: []byte("wrong-so")}, nil)); got != adminapi.CodePINIncorrect {
		t.Fatalf("unlock with a wrong SO PIN: %q", got)
	}
	if err := a.Call(adminapi.OpPINUnlock, adminapi.PINUnlock{Label: "vault", Role: "user", SOPIN: so}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpPINChange, adminapi.PINChange{Label: "vault", Role: "user", Old: user, New: newUser}, nil); err != nil {
		t.Fatalf("change after unlock: %v", err)
	}
	reset := []byte("admin-user-3")
	if err := a.Call(adminapi.OpPINReset, adminapi.PINReset{Label: "vault", SOPIN: so, New: reset}, nil); err != nil {
		t.Fatal(err)
	}
	h = cl.Open(uint64(tok.Slot), false)
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S(string(newUser)))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(reset)))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))

	// The SO locked out is unlocked by the administrator alone.
	for range 2 {
		if got := code(t, a.Call(adminapi.OpTokenDelete, adminapi.TokenDelete{Label: "vault", SOPIN: []byte("wrong-so")}, nil)); got != adminapi.CodePINIncorrect {
			t.Fatalf("delete with a wrong SO PIN: %q", got)
		}
	}
	if got := code(t, a.Call(adminapi.OpTokenDelete, adminapi.TokenDelete{Label: "vault", SOPIN: so}, nil)); got != adminapi.CodePINLocked {
		t.Fatalf("delete with the SO locked: %q", got)
	}
	if err := a.Call(adminapi.OpPINUnlock, adminapi.PINUnlock{Label: "vault", Role: "so"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpTokenDelete, adminapi.TokenDelete{Label: "vault", SOPIN: so}, nil); err != nil {
		t.Fatal(err)
	}
	if got := code(t, a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: "vault"}, nil)); got != adminapi.CodeNotFound {
		t.Fatalf("show deleted: %q", got)
	}

	got := events(t, d, string(so), string(user), string(newUser), string(reset), "wrong-so", "nope-nope")
	for _, e := range []string{"token.create", "pin.change.failure", "pin.lockout", "pin.unlock", "pin.change", "pin.reset", "token.delete.failure", "token.delete"} {
		if !slices.Contains(got, e) {
			t.Errorf("no %s in the audit log: %v", e, got)
		}
	}
	var v adminapi.AuditVerify
	if err := a.Call(adminapi.OpAuditVerify, nil, &v); err != nil || !v.OK || v.Records != int64(len(got)) || len(v.Head) != 32 {
		t.Fatalf("verify %+v %v", v, err)
	}
	var tail []adminapi.AuditRecord
	if err := a.Call(adminapi.OpAuditTail, adminapi.AuditTail{N: 2}, &tail); err != nil || len(tail) != 2 || tail[1].Event != "token.delete" || tail[1].Actor.Role != "admin" {
		t.Fatalf("tail %+v %v", tail, err)
	}
}

// TestAdminBadRequests: a malformed admin call is answered and refused,
// never a crash; a frame over the cap closes the connection.
func TestAdminBadRequests(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	if got := code(t, a.Call("nonsense", nil, nil)); got != adminapi.CodeBadRequest {
		t.Fatalf("unknown op: %q", got)
	}
	if got := code(t, a.Call(adminapi.OpTokenShow, map[string]any{"label": "x", "lable": "y"}, nil)); got != adminapi.CodeBadRequest {
		t.Fatalf("unknown field: %q", got)
	}
	if got := code(t, a.Call(adminapi.OpTokenShow, nil, nil)); got != adminapi.CodeBadRequest {
		t.Fatalf("no arguments: %q", got)
	}
	if got := code(t, a.Call(adminapi.OpAuditTail, adminapi.AuditTail{N: 1 << 20}, nil)); got != adminapi.CodeBadRequest {
		t.Fatalf("huge tail: %q", got)
	}
	// The connection still serves.
	if err := a.Call(adminapi.OpTokenList, nil, nil); err != nil {
		t.Fatal(err)
	}

	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(wire.Hello{Version: wire.Version, Flags: wire.FlagAdmin}.Marshal())
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		t.Fatalf("hello: %+v %v", r, err)
	}
	c.Write(binary.BigEndian.AppendUint32(nil, adminapi.MaxFrame+1))
	var rep adminapi.Reply
	if err := adminapi.ReadFrame(c, &rep); err != nil || rep.Error == nil || rep.Error.Code != adminapi.CodeBadRequest {
		t.Fatalf("oversized frame: %+v %v", rep, err)
	}
	if err := adminapi.ReadFrame(c, &rep); err == nil {
		t.Fatal("the connection stayed open after a broken frame")
	}

	// Unknown hello flags are refused.
	c2, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(wire.Hello{Version: wire.Version, Flags: 6}.Marshal())
	if r, err := wire.ReadHelloReply(c2); err != nil || r.Status != wire.StatusRefused {
		t.Fatalf("hello with flags 6: %+v %v", r, err)
	}
}

// TestAuditTamperRecorded: a keystore edit that the engine trips over
// leaves a tamper record.
func TestAuditTamperRecorded(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	cl := d.dial(t)
	slot := cl.NewToken("tamper")
	ti, err := d.st.Store.TokenByID(ctx, int64(slot))
	if err != nil {
		t.Fatal(err)
	}
	db := openRaw(t, d)
	if _, err := db.Exec("UPDATE tokens SET user_failures = 5 WHERE id = ?", ti.ID); err != nil {
		t.Fatal(err)
	}
	d.st.Store.Logout(ti.UUID)
	if rv, _ := cl.Call("C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None()); rv != ck.CKR_DEVICE_ERROR {
		t.Fatalf("C_OpenSession on an edited token row: %#x", rv)
	}
	got := events(t, d)
	if !slices.Contains(got, "tamper.detected") {
		t.Fatalf("no tamper record: %v", got)
	}
}

// openRaw opens the daemon's keystore file behind its back, as someone
// editing it would.
func openRaw(t *testing.T, d *testDaemon) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(d.dir, DatabaseName)+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var ctx = context.Background()
