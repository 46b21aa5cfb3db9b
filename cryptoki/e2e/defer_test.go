package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// The module defers an Init the daemon accepted before to travel with the
// session's next call (docs/protocol.md, "Deferred Init"). These tests
// check that a client sees what it saw without deferral, and where the
// documented difference lies.

const destroyEnv = "HSMEMU_E2E_DESTROY" // slot:label, for TestDeferDestroyChild

// hmacKey creates a token HMAC key with a known value.
func hmacKey(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, label string, value []byte) pkcs11.ObjectHandle {
	t.Helper()
	k, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rwSession opens a read-write session on slot; login logs the
// application in through it (once per application: the login is shared).
func rwSession(t *testing.T, p *pkcs11.Ctx, slot uint, login bool) pkcs11.SessionHandle {
	t.Helper()
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if login {
		if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// mustSign makes a MAC with C_SignInit and C_Sign and checks it against
// the key's value.
func mustSign(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, k pkcs11.ObjectHandle, value, data []byte) {
	t.Helper()
	if err := p.SignInit(h, hmacMech, k); err != nil {
		t.Fatalf("SignInit: %v", err)
	}
	if got, err := p.Sign(h, data); err != nil || !bytes.Equal(got, hmacOf(value, data)) {
		t.Fatalf("Sign: %x %v", got, err)
	}
}

func hmacOf(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

var hmacMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}

// daemonReads is the number of read system calls the daemon has made
// (/proc/PID/io), or -1 when it cannot be read.
func daemonReads(d *daemonProc) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", d.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

func TestDeferredInit(t *testing.T) {
	p, d := withModule(t)
	slot := newToken(t, p, "defer")
	h := rwSession(t, p, slot, true)
	value := []byte("0123456789abcdef0123456789abcdef")
	k := hmacKey(t, p, h, "mac", value)

	sign := func(data []byte) ([]byte, error) {
		if err := p.SignInit(h, hmacMech, k); err != nil {
			return nil, fmt.Errorf("SignInit: %w", err)
		}
		return p.Sign(h, data)
	}

	// The first Init goes alone; the next ones travel with C_Sign.
	for i := range 5 {
		data := []byte(fmt.Sprint("message ", i))
		got, err := sign(data)
		if err != nil || !bytes.Equal(got, hmacOf(value, data)) {
			t.Fatalf("signature %d: %x %v", i, got, err)
		}
	}

	// They do travel with it. miekg/pkcs11's Sign asks for the length
	// first, so a signature is three calls: with the Init deferred, the
	// daemon reads twice per signature, not three times.
	if before := daemonReads(d); before >= 0 {
		for i := range 200 {
			if _, err := sign([]byte{byte(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if n := daemonReads(d) - before; n >= 500 {
			t.Errorf("the daemon read %d times for 200 SignInit and Sign pairs: the Inits were not deferred", n)
		}
	}

	// A second Init while one waits is refused, as it would be at once,
	// and the first one's operation goes on.
	if err := p.SignInit(h, hmacMech, k); err != nil {
		t.Fatal(err)
	}
	if err := p.SignInit(h, hmacMech, k); !is(err, pkcs11.CKR_OPERATION_ACTIVE) {
		t.Fatalf("second SignInit: %v, want CKR_OPERATION_ACTIVE", err)
	}
	if got, err := p.Sign(h, []byte("after")); err != nil || !bytes.Equal(got, hmacOf(value, []byte("after"))) {
		t.Fatalf("sign after the refused Init: %x %v", got, err)
	}

	// A multi-part operation after a deferred Init.
	if err := p.SignInit(h, hmacMech, k); err != nil {
		t.Fatal(err)
	}
	if err := p.SignUpdate(h, []byte("in ")); err != nil {
		t.Fatal(err)
	}
	if err := p.SignUpdate(h, []byte("parts")); err != nil {
		t.Fatal(err)
	}
	if got, err := p.SignFinal(h); err != nil || !bytes.Equal(got, hmacOf(value, []byte("in parts"))) {
		t.Fatalf("multi-part after a deferred Init: %x %v", got, err)
	}

	// A key the Init never accepted before is checked at once.
	if err := p.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, k+1000); !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
		t.Fatalf("SignInit with an unknown key: %v", err)
	}
}

// Within one application, a mutating call runs after the Inits that
// returned before it, as without deferral: the same sequence gives the same
// results on a key whose Init goes alone (the first) and on one whose Init
// is deferred.
func TestDeferredInitThenMutation(t *testing.T) {
	p, _ := withModule(t)
	slot := newToken(t, p, "defer-mutate")
	open := func() pkcs11.SessionHandle { return rwSession(t, p, slot, false) }
	a, b := open(), open()
	if err := p.Login(a, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	value := []byte("fedcba9876543210fedcba9876543210")

	// run: SignInit on session a, then mutate on session b, then Sign on a.
	run := func(k pkcs11.ObjectHandle, mutate func() error) (string, error) {
		if err := p.SignInit(a, hmacMech, k); err != nil {
			return "", err
		}
		if err := mutate(); err != nil {
			return "", err
		}
		sig, err := p.Sign(a, []byte("data"))
		if err == nil && !bytes.Equal(sig, hmacOf(value, []byte("data"))) {
			return "", fmt.Errorf("wrong signature %x", sig)
		}
		return fmt.Sprint(err), nil
	}
	warm := func(k pkcs11.ObjectHandle) {
		if err := p.SignInit(a, hmacMech, k); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Sign(a, []byte("warm")); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name   string
		mutate func(k pkcs11.ObjectHandle) error
	}{
		{name: "destroy", mutate: func(k pkcs11.ObjectHandle) error { return p.DestroyObject(b, k) }},
		{name: "set attribute", mutate: func(k pkcs11.ObjectHandle) error {
			return p.SetAttributeValue(b, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SIGN, false)})
		}},
	} {
		alone := hmacKey(t, p, a, tc.name+" alone", value)
		want, err := run(alone, func() error { return tc.mutate(alone) })
		if err != nil {
			t.Fatalf("%s, Init alone: %v", tc.name, err)
		}
		deferred := hmacKey(t, p, a, tc.name+" deferred", value)
		warm(deferred)
		got, err := run(deferred, func() error { return tc.mutate(deferred) })
		if err != nil {
			t.Fatalf("%s, Init deferred: %v", tc.name, err)
		}
		if got != want {
			t.Errorf("%s: Sign after a deferred Init gave %s, after an Init alone %s", tc.name, got, want)
		}
	}

	// Logout ends operations on private keys, whenever their Init left:
	// the same rv as after an Init that went alone.
	signAfterLogout := func(k pkcs11.ObjectHandle) string {
		if err := p.SignInit(a, hmacMech, k); err != nil {
			t.Fatal(err)
		}
		if err := p.Logout(b); err != nil {
			t.Fatal(err)
		}
		_, err := p.Sign(a, []byte("data"))
		if err := p.Login(b, pkcs11.CKU_USER, userPIN); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(err)
	}
	want := signAfterLogout(hmacKey(t, p, a, "logout alone", value))
	k := hmacKey(t, p, a, "logout deferred", value)
	warm(k)
	if got := signAfterLogout(k); got != want || want == "<nil>" {
		t.Errorf("Sign after logout: %s after a deferred Init, %s after an Init alone", got, want)
	}

	// After a mutating call, an Init the daemon accepted before is
	// checked again at once: a destroyed key, or a private key after
	// logout, is refused by the Init itself.
	initAfter := func(k pkcs11.ObjectHandle, mutate func() error) string {
		if err := mutate(); err != nil {
			t.Fatal(err)
		}
		err := p.SignInit(a, hmacMech, k)
		if err == nil {
			p.Sign(a, []byte("end it"))
		}
		return fmt.Sprint(err)
	}
	for _, tc := range []struct {
		name           string
		mutate, repair func(k pkcs11.ObjectHandle) error
	}{
		{name: "destroy", mutate: func(k pkcs11.ObjectHandle) error { return p.DestroyObject(b, k) }, repair: nil},
		{name: "logout", mutate: func(pkcs11.ObjectHandle) error { return p.Logout(b) },
			repair: func(pkcs11.ObjectHandle) error { return p.Login(b, pkcs11.CKU_USER, userPIN) }},
	} {
		cold := hmacKey(t, p, a, tc.name+" cold", value)
		want := initAfter(cold, func() error { return tc.mutate(cold) })
		if tc.repair != nil {
			tc.repair(cold)
		}
		warmed := hmacKey(t, p, a, tc.name+" warm", value)
		warm(warmed)
		got := initAfter(warmed, func() error { return tc.mutate(warmed) })
		if tc.repair != nil {
			tc.repair(warmed)
		}
		if got != want || want == "<nil>" {
			t.Errorf("SignInit after %s: %s on a key accepted before, %s on one never used", tc.name, got, want)
		}
	}
}

// An Init is held back only on a session the daemon said was idle, and only
// for the session the daemon accepted it on.
func TestDeferredInitOnlyWhereAccepted(t *testing.T) {
	p, _ := withModule(t)
	slotA := newToken(t, p, "defer-a")
	slotB := newToken(t, p, "defer-b")
	open := func(slot uint) pkcs11.SessionHandle { return rwSession(t, p, slot, false) }
	a, a2, b := open(slotA), open(slotA), open(slotB)
	for _, h := range []pkcs11.SessionHandle{a, b} {
		if err := p.Login(h, pkcs11.CKU_USER, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	value := []byte("0123456789abcdef0123456789abcdef")
	k := hmacKey(t, p, a, "a's key", value)
	for range 2 {
		if err := p.SignInit(a, hmacMech, k); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Sign(a, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}

	// A session of the other token: the key is not one of its objects.
	if _, err := p.GetSessionInfo(b); err != nil {
		t.Fatal(err)
	}
	if err := p.SignInit(b, hmacMech, k); !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
		t.Fatalf("SignInit on the other token's session: %v, want CKR_KEY_HANDLE_INVALID", err)
	}

	// Another session of the same token is checked the first time too,
	// then held back like a's.
	if _, err := p.GetSessionInfo(a2); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		mustSign(t, p, a2, k, value, []byte("y"))
	}

	// An operation in progress: the session is not idle, so a second
	// Init goes to the daemon and is refused.
	if err := p.SignInit(a, hmacMech, k); err != nil {
		t.Fatal(err)
	}
	if err := p.SignUpdate(a, []byte("part")); err != nil {
		t.Fatal(err)
	}
	if err := p.SignInit(a, hmacMech, k); !is(err, pkcs11.CKR_OPERATION_ACTIVE) {
		t.Fatalf("SignInit during a multi-part operation: %v, want CKR_OPERATION_ACTIVE", err)
	}
	if got, err := p.SignFinal(a); err != nil || !bytes.Equal(got, hmacOf(value, []byte("part"))) {
		t.Fatalf("SignFinal: %x %v", got, err)
	}
}

// A daemon that restarts knows nothing of the application's sessions: an
// Init held back before the restart never runs after it, and the old
// handles stay invalid once the application has opened sessions and found
// its keys again, since the module's hello gives each fresh start of the
// application a new handle epoch (docs/protocol.md, "Connection").
func TestDeferredInitAcrossRestart(t *testing.T) {
	p, d := withModule(t)
	slot := newToken(t, p, "defer-restart")
	login := func() pkcs11.SessionHandle { return rwSession(t, p, slot, true) }
	h := login()
	first, second := []byte("first key 0123456789abcdef012345"), []byte("second key 0123456789abcdef01234")
	ka := hmacKey(t, p, h, "first", first)
	kb := hmacKey(t, p, h, "second", second)
	for range 2 {
		if err := p.SignInit(h, hmacMech, kb); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Sign(h, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SignInit(h, hmacMech, kb); err != nil { // held back
		t.Fatal(err)
	}
	d.restart()

	// The application starts again: sessions, and its keys found in the
	// other order, as many as before and more.
	h1 := login()
	var news []uint64
	for _, label := range []string{"second", "first"} {
		got := find(t, p, h1, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
		if len(got) != 1 {
			t.Fatalf("%s key found %d times", label, len(got))
		}
		news = append(news, uint64(got[0]))
	}
	news = append(news, uint64(h1))
	for range 8 {
		news = append(news, uint64(rwSession(t, p, slot, false)))
	}
	for _, n := range news {
		if n == uint64(h) || n == uint64(ka) || n == uint64(kb) {
			t.Fatalf("after the restart the handle %#x came back (old session %#x, keys %#x %#x)", n, h, ka, kb)
		}
	}
	// The old session has neither the held operation nor any other.
	if got, err := p.Sign(h, []byte("data")); !is(err, pkcs11.CKR_SESSION_HANDLE_INVALID) {
		t.Fatalf("Sign on the old session after the restart: %v, want CKR_SESSION_HANDLE_INVALID (a MAC under the first key: %v)",
			err, err == nil && bytes.Equal(got, hmacOf(first, []byte("data"))))
	}
	for _, k := range []pkcs11.ObjectHandle{ka, kb} {
		if _, err := p.GetAttributeValue(h1, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)}); !is(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) {
			t.Fatalf("the old key handle %#x after the restart: %v, want CKR_OBJECT_HANDLE_INVALID", k, err)
		}
	}
	if got, err := p.Sign(h1, []byte("data")); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Sign on a new session: %x %v, want CKR_OPERATION_NOT_INITIALIZED", got, err)
	}
}

// Another application destroying the key between a deferred Init and its
// Sign is the one case that differs: the Init, sent with the Sign, fails
// then, and the Sign reports its rv. A call that does not continue the
// operation goes through, and the next one that does reports it.
func TestDeferredInitKeyDestroyedElsewhere(t *testing.T) {
	if os.Getenv(destroyEnv) != "" {
		t.Skip("runs in the parent")
	}
	p, d := withModule(t)
	slot := newToken(t, p, "defer-elsewhere")
	h := rwSession(t, p, slot, true)
	value := []byte("00112233445566778899aabbccddeeff")
	destroyElsewhere := func(label string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDeferDestroyChild$", "-test.v")
		cmd.Env = append(d.env(), fmt.Sprintf("%s=%d:%s", destroyEnv, slot, label))
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "PASS") {
			t.Fatalf("child: %v\n%s", err, out)
		}
	}

	// The next call after the key went: C_Sign, which the refusal is
	// reported to; C_GetSessionInfo, after which C_Sign reports it; or a
	// new C_SignInit, which replaces the refused one.
	for _, next := range []string{"sign", "between", "init"} {
		label := "elsewhere " + next
		k := hmacKey(t, p, h, label, value)
		other := hmacKey(t, p, h, label+" next", value)
		if err := p.SignInit(h, hmacMech, k); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Sign(h, []byte("warm")); err != nil {
			t.Fatal(err)
		}
		if err := p.SignInit(h, hmacMech, k); err != nil {
			t.Fatal(err)
		}
		destroyElsewhere(label)
		if next == "init" {
			mustSign(t, p, h, other, value, []byte("next"))
			continue
		}
		if next == "between" {
			if _, err := p.GetSessionInfo(h); err != nil {
				t.Fatalf("GetSessionInfo between: %v", err)
			}
		}
		if _, err := p.Sign(h, []byte("data")); !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
			t.Fatalf("Sign after the key went (%s): %v, want CKR_KEY_HANDLE_INVALID", next, err)
		}
		// The operation is over: a new Init starts one.
		mustSign(t, p, h, other, value, []byte("next"))
	}
}

// TestDeferDestroyChild is the other application of
// TestDeferredInitKeyDestroyedElsewhere: it destroys the key labelled so.
func TestDeferDestroyChild(t *testing.T) {
	spec := os.Getenv(destroyEnv)
	if spec == "" {
		t.Skip("only as TestDeferredInitKeyDestroyedElsewhere's child")
	}
	slotStr, label, _ := strings.Cut(spec, ":")
	slot, _ := strconv.Atoi(slotStr)
	p := pkcs11.New(need(t).module)
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Destroy()
	defer p.Finalize()
	h := rwSession(t, p, uint(slot), true)
	objs := find(t, p, h, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	if len(objs) != 1 {
		t.Fatalf("found %d keys labelled %q", len(objs), label)
	}
	if err := p.DestroyObject(h, objs[0]); err != nil {
		t.Fatal(err)
	}
}

// Threads sharing sessions, with another thread looking at those sessions
// and another making mutating calls: every signature is right and no call
// fails. Calls on a session whose held Init is on its way wait for it, so a
// thread's C_Sign never overtakes the Init another thread's call carries.
func TestDeferredInitThreads(t *testing.T) {
	p, _ := withModule(t)
	slot := newToken(t, p, "defer-threads")
	open := func() pkcs11.SessionHandle { return rwSession(t, p, slot, false) }
	shared := []pkcs11.SessionHandle{open(), open()}
	own := rwSession(t, p, slot, true)
	value := []byte("threads threads threads threads!")
	k := hmacKey(t, p, own, "threads", value)

	stop := make(chan struct{})
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	// spawn runs step(0), step(1), ... on a goroutine until stop or an
	// error.
	spawn := func(step func(i int) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := step(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var locks [2]sync.Mutex
	signs := atomic.Int64{}
	// Signers: two per shared session, taking turns on it.
	for w := range 4 {
		h, mu := shared[w%2], &locks[w%2]
		spawn(func(i int) error {
			data := []byte(fmt.Sprint(w, " ", i))
			mu.Lock()
			err := p.SignInit(h, hmacMech, k)
			var got []byte
			if err == nil {
				got, err = p.Sign(h, data)
			}
			mu.Unlock()
			if err != nil || !bytes.Equal(got, hmacOf(value, data)) {
				return fmt.Errorf("signer %d, signature %d: %x %v", w, i, got, err)
			}
			signs.Add(1)
			return nil
		})
	}
	// A reader of the shared sessions, between the signers' calls.
	spawn(func(i int) error {
		if _, err := p.GetSessionInfo(shared[i%2]); err != nil {
			return fmt.Errorf("GetSessionInfo: %v", err)
		}
		return nil
	})
	// A writer: objects created, changed and destroyed on its own session.
	spawn(func(i int) error {
		o, err := p.CreateObject(own, dataObject(fmt.Sprint("scratch ", i), false, false, []byte("x")))
		if err == nil {
			err = p.SetAttributeValue(own, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, []byte("y"))})
		}
		if err == nil {
			err = p.DestroyObject(own, o)
		}
		if err != nil {
			return fmt.Errorf("writer: %v", err)
		}
		return nil
	})
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if signs.Load() < 100 {
		t.Errorf("%d signatures in 1.5 s", signs.Load())
	}
}
