package daemon

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

func TestSocketMode(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	fi, err := os.Stat(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want 0600 socket", fi.Mode())
	}
	// A second daemon on the same socket is refused, not a silent takeover.
	if _, err := Listen(d.sock, ServerConfig{Group: -1}); err == nil {
		t.Fatal("second Listen on a live socket succeeded")
	}
}

// rawConn is a connection past its hello, for sending frames by hand.
func rawConn(t *testing.T, d *testDaemon) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(wire.Hello{Version: wire.Version, AppID: [16]byte{9}}.Marshal())
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		t.Fatalf("hello: %+v %v", r, err)
	}
	return c, bufio.NewReader(c)
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	c, r := rawConn(t, d)
	send := func(call uint32, body []byte) wire.Reply {
		t.Helper()
		if _, err := c.Write(wire.AppendRequest(nil, 7, call, body)); err != nil {
			t.Fatal(err)
		}
		rep, _, err := wire.ReadReply(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	init, _ := calls.ByName("C_Initialize")
	slotList, _ := calls.ByName("C_GetSlotList")
	for _, tc := range []struct {
		name string
		call uint32
		body []byte
		want uint64
	}{
		{name: "unknown call", call: 9999, body: nil, want: ck.CKR_FUNCTION_NOT_SUPPORTED},
		{name: "local call", call: init.ID, body: nil, want: ck.CKR_FUNCTION_NOT_SUPPORTED},
		{name: "truncated arguments", call: slotList.ID, body: []byte{1}, want: ck.CKR_ARGUMENTS_BAD},
		{name: "trailing bytes", call: slotList.ID, body: []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0}, want: ck.CKR_ARGUMENTS_BAD},
	} {
		if rep := send(tc.call, tc.body); rep.RV != tc.want || rep.HasResults {
			t.Errorf("%s: rv %#x results %v, want %#x", tc.name, rep.RV, rep.HasResults, tc.want)
		}
	}
	// The connection is still good after all that.
	if rep := send(slotList.ID, []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 4}); rep.RV != ck.CKR_OK {
		t.Fatalf("good request after bad ones: %#x", rep.RV)
	}

	// A frame over the cap closes the connection, without the daemon
	// reading (or allocating) what it announced.
	var huge [4]byte
	binary.BigEndian.PutUint32(huge[:], 1<<30)
	c.Write(huge[:])
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("after an oversized frame: %v, want EOF", err)
	}
	// The daemon serves others as before.
	cl := d.dial(t)
	cl.Slots()
}

func TestHelloRefusals(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(wire.Hello{Version: 99}.Marshal())
	rep, err := wire.ReadHelloReply(c)
	if err != nil || rep.Status != wire.StatusVersion || rep.Version != wire.Version {
		t.Fatalf("version 99: %+v %v", rep, err)
	}
	// An application id bound to this process is refused to another.
	app := token.AppID{1, 2, 3}
	if _, ok := d.eng.Attach(app, 1, 0); !ok {
		t.Fatal("attach")
	}
	c2, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(wire.Hello{Version: wire.Version, AppID: app}.Marshal())
	if rep, err := wire.ReadHelloReply(c2); err != nil || rep.Status != wire.StatusRefused {
		t.Fatalf("stolen application id: %+v %v", rep, err)
	}
}

