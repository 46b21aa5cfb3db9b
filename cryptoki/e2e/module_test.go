package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// These tests load the module into this process with miekg/pkcs11, as a Go
// application would. A process holds one instance of the module, so they
// do not run in parallel with each other.

const (
	soPIN   = "so-pin-1234"
	userPIN = "user-pin-1234"
)

// withModule starts a daemon and loads the module against it.
func withModule(t testing.TB, daemonArgs ...string) (*pkcs11.Ctx, *daemonProc) {
	t.Helper()
	d := startDaemon(t, daemonArgs...)
	t.Setenv("HSMEMU_SOCKET", d.sock)
	p := pkcs11.New(need(t).module)
	if p == nil {
		t.Fatal("the module does not load")
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Finalize()
		p.Destroy()
	})
	return p, d
}

func is(err error, rv uint) bool { return errors.Is(err, pkcs11.Error(rv)) }

// slotOf returns the slot of the token labelled label.
func slotOf(t testing.TB, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if info, err := p.GetTokenInfo(s); err == nil && strings.TrimRight(info.Label, " ") == label {
			return s
		}
	}
	t.Fatalf("no slot holds the token labelled %q (slots %v)", label, slots)
	return 0
}

// newToken initialises a token on slot 0 and sets its user PIN.
func newToken(t *testing.T, p *pkcs11.Ctx, label string) uint {
	t.Helper()
	if err := p.InitToken(0, soPIN, label); err != nil {
		t.Fatal(err)
	}
	slot := slotOf(t, p, label)
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer p.CloseSession(h)
	if err := p.Login(h, pkcs11.CKU_SO, soPIN); err != nil {
		t.Fatal(err)
	}
	if err := p.InitPIN(h, userPIN); err != nil {
		t.Fatal(err)
	}
	return slot
}

func TestModuleTokensAndPINs(t *testing.T) {
	p, _ := withModule(t, "--pin-max-failures", "3")
	slots, err := p.GetSlotList(true)
	if err != nil || len(slots) != 1 || slots[0] != 0 {
		t.Fatalf("fresh slots %v %v", slots, err)
	}
	if _, err := p.OpenSession(0, pkcs11.CKF_SERIAL_SESSION); !is(err, pkcs11.CKR_TOKEN_NOT_RECOGNIZED) {
		t.Fatalf("session on the uninitialised token: %v", err)
	}
	slot := newToken(t, p, "pins")
	info, err := p.GetTokenInfo(slot)
	if err != nil {
		t.Fatal(err)
	}
	want := uint(pkcs11.CKF_TOKEN_INITIALIZED | pkcs11.CKF_USER_PIN_INITIALIZED | pkcs11.CKF_LOGIN_REQUIRED | pkcs11.CKF_RNG)
	if info.Flags != want || info.MinPinLen != 4 || info.SerialNumber == "" {
		t.Fatalf("token info %+v", info)
	}
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	flags := func() uint {
		info, err := p.GetTokenInfo(slot)
		if err != nil {
			t.Fatal(err)
		}
		return info.Flags
	}
	if err := p.Login(h, pkcs11.CKU_USER, "wrong-pin"); !is(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatalf("wrong PIN: %v", err)
	}
	if flags()&pkcs11.CKF_USER_PIN_COUNT_LOW == 0 {
		t.Fatal("no CKF_USER_PIN_COUNT_LOW after a wrong PIN")
	}
	if err := p.Login(h, pkcs11.CKU_USER, "wrong-pin"); !is(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatal(err)
	}
	if flags()&pkcs11.CKF_USER_PIN_FINAL_TRY == 0 {
		t.Fatal("no CKF_USER_PIN_FINAL_TRY before the last try")
	}
	if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	if f := flags(); f&(pkcs11.CKF_USER_PIN_COUNT_LOW|pkcs11.CKF_USER_PIN_FINAL_TRY) != 0 {
		t.Fatalf("flags %#x after a good login", f)
	}
	if err := p.Login(h, pkcs11.CKU_USER, userPIN); !is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		t.Fatalf("second login: %v", err)
	}
	si, err := p.GetSessionInfo(h)
	if err != nil || si.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		t.Fatalf("session info %+v %v", si, err)
	}
	if err := p.SetPIN(h, userPIN, "changed-pin"); !is(err, pkcs11.CKR_SESSION_READ_ONLY) {
		t.Fatalf("SetPIN in a read-only session: %v", err)
	}
	rw, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SetPIN(rw, userPIN, "changed-pin"); err != nil {
		t.Fatal(err)
	}
	if err := p.Logout(h); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := p.Login(h, pkcs11.CKU_USER, userPIN); !is(err, pkcs11.CKR_PIN_INCORRECT) {
			t.Fatalf("old PIN after the change: %v", err)
		}
	}
	if flags()&pkcs11.CKF_USER_PIN_LOCKED == 0 {
		t.Fatal("no CKF_USER_PIN_LOCKED after three failures")
	}
	if err := p.Login(h, pkcs11.CKU_USER, "changed-pin"); !is(err, pkcs11.CKR_PIN_LOCKED) {
		t.Fatalf("right PIN on a locked token: %v", err)
	}
	// Re-initialising the token: refused while sessions are open, then
	// done with the SO PIN, which destroys the objects and the user PIN.
	if err := p.InitToken(slot, soPIN, "pins"); !is(err, pkcs11.CKR_SESSION_EXISTS) {
		t.Fatalf("InitToken with sessions open: %v", err)
	}
	p.CloseAllSessions(slot)
	if err := p.InitToken(slot, "wrong-so-pin", "pins"); !is(err, pkcs11.CKR_PIN_INCORRECT) {
		t.Fatalf("InitToken with a wrong SO PIN: %v", err)
	}
	if err := p.InitToken(slot, soPIN, "renamed"); err != nil {
		t.Fatal(err)
	}
	info, _ = p.GetTokenInfo(slot)
	if info.Flags&pkcs11.CKF_USER_PIN_INITIALIZED != 0 || strings.TrimRight(info.Label, " ") != "renamed" {
		t.Fatalf("after re-initialisation: %+v", info)
	}
}

