package chaos

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
)

// An object's state in the ledger, as the clients know it.
type objState int

const (
	// live: its create was acknowledged (CKR_OK), no destroy was.
	live objState = iota
	// gone: its destroy was acknowledged, or its create refused.
	gone
	// createSent: the create was sent and no reply came (the daemon
	// was killed): the object may or may not exist, but if it does it is
	// whole.
	createSent
	// destroySent: likewise for a destroy.
	destroySent
)

// entry is one object the clients made.
type entry struct {
	owner   int // the worker that made it, and uses it in later rounds
	label   string
	value   []byte // the key's value; nil until known (a generated key)
	private bool
	state   objState
}

// ledger is what the clients were told: every object whose create or
// destroy was acknowledged, and those in doubt.
type ledger struct {
	mu      sync.Mutex
	entries map[string]*entry
}

func (l *ledger) set(label string, f func(e *entry)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.entries[label]
	if e == nil {
		e = &entry{label: label}
		l.entries[label] = e
	}
	f(e)
}

// killStats are the test's figures.
type killStats struct {
	kills, creates, generates, destroys, signs int
	checked, maybeFound, maybeAbsent           int
	restartMax                                 time.Duration
}

// TestKill9 kills the daemon with SIGKILL every few seconds while eight
// client applications create token objects (private and public, created
// with a value or generated), sign with them and destroy them. After
// every kill, before the next start, SQLite's integrity check runs on the
// file as the crash left it; after every start a fresh client checks the
// whole token against the ledger: every object whose create was
// acknowledged and whose destroy was not is there exactly once and signs
// with its value, no object whose destroy was acknowledged is, and
// nothing else is but the objects whose create or destroy was in flight,
// whole.
func TestKill9(t *testing.T) {
	chaosOnly(t)
	kills := envInt(t, "HSMEMU_CHAOS_KILLS", 30)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d kills", seed, kills)
	rng := mrand.New(mrand.NewPCG(seed, 1))

	d := newDaemon(t, "")
	d.start()
	slot := newToken(t, d.sock, "chaos")
	led := &ledger{entries: map[string]*entry{}}
	var st killStats

	const workers = 8
	for round := 1; round <= kills+1; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		stop := make(chan struct{})
		counts := make([]workerCounts, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wr := mrand.New(mrand.NewPCG(seed, uint64(round*workers+w+2)))
				wk := &worker{id: w, prefix: fmt.Sprintf("w%d-%d", w, round), led: led, rng: wr, n: &counts[w]}
				if err := wk.run(d.sock, slot, stop); err != nil {
					errs <- fmt.Errorf("round %d, worker %d: %w", round, w, err)
				}
			}()
		}
		// Every few seconds: between 0.5 and 3.
		time.Sleep(500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond))))
		last := round == kills+1
		if last {
			// The last round ends cleanly, and the daemon stops as an
			// administrator stops it.
			close(stop)
			wg.Wait()
			d.stop()
		} else {
			d.kill()
			st.kills++
			if !waitTimeout(&wg, 60*time.Second) {
				t.Fatalf("round %d: clients still busy 60 s after the kill", round)
			}
		}
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for _, c := range counts {
			st.creates += c.creates
			st.generates += c.generates
			st.destroys += c.destroys
			st.signs += c.signs
		}
		if t.Failed() {
			t.FailNow()
		}
		db := filepath.Join(d.dir, "keystore.db")
		if err := integrityCheck(db); err != nil {
			t.Fatalf("after kill %d: %v", st.kills, err)
		}
		if missing, err := unaudited(db); err != nil {
			t.Fatal(err)
		} else if len(missing) > 0 {
			t.Fatalf("after kill %d: objects without the audit record of their creation: %s", st.kills, strings.Join(missing, ", "))
		}
		began := time.Now()
		d.start()
		st.restartMax = max(st.restartMax, time.Since(began))
		if err := verify(d.sock, slot, led, &st); err != nil {
			t.Fatalf("after kill %d: %v", st.kills, err)
		}
	}
	// A kill must not leave anything the daemon complains of at its next
	// start (an interrupted write it could not make sense of, a TPM it
	// could not open).
	if lines := d.logLines("level=ERROR"); len(lines) > 0 {
		t.Errorf("the daemon logged errors:\n%s", lines)
	}
	t.Logf("%d kills; acknowledged: %d creates, %d generates, %d destroys, %d signatures; "+
		"%d objects checked after restarts; in flight at a kill: %d found whole, %d absent; "+
		"%d starts, %d retried while the killed daemon's swtpm left; slowest restart %v",
		st.kills, st.creates, st.generates, st.destroys, st.signs, st.checked, st.maybeFound, st.maybeAbsent,
		d.starts, d.retries, st.restartMax.Round(time.Millisecond))
}

