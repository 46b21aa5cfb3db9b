package token

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

func TestSlotsAndTokens(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	if got := cl.Slots(); len(got) != 1 || got[0] != 0 {
		t.Fatalf("fresh daemon slots = %v, want [0]", got)
	}
	// The size query: NULL buffer, then a short one.
	out := cl.Must(ck.CKR_OK, "C_GetSlotList", wire.Value{Byte: 1}, SizeQuery())
	if out[1].Length != 1 || out[1].Ulongs != nil {
		t.Fatalf("size query: %+v", out[1])
	}
	free := cl.TokenInfo(0)
	if free.Flags&ck.CKF_TOKEN_INITIALIZED != 0 {
		t.Fatal("slot 0's token reports initialised")
	}
	cl.Must(ck.CKR_TOKEN_NOT_RECOGNIZED, "C_OpenSession", U(0), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	cl.Must(ck.CKR_PIN_LEN_RANGE, "C_InitToken", U(0), S("123"), Label32("t"))

	slot := cl.NewToken("alpha")
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_GetSlotList", wire.Value{Byte: 1}, Out(1))
	info := cl.TokenInfo(slot)
	want := uint64(ck.CKF_RNG | ck.CKF_LOGIN_REQUIRED | ck.CKF_TOKEN_INITIALIZED | ck.CKF_USER_PIN_INITIALIZED)
	if info.Flags != want || info.Label != wire.Pad("alpha", 32) || info.MinPinLen != MinPINLen {
		t.Fatalf("token info: flags %#x label %q", info.Flags, info.Label)
	}
	cl.Must(ck.CKR_SLOT_ID_INVALID, "C_GetTokenInfo", U(slot+100), None())
	cl.Must(ck.CKR_SESSION_PARALLEL_NOT_SUPPORTED, "C_OpenSession", U(slot), U(0), None(), None(), None())

	// The initialised tokens come first, in the order they were made,
	// the free slot last; and slot ids survive a restart of the daemon.
	second := cl.NewToken("beta")
	if got := cl.Slots(); !slices.Equal(got, []uint64{slot, second, 0}) {
		t.Fatalf("slots = %v, want [%d %d 0]", got, slot, second)
	}
	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	if got := cl.Slots(); !slices.Equal(got, []uint64{slot, second, 0}) {
		t.Fatalf("slots after restart = %v, want [%d %d 0]", got, slot, second)
	}
	if cl.TokenInfo(slot).Label != wire.Pad("alpha", 32) {
		t.Fatal("token lost its label across a restart")
	}
}

func TestLoginRules(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{MaxPINFailures: 3})
	cl := d.dial(t)
	slot := cl.NewToken("login")
	ro := cl.Open(slot, false)
	rw := cl.Open(slot, true)

	cl.Must(ck.CKR_USER_TYPE_INVALID, "C_Login", U(ro), U(7), S(UserPIN))
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Logout", U(ro))
	// The SO cannot log in while a read-only session exists.
	cl.Must(ck.CKR_SESSION_READ_ONLY_EXISTS, "C_Login", U(rw), U(ck.CKU_SO), S(SOPIN))

	// Wrong PINs count, and the flags say so.
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(ro), U(ck.CKU_USER), S("wrong-pin"))
	if f := cl.TokenInfo(slot).Flags; f&ck.CKF_USER_PIN_COUNT_LOW == 0 || f&ck.CKF_USER_PIN_FINAL_TRY != 0 {
		t.Fatalf("flags after one failure: %#x", f)
	}
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(ro), U(ck.CKU_USER), S("wrong-pin"))
	if f := cl.TokenInfo(slot).Flags; f&ck.CKF_USER_PIN_FINAL_TRY == 0 {
		t.Fatalf("flags after two failures of three: %#x", f)
	}
	// A success resets the count; login state is per application.
	cl.Must(ck.CKR_OK, "C_Login", U(ro), U(ck.CKU_USER), S(UserPIN))
	if f := cl.TokenInfo(slot).Flags; f&(ck.CKF_USER_PIN_COUNT_LOW|ck.CKF_USER_PIN_FINAL_TRY) != 0 {
		t.Fatalf("flags after success: %#x", f)
	}
	cl.Must(ck.CKR_USER_ALREADY_LOGGED_IN, "C_Login", U(rw), U(ck.CKU_USER), S(UserPIN))
	cl.Must(ck.CKR_USER_ANOTHER_ALREADY_LOGGED_IN, "C_Login", U(rw), U(ck.CKU_SO), S(SOPIN))
	info := cl.Must(ck.CKR_OK, "C_GetSessionInfo", U(rw), None())[1].Struct.(*wire.SessionInfo)
	if info.State != ck.CKS_RW_USER_FUNCTIONS {
		t.Fatalf("rw session state %d after user login", info.State)
	}
	other := d.dial(t)
	oh := other.Open(slot, false)
	info = other.Must(ck.CKR_OK, "C_GetSessionInfo", U(oh), None())[1].Struct.(*wire.SessionInfo)
	if info.State != ck.CKS_RO_PUBLIC_SESSION {
		t.Fatalf("another application's session is in state %d", info.State)
	}
	// Session handles are per application.
	other.Must(ck.CKR_SESSION_HANDLE_INVALID, "C_GetSessionInfo", U(rw), None())
	cl.Must(ck.CKR_OK, "C_Logout", U(ro))

	// Three failures lock the user; the right PIN is then refused.
	for i := 0; i < 3; i++ {
		cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(ro), U(ck.CKU_USER), S("wrong-pin"))
	}
	if f := cl.TokenInfo(slot).Flags; f&ck.CKF_USER_PIN_LOCKED == 0 {
		t.Fatalf("flags after lockout: %#x", f)
	}
	cl.Must(ck.CKR_PIN_LOCKED, "C_Login", U(ro), U(ck.CKU_USER), S(UserPIN))
	// The SO unlocks by setting a new user PIN.
	cl.Must(ck.CKR_OK, "C_CloseSession", U(ro))
	cl.Must(ck.CKR_OK, "C_Login", U(rw), U(ck.CKU_SO), S(SOPIN))
	cl.Must(ck.CKR_SESSION_READ_WRITE_SO_EXISTS, "C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	cl.Must(ck.CKR_PIN_LEN_RANGE, "C_InitPIN", U(rw), S("12"))
	cl.Must(ck.CKR_OK, "C_InitPIN", U(rw), S("new-user-pin"))
	cl.Must(ck.CKR_OK, "C_Logout", U(rw))
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_InitPIN", U(rw), S("new-user-pin"))
	cl.Must(ck.CKR_OK, "C_Login", U(rw), U(ck.CKU_USER), S("new-user-pin"))

	// C_SetPIN changes the logged-in user's PIN; read-only sessions cannot.
	cl.Must(ck.CKR_PIN_INCORRECT, "C_SetPIN", U(rw), S("not-it"), S("another-pin"))
	cl.Must(ck.CKR_OK, "C_SetPIN", U(rw), S("new-user-pin"), S("another-pin"))
	cl.Must(ck.CKR_OK, "C_Logout", U(rw))
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(rw), U(ck.CKU_USER), S("new-user-pin"))
	cl.Must(ck.CKR_OK, "C_Login", U(rw), U(ck.CKU_USER), S("another-pin"))

	// Closing an application's last session logs it out.
	cl.Must(ck.CKR_OK, "C_CloseSession", U(rw))
	h := cl.Open(slot, false)
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Logout", U(h))
}

