package token

import (
	"os"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// memUser is an engine with small operation bounds, a user logged in on a
// read-write session, and an AES key for GCM.
func memUser(t *testing.T, cfg Config) (d *testEngine, cl *client, slot, h, key uint64) {
	t.Helper()
	d = startEngine(t, cfg)
	cl = d.dial(t)
	slot = cl.NewToken("mem")
	h = cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key = cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, false),
		A(ck.CKA_VALUE, make([]byte, 32)), AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_DECRYPT, true))
	return d, cl, slot, h, key
}

func gcm12() wire.Value { return gcmMech(make([]byte, 12), nil, 128) }

// held checks what operations hold of the budget.
func held(t *testing.T, d *testEngine, want int64, when string) {
	t.Helper()
	if used, _ := d.eng.OpMemory(); used != want {
		t.Errorf("%s: operations hold %d bytes, want %d", when, used, want)
	}
}

// A GCM operation fed in parts holds at most MaxOpBuffer bytes of input:
// one more is CKR_DATA_LEN_RANGE (CKR_ENCRYPTED_DATA_LEN_RANGE to
// decrypt), and ends the operation, as every error does; at the bound it
// completes.
func TestOpBufferBound(t *testing.T) {
	t.Parallel()
	d, cl, _, h, key := memUser(t, Config{MaxOpBuffer: 1000})

	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 600)), Out(0))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 400)), Out(0))
	out := cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(2000))
	if len(out[1].Bytes) != 1016 {
		t.Fatalf("ciphertext of %d bytes, want 1016", len(out[1].Bytes))
	}
	ct := out[1].Bytes
	held(t, d, 0, "after the Final")

	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 600)), Out(0))
	cl.Must(ck.CKR_DATA_LEN_RANGE, "C_EncryptUpdate", U(h), B(make([]byte, 401)), Out(0))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptFinal", U(h), Out(2000))
	held(t, d, 0, "after the refusal")

	// The ciphertext and tag of 1000 bytes are 1016: over the bound.
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), B(ct[:1000]), Out(0))
	cl.Must(ck.CKR_ENCRYPTED_DATA_LEN_RANGE, "C_DecryptUpdate", U(h), B(ct[1000:]), Out(0))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DecryptFinal", U(h), Out(2000))
	held(t, d, 0, "after the decryption's refusal")

	// The single-part form is not bounded by it: nothing is held.
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(ct), Out(2000))
}

// Operations take what they hold between calls from the engine's budget:
// none may take more than is left (CKR_DEVICE_MEMORY, which ends it), and
// every way an operation ends gives its share back.
func TestOpBudget(t *testing.T) {
	t.Parallel()
	d, cl, slot, h, key := memUser(t, Config{MaxOpBuffer: 2500, OpBudget: 3500})
	h2 := cl.Open(slot, true)

	// One operation holds 2000 bytes of input (and its buffer's
	// capacity: what the budget counts is the memory).
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 2000)), Out(0))
	first, _ := d.eng.OpMemory()
	if first < 2000 || first > 3000 {
		t.Fatalf("an operation holding 2000 bytes is charged %d", first)
	}
	// Another has no room.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h2), gcm12(), U(key))
	cl.Must(ck.CKR_DEVICE_MEMORY, "C_EncryptUpdate", U(h2), B(make([]byte, 2000)), Out(0))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptUpdate", U(h2), B(make([]byte, 10)), Out(0))
	// An output kept after a size query counts too.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h2), gcm12(), U(key))
	cl.Must(ck.CKR_DEVICE_MEMORY, "C_Encrypt", U(h2), B(make([]byte, 1500)), SizeQuery())
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Encrypt", U(h2), B(make([]byte, 1500)), Out(2000))
	held(t, d, first, "after the refusals")

	// C_SessionCancel gives it back.
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_ENCRYPT))
	held(t, d, 0, "after C_SessionCancel")

	// So do a size query's delivery, and a short buffer's retry. What
	// is held is the output and the input it was measured over (a short
	// input is kept whole, 1400 bytes in a pooled buffer of 2048).
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h2), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_Encrypt", U(h2), B(make([]byte, 1400)), SizeQuery())
	held(t, d, 1416+2048, "an output measured")
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Encrypt", U(h2), B(make([]byte, 1400)), Out(10))
	held(t, d, 1416+2048, "an output too large for its buffer")
	cl.Must(ck.CKR_OK, "C_Encrypt", U(h2), B(make([]byte, 1400)), Out(2000))
	held(t, d, 0, "an output delivered")

	// A session's close, and the application's end.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h2), gcm12(), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h2), B(make([]byte, 100)), Out(0))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h2))
	held(t, d, 0, "after C_CloseSession")

	app, ok := d.eng.Attach(AppID{0x4d}, int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("attach")
	}
	other := &client{Client: NewClient(t, &inProcess{eng: d.eng, app: app, res: &wire.Results{}})}
	oh := other.Open(slot, false)
	other.Must(ck.CKR_OK, "C_Login", U(oh), U(ck.CKU_USER), S(UserPIN))
	okey := other.Create(oh, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, false),
		A(ck.CKA_VALUE, make([]byte, 32)), AB(ck.CKA_ENCRYPT, true))
	other.Must(ck.CKR_OK, "C_EncryptInit", U(oh), gcm12(), U(okey))
	other.Must(ck.CKR_OK, "C_EncryptUpdate", U(oh), B(make([]byte, 100)), Out(0))
	d.eng.Detach(app)
	held(t, d, 0, "after the application ended")
}

