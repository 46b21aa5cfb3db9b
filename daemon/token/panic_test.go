package token

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// A panic in a call (a bug, or a library's on hostile input) is answered
// CKR_GENERAL_ERROR and the daemon serves on (daemon/requests.go,
// Server.call). What the call had begun must then be left as an error
// leaves it: these tests inject a panic where a library call can make
// one and look at what the next call finds.

// recovering serves requests as the server does: a panic in a call is
// answered CKR_GENERAL_ERROR.
type recovering struct{ *inProcess }

func (p recovering) Exchange(id, callID uint32, body []byte) (rep wire.Reply, err error) {
	defer func() {
		if recover() != nil {
			rep, err = wire.Reply{ID: id, RV: ck.CKR_GENERAL_ERROR}, nil
		}
	}()
	return p.inProcess.Exchange(id, callID, body)
}

// dialRecovering attaches a new application to eng, served as the server
// serves it, and returns its client and its state.
func dialRecovering(t *testing.T, eng *Engine) (*client, *App) {
	t.Helper()
	a, ok := eng.Attach(AppID(NewApp()), int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("attach refused")
	}
	t.Cleanup(func() { eng.Detach(a) })
	return &client{Client: NewClient(t, recovering{&inProcess{eng: eng, app: a, res: &wire.Results{}}})}, a
}

// withSession runs f on session h's state, under its lock.
func withSession(t *testing.T, app *App, h uint64, f func(s *session)) {
	t.Helper()
	s, err := app.session(h)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

type panicDigest struct{ mech.DigestOp }

func (panicDigest) Update([]byte) { panic("injected") }

// panicCipher is a buffering cipher (AES-GCM) whose Update panics.
type panicCipher struct {
	mech.CipherOp
	mech.Buffering
}

func (panicCipher) Update([]byte) ([]byte, error) { panic("injected") }

type panicSeal struct{ mech.MsgCipher }

func (panicSeal) Seal(*mech.MsgParams, []byte, []byte, []byte) ([]byte, []byte, error) {
	panic("injected")
}

// TestPanicEndsOperation: a panic in an operation's call ends the
// operation, as CKR_GENERAL_ERROR does (PKCS#11 v3.0, 5.2), and gives its
// charge back; kept, it answered the next Init CKR_OPERATION_ACTIVE and
// went on from the state the panic left.
func TestPanicEndsOperation(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl, app := dialRecovering(t, d.eng)
	h := cl.Open(cl.NewToken("panic"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA256))
	cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("a"))
	withSession(t, app, h, func(s *session) { s.ops[opDigest].digest = panicDigest{s.ops[opDigest].digest} })
	cl.Must(ck.CKR_GENERAL_ERROR, "C_DigestUpdate", U(h), S("b"))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestFinal", U(h), Out(64))
	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA256))
	abc := sha256.Sum256([]byte("abc"))
	if out := cl.Must(ck.CKR_OK, "C_Digest", U(h), S("abc"), Out(64)); !bytes.Equal(out[2].Bytes, abc[:]) {
		t.Fatalf("digest after the panic: %x", out[2].Bytes)
	}

	// AES-GCM charges what it buffers before its Update.
	key := aesKey(cl, h, false)
	iv := bytes.Repeat([]byte{7}, 12)
	gcm := MP(ck.CKM_AES_GCM, wire.GCMParams{IV: iv, TagBits: 128}.Param())
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm, U(key))
	withSession(t, app, h, func(s *session) {
		c := s.ops[opEncrypt].cipher
		s.ops[opEncrypt].cipher = panicCipher{c, c.(mech.Buffering)}
	})
	cl.Must(ck.CKR_GENERAL_ERROR, "C_EncryptUpdate", U(h), S("some plaintext"), Out(64))
	if n := d.eng.opMem.Used(); n != 0 {
		t.Errorf("%d bytes of the operation budget still held after the panic", n)
	}
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptFinal", U(h), Out(64))
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm, U(key))
	cl.Must(ck.CKR_OK, "C_Encrypt", U(h), S("x"), Out(64))

	// A message: the panic ends it, not the process.
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	var inner mech.MsgCipher
	withSession(t, app, h, func(s *session) {
		inner = s.msgs[msgEncrypt].cipher
		s.msgs[msgEncrypt].cipher = panicSeal{inner}
	})
	fixed := []byte{1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0}
	msg := func() wire.Value { return gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 16) }
	cl.Must(ck.CKR_GENERAL_ERROR, "C_EncryptMessage", U(h), msg(), S("aad"), S("plain"), Out(64))
	withSession(t, app, h, func(s *session) { s.msgs[msgEncrypt].cipher = inner })
	cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), msg(), S("aad"), S("plain"), Out(64))
	cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
}

// panicLogin is a Store whose PIN check, or logout, panics while armed.
type panicLogin struct {
	Store
	armed, armedLogout atomic.Bool
}