func TestObjects(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("objects")
	ro := cl.Open(slot, false)
	rw := cl.Open(slot, true)

	// Token objects need a R/W session; private ones need the user.
	cl.Must(ck.CKR_SESSION_READ_ONLY, "C_CreateObject", U(ro), T(DataObject("d", true, false, "v")...), None())
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_CreateObject", U(rw), T(DataObject("d", true, true, "v")...), None())
	pub := cl.Create(rw, DataObject("public data", true, false, "hello")...)

	// C_GetAttributeValue's per-attribute rules and the size query.
	rv, out := cl.Call("C_GetAttributeValue", U(rw), U(pub), Q(
		wire.Query{Type: ck.CKA_VALUE},
		wire.Query{Type: ck.CKA_LABEL, Present: true, Capacity: 3},
		wire.Query{Type: ck.CKA_MODULUS, Present: true, Capacity: 64},
	))
	if rv != ck.CKR_ATTRIBUTE_TYPE_INVALID && rv != ck.CKR_BUFFER_TOO_SMALL {
		t.Fatalf("mixed query rv %#x", rv)
	}
	ans := out[2].Answers
	if ans[0].Length != 5 || ans[0].Value != nil || ans[1].Length != ck.CK_UNAVAILABLE_INFORMATION || ans[2].Length != ck.CK_UNAVAILABLE_INFORMATION {
		t.Fatalf("answers %+v", ans)
	}
	rv, ans = cl.Get(rw, pub, ck.CKA_VALUE, ck.CKA_CLASS, ck.CKA_MODIFIABLE)
	if rv != ck.CKR_OK || string(ans[0].Value) != "hello" || !bytes.Equal(ans[1].Value, AU(0, ck.CKO_DATA).Value) || !bytes.Equal(ans[2].Value, []byte{1}) {
		t.Fatalf("get: %#x %+v", rv, ans)
	}

	cl.Must(ck.CKR_OK, "C_Login", U(rw), U(ck.CKU_USER), S(UserPIN))
	sensitive := cl.Create(rw, AESKey("sensitive", true, true)...)
	if rv, ans := cl.Get(rw, sensitive, ck.CKA_VALUE, ck.CKA_VALUE_LEN); rv != ck.CKR_ATTRIBUTE_SENSITIVE || ans[0].Length != ck.CK_UNAVAILABLE_INFORMATION || ulongOf(ans[1].Value) != 32 {
		t.Fatalf("sensitive value: %#x %+v", rv, ans)
	}
	clear := cl.Create(rw, AESKey("clear", false, true)...)
	if rv, ans := cl.Get(rw, clear, ck.CKA_VALUE, ck.CKA_LOCAL, ck.CKA_ALWAYS_SENSITIVE); rv != ck.CKR_OK || len(ans[0].Value) != 32 || ans[1].Value[0] != 0 || ans[2].Value[0] != 0 {
		t.Fatalf("clear value: %#x %+v", rv, ans)
	}

	// One-way attributes, read-only ones, and CKA_MODIFIABLE.
	for _, tc := range []struct {
		name string
		obj  uint64
		set  []wire.Attribute
		want uint64
	}{
		{name: "sensitive back to false", obj: sensitive, set: []wire.Attribute{AB(ck.CKA_SENSITIVE, false)}, want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "clear to sensitive", obj: clear, set: []wire.Attribute{AB(ck.CKA_SENSITIVE, true)}, want: ck.CKR_OK},
		{name: "unextractable", obj: clear, set: []wire.Attribute{AB(ck.CKA_EXTRACTABLE, false)}, want: ck.CKR_OK},
		{name: "extractable again", obj: clear, set: []wire.Attribute{AB(ck.CKA_EXTRACTABLE, true)}, want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "local", obj: clear, set: []wire.Attribute{AB(ck.CKA_LOCAL, true)}, want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "key type", obj: clear, set: []wire.Attribute{AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET)}, want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "trusted by the user", obj: clear, set: []wire.Attribute{AB(ck.CKA_TRUSTED, true)}, want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "relabel", obj: clear, set: []wire.Attribute{A(ck.CKA_LABEL, []byte("renamed"))}, want: ck.CKR_OK},
		{name: "bad bool", obj: clear, set: []wire.Attribute{A(ck.CKA_ENCRYPT, []byte{2})}, want: ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{name: "foreign attribute", obj: pub, set: []wire.Attribute{AB(ck.CKA_SIGN, true)}, want: ck.CKR_ATTRIBUTE_TYPE_INVALID},
		{name: "data value", obj: pub, set: []wire.Attribute{A(ck.CKA_VALUE, []byte("changed"))}, want: ck.CKR_OK},
	} {
		if got, _ := cl.Call("C_SetAttributeValue", U(rw), U(tc.obj), T(tc.set...)); got != tc.want {
			t.Errorf("%s: %#x, want %#x", tc.name, got, tc.want)
		}
	}
	if rv, ans := cl.Get(rw, clear, ck.CKA_VALUE, ck.CKA_LABEL); rv != ck.CKR_ATTRIBUTE_SENSITIVE || string(ans[1].Value) != "renamed" {
		t.Fatalf("after changes: %#x %+v", rv, ans)
	}
	if _, ans := cl.Get(rw, pub, ck.CKA_VALUE); string(ans[0].Value) != "changed" {
		t.Fatalf("data value after set: %q", ans[0].Value)
	}

	// A copy cannot loosen: the copy of a sensitive key stays sensitive.
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(rw), U(sensitive), T(AB(ck.CKA_SENSITIVE, false)), None())
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_CopyObject", U(rw), U(sensitive), T(AB(ck.CKA_PRIVATE, false)), None())
	cp := cl.Must(ck.CKR_OK, "C_CopyObject", U(rw), U(sensitive), T(A(ck.CKA_LABEL, []byte("copy")), AB(ck.CKA_TOKEN, false)), None())[3].Ulong
	if rv, ans := cl.Get(rw, cp, ck.CKA_VALUE, ck.CKA_LABEL, ck.CKA_TOKEN); rv != ck.CKR_ATTRIBUTE_SENSITIVE || string(ans[1].Value) != "copy" || ans[2].Value[0] != 0 {
		t.Fatalf("copy: %#x %+v", rv, ans)
	}
	fixed := cl.Create(rw, append(AESKey("fixed", true, false), AB(ck.CKA_COPYABLE, false), AB(ck.CKA_DESTROYABLE, false), AB(ck.CKA_MODIFIABLE, false))...)
	cl.Must(ck.CKR_ACTION_PROHIBITED, "C_CopyObject", U(rw), U(fixed), T(), None())
	cl.Must(ck.CKR_ACTION_PROHIBITED, "C_DestroyObject", U(rw), U(fixed))
	cl.Must(ck.CKR_ACTION_PROHIBITED, "C_SetAttributeValue", U(rw), U(fixed), T(A(ck.CKA_LABEL, []byte("x"))))

	// Creation rules.
	for _, tc := range []struct {
		name  string
		attrs []wire.Attribute
		want  uint64
	}{
		{name: "no class", attrs: []wire.Attribute{A(ck.CKA_LABEL, []byte("x"))}, want: ck.CKR_TEMPLATE_INCOMPLETE},
		{name: "no key type", attrs: []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), A(ck.CKA_VALUE, make([]byte, 16))}, want: ck.CKR_TEMPLATE_INCOMPLETE},
		{name: "no key value", attrs: []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES)}, want: ck.CKR_TEMPLATE_INCOMPLETE},
		{name: "AES key of 17 bytes", attrs: []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), A(ck.CKA_VALUE, make([]byte, 17))}, want: ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{name: "CKA_LOCAL given", attrs: append(AESKey("x", true, false), AB(ck.CKA_LOCAL, true)), want: ck.CKR_ATTRIBUTE_READ_ONLY},
		{name: "class of 4 bytes", attrs: []wire.Attribute{A(ck.CKA_CLASS, []byte{0, 0, 0, 0})}, want: ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{name: "unknown class", attrs: []wire.Attribute{AU(ck.CKA_CLASS, 0x1234)}, want: ck.CKR_ATTRIBUTE_VALUE_INVALID},
		{name: "attribute twice", attrs: []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_DATA), AU(ck.CKA_CLASS, ck.CKO_DATA)}, want: ck.CKR_TEMPLATE_INCONSISTENT},
		{name: "certificate without subject", attrs: []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_CERTIFICATE), AU(ck.CKA_CERTIFICATE_TYPE, ck.CKC_X_509), A(ck.CKA_VALUE, []byte("der"))}, want: ck.CKR_TEMPLATE_INCOMPLETE},
		{name: "key attribute on data", attrs: append(DataObject("x", false, false, "v"), AB(ck.CKA_SIGN, true)), want: ck.CKR_ATTRIBUTE_TYPE_INVALID},
	} {
		if got, _ := cl.Call("C_CreateObject", U(rw), T(tc.attrs...), None()); got != tc.want {
			t.Errorf("create %s: %#x, want %#x", tc.name, got, tc.want)
		}
	}

	// Destroy; the handle is then gone.
	cl.Must(ck.CKR_SESSION_READ_ONLY, "C_DestroyObject", U(ro), U(pub))
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(rw), U(pub))
	cl.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(rw), U(pub), Q(wire.Query{Type: ck.CKA_LABEL}))
}

