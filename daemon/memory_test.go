package daemon

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

// rawClient is a connection past its hello that sends frames by hand:
// large arguments go out straight from the caller's slice, and replies'
// results are read and dropped, so that the test's own memory stays out of
// what it measures of the daemon's.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	r  *bufio.Reader
	id uint32
}

func dialRaw(t testing.TB, d *testDaemon, app [16]byte) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(wire.Hello{Version: wire.Version, AppID: app}.Marshal())
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		t.Fatalf("hello: %+v %v", r, err)
	}
	return &rawClient{t: t, c: c, r: bufio.NewReaderSize(c, 4096)}
}

// send writes one request frame made of parts, without copying them.
func (rc *rawClient) send(call string, parts ...[]byte) error {
	c, ok := calls.ByName(call)
	if !ok {
		rc.t.Fatalf("no call %s", call)
	}
	n := 8
	for _, p := range parts {
		n += len(p)
	}
	rc.id++
	hdr := binary.BigEndian.AppendUint32(nil, uint32(n))
	hdr = binary.BigEndian.AppendUint32(hdr, rc.id)
	hdr = binary.BigEndian.AppendUint32(hdr, c.ID)
	bufs := net.Buffers(append([][]byte{hdr}, parts...))
	_, err := bufs.WriteTo(rc.c)
	return err
}

// reply reads one reply and returns its rv and whether it says the
// session is idle, dropping its results.
func (rc *rawClient) reply() (rv uint64, idle bool, err error) {
	var hdr [4 + 4 + 8 + 1]byte
	if _, err := io.ReadFull(rc.r, hdr[:]); err != nil {
		return 0, false, err
	}
	if id := binary.BigEndian.Uint32(hdr[4:]); id != rc.id {
		return 0, false, fmt.Errorf("reply to request %d, want %d", id, rc.id)
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if _, err := rc.r.Discard(n - (len(hdr) - 4)); err != nil {
		return 0, false, err
	}
	return binary.BigEndian.Uint64(hdr[8:]), hdr[16]&2 != 0, nil
}

// must reads a reply whose rv must be want, and returns its idle flag.
func (rc *rawClient) must(want uint64, what string) bool {
	rc.t.Helper()
	rv, idle, err := rc.reply()
	if err != nil {
		rc.t.Fatalf("%s: %v", what, err)
	}
	if rv != want {
		rc.t.Fatalf("%s: %v, want %v", what, ck.Error(rv), ck.Error(want))
	}
	return idle
}

// call makes a call with small arguments and returns its rv.
func (rc *rawClient) call(name string, vals ...wire.Value) uint64 {
	rc.t.Helper()
	c, _ := calls.ByName(name)
	body, err := wire.EncodeArgs(c, vals)
	if err != nil {
		rc.t.Fatal(err)
	}
	if err := rc.send(name, body); err != nil {
		rc.t.Fatalf("%s: %v", name, err)
	}
	rv, _, err := rc.reply()
	if err != nil {
		rc.t.Fatalf("%s: %v", name, err)
	}
	return rv
}

// dataCall sends call(session, data, out...) with the data straight from
// its slice: C_Encrypt, C_EncryptUpdate and kin with an output of the
// capacity given, C_DigestUpdate and kin with none.
func (rc *rawClient) dataCall(name string, h uint64, data []byte, outCap ...uint64) error {
	prefix := binary.BigEndian.AppendUint64(nil, h)
	prefix = binary.BigEndian.AppendUint32(prefix, uint32(len(data)))
	var suffix []byte
	for _, c := range outCap {
		suffix = append(suffix, 1)
		suffix = binary.BigEndian.AppendUint64(suffix, c)
	}
	return rc.send(name, prefix, data, suffix)
}

// stallData sends the head of call(session, data) and the first n bytes of
// the data, and returns the rest to send.
func (rc *rawClient) stallData(name string, h uint64, data []byte, n int) ([]byte, error) {
	c, ok := calls.ByName(name)
	if !ok {
		rc.t.Fatalf("no call %s", name)
	}
	rc.id++
	b := binary.BigEndian.AppendUint32(nil, uint32(8+8+4+len(data)))
	b = binary.BigEndian.AppendUint32(b, rc.id)
	b = binary.BigEndian.AppendUint32(b, c.ID)
	b = binary.BigEndian.AppendUint64(b, h)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	bufs := net.Buffers{b, data[:n]}
	_, err := bufs.WriteTo(rc.c)
	return data[n:], err
}

// waitUntil polls cond, failing the test after a generous deadline (a hang
// guard, not a measure of speed).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func gcmMech() wire.Value {
	return MP(ck.CKM_AES_GCM, wire.GCMParams{IV: make([]byte, 12), TagBits: 128}.Param())
}

