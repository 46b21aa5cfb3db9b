package daemon

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/token"
)

// panicConn is a connection whose reads panic, as a bug in reading or
// decoding a frame would.
type panicConn struct{}

func (panicConn) Read([]byte) (int, error)    { panic("a bug in reading a frame") }
func (panicConn) Write(p []byte) (int, error) { return len(p), nil }

// TestPanicOutsideCallEndsConnection: a panic in serving a connection
// outside a call (Server.call recovers the calls' own) ends that
// connection, logged, and the daemon goes on serving the others; before,
// it ended the daemon.
func TestPanicOutsideCallEndsConnection(t *testing.T) {
	logs := &syncBuf{}
	d := startDaemonWith(t, token.Config{}, func(d *testDaemon) { d.log = slog.New(slog.NewJSONHandler(logs, nil)) })
	app, ok := d.eng.Attach(token.AppID([16]byte{9, 9}), int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("the application was not attached")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.srv.serveRequests(context.Background(), panicConn{}, app, int32(os.Getpid()), true)
	}()
	<-done
	d.eng.Detach(app)
	if n := len(logs.lines(t, "closing connection: internal error outside a call")); n != 1 {
		t.Fatalf("%d log lines for the connection's panic, want 1", n)
	}
	wiretest.DialClient(t, d.sock).Must(ck.CKR_OK, "C_GetSlotList", wire.Value{Byte: 1}, wiretest.Out(64))
}