func TestVisibility(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	a := d.dial(t)
	slot := a.NewToken("vis")
	ha := a.Open(slot, true)
	a.Must(ck.CKR_OK, "C_Login", U(ha), U(ck.CKU_USER), S(UserPIN))
	priv := a.Create(ha, DataObject("secret", true, true, "s3cret")...)
	pub := a.Create(ha, DataObject("shared", true, false, "public")...)
	sess := a.Create(ha, DataObject("session", false, false, "gone soon")...)

	// Another application sees the token objects at once, and private
	// ones only after its own login; it cannot use a's handles.
	b := d.dial(t)
	hb := b.Open(slot, false)
	if got := b.Find(hb, A(ck.CKA_LABEL, []byte("shared"))); len(got) != 1 {
		t.Fatalf("b finds %v for the public object", got)
	}
	if got := b.Find(hb); len(got) != 1 {
		t.Fatalf("b, not logged in, finds %d objects, want 1", len(got))
	}
	b.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(hb), U(pub), Q(wire.Query{Type: ck.CKA_LABEL}))
	b.Must(ck.CKR_OK, "C_Login", U(hb), U(ck.CKU_USER), S(UserPIN))
	if got := b.Find(hb, AU(ck.CKA_CLASS, ck.CKO_DATA)); len(got) != 2 {
		t.Fatalf("b, logged in, finds %d data objects, want 2", len(got))
	}
	// a's private object stays hidden from a after a logs out, though b
	// keeps the token's data key open.
	a.Must(ck.CKR_OK, "C_Logout", U(ha))
	a.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(ha), U(priv), Q(wire.Query{Type: ck.CKA_LABEL}))
	if got := a.Find(ha); len(got) != 2 {
		t.Fatalf("a finds %d objects after logout, want 2 (public, session)", len(got))
	}
	// Session objects end with their session.
	a.Must(ck.CKR_OK, "C_CloseSession", U(ha))
	ha = a.Open(slot, false)
	a.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(ha), U(sess), Q(wire.Query{Type: ck.CKA_LABEL}))
	// Re-initialising a token with sessions open is refused.
	a.Must(ck.CKR_SESSION_EXISTS, "C_InitToken", U(slot), S(SOPIN), Label32("vis"))
}

