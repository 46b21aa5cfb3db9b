package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Seals racing rotations. A write that seals (a new object, an update)
// while a rotation reseals the token's objects must land either before
// the rotation, which then reseals it too, or after it, under the new
// keys: never under the old keys once the rotation has read the objects
// it reseals, where it would stay, unreadable, after the rotation's
// commit. Within one Store its rotation locks order them; across Stores on
// one PostgreSQL database the token row's lock does (docs/cluster.md,
// "Rotations against writes on other daemons").

// ackedState is what an object was acknowledged to hold last.
type ackedState struct {
	secret  []byte
	counter uint64
}

// sealWriter puts and updates objects on one Store, recording every
// state a write of it was acknowledged for.
type sealWriter struct {
	s     *Store
	token UUID
	objs  map[ObjectID]ackedState
	ids   []ObjectID
	// refused counts writes refused as not logged in: a data key
	// rotation elsewhere logs the token out here, and a write under the
	// old key is refused rather than made.
	puts, updates, refused int
}

func newSealWriter(s *Store, token UUID) *sealWriter {
	return &sealWriter{s: s, token: token, objs: map[ObjectID]ackedState{}}
}

// step makes write i: a private, public or secret-less object, and every
// third time an update of an object made earlier. It reports an error
// other than the refusal a rotation elsewhere explains.
func (w *sealWriter) step(t *testing.T, i int) error {
	private := i%3 != 2
	var secret []byte
	if i%5 != 4 {
		secret = fmt.Appendf(nil, "secret %06d of thirty-two bytes", i)
	}
	obj, err := w.s.Put(ctx, w.token, keyAttrs(t, fmt.Sprint("w", i), private), secret)
	if err := w.refusal(err); err != nil {
		return fmt.Errorf("put %d: %w", i, err)
	}
	if obj != nil {
		w.puts++
		w.objs[obj.ID] = ackedState{secret: secret}
		w.ids = append(w.ids, obj.ID)
	}
	if i%3 != 0 || len(w.ids) == 0 {
		return nil
	}
	id := w.ids[(i*7)%len(w.ids)]
	prev := w.objs[id]
	next := ackedState{counter: prev.counter + 1}
	if prev.secret != nil {
		next.secret = fmt.Appendf(nil, "update %06d of thirty-two bytes", i)
	}
	err = w.s.UpdateLocked(ctx, id, func(cur *Object) (Attributes, []byte, error) {
		a, err := withCounter(cur.Attrs, next.counter)
		return a, next.secret, err
	})
	if err := w.refusal(err); err != nil {
		return fmt.Errorf("update %d: %w", i, err)
	}
	if err == nil {
		w.updates++
		w.objs[id] = next
	}
	return nil
}

// refusal passes a write's outcome through: nil for success, nil for a
// refusal as not logged in (after logging in again), the error else.
func (w *sealWriter) refusal(err error) error {
	if errors.Is(err, errAnchorKeys) {
		// Between another Store's switch to a new master key and this
		// Store following it, the anchor record is in an epoch it has
		// no key of yet: the write is refused, nothing made. (The
		// daemon follows at the switch's notification.)
		w.refused++
		return w.s.follow(ctx)
	}
	if !errors.Is(err, ErrNotLoggedIn) {
		return err
	}
	w.refused++
	return w.s.Login(ctx, w.token, RoleUser, userPIN)
}

// check opens every object the writer was acknowledged for on each
// Store, logged in, and compares it with its last acknowledged state.
func (w *sealWriter) check(t *testing.T, stores ...*Store) {
	t.Helper()
	for i, s := range stores {
		if err := s.Login(ctx, w.token, RoleUser, userPIN); err != nil {
			t.Fatalf("store %d: login: %v", i, err)
		}
		bad := 0
		for _, id := range w.ids {
			want := w.objs[id]
			got, err := s.Open(ctx, id)
			switch {
			case err != nil:
				t.Errorf("store %d: object %d, acknowledged: %v", i, id, err)
			case !bytes.Equal(got.Secret, want.secret) || counterOf(got.Attrs) != want.counter:
				t.Errorf("store %d: object %d holds %q, update %d; acknowledged %q, update %d", i, id, got.Secret, counterOf(got.Attrs), want.secret, want.counter)
			default:
				continue
			}
			if bad++; bad == 5 {
				t.Fatalf("store %d: more objects lost", i)
			}
		}
		if s.tamper.any.Load() {
			t.Errorf("store %d: integrity failures noted", i)
		}
	}
}