// waitTimeout waits for wg, at most d.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

type workerCounts struct{ creates, generates, destroys, signs int }

// worker is one client application for one round.
type worker struct {
	id     int
	prefix string
	led    *ledger
	rng    *mrand.Rand
	n      *workerCounts
	objs   []*mine
}

// mine is an object a worker uses: made in this round or an earlier one
// (its handle then found by its label on first use).
type mine struct {
	label  string
	handle uint64 // 0 until found
	value  []byte
}

// Each worker keeps between minObjs and maxObjs objects, so that the
// token stays the same size over hundreds of rounds.
const minObjs, maxObjs = 10, 40

// run is the worker's round: until the daemon goes away or stop closes.
// It returns nil when its connection broke (the daemon was killed) and an
// error when the daemon answered wrongly.
func (w *worker) run(sock string, slot uint64, stop <-chan struct{}) error {
	w.led.mu.Lock()
	for _, e := range w.led.entries {
		if e.owner == w.id && e.state == live {
			w.objs = append(w.objs, &mine{label: e.label, value: e.value})
		}
	}
	w.led.mu.Unlock()
	c, err := dial(sock)
	if err != nil {
		return nil // killed before this client got in
	}
	defer c.Close()
	h, err := c.session(slot)
	if err != nil {
		return broken(err)
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		var err error
		switch r := w.rng.IntN(10); {
		case len(w.objs) < minObjs || (r < 4 && len(w.objs) < maxObjs) || (r >= 7 && len(w.objs) <= minObjs):
			err = w.create(c, h, fmt.Sprintf("%s-%d", w.prefix, i), r == 0)
		case r < 7:
			err = w.sign(c, h)
		default:
			err = w.destroy(c, h)
		}
		if err != nil {
			return broken(err)
		}
	}
}

// create makes a token secret key, with a value or generated, private or
// not, and records it in the ledger before it asks and once it is
// acknowledged.
func (w *worker) create(c *conn, h uint64, label string, generate bool) error {
	private := w.rng.IntN(2) == 0
	tmpl := []wire.Attribute{
		wiretest.AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), wiretest.AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_PRIVATE, private), wiretest.AB(ck.CKA_SIGN, true),
		wiretest.AB(ck.CKA_SENSITIVE, false), wiretest.AB(ck.CKA_EXTRACTABLE, true),
		wiretest.A(ck.CKA_LABEL, []byte(label)),
	}
	var value []byte
	if generate {
		tmpl = append(tmpl, wiretest.AU(ck.CKA_VALUE_LEN, 32))
	} else {
		value = make([]byte, 32)
		rand.Read(value)
		tmpl = append(tmpl, wiretest.A(ck.CKA_VALUE, value))
	}
	w.led.set(label, func(e *entry) { e.owner, e.state, e.value, e.private = w.id, createSent, value, private })
	var out []wire.Value
	var err error
	if generate {
		out, err = c.do("C_GenerateKey", wiretest.U(h), wiretest.M(ck.CKM_GENERIC_SECRET_KEY_GEN), wiretest.T(tmpl...), wiretest.None())
	} else {
		out, err = c.do("C_CreateObject", wiretest.U(h), wiretest.T(tmpl...), wiretest.None())
	}
	if err != nil {
		if !isBroken(err) {
			w.led.set(label, func(e *entry) { e.state = gone })
		}
		return err
	}
	w.led.set(label, func(e *entry) { e.state = live })
	o := &mine{label: label, handle: out[len(out)-1].Ulong, value: value}
	w.objs = append(w.objs, o)
	if !generate {
		w.n.creates++
		return nil
	}
	w.n.generates++
	v, err := c.get(h, o.handle, ck.CKA_VALUE)
	if err != nil {
		return err
	}
	o.value = v[0]
	w.led.set(label, func(e *entry) { e.value = o.value })
	return nil
}

