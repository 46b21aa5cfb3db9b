package token

import (
	"context"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// TestLogoutAllEndsSessions: the engine's logout of every daemon leaves
// every application logged in to the token as C_Logout would (session
// state public, an operation on a private key ended, the private key's
// and the private session object's handles refused, C_Logout answering
// CKR_USER_NOT_LOGGED_IN), counts those applications, leaves a login on
// another token alone, and lets each log in again (the private key under
// a new handle).
func TestLogoutAllEndsSessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("ended")
	other := cl.NewToken("kept")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := aesKey(cl, h, true)
	mem := cl.Create(h, DataObject("mem", false, true, "v")...)
	cl2 := d.dial(t)
	h2 := cl2.Open(slot, false)
	hk := cl2.Open(other, false)
	cl2.Must(ck.CKR_OK, "C_Login", U(hk), U(ck.CKU_USER), S(UserPIN))
	kept := aesKey(cl2, cl2.Open(other, true), true)
	cl3 := d.dial(t) // not logged in
	cl3.Open(slot, false)

	iv := wire.Param{Kind: calls.PBytes, Bytes: make([]byte, 16)}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 16)), Out(64))

	tokens, err := d.store.Tokens(ctx)
	if err != nil || len(tokens) != 2 {
		t.Fatalf("tokens: %v %v", tokens, err)
	}
	epoch, apps, err := d.eng.LogoutAll(ctx, tokens[0].UUID)
	if err != nil || epoch != 1 || apps != 1 {
		t.Fatalf("LogoutAll: epoch %d, %d applications, %v; want 1, 1", epoch, apps, err)
	}
	for _, c := range []struct {
		cl *client
		h  uint64
	}{{cl, h}, {cl2, h2}} {
		out := c.cl.Must(ck.CKR_OK, "C_GetSessionInfo", U(c.h), None())
		if st := out[1].Struct.(*wire.SessionInfo).State; st != ck.CKS_RW_PUBLIC_SESSION && st != ck.CKS_RO_PUBLIC_SESSION {
			t.Fatalf("session state %d after the logout of every daemon, want a public one", st)
		}
	}
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptUpdate", U(h), B(make([]byte, 16)), Out(64))
	cl.Must(ck.CKR_KEY_HANDLE_INVALID, "C_EncryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(key))
	cl.Must(ck.CKR_OBJECT_HANDLE_INVALID, "C_GetAttributeValue", U(h), U(mem), Q(wire.Query{Type: ck.CKA_LABEL}))
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Logout", U(h))
	// The other token's login is its own.
	cl2.Must(ck.CKR_OK, "C_EncryptInit", U(hk), MP(ck.CKM_AES_CBC_PAD, iv), U(kept))

	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	// The old handle stays invalid (C_Logout); the key is found anew.
	cl.Must(ck.CKR_KEY_HANDLE_INVALID, "C_EncryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(key))
	found := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))
	if len(found) != 1 || found[0] == key {
		t.Fatalf("the key after a new login: %v (old handle %d)", found, key)
	}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), MP(ck.CKM_AES_CBC_PAD, iv), U(found[0]))

	// No one logged in any more but the first application: one ended.
	if _, apps, err := d.eng.LogoutAll(ctx, tokens[0].UUID); err != nil || apps != 1 {
		t.Fatalf("second LogoutAll: %d applications, %v; want 1", apps, err)
	}
	if _, apps, err := d.eng.LogoutAll(ctx, tokens[0].UUID); err != nil || apps != 0 {
		t.Fatalf("third LogoutAll: %d applications, %v; want 0", apps, err)
	}
}

// TestLoginsEndedByTheKeystore: a login the keystore ends on its own
// logs the applications out too. Another daemon's logout of every daemon
// (a second engine on the same keystore file) leaves the row's epoch
// ahead of this daemon's login; a private object stored through it is
// refused, the keystore ends its login and tells the engine, whose
// sessions go to the public state; a login made afterwards stands.
func TestLoginsEndedByTheKeystore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("elsewhere")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Create(h, DataObject("before", true, true, "v")...)
	tokens, err := d.store.Tokens(ctx)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens: %v %v", tokens, err)
	}

	d2 := &testEngine{db: d.db}
	d2.start(t, Config{})
	t.Cleanup(d2.stop)
	if epoch, apps, err := d2.eng.LogoutAll(ctx, tokens[0].UUID); err != nil || epoch != 1 || apps != 0 {
		t.Fatalf("LogoutAll on the other daemon: epoch %d, %d applications, %v; want 1, 0", epoch, apps, err)
	}

	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_CreateObject", U(h), T(DataObject("after", true, true, "v")...), None())
	deadline := time.Now().Add(time.Minute)
	for {
		out := cl.Must(ck.CKR_OK, "C_GetSessionInfo", U(h), None())
		if out[1].Struct.(*wire.SessionInfo).State == ck.CKS_RW_PUBLIC_SESSION {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session is still logged in a minute after the keystore ended its login")
		}
		time.Sleep(time.Millisecond)
	}
	cl.Must(ck.CKR_USER_NOT_LOGGED_IN, "C_Logout", U(h))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	cl.Create(h, DataObject("after", true, true, "v")...)
	out := cl.Must(ck.CKR_OK, "C_GetSessionInfo", U(h), None())
	if st := out[1].Struct.(*wire.SessionInfo).State; st != ck.CKS_RW_USER_FUNCTIONS {
		t.Fatalf("session state %d after logging in again, want CKS_RW_USER_FUNCTIONS", st)
	}
}
