package daemon

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/token"
	"hsmemu/internal/reqid"
)

// The daemon's per-call path in process, without the transport: the
// frames a module sends for one operation on session-object keys, read
// from a buffer, each decoded, served (the session and the keys looked
// up, the engine's work) and answered into the connection's writer, as
// serveModule does for a ring or a socket. "one-call" is an Init and its
// call with a buffer; "two-call" what the module sends when the
// application asks for the length first: the C_SessionCancel it owes for
// the last result it held, the deferred Init, and the call with a
// prefetch (docs/protocol.md, "Results ahead of the follow-up call").
//
//	go test -run '^$' -bench HotPathSession -benchmem -count 5 ./daemon/

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1, &ru) // RUSAGE_THREAD
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hotStep is one frame of an operation.
type hotStep struct {
	call string
	vals []wire.Value
}

// hotPathOps are the operations the session-key targets name, each as
// its frames in either convention; keys are the session objects.
func hotPathOps(h uint64, k hotKeys) []struct {
	name     string
	one, two []hotStep
} {
	prefetch := wire.Value{Out: wire.OutSpec{Prefetch: true}}
	data1k := bytes.Repeat([]byte{0x5c}, 1024)
	hash := bytes.Repeat([]byte{0xa7}, 32)
	gcm := MP(ck.CKM_AES_GCM, wire.GCMParams{IV: make([]byte, 12), TagBits: 128}.Param())
	cancel := func(flag uint64) hotStep { return hotStep{"C_SessionCancel", []wire.Value{U(h), U(flag)}} }
	return []struct {
		name     string
		one, two []hotStep
	}{
		{"wrap",
			[]hotStep{{"C_WrapKey", []wire.Value{U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(k.kek), U(k.wrapped), Out(64)}}},
			[]hotStep{{"C_WrapKey", []wire.Value{U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(k.kek), U(k.wrapped), prefetch}}}},
		{"hmac-sha256",
			[]hotStep{{"C_SignInit", []wire.Value{U(h), M(ck.CKM_SHA256_HMAC), U(k.hmac)}}, {"C_Sign", []wire.Value{U(h), B(data1k), Out(64)}}},
			[]hotStep{cancel(ck.CKF_SIGN), {"C_SignInit", []wire.Value{U(h), M(ck.CKM_SHA256_HMAC), U(k.hmac)}}, {"C_Sign", []wire.Value{U(h), B(data1k), prefetch}}}},
		{"encrypt-aes-gcm-1k",
			[]hotStep{{"C_EncryptInit", []wire.Value{U(h), gcm, U(k.aes)}}, {"C_Encrypt", []wire.Value{U(h), B(data1k), Out(2048)}}},
			[]hotStep{cancel(ck.CKF_ENCRYPT), {"C_EncryptInit", []wire.Value{U(h), gcm, U(k.aes)}}, {"C_Encrypt", []wire.Value{U(h), B(data1k), prefetch}}}},
		{"sign-ecdsa-p256",
			[]hotStep{{"C_SignInit", []wire.Value{U(h), M(ck.CKM_ECDSA), U(k.ec)}}, {"C_Sign", []wire.Value{U(h), B(hash), Out(128)}}},
			[]hotStep{cancel(ck.CKF_SIGN), {"C_SignInit", []wire.Value{U(h), M(ck.CKM_ECDSA), U(k.ec)}}, {"C_Sign", []wire.Value{U(h), B(hash), prefetch}}}},
	}
}

// hotKeys are the session objects the operations use.
type hotKeys struct{ kek, wrapped, hmac, aes, ec uint64 }

// hotConn is a module connection served from a buffer of frames.
type hotConn struct {
	mc      *moduleConn
	rd      *bytes.Reader
	out     bytes.Buffer // the replies to the last operation
	callCtx context.Context
	frames  []byte
	n       int // frames per operation
}

func newHotConn(tb testing.TB, d *testDaemon, app *token.App, steps []hotStep) *hotConn {
	tb.Helper()
	var frames []byte
	for i, s := range steps {
		c, ok := calls.ByName(s.call)
		if !ok {
			tb.Fatalf("no call %s", s.call)
		}
		body, err := wire.EncodeArgs(c, s.vals)
		if err != nil {
			tb.Fatal(err)
		}
		frames = wire.AppendRequest(frames, uint32(i+1), c.ID, body)
	}
	hc := &hotConn{rd: bytes.NewReader(nil), frames: frames, n: len(steps)}
	hc.mc = &moduleConn{s: d.srv, app: app, pid: int32(os.Getpid()), sayIdle: true,
		r: bufio.NewReaderSize(hc.rd, connKeep), w: bufio.NewWriterSize(&hc.out, connKeep), res: &wire.Results{}}
	hc.callCtx, hc.mc.rid = reqid.WithSlot(context.Background())
	return hc
}

