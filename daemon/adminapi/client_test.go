package adminapi

import (
	"net"
	"path/filepath"
	"testing"

	"hsmemu/cryptoki/wire"
)

// A daemon of protocol version 1 refuses a version 2 hello; the admin
// client, whose protocol is the same in both, dials again in version 1.
func TestDialVersion1Daemon(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	versions := make(chan uint16, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h, err := wire.ReadHello(c)
			if err != nil {
				c.Close()
				continue
			}
			versions <- h.Version
			r := wire.HelloReply{Version: 1, Status: wire.StatusOK}
			if h.Version != 1 || h.Flags != wire.FlagAdmin {
				r.Status = wire.StatusVersion
			}
			c.Write(r.Marshal())
			if r.Status != wire.StatusOK {
				c.Close()
			}
		}
	}()
	cl, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if v1, v2 := <-versions, <-versions; v1 != wire.Version || v2 != 1 {
		t.Fatalf("hellos of versions %d then %d, want %d then 1", v1, v2, wire.Version)
	}
}