func TestFindAmongMany(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("many")
	h := cl.Open(slot, true)
	const n = 300
	for i := 0; i < n; i++ {
		cl.Create(h, DataObject(fmt.Sprintf("obj-%d", i), true, false, "v")...)
	}
	got := cl.Find(h, A(ck.CKA_LABEL, []byte("obj-137")))
	if len(got) != 1 {
		t.Fatalf("found %d objects labelled obj-137", len(got))
	}
	if all := cl.Find(h); len(all) != n {
		t.Fatalf("found %d objects, want %d", len(all), n)
	}
	cl.Must(ck.CKR_OK, "C_FindObjectsInit", U(h), T())
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_FindObjectsInit", U(h), T())
	cl.Must(ck.CKR_OK, "C_FindObjectsFinal", U(h))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_FindObjects", U(h), U(1))
}

func TestRandomAndUnsupported(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("rand")
	h := cl.Open(slot, false)
	out := cl.Must(ck.CKR_OK, "C_GenerateRandom", U(h), wire.Value{Ulong: 32})
	if len(out[1].Bytes) != 32 || bytes.Equal(out[1].Bytes, make([]byte, 32)) {
		t.Fatalf("random: %x", out[1].Bytes)
	}
	cl.Must(ck.CKR_RANDOM_SEED_NOT_SUPPORTED, "C_SeedRandom", U(h), S("seed"))
	cl.Must(ck.CKR_SESSION_HANDLE_INVALID, "C_GenerateRandom", U(h+99), wire.Value{Ulong: 32})
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_DigestInit", U(h), wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_MD5}})
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestUpdate", U(h), S("data"))
	cl.Must(ck.CKR_NO_EVENT, "C_WaitForSlotEvent", U(ck.CKF_DONT_BLOCK), None(), None())
}