// Refuse answers a request the daemon would not read with the code the
// specification gives its call, and ends the operation it continues.
func TestRefuse(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	app, ok := d.eng.Attach(AppID{0x52}, int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("attach")
	}
	t.Cleanup(func() { d.eng.Detach(app) })
	rc := &client{Client: NewClient(t, &inProcess{eng: d.eng, app: app, res: &wire.Results{}})}
	rh := rc.Open(rc.NewToken("refuse"), true)
	rc.Must(ck.CKR_OK, "C_Login", U(rh), U(ck.CKU_USER), S(UserPIN))
	rkey := rc.Create(rh, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_TOKEN, false),
		A(ck.CKA_VALUE, make([]byte, 32)), AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_DECRYPT, true))
	call := func(name string) *calls.Call {
		c, ok := calls.ByName(name)
		if !ok {
			t.Fatal(name)
		}
		return c
	}
	for _, tc := range []struct {
		call string
		why  Refusal
		want uint64
	}{
		{call: "C_EncryptUpdate", why: TooLarge, want: ck.CKR_DATA_LEN_RANGE},
		{call: "C_Encrypt", why: TooLarge, want: ck.CKR_DATA_LEN_RANGE},
		{call: "C_DecryptUpdate", why: TooLarge, want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{call: "C_EncryptUpdate", why: NoMemory, want: ck.CKR_DEVICE_MEMORY},
		{call: "C_VerifyFinal", why: TooLarge, want: ck.CKR_SIGNATURE_LEN_RANGE},
		{call: "C_Digest", why: TooLarge, want: ck.CKR_DEVICE_MEMORY},
		{call: "C_CreateObject", why: TooLarge, want: ck.CKR_DEVICE_MEMORY},
		{call: "C_SignInit", why: TooLarge, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{call: "C_SetPIN", why: TooLarge, want: ck.CKR_PIN_LEN_RANGE},
		{call: "C_Login", why: TooLarge, want: ck.CKR_ARGUMENTS_BAD},
		{call: "C_GetSessionInfo", why: TooLarge, want: ck.CKR_ARGUMENTS_BAD},
		{call: "C_LoginUser", why: NoMemory, want: ck.CKR_FUNCTION_NOT_SUPPORTED},
	} {
		// An operation of each kind in progress on the session.
		rc.Call("C_EncryptInit", U(rh), gcm12(), U(rkey))
		rc.Call("C_DecryptInit", U(rh), gcm12(), U(rkey))
		if got := d.eng.Refuse(app, call(tc.call), rh, tc.why); got != tc.want {
			t.Errorf("%s refused (%d): %v, want %v", tc.call, tc.why, ck.Error(got), ck.Error(tc.want))
		}
		role := calls.RoleOf(call(tc.call))
		rv, _ := rc.Call("C_EncryptUpdate", U(rh), B([]byte("x")), Out(100))
		if ended := rv == ck.CKR_OPERATION_NOT_INITIALIZED; ended != (role.Continues&calls.OpEncrypt != 0) {
			t.Errorf("%s refused: the encryption ended %v", tc.call, ended)
		}
		rc.Call("C_SessionCancel", U(rh), U(ck.CKF_ENCRYPT|ck.CKF_DECRYPT))
	}
}