func (p *panicLogin) Login(ctx context.Context, token keystore.UUID, role keystore.Role, pin []byte) error {
	if p.armed.Load() {
		panic("injected")
	}
	return p.Store.Login(ctx, token, role, pin)
}

func (p *panicLogin) Logout(token keystore.UUID) {
	if p.armedLogout.Load() {
		panic("injected")
	}
	p.Store.Logout(token)
}

// TestPanicInLogoutUnlocks: a panic in the keystore's logout, which the
// last session's C_CloseSession and the end of every login on the token
// reach, leaves the application's lock free. Held, every later call of
// the application waited for ever.
func TestPanicInLogoutUnlocks(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	ps := &panicLogin{Store: d.store}
	eng := New(ps, nil, Config{FailureDelay: -1})
	t.Cleanup(func() { eng.Interrupt(); eng.Close() })
	cl, app := dialRecovering(t, eng)
	slot := cl.NewToken("logout")
	unlocked := func(when string) {
		t.Helper()
		if !app.mu.TryLock() {
			app.mu.Unlock() // for the cleanup's Detach
			t.Fatalf("the application's lock is held after a panic in %s", when)
		}
		app.mu.Unlock()
	}

	h := cl.Open(slot, false)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	ps.armedLogout.Store(true)
	cl.Must(ck.CKR_GENERAL_ERROR, "C_CloseSession", U(h))
	ps.armedLogout.Store(false)
	unlocked("C_CloseSession")
	h = cl.Open(slot, false)

	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	tok, err := app.session(h)
	if err != nil {
		t.Fatal(err)
	}
	ps.armedLogout.Store(true)
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("ending the logins did not panic")
			}
		}()
		eng.endLogins(tok.token, eng.countEnded(tok.token))
	}()
	ps.armedLogout.Store(false)
	unlocked("ending every login on the token")
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))
}

// TestPanicInLoginReleases: a panic in the PIN check gives back the
// login it reserved on the token. Kept, it counted an application in for
// ever, and the token's data key stayed open after its last logout.
func TestPanicInLoginReleases(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	ps := &panicLogin{Store: d.store}
	eng := New(ps, nil, Config{FailureDelay: -1})
	t.Cleanup(func() { eng.Interrupt(); eng.Close() })
	a, _ := dialRecovering(t, eng)
	b, _ := dialRecovering(t, eng)
	slot := a.NewToken("login")
	ha := a.Open(slot, false)
	a.Must(ck.CKR_OK, "C_Login", U(ha), U(ck.CKU_USER), S(UserPIN))
	hb := b.Open(slot, false)
	ps.armed.Store(true)
	b.Must(ck.CKR_GENERAL_ERROR, "C_Login", U(hb), U(ck.CKU_USER), S(UserPIN))
	ps.armed.Store(false)

	tokens, err := d.store.Tokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var tok keystore.UUID
	for _, ti := range tokens {
		if strings.TrimSpace(ti.Label) == "login" {
			tok = ti.UUID
		}
	}
	if !d.store.LoggedIn(tok) {
		t.Fatal("the token is not logged in")
	}
	a.Must(ck.CKR_OK, "C_Logout", U(ha))
	if d.store.LoggedIn(tok) {
		t.Fatal("the token's data key is still open after its last logout")
	}
	// The application whose login panicked logs in as any other.
	b.Must(ck.CKR_OK, "C_Login", U(hb), U(ck.CKU_USER), S(UserPIN))
}

// panicWipe is a cipher whose Wipe panics.
type panicWipe struct{ mech.CipherOp }

func (panicWipe) Wipe() { panic("injected") }

// TestPanicInRefuseUnlocks: a panic while a refused call ends the
// session's operation (outside any call: it ends the connection) leaves
// the session's lock free. Held, every later call on the session, from
// the application's other connections too, waited for ever.
func TestPanicInRefuseUnlocks(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl, app := dialRecovering(t, d.eng)
	h := cl.Open(cl.NewToken("refuse"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := aesKey(cl, h, false)
	gcm := MP(ck.CKM_AES_GCM, wire.GCMParams{IV: bytes.Repeat([]byte{7}, 12), TagBits: 128}.Param())
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcm, U(key))
	withSession(t, app, h, func(s *session) { s.ops[opEncrypt].cipher = panicWipe{s.ops[opEncrypt].cipher} })
	c, ok := calls.ByName("C_EncryptUpdate")
	if !ok {
		t.Fatal("no C_EncryptUpdate")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the refusal did not panic")
			}
		}()
		d.eng.Refuse(app, c, h, TooLarge)
	}()
	s, err := app.session(h)
	if err != nil {
		t.Fatal(err)
	}
	if !s.mu.TryLock() {
		s.mu.Unlock() // for the cleanup's session close
		t.Fatal("the session's lock is held after a panic in a refusal")
	}
	s.mu.Unlock()
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptFinal", U(h), Out(64))
}
