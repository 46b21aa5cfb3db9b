package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

// The daemon's tests talk to a real daemon (real swtpm, SQLite on disk)
// over its socket with the wire codec: the module's side of the protocol,
// in Go. The C module's own tests drive the same daemon through it.

type testDaemon struct {
	dir, sock string
	st        *State
	eng       *token.Engine
	stop      func()
}

func startDaemon(t testing.TB, cfg token.Config) *testDaemon {
	t.Helper()
	// Unix socket paths are short: keep the directory short too.
	dir, err := os.MkdirTemp("", "hsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "s")}
	d.start(t, cfg)
	return d
}

func (d *testDaemon) start(t testing.TB, cfg token.Config) {
	t.Helper()
	st, err := OpenState(context.Background(), StateConfig{
		Dir: d.dir, TPM: "managed",
		Store: keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}, MaxPINFailures: cfg.MaxPINFailures},
	})
	if errors.Is(err, tpmroot.ErrSwtpmMissing) && os.Getenv("CI") != "true" {
		t.Skipf("swtpm not available: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FailureDelay == 0 {
		cfg.FailureDelay = -1
	}
	ln, err := Listen(d.sock, ServerConfig{Group: -1})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	d.st = st
	dm := New(st, nil, Config{Engine: cfg, Server: ServerConfig{Group: -1}})
	d.eng = dm.Engine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- dm.Serve(ctx, ln)
	}()
	stopped := false
	d.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		st.Close()
	}
	t.Cleanup(d.stop)
}

// client is one application: one connection with its own application id.
type client struct {
	t    testing.TB
	c    net.Conn
	r    *bufio.Reader
	id   uint32
	buf  []byte
	idle bool // the last reply's idle flag
}

func (d *testDaemon) dial(t testing.TB) *client {
	t.Helper()
	var app [16]byte
	rand.Read(app[:])
	return d.dialAs(t, app)
}

func (d *testDaemon) dialAs(t testing.TB, app [16]byte) *client {
	t.Helper()
	return d.dialVersion(t, app, wire.Version)
}

// dialVersion connects speaking protocol version v.
func (d *testDaemon) dialVersion(t testing.TB, app [16]byte, v uint16) *client {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(wire.Hello{Version: v, AppID: app, PID: uint32(os.Getpid())}.Marshal()); err != nil {
		t.Fatal(err)
	}
	reply, err := wire.ReadHelloReply(c)
	if err != nil || !reply.Accepted() || reply.Version != v {
		t.Fatalf("hello: %+v %v", reply, err)
	}
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// call makes one call; vals are the call's arguments in table order
// (outputs included, as placeholders or outspecs).
func (cl *client) call(name string, vals ...wire.Value) (uint64, []wire.Value) {
	cl.t.Helper()
	c, ok := calls.ByName(name)
	if !ok {
		cl.t.Fatalf("no call %s", name)
	}
	body, err := wire.EncodeArgs(c, vals)
	if err != nil {
		cl.t.Fatalf("%s: %v", name, err)
	}
	cl.id++
	cl.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := cl.c.Write(wire.AppendRequest(nil, cl.id, c.ID, body)); err != nil {
		cl.t.Fatalf("%s: write: %v", name, err)
	}
	rep, buf, err := wire.ReadReply(cl.r, cl.buf)
	cl.buf = buf
	if err != nil {
		cl.t.Fatalf("%s: read: %v", name, err)
	}
	if rep.ID != cl.id {
		cl.t.Fatalf("%s: reply id %d, want %d", name, rep.ID, cl.id)
	}
	cl.idle = rep.Idle
	if !rep.HasResults {
		return rep.RV, nil
	}
	out, err := wire.DecodeResults(c, rep.RV, rep.Results)
	if err != nil {
		cl.t.Fatalf("%s: results: %v", name, err)
	}
	return rep.RV, out
}

// must makes a call that must return want.
func (cl *client) must(want uint64, name string, vals ...wire.Value) []wire.Value {
	cl.t.Helper()
	got, out := cl.call(name, vals...)
	if got != want {
		cl.t.Fatalf("%s = %#x, want %#x", name, got, want)
	}
	return out
}

func U(v uint64) wire.Value { return wire.Value{Ulong: v} }
func B(b []byte) wire.Value { return wire.Value{Bytes: b} }
func S(s string) wire.Value { return wire.Value{Bytes: []byte(s)} }
func Null() wire.Value      { return wire.Value{Null: true} }
func Out(capacity uint64) wire.Value {
	return wire.Value{Out: wire.OutSpec{Present: true, Capacity: capacity}}
}
func SizeQuery() wire.Value                { return wire.Value{} }
func T(attrs ...wire.Attribute) wire.Value { return wire.Value{Template: attrs} }
func Q(qs ...wire.Query) wire.Value        { return wire.Value{Query: qs} }
func none() wire.Value                     { return wire.Value{} }

func A(t uint64, v []byte) wire.Attribute  { return wire.Attribute{Type: t, Value: v} }
func AU(t uint64, v uint64) wire.Attribute { return wire.Attribute{Type: t, Value: keystore.Ulong(v)} }
func AB(t uint64, v bool) wire.Attribute   { return wire.Attribute{Type: t, Value: keystore.Bool(v)} }

func label32(s string) wire.Value {
	b := []byte(s)
	for len(b) < 32 {
		b = append(b, ' ')
	}
	return wire.Value{Bytes: b}
}

const (
	testSOPIN   = "so-pin-1234"
	testUserPIN = "user-pin-1234"
)

// newToken initialises a token on slot 0, sets its user PIN, and returns
// its slot.
func (cl *client) newToken(label string) uint64 {
	cl.t.Helper()
	before := cl.slots()
	cl.must(ck.CKR_OK, "C_InitToken", U(0), S(testSOPIN), label32(label))
	after := cl.slots()
	if len(after) != len(before)+1 {
		cl.t.Fatalf("slots %v after InitToken, before %v", after, before)
	}
	slot := after[len(after)-1]
	h := cl.open(slot, true)
	cl.must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_SO), S(testSOPIN))
	cl.must(ck.CKR_OK, "C_InitPIN", U(h), S(testUserPIN))
	cl.must(ck.CKR_OK, "C_CloseSession", U(h))
	return slot
}