// The reply's idle flag (protocol version 2) says whether the session the
// call named has an operation in progress; version 1 replies never carry
// it.
func TestReplyIdleFlag(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	cl := d.dial(t)
	slot := cl.NewToken("idle")
	h := cl.Open(slot, false)
	sha := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_SHA256}}
	steps := []struct {
		name string
		call func() uint64
		idle bool
	}{
		{name: "C_GetSessionInfo", call: func() uint64 { rv, _ := cl.Call("C_GetSessionInfo", U(h), None()); return rv }, idle: true},
		{name: "C_DigestInit", call: func() uint64 { rv, _ := cl.Call("C_DigestInit", U(h), sha); return rv }, idle: false},
		{name: "C_Digest size query", call: func() uint64 { rv, _ := cl.Call("C_Digest", U(h), S("abc"), SizeQuery()); return rv }, idle: false},
		{name: "C_Digest", call: func() uint64 { rv, _ := cl.Call("C_Digest", U(h), S("abc"), Out(32)); return rv }, idle: true},
		{name: "C_DigestInit again", call: func() uint64 { rv, _ := cl.Call("C_DigestInit", U(h), sha); return rv }, idle: false},
		{name: "C_DigestUpdate", call: func() uint64 { rv, _ := cl.Call("C_DigestUpdate", U(h), S("abc")); return rv }, idle: false},
		{name: "C_DigestFinal", call: func() uint64 { rv, _ := cl.Call("C_DigestFinal", U(h), Out(32)); return rv }, idle: true},
		{name: "C_Digest without an Init", call: func() uint64 {
			if rv, _ := cl.Call("C_Digest", U(h), S("abc"), Out(32)); rv != ck.CKR_OPERATION_NOT_INITIALIZED {
				return rv
			}
			return ck.CKR_OK
		}, idle: true},
		{name: "C_GetSessionInfo on no session", call: func() uint64 {
			if rv, _ := cl.Call("C_GetSessionInfo", U(h+100), None()); rv != ck.CKR_SESSION_HANDLE_INVALID {
				return rv
			}
			return ck.CKR_OK
		}, idle: false},
	}
	for _, s := range steps {
		if rv := s.call(); rv != ck.CKR_OK || cl.Idle != s.idle {
			t.Errorf("%s: rv %#x idle %v, want idle %v", s.name, rv, cl.Idle, s.idle)
		}
	}

	old := d.dialVersion(t, [16]byte{0x51}, 1)
	h1 := old.Open(slot, false)
	for _, name := range []string{"C_GetSessionInfo", "C_DigestInit", "C_Digest"} {
		var rv uint64
		switch name {
		case "C_GetSessionInfo":
			rv, _ = old.Call(name, U(h1), None())
		case "C_DigestInit":
			rv, _ = old.Call(name, U(h1), sha)
		case "C_Digest":
			rv, _ = old.Call(name, U(h1), S("abc"), Out(32))
		}
		if rv != ck.CKR_OK || old.Idle {
			t.Errorf("version 1, %s: rv %#x idle %v, want no idle flag", name, rv, old.Idle)
		}
	}
}

// A version 2 hello's status says whether the application starts afresh
// (StatusOK) or joins its other connections (StatusJoined); version 1
// hellos are answered StatusOK either way.
func TestHelloJoined(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	hello := func(app [16]byte, v uint16) (net.Conn, wire.HelloReply) {
		c, err := net.Dial("unix", d.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write(wire.Hello{Version: v, AppID: app, PID: uint32(os.Getpid())}.Marshal())
		r, err := wire.ReadHelloReply(c)
		if err != nil {
			t.Fatal(err)
		}
		return c, r
	}
	app := [16]byte{0x7a}
	first, r := hello(app, 2)
	if r.Status != wire.StatusOK || r.Version != 2 {
		t.Fatalf("first connection: %+v, want status OK", r)
	}
	second, r := hello(app, 2)
	if r.Status != wire.StatusJoined {
		t.Fatalf("second connection: %+v, want status joined", r)
	}
	old, r := hello(app, 1)
	if r.Status != wire.StatusOK || r.Version != 1 {
		t.Fatalf("version 1 connection: %+v, want status OK, version 1", r)
	}
	conns := []net.Conn{second, old}
	if _, r := hello([16]byte{0x7b}, 2); r.Status != wire.StatusOK {
		t.Fatalf("another application: %+v, want status OK", r)
	}
	// Once its last connection has gone, the application starts afresh.
	first.Close()
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, r := hello(app, 2)
		c.Close()
		if r.Status == wire.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after its connections closed, the application still joins: %+v", r)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