// handle returns an object's handle, finding it by its label the first
// time in this round.
func (w *worker) handle(c *conn, h uint64, o *mine) error {
	if o.handle != 0 {
		return nil
	}
	hs, err := c.find(h, wiretest.A(ck.CKA_LABEL, []byte(o.label)))
	if err != nil {
		return err
	}
	if len(hs) != 1 {
		return fmt.Errorf("%s: %d objects found by its label, want 1", o.label, len(hs))
	}
	o.handle = hs[0]
	return nil
}

// sign signs with one of the worker's objects and checks the MAC.
func (w *worker) sign(c *conn, h uint64) error {
	o := w.objs[w.rng.IntN(len(w.objs))]
	if err := w.handle(c, h, o); err != nil {
		return err
	}
	data := make([]byte, 1+w.rng.IntN(200))
	rand.Read(data)
	sig, err := c.hmacSign(h, o.handle, data)
	if err != nil {
		return fmt.Errorf("signing with %s: %w", o.label, err)
	}
	if o.value != nil && !hmac.Equal(sig, hmacOf(o.value, data)) {
		return fmt.Errorf("%s signs with another value than its own", o.label)
	}
	w.n.signs++
	return nil
}

// destroy destroys one of the worker's objects.
func (w *worker) destroy(c *conn, h uint64) error {
	k := w.rng.IntN(len(w.objs))
	o := w.objs[k]
	if err := w.handle(c, h, o); err != nil {
		return err
	}
	w.led.set(o.label, func(e *entry) { e.state = destroySent })
	if _, err := c.do("C_DestroyObject", wiretest.U(h), wiretest.U(o.handle)); err != nil {
		if !isBroken(err) {
			return fmt.Errorf("destroying %s: %w", o.label, err)
		}
		return err
	}
	w.led.set(o.label, func(e *entry) { e.state = gone })
	w.objs = append(w.objs[:k], w.objs[k+1:]...)
	w.n.destroys++
	return nil
}

// isBroken reports a broken exchange (the daemon went away), as opposed
// to a CK_RV the daemon answered.
func isBroken(err error) bool {
	var e rvErr
	return err != nil && !errors.As(err, &e)
}

// broken turns a broken exchange into nil (the daemon was killed: the
// round is over) and keeps a wrong answer.
func broken(err error) error {
	if isBroken(err) {
		return nil
	}
	return err
}

func hmacOf(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

// verify checks the token against the ledger through a new application,
// and settles the objects that were in doubt.
func verify(sock string, slot uint64, led *ledger, st *killStats) error {
	c, err := dial(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	h, err := c.session(slot)
	if err != nil {
		return err
	}
	handles, err := c.find(h)
	if err != nil {
		return err
	}
	found := map[string]uint64{}
	for _, obj := range handles {
		v, err := c.get(h, obj, ck.CKA_LABEL, ck.CKA_VALUE)
		if err != nil {
			return fmt.Errorf("object %d found does not open: %w", obj, err)
		}
		label := string(v[0])
		if _, dup := found[label]; dup {
			return fmt.Errorf("%s is there twice", label)
		}
		found[label] = obj
		led.mu.Lock()
		e := led.entries[label]
		led.mu.Unlock()
		switch {
		case e == nil:
			return fmt.Errorf("%s is there and no client made it", label)
		case e.state == gone:
			return fmt.Errorf("%s is there after its destroy was acknowledged", label)
		case e.value != nil && !bytes.Equal(v[1], e.value):
			return fmt.Errorf("%s has another value than it was created with", label)
		}
		data := []byte("verify " + label)
		sig, err := c.hmacSign(h, obj, data)
		if err != nil {
			return fmt.Errorf("%s does not sign: %w", label, err)
		}
		if !hmac.Equal(sig, hmacOf(v[1], data)) {
			return fmt.Errorf("%s signs with another value than its own", label)
		}
		if e.value == nil {
			// Generated, and killed before its creator read the value.
			led.mu.Lock()
			e.value = bytes.Clone(v[1])
			led.mu.Unlock()
		}
		st.checked++
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	for label, e := range led.entries {
		_, there := found[label]
		switch e.state {
		case live:
			if !there {
				return fmt.Errorf("%s is lost: its create was acknowledged and no destroy was", label)
			}
		case createSent, destroySent:
			if there {
				st.maybeFound++
				e.state = live
			} else {
				st.maybeAbsent++
				e.state = gone
			}
		}
	}
	return nil
}
