package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/shmring"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/token"
)

// offerRing dials d with a hello that announces a ring and offers fd
// (none when fd < 0) for rings of size bytes; it returns the socket and
// the offer's rv.
func offerRing(t *testing.T, d *testDaemon, fd int, size uint32, announce bool) (*net.UnixConn, uint64) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(wire.Hello{Version: wire.Version, AppID: [16]byte{7}, Ring: announce}.Marshal())
	if r, err := wire.ReadHelloReply(c); err != nil || !r.Accepted() {
		t.Fatalf("hello: %+v %v", r, err)
	}
	offer := binary.BigEndian.AppendUint32(nil, 16)
	offer = binary.BigEndian.AppendUint32(offer, 0)
	offer = binary.BigEndian.AppendUint32(offer, wire.RingCall)
	offer = binary.BigEndian.AppendUint32(offer, size)
	offer = binary.BigEndian.AppendUint32(offer, 0)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if _, _, err := c.WriteMsgUnix(offer, oob, nil); err != nil {
		t.Fatal(err)
	}
	rep, _, err := wire.ReadReply(bufio.NewReaderSize(c, 17), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ID != 0 || rep.HasResults {
		t.Fatalf("offer's reply: %+v", rep)
	}
	return c, rep.RV
}

// slotListThrough makes a C_GetSlotList call over rw and returns its rv.
func slotListThrough(t *testing.T, rw io.ReadWriter) uint64 {
	t.Helper()
	c, _ := calls.ByName("C_GetSlotList")
	if _, err := rw.Write(wire.AppendRequest(nil, 5, c.ID, []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 4})); err != nil {
		t.Fatal(err)
	}
	rep, _, err := wire.ReadReply(bufio.NewReader(rw), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ID != 5 {
		t.Fatalf("reply id %d", rep.ID)
	}
	return rep.RV
}

// TestRingHostileModule: a module whose rings the daemon took is served
// through them; when it then sets a counter out of range, the daemon ends
// that connection, frees its rings (the budgets hold nothing after), and
// serves everyone else as before.
func TestRingHostileModule(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	ring, fd, err := shmring.NewClient(shmring.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	c, rv := offerRing(t, d, fd, shmring.MinSize, true)
	unix.Close(fd)
	if rv != ck.CKR_OK {
		t.Fatalf("offer: rv %#x", rv)
	}
	if used := d.srv.lim.requests.Used() + d.srv.lim.replies.Used(); used != int64(shmring.Len(shmring.MinSize)) {
		t.Errorf("budgets hold %d bytes for the rings, want %d", used, shmring.Len(shmring.MinSize))
	}
	raw, _ := c.SyscallConn()
	raw.Control(func(s uintptr) { ring.Watch(int(s)) })
	if rv := slotListThrough(t, ring); rv != ck.CKR_OK {
		t.Fatalf("C_GetSlotList through the rings: %#x", rv)
	}

	// The request ring's head, far past anything written, and the
	// daemon woken to see it.
	mem := ring.Shared()
	binary.NativeEndian.PutUint32(mem[0:], 1<<31)
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(&mem[0])), 1 /* FUTEX_WAKE */, 1, 0, 0, 0)
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("after a counter out of range: %v, want the connection closed", err)
	}
	ring.Close()
	d.dial(t).Slots()
	// The closed connection's goroutine gives the rings back as it ends.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		used := d.srv.lim.requests.Used() + d.srv.lim.replies.Used()
		if used == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("budgets hold %d bytes after the connection ended", used)
		}
	}
}

// TestRingDeclined: an offer the daemon cannot take (an unsealed memfd,
// no memfd, or a daemon with rings off) is declined, and the socket
// carries the frames; a ring offer from a module that did not announce it
// is an unknown call, which is what a daemon that knows no rings answers.
func TestRingDeclined(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	unsealed, err := unix.MemfdCreate("t", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unsealed)
	if err := unix.Ftruncate(unsealed, int64(shmring.Len(shmring.MinSize))); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		fd   int
		ring bool
		want uint64
	}{
		{"unsealed", unsealed, true, ck.CKR_FUNCTION_NOT_SUPPORTED},
		{"no descriptor", -1, true, ck.CKR_FUNCTION_NOT_SUPPORTED},
		{"not announced", unsealed, false, ck.CKR_FUNCTION_NOT_SUPPORTED},
	} {
		c, rv := offerRing(t, d, tc.fd, shmring.MinSize, tc.ring)
		if rv != tc.want {
			t.Errorf("%s: rv %#x, want %#x", tc.name, rv, tc.want)
		}
		if rv := slotListThrough(t, c); rv != ck.CKR_OK {
			t.Errorf("%s: C_GetSlotList on the socket after: %#x", tc.name, rv)
		}
	}

	d = startDaemonWith(t, token.Config{}, func(d *testDaemon) { d.noRings = true })
	_, fd, err := shmring.NewClient(shmring.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, rv := offerRing(t, d, fd, shmring.MinSize, true)
	if rv == ck.CKR_OK {
		t.Fatal("a daemon with rings off took them")
	}
	if rv := slotListThrough(t, c); rv != ck.CKR_OK {
		t.Errorf("C_GetSlotList on the socket: %#x", rv)
	}
}