// floodApp is one application with a token, its user logged in, and an
// AES key for GCM; its raw connections share them.
type floodApp struct {
	t    *testing.T
	d    *testDaemon
	app  [16]byte
	ctl  *client
	slot uint64
	key  uint64
}

func newFloodApp(t *testing.T, d *testDaemon) *floodApp {
	t.Helper()
	f := &floodApp{t: t, d: d, app: NewApp()}
	f.ctl = d.dialAs(t, f.app)
	f.slot = f.ctl.NewToken("mem")
	h := f.ctl.Open(f.slot, true)
	f.ctl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	f.key = f.ctl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES),
		A(ck.CKA_VALUE, make([]byte, 32)), AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_DECRYPT, true))
	return f
}

// conn opens a raw connection of the application and a session for it.
func (f *floodApp) conn() (*rawClient, uint64) {
	f.t.Helper()
	return dialRaw(f.t, f.d, f.app), f.ctl.Open(f.slot, false)
}

// A request longer than its call can need is skipped unread and answered
// with the call's code for it, and the connection goes on; a data call's
// operation ends, as after any error.
func TestRequestTooLarge(t *testing.T) {
	t.Parallel()
	d := startDaemonLimits(t, token.Config{}, Limits{MaxRequestData: 1 << 20})
	f := newFloodApp(t, d)
	rc, h := f.conn()
	big := make([]byte, 2<<20)

	// Data over the daemon's bound: the encryption in progress ends.
	if rv := rc.call("C_EncryptInit", U(h), gcmMech(), U(f.key)); rv != ck.CKR_OK {
		t.Fatalf("C_EncryptInit: %v", ck.Error(rv))
	}
	if err := rc.dataCall("C_EncryptUpdate", h, big, wire.MaxFrame); err != nil {
		t.Fatal(err)
	}
	if idle := rc.must(ck.CKR_DATA_LEN_RANGE, "C_EncryptUpdate of 2 MiB"); !idle {
		t.Error("the refused C_EncryptUpdate left the operation going (no idle flag)")
	}
	if rv := rc.call("C_EncryptUpdate", U(h), B([]byte("x")), Out(64)); rv != ck.CKR_OPERATION_NOT_INITIALIZED {
		t.Errorf("after the refusal: %v", ck.Error(rv))
	}
	if rv := rc.call("C_DecryptInit", U(h), gcmMech(), U(f.key)); rv != ck.CKR_OK {
		t.Fatalf("C_DecryptInit: %v", ck.Error(rv))
	}
	if err := rc.dataCall("C_Decrypt", h, big, wire.MaxFrame); err != nil {
		t.Fatal(err)
	}
	rc.must(ck.CKR_ENCRYPTED_DATA_LEN_RANGE, "C_Decrypt of 2 MiB")

	// Calls of small fixed arguments, and a PIN far over any token's.
	if err := rc.send("C_GetSessionInfo", binary.BigEndian.AppendUint64(nil, h), make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	rc.must(ck.CKR_ARGUMENTS_BAD, "C_GetSessionInfo with 100 more bytes")
	c, _ := calls.ByName("C_Login")
	body, err := wire.EncodeArgs(c, []wire.Value{U(h), U(ck.CKU_USER), B(make([]byte, wire.MaxShortBytes+1))})
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.send("C_Login", body); err != nil {
		t.Fatal(err)
	}
	rc.must(ck.CKR_ARGUMENTS_BAD, "C_Login with a PIN of 4 KiB and a byte")
	// A call the daemon does not serve takes no arguments.
	rc.id++
	frame := wire.AppendRequest(nil, rc.id, 9999, make([]byte, 100_000))
	if _, err := rc.c.Write(frame); err != nil {
		t.Fatal(err)
	}
	rc.must(ck.CKR_FUNCTION_NOT_SUPPORTED, "an unknown call with 100,000 bytes")

	// The stream is intact: the next call is served.
	if rv := rc.call("C_GetSessionInfo", U(h), None()); rv != ck.CKR_OK {
		t.Fatalf("after the refusals: %v", ck.Error(rv))
	}
}

// A request larger than the connection keeps waits for room in the
// budget, at most BudgetWait, then is answered CKR_DEVICE_MEMORY with its
// body skipped; small requests never wait.
func TestRequestBudget(t *testing.T) {
	t.Parallel()
	d := startDaemonLimits(t, token.Config{}, Limits{Budget: 2 << 20, BudgetWait: 300 * time.Millisecond})
	reqs := d.srv.lim.requests
	f := newFloodApp(t, d)
	staller, hs := f.conn()
	waiter, hw := f.conn()
	for _, x := range []struct {
		rc *rawClient
		h  uint64
	}{{staller, hs}, {waiter, hw}} {
		if rv := x.rc.call("C_DigestInit", U(x.h), M(ck.CKM_SHA256)); rv != ck.CKR_OK {
			t.Fatalf("C_DigestInit: %v", ck.Error(rv))
		}
	}

	// A frame of 900 KiB of which only the head and 100 bytes come: the
	// daemon holds 900 KiB of the requests' 1 MiB for it.
	rest, err := staller.stallData("C_DigestUpdate", hs, make([]byte, 900<<10), 100)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stalled request holds its room", func() bool { return reqs.Used() > 0 })

	// Another of 500 KiB waits, and is refused: the digest it would have
	// continued ends. A small call is served meanwhile.
	if err := waiter.dataCall("C_DigestUpdate", hw, make([]byte, 500<<10)); err != nil {
		t.Fatal(err)
	}
	if idle := waiter.must(ck.CKR_DEVICE_MEMORY, "C_DigestUpdate of 500 KiB with no room"); !idle {
		t.Error("refused for want of memory, the digest goes on")
	}
	if rv := waiter.call("C_GetSessionInfo", U(hw), None()); rv != ck.CKR_OK {
		t.Fatalf("a small call while the budget is spent: %v", ck.Error(rv))
	}

	// The stalled frame completes: it is served, and its room freed.
	if _, err := staller.c.Write(rest); err != nil {
		t.Fatal(err)
	}
	staller.must(ck.CKR_OK, "the stalled C_DigestUpdate, completed")
	if rv := waiter.call("C_DigestInit", U(hw), M(ck.CKM_SHA256)); rv != ck.CKR_OK {
		t.Fatalf("C_DigestInit: %v", ck.Error(rv))
	}
	if err := waiter.dataCall("C_DigestUpdate", hw, make([]byte, 500<<10)); err != nil {
		t.Fatal(err)
	}
	waiter.must(ck.CKR_OK, "C_DigestUpdate of 500 KiB with room")
	waitUntil(t, "the requests' room given back", func() bool { return reqs.Used() == 0 })
}

// A reply larger than the connection keeps takes its room, as much as
// the request allowed it, before the call is served; a client that does
// not read its reply holds it.
func TestReplyBudget(t *testing.T) {
	t.Parallel()
	d := startDaemonLimits(t, token.Config{}, Limits{Budget: 2 << 20, BudgetWait: 300 * time.Millisecond})
	replies := d.srv.lim.replies
	f := newFloodApp(t, d)
	slow, hs := f.conn()
	other, ho := f.conn()
	random := func(rc *rawClient, h uint64, n uint64) {
		t.Helper()
		if err := rc.send("C_GenerateRandom", binary.BigEndian.AppendUint64(nil, h), binary.BigEndian.AppendUint64(nil, n)); err != nil {
			t.Fatal(err)
		}
	}
	// 900 KiB that the client does not read: more than the sockets hold.
	random(slow, hs, 900<<10)
	waitUntil(t, "the unread reply holds its room", func() bool { return replies.Used() > 0 })
	random(other, ho, 500<<10)
	other.must(ck.CKR_DEVICE_MEMORY, "C_GenerateRandom of 500 KiB with no room for the reply")
	random(other, ho, 1000)
	other.must(ck.CKR_OK, "a small C_GenerateRandom")
	slow.must(ck.CKR_OK, "the unread C_GenerateRandom, read")
	random(other, ho, 500<<10)
	other.must(ck.CKR_OK, "C_GenerateRandom of 500 KiB with room")
	waitUntil(t, "the replies' room given back", func() bool { return replies.Used() == 0 })
}

// A stopping daemon ends a wait for room, and a read in the middle of a
// frame.
func TestBudgetWaitStops(t *testing.T) {
	t.Parallel()
	d := startDaemonLimits(t, token.Config{}, Limits{Budget: 2 << 20, BudgetWait: time.Hour})
	reqs := d.srv.lim.requests
	f := newFloodApp(t, d)
	staller, hs := f.conn()
	waiter, hw := f.conn()
	if _, err := staller.stallData("C_DigestUpdate", hs, make([]byte, 900<<10), 100); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stalled request holds its room", func() bool { return reqs.Used() > 0 })
	if _, err := waiter.stallData("C_DigestUpdate", hw, make([]byte, 500<<10), 0); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the second request waits", func() bool { return reqs.Waiting() > 0 })
	stopped := make(chan struct{})
	go func() {
		d.stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(2 * time.Minute):
		t.Fatal("the daemon did not stop: a connection waits for room or in the middle of a frame")
	}
	for _, rc := range []*rawClient{staller, waiter} {
		if _, _, err := rc.reply(); err == nil {
			t.Error("a reply from a stopped daemon")
		}
	}
}
