package daemon

import (
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/remote/remotetest"
	"hsmemu/daemon/token"
)

// TestSessionObjectFlood: a remote client that sees a token, logged in
// or not, makes session objects of 2 MiB until the daemon refuses
// (before the session budget nothing did: each C_CreateObject kept 2 MiB
// for as long as the session lived, until the daemon ran out of memory).
// Its identity holds at most its share of the budget: another identity,
// and a local client, still make objects and search. What it held is
// given back when its connection ends.
func TestSessionObjectFlood(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	d := startTLSDaemon(t, pki, testPolicy(t), nil)
	local := d.dial(t)
	pay := local.NewToken("pay")

	sock, _, err := DialTLS(d.tlsAddr, clientTLS(t, pki, pki.App), NewApp(), wire.Version)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	flood := NewClient(t, sock)
	h := flood.Open(pay, false)
	value := string(make([]byte, 1<<20)) // an attribute's longest
	tmpl := append(DataObject("flood", false, false, value), A(ck.CKA_APPLICATION, []byte(value)))
	made := 0
	const tries = 160 // 320 MiB, past the default budget of 128
	for range tries {
		rv, _ := flood.Call("C_CreateObject", U(h), T(tmpl...), None())
		if rv == ck.CKR_DEVICE_MEMORY {
			break
		}
		if rv != ck.CKR_OK {
			t.Fatalf("C_CreateObject: %#x", rv)
		}
		made++
	}
	used, size := d.eng.SessionMemory()
	if made == 0 || made == tries || used > size/8 || size != token.DefaultSessionBudget {
		t.Fatalf("%d objects of 2 MiB made; the session budget holds %d of %d", made, used, size)
	}
	other := d.dialTLS(t, pki, pki.Admin)
	oh := other.Open(pay, false)
	other.Create(oh, DataObject("other", false, false, value)...)
	if got := other.Find(oh, A(ck.CKA_LABEL, []byte("other"))); len(got) != 1 {
		t.Fatalf("another identity finds %v", got)
	}
	other.Must(ck.CKR_OK, "C_CloseSession", U(oh))
	// Growing an object is charged too.
	small := flood.Create(h, DataObject("small", false, false, "x")...)
	flood.Must(ck.CKR_DEVICE_MEMORY, "C_SetAttributeValue", U(h), U(small), T(A(ck.CKA_VALUE, []byte(value)), A(ck.CKA_APPLICATION, []byte(value))))
	// Destroying gives it back.
	before, _ := d.eng.SessionMemory()
	flood.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(small))
	if after, _ := d.eng.SessionMemory(); after >= before {
		t.Fatalf("C_DestroyObject: the session budget holds %d, before it %d", after, before)
	}
	sock.Close()
	eventually(t, "the session budget is given back", func() bool { used, _ := d.eng.SessionMemory(); return used == 0 })

	// And a search's results, from its Init to its Final.
	lh := local.Open(pay, false)
	for range 3 {
		local.Create(lh, DataObject("found", false, false, "x")...)
	}
	local.Must(ck.CKR_OK, "C_FindObjectsInit", U(lh), T())
	withFind, _ := d.eng.SessionMemory()
	local.Must(ck.CKR_OK, "C_FindObjectsFinal", U(lh))
	if after, _ := d.eng.SessionMemory(); after != withFind-3*8 {
		t.Fatalf("a search of 3 results: the budget holds %d with it, %d after", withFind, after)
	}
}

// TestAllSessions: the applications' sessions together stop at
// MaxAllSessions, and a closed application's are counted out.
func TestAllSessions(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{MaxAllSessions: 5})
	sock, _, err := Dial(d.sock, NewApp(), wire.Version)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	a, b := NewClient(t, sock), d.dial(t)
	slot := a.NewToken("all")
	for range 5 {
		a.Open(slot, false)
	}
	b.Must(ck.CKR_SESSION_COUNT, "C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
	sock.Close()
	eventually(t, "the closed application's sessions are counted out", func() bool {
		rv, _ := b.Call("C_OpenSession", U(slot), U(ck.CKF_SERIAL_SESSION), None(), None(), None())
		return rv == ck.CKR_OK
	})
}