// raceRotations runs w until rotate has been called rounds times, and
// for a few writes more, then checks every acknowledged write on the
// stores. A fixed set of objects makes each rotation's reseal long
// enough for writes to land in it.
func raceRotations(t *testing.T, w *sealWriter, rounds int, rotate func(round int) error, stores ...*Store) {
	t.Helper()
	for _, s := range stores {
		if err := s.Login(ctx, w.token, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 150 {
		if _, err := stores[0].Put(ctx, w.token, keyAttrs(t, fmt.Sprint("base", i), i%2 == 0), []byte("base material, thirty-two bytes")); err != nil {
			t.Fatal(err)
		}
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load() || i%50 != 0; i++ {
			if werr = w.step(t, i); werr != nil {
				return
			}
		}
	}()
	for r := range rounds {
		if err := rotate(r); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("rotation %d: %v", r, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if werr != nil {
		t.Fatalf("a write racing the rotations: %v", werr)
	}
	t.Logf("%d puts, %d updates acknowledged, %d refused as logged out", w.puts, w.updates, w.refused)
	w.check(t, stores...)
}

// rotateMasterOnce moves the domain to a new master key from s, which
// every store in all is given first.
func rotateMasterOnce(t *testing.T, s *Store, all ...*Store) error {
	t.Helper()
	p, err := shared.tpm.Provision(tpmrootOptions())
	if err != nil {
		return err
	}
	next, err := shared.tpm.Load(p.Sealed)
	if err != nil {
		return err
	}
	t.Cleanup(func() { next.Close() })
	sealed, _ := p.Sealed.MarshalBinary()
	if err := s.BeginMasterRotation(ctx, &NextMaster{Sealed: sealed, Proof: next.DomainID()}); err != nil {
		return err
	}
	for _, o := range all {
		if err := o.AttachNext(ctx, next, next.DomainID()); err != nil {
			return err
		}
		if o != s {
			o.SetMasterFollower(func(ctx context.Context) error {
				_, err := o.FollowMaster(ctx, next, next.DomainID())
				return err
			})
		}
	}
	if _, err = s.RotateMaster(ctx, nil); err != nil {
		return err
	}
	for _, o := range all {
		if o != s {
			if _, err := o.FollowMaster(ctx, next, next.DomainID()); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestClusterSealDuringMasterRotation: objects put and updated on one
// Store while another rotates the master key all open, as acknowledged,
// on both.
//
// Not parallel: each next master key stays loaded in the tests' TPM
// until its test ends, and the TPM holds few objects at once.
func TestClusterSealDuringMasterRotation(t *testing.T) {
	st := clusterStores(t, 2, Options{CacheEntries: -1})
	a, b := st[0], st[1]
	ti := newToken(t, a, "rekeyed")
	w := newSealWriter(b, ti.UUID)
	raceRotations(t, w, 1, func(int) error { return rotateMasterOnce(t, a, a, b) }, a, b)
}

// TestClusterSealDuringDataKeyRotation: objects put and updated on one
// Store while another rotates the token's data key, again and again,
// all open, as acknowledged, on both; a private one is refused, as
// logged out, rather than sealed under a replaced data key.
func TestClusterSealDuringDataKeyRotation(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 2, Options{CacheEntries: -1})
	a, b := st[0], st[1]
	ti := newToken(t, a, "rotated")
	w := newSealWriter(b, ti.UUID)
	raceRotations(t, w, 6, func(int) error {
		_, err := a.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, nil)
		return err
	}, a, b)
}

// TestSealDuringRotation: the same on one Store, on the engine under
// test: its rotation locks order its writes against its own rotations. Not
// parallel: it rotates the master key.
func TestSealDuringRotation(t *testing.T) {
	s, _ := newStore(t, Options{CacheEntries: -1})
	ti := newToken(t, s, "one store")
	w := newSealWriter(s, ti.UUID)
	raceRotations(t, w, 4, func(r int) error {
		if r == 1 {
			return rotateMasterOnce(t, s, s)
		}
		_, err := s.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, nil)
		return err
	}, s)
}

// TestClusterPINWriteDuringDataKeyRotation: PIN changes on one Store
// while another rotates the token's data key again and again all
// succeed, none refused as tampering, and the PINs they set open the
// data key the rotations left, on both Stores.
func TestClusterPINWriteDuringDataKeyRotation(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 2, Options{CacheEntries: -1})
	a, b := st[0], st[1]
	ti := newToken(t, a, "pins")
	if err := a.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("private material, thirty-two by"))
	if err != nil {
		t.Fatal(err)
	}
	// The rotation needs both PINs as they are: each change sets the
	// PIN it had, writing a new record wrapping the data key it opened.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var changes int
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			role, pin := RoleUser, userPIN
			if i%2 == 1 {
				role, pin = RoleSO, soPIN
			}
			if werr = b.SetPIN(ctx, ti.UUID, role, pin, pin); werr != nil {
				werr = fmt.Errorf("change %d (%s): %w", i, role, werr)
				return
			}
			changes++
		}
	}()
	for r := range 6 {
		if _, err := a.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, nil); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("rotation %d: %v", r, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if werr != nil {
		t.Fatalf("a PIN change racing the rotations: %v", werr)
	}
	t.Logf("%d PIN changes", changes)
	for i, s := range st {
		for _, l := range []struct {
			role Role
			pin  []byte
		}{{RoleSO, soPIN}, {RoleUser, userPIN}} {
			if err := s.CheckPIN(ctx, ti.UUID, l.role, l.pin); err != nil {
				t.Fatalf("store %d: %s PIN: %v", i, l.role, err)
			}
		}
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatalf("store %d: login: %v", i, err)
		}
		if got, err := s.Open(ctx, obj.ID); err != nil || string(got.Secret) != "private material, thirty-two by" {
			t.Fatalf("store %d: the object under the data key the PINs open: %v", i, err)
		}
		if s.tamper.any.Load() {
			t.Errorf("store %d: integrity failures noted", i)
		}
	}
}

