package daemon

import (
	"encoding/binary"
	"io"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

// A prefetch (a NULL buffer asking for the whole result, docs/protocol.md
// "Results ahead of the follow-up call") declares no capacity, so its
// reply takes no room of the replies' budget before the call is served
// (wire.ResultsBound). Its whole result therefore comes only when the
// reply stays within what a connection keeps for its results between
// calls; a longer output comes as a plain size query would, its length
// only, and the follow-up, which declares its capacity, takes it with
// its room. Else every connection could hold a reply of up to a MiB
// outside the budget ("Memory bounds", docs/reliability.md).
func TestPrefetchReplyWithinConnection(t *testing.T) {
	t.Parallel()
	d := startDaemonLimits(t, token.Config{}, Limits{Budget: 8 << 20, BudgetWait: 300 * time.Millisecond})
	f := newFloodApp(t, d)
	rc, h := f.conn()
	encrypt, _ := calls.ByName("C_Encrypt")
	for _, n := range []int{1 << 10, wire.MaxPrefetch - 16, wire.MaxPrefetch - 15, 900 << 10} {
		if rv := rc.call("C_EncryptInit", U(h), gcmMech(), U(f.key)); rv != ck.CKR_OK {
			t.Fatalf("C_EncryptInit: %v", ck.Error(rv))
		}
		body, err := wire.EncodeArgs(encrypt, []wire.Value{U(h), B(make([]byte, n)), {Out: wire.OutSpec{Prefetch: true}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.send("C_Encrypt", body); err != nil {
			t.Fatal(err)
		}
		frame, vals := readReply(t, rc, encrypt)
		if frame > connKeep {
			t.Fatalf("%d bytes: a prefetch's reply of %d bytes, past the %d a connection keeps, with no room of the budget",
				n, frame, connKeep)
		}
		out := vals[2]
		if out.Length != uint64(n+16) || out.Null != (n+16 > wire.MaxPrefetch) {
			t.Fatalf("%d bytes: length %d, data %v", n, out.Length, !out.Null)
		}
		// The follow-up gets it, its room taken as declared.
		body, err = wire.EncodeArgs(encrypt, []wire.Value{U(h), B(make([]byte, n)), Out(uint64(n + 16))})
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.send("C_Encrypt", body); err != nil {
			t.Fatal(err)
		}
		if _, vals = readReply(t, rc, encrypt); vals[2].Length != uint64(n+16) || len(vals[2].Bytes) != n+16 {
			t.Fatalf("%d bytes: the follow-up got %d bytes of %d", n, len(vals[2].Bytes), vals[2].Length)
		}
	}
}

// readReply reads one reply of call c whole: the frame's length and its
// decoded results, which must be there with CKR_OK.
func readReply(t *testing.T, rc *rawClient, c *calls.Call) (int, []wire.Value) {
	t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(rc.r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	rest := make([]byte, n)
	if _, err := io.ReadFull(rc.r, rest); err != nil {
		t.Fatal(err)
	}
	if rv := binary.BigEndian.Uint64(rest[4:]); rv != ck.CKR_OK || rest[12]&1 == 0 {
		t.Fatalf("%s: %v, flags %#x", c.Name, ck.Error(rv), rest[12])
	}
	vals, err := wire.DecodeResults(c, ck.CKR_OK, rest[13:])
	if err != nil {
		t.Fatal(err)
	}
	return 4 + n, vals
}
