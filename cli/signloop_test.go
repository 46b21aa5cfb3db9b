package cli

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rogpeppe/go-internal/testscript"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// p11 is a PKCS#11 application speaking the module's protocol to the
// daemon, as the C module does (cryptoki/wire/wiretest): what the scripts
// use to keep a client working while an administrator's command runs.
type p11 struct {
	*wiretest.Conn
	sock *wiretest.Socket
}

func dialP11(sock string) (*p11, error) {
	s, _, err := wiretest.Dial(sock, wiretest.NewApp(), wire.Version)
	if err != nil {
		return nil, err
	}
	return &p11{Conn: wiretest.NewConn(s), sock: s}, nil
}

// signer logs in to the token labelled token and finds its private key
// labelled key.
func signer(sock, token, pin, key string) (*p11, uint64, uint64, error) {
	p, err := dialP11(sock)
	if err != nil {
		return nil, 0, 0, err
	}
	fail := func(err error) (*p11, uint64, uint64, error) {
		p.sock.Close()
		return nil, 0, 0, err
	}
	out, err := p.Must("C_GetSlotList", wire.Value{Byte: 1}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 64}})
	if err != nil {
		return fail(err)
	}
	slot, found := uint64(0), false
	for _, s := range out[1].Ulongs {
		info, err := p.Must("C_GetTokenInfo", wire.Value{Ulong: s}, wire.Value{})
		if err == nil && strings.TrimRight(info[1].Struct.(*wire.TokenInfo).Label, " ") == token {
			slot, found = s, true
		}
	}
	if !found {
		return fail(fmt.Errorf("no token labelled %q", token))
	}
	out, err = p.Must("C_OpenSession", wire.Value{Ulong: slot}, wire.Value{Ulong: ck.CKF_SERIAL_SESSION}, wire.Value{}, wire.Value{}, wire.Value{})
	if err != nil {
		return fail(err)
	}
	h := out[4].Ulong
	if _, err := p.Must("C_Login", wire.Value{Ulong: h}, wire.Value{Ulong: ck.CKU_USER}, wire.Value{Bytes: []byte(pin)}); err != nil {
		return fail(err)
	}
	tmpl := []wire.Attribute{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_PRIVATE_KEY)}, {Type: ck.CKA_LABEL, Value: []byte(key)}}
	if _, err := p.Must("C_FindObjectsInit", wire.Value{Ulong: h}, wire.Value{Template: tmpl}); err != nil {
		return fail(err)
	}
	out, err = p.Must("C_FindObjects", wire.Value{Ulong: h}, wire.Value{Ulong: 2})
	if err != nil {
		return fail(err)
	}
	p.Must("C_FindObjectsFinal", wire.Value{Ulong: h})
	if len(out[1].Ulongs) != 1 {
		return fail(fmt.Errorf("%d private keys labelled %q", len(out[1].Ulongs), key))
	}
	return p, h, out[1].Ulongs[0], nil
}

// signLoop is the one loop a script runs at a time.
var signLoop struct {
	sync.Mutex
	stop  chan struct{}
	done  chan struct{}
	count atomic.Int64
	err   error
}

// signloop start SOCKET TOKEN PIN KEY signs with an ECDSA key in a loop,
// in the background, until `signloop stop`, which reports how many
// signatures were made and fails on the first that failed, or on none.
func cmdSignloop(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: signloop start SOCKET TOKEN PIN KEY | signloop stop")
	}
	signLoop.Lock()
	defer signLoop.Unlock()
	switch {
	case args[0] == "start" && len(args) == 5:
		if signLoop.stop != nil {
			ts.Fatalf("a sign loop is running")
		}
		p, h, key, err := signer(ts.MkAbs(args[1]), args[2], args[3], args[4])
		ts.Check(err)
		signLoop.stop, signLoop.done, signLoop.err = make(chan struct{}), make(chan struct{}), nil
		signLoop.count.Store(0)
		go func(stop, done chan struct{}) {
			defer close(done)
			defer p.sock.Close()
			mech := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_ECDSA}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := p.Must("C_SignInit", wire.Value{Ulong: h}, mech, wire.Value{Ulong: key}); err != nil {
					signLoop.err = err
					return
				}
				if _, err := p.Must("C_Sign", wire.Value{Ulong: h}, wire.Value{Bytes: make([]byte, 32)}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}}); err != nil {
					signLoop.err = err
					return
				}
				signLoop.count.Add(1)
			}
		}(signLoop.stop, signLoop.done)
	case args[0] == "stop" && len(args) == 1:
		if signLoop.stop == nil {
			ts.Fatalf("no sign loop is running")
		}
		close(signLoop.stop)
		<-signLoop.done
		signLoop.stop = nil
		n := signLoop.count.Load()
		fmt.Fprintf(ts.Stdout(), "%d signatures\n", n)
		if signLoop.err != nil {
			ts.Fatalf("a signature failed after %d: %v", n, signLoop.err)
		}
		if n == 0 {
			ts.Check(errors.New("no signature was made"))
		}
	default:
		ts.Fatalf("usage: signloop start SOCKET TOKEN PIN KEY | signloop stop")
	}
}
