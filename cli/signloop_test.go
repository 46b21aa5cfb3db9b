package cli

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// p11 is a PKCS#11 application speaking the module's protocol to the
// daemon, as the C module does: what the scripts use to keep a client
// working while an administrator's command runs.
type p11 struct {
	c   net.Conn
	r   *bufio.Reader
	id  uint32
	buf []byte
}

func dialP11(sock string) (*p11, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	h := wire.Hello{Version: wire.Version, PID: uint32(os.Getpid())}
	rand.Read(h.AppID[:])
	if _, err := c.Write(h.Marshal()); err != nil {
		c.Close()
		return nil, err
	}
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		c.Close()
		return nil, fmt.Errorf("hello: %+v %v", r, err)
	}
	return &p11{c: c, r: bufio.NewReader(c)}, nil
}

func (p *p11) call(name string, vals ...wire.Value) (uint64, []wire.Value, error) {
	c, ok := calls.ByName(name)
	if !ok {
		return 0, nil, fmt.Errorf("no call %s", name)
	}
	body, err := wire.EncodeArgs(c, vals)
	if err != nil {
		return 0, nil, err
	}
	p.id++
	p.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := p.c.Write(wire.AppendRequest(nil, p.id, c.ID, body)); err != nil {
		return 0, nil, err
	}
	rep, buf, err := wire.ReadReply(p.r, p.buf)
	p.buf = buf
	if err != nil {
		return 0, nil, err
	}
	if !rep.HasResults {
		return rep.RV, nil, nil
	}
	out, err := wire.DecodeResults(c, rep.RV, rep.Results)
	return rep.RV, out, err
}

// must is call for a call that must succeed.
func (p *p11) must(name string, vals ...wire.Value) ([]wire.Value, error) {
	rv, out, err := p.call(name, vals...)
	if err == nil && rv != ck.CKR_OK {
		err = fmt.Errorf("%s: CK_RV %#x", name, rv)
	}
	return out, err
}

// signer logs in to the token labelled token and finds its private key
// labelled key.
func signer(sock, token, pin, key string) (*p11, uint64, uint64, error) {
	p, err := dialP11(sock)
	if err != nil {
		return nil, 0, 0, err
	}
	fail := func(err error) (*p11, uint64, uint64, error) {
		p.c.Close()
		return nil, 0, 0, err
	}
	out, err := p.must("C_GetSlotList", wire.Value{Byte: 1}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 64}})
	if err != nil {
		return fail(err)
	}
	slot, found := uint64(0), false
	for _, s := range out[1].Ulongs {
		info, err := p.must("C_GetTokenInfo", wire.Value{Ulong: s}, wire.Value{})
		if err == nil && strings.TrimRight(info[1].Struct.(*wire.TokenInfo).Label, " ") == token {
			slot, found = s, true
		}
	}
	if !found {
		return fail(fmt.Errorf("no token labelled %q", token))
	}
	out, err = p.must("C_OpenSession", wire.Value{Ulong: slot}, wire.Value{Ulong: ck.CKF_SERIAL_SESSION}, wire.Value{}, wire.Value{}, wire.Value{})
	if err != nil {
		return fail(err)
	}
	h := out[4].Ulong
	if _, err := p.must("C_Login", wire.Value{Ulong: h}, wire.Value{Ulong: ck.CKU_USER}, wire.Value{Bytes: []byte(pin)}); err != nil {
		return fail(err)
	}
	tmpl := []wire.Attribute{{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_PRIVATE_KEY)}, {Type: ck.CKA_LABEL, Value: []byte(key)}}
	if _, err := p.must("C_FindObjectsInit", wire.Value{Ulong: h}, wire.Value{Template: tmpl}); err != nil {
		return fail(err)
	}
	out, err = p.must("C_FindObjects", wire.Value{Ulong: h}, wire.Value{Ulong: 2})
	if err != nil {
		return fail(err)
	}
	p.must("C_FindObjectsFinal", wire.Value{Ulong: h})
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
			defer p.c.Close()
			mech := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_ECDSA}}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := p.must("C_SignInit", wire.Value{Ulong: h}, mech, wire.Value{Ulong: key}); err != nil {
					signLoop.err = err
					return
				}
				if _, err := p.must("C_Sign", wire.Value{Ulong: h}, wire.Value{Bytes: make([]byte, 32)}, wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}}); err != nil {
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
