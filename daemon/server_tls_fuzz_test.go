package daemon

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/remote/remotetest"
)

// FuzzTLSListener sends what the wire fuzzers make of frames to a daemon's
// TLS listener, after a TLS 1.3 handshake and a hello: every complete
// frame gets its reply, in order, until the framing breaks, the
// connection then closes, the daemon serves the next client, and what
// the connection held of the budget is given back.
func FuzzTLSListener(f *testing.F) {
	list, _ := calls.ByName("C_GetSlotList")
	info, _ := calls.ByName("C_GetInfo")
	f.Add(wire.AppendRequest(nil, 1, list.ID, []byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 8}))
	f.Add(wire.AppendRequest(wire.AppendRequest(nil, 1, info.ID, nil), 2, 9999, []byte{1, 2, 3}))
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 1})                // shorter than a head
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0}) // over 16 MiB
	head, rest := encryptRequest(100 << 10)
	f.Add(append(head, rest[:1000]...)) // a large request cut short
	pki := remotetest.New(f)
	d := startTLSDaemon(f, pki, testPolicy(f), func(rc *RemoteConfig) { rc.Stall = time.Second })
	f.Fuzz(func(t *testing.T, data []byte) {
		c := stalledConn(t, d, pki)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		want := frameIDs(data)
		r := bufio.NewReader(c)
		for i := 0; ; i++ {
			rep, _, err := wire.ReadReply(r, nil)
			if err != nil {
				if !errors.Is(err, io.EOF) && !isEOF(err) {
					t.Fatalf("reply %d: %v", i, err)
				}
				if i < len(want.complete) && want.framed {
					t.Fatalf("%d replies to %d well-framed requests", i, len(want.complete))
				}
				break
			}
			if i >= len(want.complete) || rep.ID != want.complete[i] {
				t.Fatalf("reply %d has id %d; requests %v", i, rep.ID, want.complete)
			}
		}
		d.dialTLS(t, pki, pki.App).Slots()
		eventually(t, "budgets given back", func() bool {
			return d.srv.lim.requests.Used() == 0 && d.srv.lim.replies.Used() == 0
		})
	})
}

// frameIDs are the ids of the complete, well-framed requests at the start
// of data; framed says data is nothing else.
func frameIDs(data []byte) (out struct {
	complete []uint32
	framed   bool
}) {
	for len(data) >= 4 {
		n := binary.BigEndian.Uint32(data)
		if n < 8 || n > wire.MaxFrame || uint64(len(data)-4) < uint64(n) {
			return out
		}
		out.complete = append(out.complete, binary.BigEndian.Uint32(data[4:]))
		data = data[4+n:]
	}
	out.framed = len(data) == 0
	return out
}