// op serves the operation's frames once.
func (hc *hotConn) op(tb testing.TB) {
	hc.rd.Reset(hc.frames)
	hc.mc.r.Reset(hc.rd)
	hc.out.Reset()
	for range hc.n {
		if err := hc.mc.serveNext(ctx, hc.callCtx); err != nil {
			tb.Fatal(err)
		}
	}
}

// hotPathDaemon starts a daemon with a logged-in session holding the
// operations' keys as session objects, and returns the application
// that owns them and a function that opens another session, one for
// each operation and convention (a prefetch leaves its operation in the
// daemon until the next frames cancel it).
func hotPathDaemon(tb testing.TB) (*testDaemon, *token.App, func() uint64, hotKeys) {
	tb.Helper()
	d := startDaemon(tb, token.Config{})
	id := NewApp()
	cl := d.dialAs(tb, id)
	slot := cl.NewToken("hotpath")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	secret := func(kt uint64, uses ...uint64) uint64 {
		t := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, kt), AU(ck.CKA_VALUE_LEN, 32),
			AB(ck.CKA_TOKEN, false), AB(ck.CKA_PRIVATE, true), AB(ck.CKA_SENSITIVE, true)}
		for _, u := range uses {
			t = append(t, AB(u, true))
		}
		gen := uint64(ck.CKM_AES_KEY_GEN)
		if kt == ck.CKK_GENERIC_SECRET {
			gen = ck.CKM_GENERIC_SECRET_KEY_GEN
		}
		return cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(gen), T(t...), None())[3].Ulong
	}
	var k hotKeys
	k.kek = secret(ck.CKK_AES, ck.CKA_WRAP, ck.CKA_UNWRAP)
	k.wrapped = secret(ck.CKK_AES, ck.CKA_ENCRYPT, ck.CKA_EXTRACTABLE)
	k.hmac = secret(ck.CKK_GENERIC_SECRET, ck.CKA_SIGN, ck.CKA_VERIFY)
	k.aes = secret(ck.CKK_AES, ck.CKA_ENCRYPT)
	k.ec = cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(A(ck.CKA_EC_PARAMS, mech.ECParams("P-256")), AB(ck.CKA_TOKEN, false), AB(ck.CKA_VERIFY, true)),
		T(AB(ck.CKA_TOKEN, false), AB(ck.CKA_PRIVATE, true), AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_SIGN, true)), None(), None())[5].Ulong
	// The benchmark serves calls as the client's application, whose
	// sessions, login and session objects they use; the client stays
	// connected so that the application does too.
	app, ok := d.eng.Attach(token.AppID(id), int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		tb.Fatal("attach")
	}
	tb.Cleanup(func() { d.eng.Detach(app) })
	return d, app, func() uint64 { return cl.Open(slot, false) }, k
}

func BenchmarkHotPathSession(b *testing.B) {
	d, app, open, k := hotPathDaemon(b)
	for i, op := range hotPathOps(0, k) {
		for _, conv := range []string{"one-call", "two-call"} {
			b.Run(op.name+"/"+conv, func(b *testing.B) {
				op := hotPathOps(open(), k)[i]
				steps := op.one
				if conv == "two-call" {
					steps = op.two
				}
				hc := newHotConn(b, d, app, steps)
				hc.op(b)
				b.ReportAllocs()
				// The thread's CPU time per operation beside the wall
				// time, which on a shared machine counts the other
				// processes' turns. The collector's background work on
				// other threads is in neither.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				start := threadCPU()
				for b.Loop() {
					hc.op(b)
				}
				b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// TestHotPathSession checks what the benchmark measures: every frame of
// every operation answered CKR_OK, the last with the output (the whole of
// it after a prefetch), the same again on a second pass.
func TestHotPathSession(t *testing.T) {
	d, app, open, k := hotPathDaemon(t)
	for i := range hotPathOps(0, k) {
		for two := range 2 {
			op := hotPathOps(open(), k)[i]
			steps := op.one
			if two == 1 {
				steps = op.two
			}
			hc := newHotConn(t, d, app, steps)
			for range 2 {
				hc.op(t)
				br := bufio.NewReader(&hc.out)
				for i, s := range steps {
					p, _, err := wire.ReadReply(br, nil)
					if err != nil {
						t.Fatalf("%s: reply %d: %v", op.name, i, err)
					}
					if p.RV != ck.CKR_OK {
						t.Fatalf("%s: %s: %s", op.name, s.call, ck.Error(p.RV))
					}
					if i < len(steps)-1 {
						continue
					}
					c, _ := calls.ByName(s.call)
					vals, err := wire.DecodeResults(c, p.RV, p.Results)
					if err != nil {
						t.Fatal(err)
					}
					out := vals[len(vals)-1]
					if out.Null || len(out.Bytes) == 0 || uint64(len(out.Bytes)) != out.Length {
						t.Errorf("%s: %s: output of %d bytes (length %d, null %v)", op.name, s.call, len(out.Bytes), out.Length, out.Null)
					}
				}
			}
		}
	}
}