func (cl *client) slots() []uint64 {
	cl.t.Helper()
	out := cl.must(ck.CKR_OK, "C_GetSlotList", wire.Value{Byte: 1}, Out(64))
	return out[1].Ulongs
}

func (cl *client) open(slot uint64, rw bool) uint64 {
	cl.t.Helper()
	flags := uint64(ck.CKF_SERIAL_SESSION)
	if rw {
		flags |= ck.CKF_RW_SESSION
	}
	out := cl.must(ck.CKR_OK, "C_OpenSession", U(slot), U(flags), none(), none(), none())
	return out[4].Ulong
}

func (cl *client) tokenInfo(slot uint64) *wire.TokenInfo {
	cl.t.Helper()
	out := cl.must(ck.CKR_OK, "C_GetTokenInfo", U(slot), none())
	return out[1].Struct.(*wire.TokenInfo)
}

func (cl *client) create(h uint64, attrs ...wire.Attribute) uint64 {
	cl.t.Helper()
	out := cl.must(ck.CKR_OK, "C_CreateObject", U(h), T(attrs...), none())
	return out[2].Ulong
}

// get reads attributes with buffers of capacity 4096.
func (cl *client) get(h, obj uint64, types ...uint64) (uint64, []wire.Answer) {
	cl.t.Helper()
	qs := make([]wire.Query, len(types))
	for i, t := range types {
		qs[i] = wire.Query{Type: t, Present: true, Capacity: 4096}
	}
	rv, out := cl.call("C_GetAttributeValue", U(h), U(obj), Q(qs...))
	if out == nil {
		return rv, nil
	}
	return rv, out[2].Answers
}

func (cl *client) find(h uint64, attrs ...wire.Attribute) []uint64 {
	cl.t.Helper()
	cl.must(ck.CKR_OK, "C_FindObjectsInit", U(h), T(attrs...))
	var all []uint64
	for {
		out := cl.must(ck.CKR_OK, "C_FindObjects", U(h), U(7))
		if len(out[1].Ulongs) == 0 {
			break
		}
		all = append(all, out[1].Ulongs...)
	}
	cl.must(ck.CKR_OK, "C_FindObjectsFinal", U(h))
	return all
}

// ulongOf reads a CK_ULONG attribute value.
func ulongOf(v []byte) uint64 {
	if len(v) != 8 {
		return ^uint64(0)
	}
	return binary.BigEndian.Uint64(v)
}

func isTrue(v []byte) bool { return len(v) == 1 && v[0] == 1 }

// freeSlot is the slot of the uninitialised token.
const freeSlot = 0