func dataObject(label string, token, private bool, value []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, token),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, private),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	}
}

func aesKey(label string, sensitive, extractable bool) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, bytes.Repeat([]byte{0x42}, 32)),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, sensitive),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
	}
}

func find(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	if err := p.FindObjectsInit(h, tmpl); err != nil {
		t.Fatal(err)
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := p.FindObjects(h, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := p.FindObjectsFinal(h); err != nil {
		t.Fatal(err)
	}
	return all
}

func TestModuleObjects(t *testing.T) {
	p, _ := withModule(t)
	slot := newToken(t, p, "objects")
	ro, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	rw, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateObject(ro, dataObject("d", true, false, []byte("v"))); !is(err, pkcs11.CKR_SESSION_READ_ONLY) {
		t.Fatalf("token object in a read-only session: %v", err)
	}
	if _, err := p.CreateObject(rw, dataObject("d", true, true, []byte("v"))); !is(err, pkcs11.CKR_USER_NOT_LOGGED_IN) {
		t.Fatalf("private object without login: %v", err)
	}
	if err := p.Login(rw, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	secret, err := p.CreateObject(rw, dataObject("secret data", true, true, []byte("the value")))
	if err != nil {
		t.Fatal(err)
	}
	// The login is the application's: the read-only session shares it.
	got, err := p.GetAttributeValue(ro, secret, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
	if err != nil || string(got[0].Value) != "the value" || string(got[1].Value) != "secret data" {
		t.Fatalf("read through the other session: %v %v", got, err)
	}
	key, err := p.CreateObject(rw, aesKey("aes", true, false))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetAttributeValue(rw, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
		t.Fatalf("sensitive CKA_VALUE: %v", err)
	}
	got, err = p.GetAttributeValue(rw, key, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_LOCAL, nil),
	})
	if err != nil || bytesToUlong(got[0].Value) != 32 || bytesToUlong(got[1].Value) != pkcs11.CKK_AES || got[2].Value[0] != 0 || got[3].Value[0] != 0 {
		t.Fatalf("key attributes: %v %v", got, err)
	}

	for _, tc := range []struct {
		name string
		obj  pkcs11.ObjectHandle
		set  *pkcs11.Attribute
		want uint // 0: success
	}{
		{name: "sensitive back to false", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), want: pkcs11.CKR_ATTRIBUTE_READ_ONLY},
		{name: "extractable again", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), want: pkcs11.CKR_ATTRIBUTE_READ_ONLY},
		{name: "never extractable", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, true), want: pkcs11.CKR_ATTRIBUTE_READ_ONLY},
		{name: "relabel", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_LABEL, "renamed"), want: 0},
		{name: "usage flag", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false), want: 0},
		{name: "key type", obj: key, set: pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET), want: pkcs11.CKR_ATTRIBUTE_READ_ONLY},
		{name: "data value", obj: secret, set: pkcs11.NewAttribute(pkcs11.CKA_VALUE, "new value"), want: 0},
		{name: "key attribute on data", obj: secret, set: pkcs11.NewAttribute(pkcs11.CKA_SIGN, true), want: pkcs11.CKR_ATTRIBUTE_TYPE_INVALID},
	} {
		err := p.SetAttributeValue(rw, tc.obj, []*pkcs11.Attribute{tc.set})
		if (tc.want == 0 && err != nil) || (tc.want != 0 && !is(err, tc.want)) {
			t.Errorf("%s: %v, want %#x", tc.name, err, tc.want)
		}
	}
	if err := p.SetAttributeValue(ro, secret, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "x")}); !is(err, pkcs11.CKR_SESSION_READ_ONLY) {
		t.Fatalf("changing a token object in a read-only session: %v", err)
	}

	// A copy cannot loosen the key.
	if _, err := p.CopyObject(rw, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false)}); !is(err, pkcs11.CKR_ATTRIBUTE_READ_ONLY) {
		t.Fatalf("copy loosening CKA_SENSITIVE: %v", err)
	}
	cp, err := p.CopyObject(rw, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "copy")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.GetAttributeValue(rw, cp, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); !is(err, pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
		t.Fatalf("copy's value: %v", err)
	}
	if size, err := p.GetObjectSize(rw, key); err != nil || size == 0 {
		t.Fatalf("object size %d %v", size, err)
	}

	// Session objects live with their session; token objects stay.
	sess, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	temp, err := p.CreateObject(sess, dataObject("temp", false, false, []byte("x")))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(find(t, p, rw, pkcs11.NewAttribute(pkcs11.CKA_LABEL, "temp"))); n != 1 {
		t.Fatalf("session object found %d times from another session", n)
	}
	p.CloseSession(sess)
	if _, err := p.GetAttributeValue(rw, temp, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)}); !is(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
		t.Fatalf("session object after its session closed: %v", err)
	}
	if n := len(find(t, p, rw, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY))); n != 2 {
		t.Fatalf("found %d secret keys, want 2 (the key and its session copy)", n)
	}
	// Private objects disappear with the login.
	p.Logout(rw)
	if n := len(find(t, p, rw)); n != 0 {
		t.Fatalf("found %d objects without login, want 0 (all private)", n)
	}
	if err := p.DestroyObject(rw, secret); !is(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
		t.Fatalf("destroying a private object without login: %v", err)
	}
}

