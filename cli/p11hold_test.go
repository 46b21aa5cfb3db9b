package cli

import (
	"fmt"
	"sync"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// held are the PKCS#11 applications the scripts hold open between
// commands (p11hold), by name.
var held struct {
	sync.Mutex
	apps map[string]*heldApp
}

type heldApp struct {
	p      *p11
	h, key uint64
	label  string // the key's
}

// p11hold NAME open SOCKET TOKEN PIN KEY opens application NAME, logged in
// as the token's user with a session and its private ECDSA key KEY.
// p11hold NAME sign|state|logout|login PIN print "sign: RV", "state:
// STATE", "logout: RV", "login: RV" to stdout. p11hold NAME find finds
// the key again, by its label, as an application does after a new login
// (the handles to private objects end with the last one), and prints
// "find: N", the number found. p11hold NAME waitstate
// STATE waits, up to a minute, for the session to be in STATE (another
// daemon's change reaching this one) and fails if it never is. p11hold
// NAME close ends the application.
func cmdP11hold(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: p11hold NAME open SOCKET TOKEN PIN KEY | sign | state | waitstate STATE | login PIN | find | logout | close")
	}
	held.Lock()
	defer held.Unlock()
	if held.apps == nil {
		held.apps = map[string]*heldApp{}
	}
	// Scripts run side by side: each has names of its own.
	name, verb := ts.Getenv("WORK")+"\x00"+args[0], args[1]
	if verb == "open" {
		if len(args) != 6 {
			ts.Fatalf("usage: p11hold NAME open SOCKET TOKEN PIN KEY")
		}
		if held.apps[name] != nil {
			ts.Fatalf("%s is open", name)
		}
		p, h, key, err := signer(ts.MkAbs(args[2]), args[3], args[4], args[5])
		ts.Check(err)
		held.apps[name] = &heldApp{p: p, h: h, key: key, label: args[5]}
		ts.Defer(func() {
			p.sock.Close()
			held.Lock()
			delete(held.apps, name)
			held.Unlock()
		})
		return
	}
	a := held.apps[name]
	if a == nil {
		ts.Fatalf("no application %s", name)
	}
	rvName := func(rv uint64) string { return fmt.Sprint(ck.Error(rv)) }
	switch {
	case verb == "sign" && len(args) == 2:
		mech := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_ECDSA}}
		rv, _, err := a.p.Call("C_SignInit", wire.Value{Ulong: a.h}, mech, wire.Value{Ulong: a.key})
		ts.Check(err)
		if rv == ck.CKR_OK {
			rv, _, err = a.p.Call("C_Sign", wire.Value{Ulong: a.h}, wire.Value{Bytes: make([]byte, 32)}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}})
			ts.Check(err)
		}
		fmt.Fprintf(ts.Stdout(), "sign: %s\n", rvName(rv))
	case verb == "state" && len(args) == 2:
		fmt.Fprintf(ts.Stdout(), "state: %s\n", sessionState(ts, a))
	case verb == "waitstate" && len(args) == 3:
		deadline := time.Now().Add(time.Minute)
		for {
			st := sessionState(ts, a)
			if st == args[2] {
				fmt.Fprintf(ts.Stdout(), "state: %s\n", st)
				return
			}
			if time.Now().After(deadline) {
				ts.Fatalf("the session is still in %s, not %s, a minute on", st, args[2])
			}
			time.Sleep(5 * time.Millisecond)
		}
	case verb == "login" && len(args) == 3:
		rv, _, err := a.p.Call("C_Login", wire.Value{Ulong: a.h}, wire.Value{Ulong: ck.CKU_USER}, wire.Value{Bytes: []byte(args[2])})
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "login: %s\n", rvName(rv))
	case verb == "find" && len(args) == 2:
		tmpl := []wire.Attribute{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_PRIVATE_KEY)}, {Type: ck.CKA_LABEL, Value: []byte(a.label)}}
		_, err := a.p.Must("C_FindObjectsInit", wire.Value{Ulong: a.h}, wire.Value{Template: tmpl})
		ts.Check(err)
		out, err := a.p.Must("C_FindObjects", wire.Value{Ulong: a.h}, wire.Value{Ulong: 2})
		ts.Check(err)
		_, err = a.p.Must("C_FindObjectsFinal", wire.Value{Ulong: a.h})
		ts.Check(err)
		if found := out[1].Ulongs; len(found) == 1 {
			a.key = found[0]
		}
		fmt.Fprintf(ts.Stdout(), "find: %d\n", len(out[1].Ulongs))
	case verb == "logout" && len(args) == 2:
		rv, _, err := a.p.Call("C_Logout", wire.Value{Ulong: a.h})
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "logout: %s\n", rvName(rv))
	case verb == "close" && len(args) == 2:
		a.p.sock.Close()
		delete(held.apps, name)
	default:
		ts.Fatalf("p11hold: unknown %q", args[1:])
	}
}

// sessionState is the held session's C_GetSessionInfo state, by name.
func sessionState(ts *testscript.TestScript, a *heldApp) string {
	out, err := a.p.Must("C_GetSessionInfo", wire.Value{Ulong: a.h}, wire.Value{})
	ts.Check(err)
	switch st := out[1].Struct.(*wire.SessionInfo).State; st {
	case ck.CKS_RO_PUBLIC_SESSION:
		return "CKS_RO_PUBLIC_SESSION"
	case ck.CKS_RO_USER_FUNCTIONS:
		return "CKS_RO_USER_FUNCTIONS"
	case ck.CKS_RW_PUBLIC_SESSION:
		return "CKS_RW_PUBLIC_SESSION"
	case ck.CKS_RW_USER_FUNCTIONS:
		return "CKS_RW_USER_FUNCTIONS"
	case ck.CKS_RW_SO_FUNCTIONS:
		return "CKS_RW_SO_FUNCTIONS"
	default:
		return fmt.Sprintf("state %d", st)
	}
}