// TestAppBoundToProcess: an application id is this process's; the same id
// from the same process shares the login state across connections.
func TestAppSharedAcrossConnections(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	var id [16]byte
	id[0] = 42
	c1 := d.dialAs(t, id)
	slot := c1.NewToken("shared")
	h1 := c1.Open(slot, false)
	c1.Must(ck.CKR_OK, "C_Login", U(h1), U(ck.CKU_USER), S(UserPIN))
	c2 := d.dialAs(t, id)
	info := c2.Must(ck.CKR_OK, "C_GetSessionInfo", U(h1), None())[1].Struct.(*wire.SessionInfo)
	if info.State != ck.CKS_RO_USER_FUNCTIONS {
		t.Fatalf("second connection of the application sees state %d", info.State)
	}
}

func TestTemplateAttributes(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("tmpl")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	wrap := wire.Attribute{Type: ck.CKA_WRAP_TEMPLATE, Nested: []wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AB(ck.CKA_SENSITIVE, true),
	}}
	key := cl.Create(h, append(AESKey("wrapper", true, false), wrap)...)
	out := cl.Must(ck.CKR_OK, "C_GetAttributeValue", U(h), U(key), Q(wire.Query{Type: ck.CKA_WRAP_TEMPLATE}))
	if out[2].Answers[0].Length != 2 {
		t.Fatalf("template size query: %+v", out[2].Answers[0])
	}
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_GetAttributeValue", U(h), U(key), Q(wire.Query{Type: ck.CKA_WRAP_TEMPLATE, Present: true, Capacity: 1}))
	out = cl.Must(ck.CKR_OK, "C_GetAttributeValue", U(h), U(key), Q(wire.Query{Type: ck.CKA_WRAP_TEMPLATE, Present: true, Capacity: 2}))
	if a := out[2].Answers[0]; a.Length != 2 || len(a.Value) == 0 {
		t.Fatalf("template value: %+v", a)
	}
}