// TestClusterCreateDuringMasterRotation: tokens created on one Store
// while another rotates the master key all open, as acknowledged, on
// both, under the new master key: one created after the rotation listed
// the tokens is rekeyed before the switch, or made again after it.
//
// Not parallel: it rotates the master key (TestClusterSealDuringMasterRotation).
func TestClusterCreateDuringMasterRotation(t *testing.T) {
	st := clusterStores(t, 2, Options{CacheEntries: -1})
	a, b := st[0], st[1]
	for i := range 12 {
		newToken(t, a, fmt.Sprintf("before-%d", i)) // a rotation that takes a moment
	}
	var stop, failed atomic.Bool
	var count atomic.Int64
	var wg sync.WaitGroup
	var made []UUID // read once the creator is done
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			ti, err := b.CreateToken(ctx, TokenSpec{Label: fmt.Sprintf("during-%d", i), Tier: TierStandard, SOPIN: soPIN, UserPIN: userPIN})
			if err != nil {
				werr = fmt.Errorf("create %d: %w", i, err)
				failed.Store(true)
				return
			}
			made = append(made, ti.UUID)
			count.Add(1)
		}
	}()
	err := rotateMasterOnce(t, a, a, b)
	// A few more after the switch, then stop.
	for n := count.Load(); count.Load() < n+3 && !failed.Load(); time.Sleep(time.Millisecond) {
	}
	stop.Store(true)
	wg.Wait()
	if err != nil {
		t.Fatalf("rotation: %v", err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	t.Logf("%d tokens created during the rotation and after", len(made))
	for i, s := range st {
		for _, u := range made {
			ti, err := s.Token(ctx, u)
			if err != nil || ti.MasterGeneration != 2 {
				t.Fatalf("store %d: token %x: master generation %d, %v", i, u, ti.MasterGeneration, err)
			}
		}
		if err := s.Login(ctx, made[0], RoleUser, userPIN); err != nil {
			t.Fatalf("store %d: login on the first token made during the rotation: %v", i, err)
		}
	}
}