func bytesToUlong(b []byte) uint {
	var v uint
	for i := len(b) - 1; i >= 0; i-- { // host order: little-endian here
		v = v<<8 | uint(b[i])
	}
	return v
}

const childEnv = "HSMEMU_E2E_CHILD"

// TestModuleCrossProcess: a token object created by another process is
// visible at once to this one, through its already open session.
func TestModuleCrossProcess(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("runs in the parent")
	}
	p, d := withModule(t)
	slot := newToken(t, p, "shared")
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestModuleChild$", "-test.v")
	cmd.Env = append(d.env(), childEnv+"="+fmt.Sprint(slot))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	objs := find(t, p, h, pkcs11.NewAttribute(pkcs11.CKA_LABEL, "from the child"))
	if len(objs) != 1 {
		t.Fatalf("found %d objects the child created", len(objs))
	}
	got, err := p.GetAttributeValue(h, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil || string(got[0].Value) != "child value" {
		t.Fatalf("the child's object: %v %v", got, err)
	}
}

// TestModuleChild is the other process of TestModuleCrossProcess.
func TestModuleChild(t *testing.T) {
	slotStr := os.Getenv(childEnv)
	if slotStr == "" {
		t.Skip("only as TestModuleCrossProcess's child")
	}
	var slot uint
	fmt.Sscan(slotStr, &slot)
	p := pkcs11.New(need(t).module)
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Destroy()
	defer p.Finalize()
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	// This is another application: it is not logged in, whatever its
	// parent is.
	if si, err := p.GetSessionInfo(h); err != nil || si.State != pkcs11.CKS_RW_PUBLIC_SESSION {
		t.Fatalf("child's session: %+v %v", si, err)
	}
	if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateObject(h, dataObject("from the child", true, true, []byte("child value"))); err != nil {
		t.Fatal(err)
	}
}

// TestModuleFindAmong10000 stores 10,000 token objects through the module
// and finds one by label.
func TestModuleFindAmong10000(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 10,000 objects")
	}
	p, _ := withModule(t)
	slot := newToken(t, p, "many")
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000
	for i := 0; i < n; i++ {
		if _, err := p.CreateObject(h, dataObject(fmt.Sprintf("object %d", i), true, false, []byte{byte(i)})); err != nil {
			t.Fatalf("object %d: %v", i, err)
		}
	}
	objs := find(t, p, h, pkcs11.NewAttribute(pkcs11.CKA_LABEL, "object 7777"))
	if len(objs) != 1 {
		t.Fatalf("found %d objects labelled 'object 7777'", len(objs))
	}
	got, err := p.GetAttributeValue(h, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil || got[0].Value[0] != byte(7777%256) {
		t.Fatalf("found the wrong object: %v %v", got, err)
	}
	if all := find(t, p, h, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA)); len(all) != n {
		t.Fatalf("found %d data objects, want %d", len(all), n)
	}
}