// TestSessionLimit: an application may hold MaxSessions sessions, read-only
// and read-write alike; CK_TOKEN_INFO says so; one more is
// CKR_SESSION_COUNT until one closes; another application has its own.
func TestSessionLimit(t *testing.T) {
	t.Parallel()
	const max = 5
	d := startEngine(t, Config{MaxSessions: max})
	cl := d.dial(t)
	slot := cl.NewToken("limit")
	info := cl.TokenInfo(slot)
	if info.MaxSessionCount != max || info.MaxRwSessionCount != max {
		t.Fatalf("token info: max sessions %d, read-write %d; want %d", info.MaxSessionCount, info.MaxRwSessionCount, max)
	}
	var hs []uint64
	for i := range max {
		hs = append(hs, cl.Open(slot, i%2 == 0))
	}
	cl.Must(ck.CKR_SESSION_COUNT, "C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	cl.Must(ck.CKR_SESSION_COUNT, "C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION|ck.CKF_RW_SESSION), None(), None(), None())
	d.dial(t).Open(slot, false) // another application's count is its own
	cl.Must(ck.CKR_OK, "C_CloseSession", U(hs[0]))
	cl.Open(slot, true)
	if got := cl.TokenInfo(slot).SessionCount; got != max+1 {
		t.Fatalf("the token counts %d sessions, want %d", got, max+1)
	}
}

// BenchmarkSessionMemory reports what an open session costs the daemon:
// the heap held per session, over 10,000 sessions of one application.
func BenchmarkSessionMemory(b *testing.B) {
	d := startEngine(b, Config{})
	cl := d.dial(b)
	slot := cl.NewToken("memory")
	app := d.eng.appList()[0]
	const n = 10000
	var perSession float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		hs := make([]uint64, 0, n)
		for range n {
			h, err := d.eng.openSession(context.Background(), app, slot, ck.CKF_SERIAL_SESSION)
			if err != nil {
				b.Fatal(err)
			}
			hs = append(hs, h)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perSession = float64(after.HeapAlloc-before.HeapAlloc) / n
		for _, h := range hs {
			d.eng.closeSession(context.Background(), app, h)
		}
	}
	b.ReportMetric(perSession, "bytes/session")
}
