package token

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// The engine's tests make PKCS#11 calls as the module does, encoded and
// decoded by the wire codec (cryptoki/wire/wiretest), and served in
// process by Engine.Dispatch: no socket. Each test has its own keystore,
// SQLite on disk, attached to a master key in a real TPM (swtpm), one for
// the whole test binary.

var shared struct {
	once   sync.Once
	dir    string
	tpm    *tpmroot.TPM
	root   *tpmroot.Root
	sealed []byte
	err    error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.root != nil {
		shared.root.Close()
	}
	if shared.tpm != nil {
		shared.tpm.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// testRoot returns the shared TPM's master key and its sealed form.
func testRoot(t testing.TB) (*tpmroot.Root, []byte) {
	t.Helper()
	tpmtest.Require(t)
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "token-tpm-"); shared.err != nil {
			return
		}
		shared.tpm, shared.err = tpmroot.Open(context.Background(), tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: shared.dir})
		if shared.err != nil {
			return
		}
		// Tests give wrong PINs on purpose, many in parallel: the TPM's
		// dictionary-attack lockout must not get in their way.
		if shared.err = shared.tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 1 << 20, Recovery: time.Second, LockoutRecovery: time.Second}); shared.err != nil {
			return
		}
		p, err := shared.tpm.Provision(tpmroot.ProvisionOptions{})
		if err != nil {
			shared.err = err
			return
		}
		if shared.sealed, shared.err = p.Sealed.MarshalBinary(); shared.err != nil {
			return
		}
		shared.root, shared.err = shared.tpm.Load(p.Sealed)
	})
	if shared.err != nil {
		t.Fatalf("TPM: %v", shared.err)
	}
	return shared.root, shared.sealed
}

// testEngine is an engine over a keystore of its own. stop and start end
// it and make a new one over the same keystore, as a daemon's restart
// does.
type testEngine struct {
	db    string // the keystore's file
	store *keystore.Store
	eng   *Engine
}

func startEngine(t testing.TB, cfg Config) *testEngine {
	t.Helper()
	d := &testEngine{db: filepath.Join(t.TempDir(), "keystore.db")}
	d.start(t, cfg)
	t.Cleanup(d.stop)
	return d
}

func (d *testEngine) start(t testing.TB, cfg Config) {
	t.Helper()
	root, sealed := testRoot(t)
	ctx := context.Background()
	store, err := keystore.Open(ctx, d.db, keystore.Options{
		Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}, MaxPINFailures: cfg.MaxPINFailures})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.RootRecord(ctx); errors.Is(err, keystore.ErrNotProvisioned) {
		err = store.SetRootRecord(ctx, &keystore.RootRecord{Sealed: sealed, DomainID: root.DomainID()})
		if err != nil {
			store.Close()
			t.Fatal(err)
		}
	}
	if err := store.Attach(ctx, root, root.DomainID()); err != nil {
		store.Close()
		t.Fatal(err)
	}
	if cfg.FailureDelay == 0 {
		cfg.FailureDelay = -1
	}
	d.store, d.eng = store, New(store, nil, cfg)
}

// stop ends the engine and closes its keystore; twice is fine.
func (d *testEngine) stop() {
	if d.eng == nil {
		return
	}
	d.eng.Interrupt()
	d.eng.Close()
	d.store.Close()
	d.eng, d.store = nil, nil
}

// client is one application of the engine's.
type client struct{ *wiretest.Client }

func (d *testEngine) dial(t testing.TB) *client {
	t.Helper()
	return d.dialAs(t, wiretest.NewApp())
}

// dialAs attaches a connection of application app, as the server does
// for each connection: connections of one application share its state.
func (d *testEngine) dialAs(t testing.TB, app [16]byte) *client {
	t.Helper()
	a, ok := d.eng.Attach(AppID(app), int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("attach refused")
	}
	eng := d.eng
	t.Cleanup(func() { eng.Detach(a) })
	return &client{Client: wiretest.NewClient(t, &inProcess{eng: eng, app: a, res: &wire.Results{}})}
}

// inProcess serves a request with Dispatch, as the server's connection
// loop does (daemon/server.go), minus the socket.
type inProcess struct {
	eng  *Engine
	app  *App
	args wire.Args
	res  *wire.Results
}

func (p *inProcess) Exchange(id, callID uint32, body []byte) (wire.Reply, error) {
	rep := wire.Reply{ID: id}
	c, ok := calls.ByID(callID)
	if !ok || c.Mode != calls.Forwarded {
		rep.RV = ck.CKR_FUNCTION_NOT_SUPPORTED
		return rep, nil
	}
	if err := p.args.Decode(c, body); err != nil {
		rep.RV = ck.CKR_ARGUMENTS_BAD
		return rep, nil
	}
	p.res.Reset(c)
	rep.RV = p.eng.Dispatch(context.Background(), p.app, &p.args, p.res)
	if wire.HasResults(c, rep.RV) {
		rep.HasResults, rep.Results = true, bytes.Clone(p.res.Finish())
	}
	if calls.OnSession(c) {
		rep.Idle = p.app.SessionIdle(p.args.Ulong(0))
	}
	return rep, nil
}
