package keystore

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmemu/tpmroot"
)

// Several Stores on one PostgreSQL database, as several daemons of one
// domain run (pgcluster.go, docs/cluster.md). They share the tests' TPM
// root, as daemons on one TPM would until each node has its own; these
// tests run on every run of the test binary, whichever engine the matrix
// tests (they need PostgreSQL: skipped without it, failed under CI).

// testBound is the invalidation bound the tests give their Stores.
const testBound = 200 * time.Millisecond

// clusterStores opens n Stores on one new database, all anchored in one
// counter.
func clusterStores(t *testing.T, n int, opts Options) []*Store {
	t.Helper()
	loc := pgServer.NewDatabase(t)
	if opts.Invalidation == 0 {
		opts.Invalidation = testBound
	}
	first, _ := newStoreAt(t, loc, opts)
	stores := []*Store{first}
	for len(stores) < n {
		stores = append(stores, reopen(t, loc, opts))
	}
	c, h := newCounter(t, first)
	for i, s := range stores {
		if _, err := s.AttachAnchor(ctx, c, AnchorOptions{Handle: h}); err != nil {
			t.Fatalf("store %d: anchor: %v", i, err)
		}
	}
	return stores
}

// refusedBy checks that s refuses object id, at the latest for every
// Open begun a bound after ack, when the change that removed it was
// acknowledged: the guarantee, whatever the notifications did. It
// returns how long after ack the first refusal came.
func refusedBy(t *testing.T, s *Store, id ObjectID, ack time.Time) time.Duration {
	t.Helper()
	deadline := ack.Add(s.opts.Invalidation)
	for {
		start := time.Now()
		_, err := s.Open(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return start.Sub(ack)
		}
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		if start.After(deadline) {
			t.Fatalf("the object was still served %v after the change was acknowledged (bound %v)", start.Sub(ack), s.opts.Invalidation)
		}
		if time.Since(ack) > 30*s.opts.Invalidation {
			t.Fatal("never refused")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestClusterKeyEverywhere: a key made on one Store opens on the others;
// destroyed on one, it is refused on the others within the bound: with
// the notifications, with the notifications lost, with the listener hung
// (neither notifications nor polls: the lease alone), and with the
// listener's connection killed.
func TestClusterKeyEverywhere(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 3, Options{})
	a, b, c := st[0], st[1], st[2]
	ti := newToken(t, a, "cluster")
	for _, s := range st {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	secret := []byte("a key of thirty-two bytes, made.")
	for _, tc := range []struct {
		name   string
		break_ func()
		mend   func()
	}{
		{"notified", func() {}, func() {}},
		{"notifications lost", func() { b.sync.drop.Store(true); c.sync.drop.Store(true) },
			func() { b.sync.drop.Store(false); c.sync.drop.Store(false) }},
		{"listener hung", func() { b.sync.hang.Store(true); c.sync.hang.Store(true) },
			func() { b.sync.hang.Store(false); c.sync.hang.Store(false) }},
		{"listener killed", func() {
			for _, s := range []*Store{b, c} {
				pid := s.sync.listenerPID()
				if pid == 0 {
					t.Fatal("no listener")
				}
				if _, err := a.w.ExecContext(ctx, "SELECT pg_terminate_backend(?)", int64(pid)); err != nil {
					t.Fatal(err)
				}
			}
		}, func() {}},
	} {
		obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, tc.name, true), secret)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Store{b, c} {
			got, err := s.Open(ctx, obj.ID)
			if err != nil || string(got.Secret) != string(secret) {
				t.Fatalf("%s: the key made on one store, on another: %v", tc.name, err)
			}
		}
		tc.break_()
		if err := a.Delete(ctx, obj.ID); err != nil {
			t.Fatal(err)
		}
		ack := time.Now()
		for _, s := range []*Store{b, c} {
			took := refusedBy(t, s, obj.ID, ack)
			t.Logf("%s: refused %v after the destroy", tc.name, took.Round(time.Microsecond))
		}
		tc.mend()
	}
}

// TestClusterTokenChanges: a token's data key rotated on one Store logs
// it out on the others, which do not take the resealed objects for
// tampered ones; a token deleted on one is gone from the others.
func TestClusterTokenChanges(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 2, Options{})
	a, b := st[0], st[1]
	ti := newToken(t, a, "rotated")
	for _, s := range st {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
			t.Fatal(err)
		}
	}
	obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, "k", true), []byte("sixteen byte key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(ctx, obj.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, nil); err != nil {
		t.Fatal(err)
	}
	ack := time.Now()
	for {
		start := time.Now()
		_, err := b.Open(ctx, obj.ID)
		if errors.Is(err, ErrNotLoggedIn) {
			break
		}
		if err != nil {
			t.Fatalf("after the rotation elsewhere: %v", err)
		}
		if start.After(ack.Add(testBound)) {
			t.Fatalf("still logged in with the old data key %v after the rotation", start.Sub(ack))
		}
		time.Sleep(time.Millisecond)
	}
	if b.tamper.any.Load() {
		t.Fatal("integrity failures noted on the other store")
	}
	if err := b.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Open(ctx, obj.ID); err != nil || string(got.Secret) != "sixteen byte key" {
		t.Fatalf("after logging in again: %v", err)
	}

	if err := a.DeleteToken(ctx, ti.UUID); err != nil {
		t.Fatal(err)
	}
	refusedBy(t, b, obj.ID, time.Now())
	if err := b.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrNotFound) {
		t.Fatalf("login to a token deleted elsewhere: %v", err)
	}
}

// TestClusterPINLockout: wrong PINs given at once on three Stores are
// all counted, in the one token row (no count lost to a race), and lock
// the role on every Store.
func TestClusterPINLockout(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 3, Options{MaxPINFailures: 10})
	ti := newToken(t, st[0], "lockout")
	var incorrect atomic.Int64
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := st[i%3].Login(ctx, ti.UUID, RoleUser, []byte(fmt.Sprintf("wrong-%d", i)))
			switch {
			case errors.Is(err, ErrPINIncorrect):
				incorrect.Add(1)
			case errors.Is(err, ErrPINLocked):
			default:
				t.Errorf("wrong PIN %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	got, err := st[1].Token(ctx, ti.UUID)
	if err != nil {
		t.Fatal(err)
	}
	if int64(got.UserFailures) != incorrect.Load() || got.UserFailures < 10 {
		t.Fatalf("%d failures counted for %d wrong PINs refused", got.UserFailures, incorrect.Load())
	}
	for i, s := range st {
		if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); !errors.Is(err, ErrPINLocked) {
			t.Fatalf("store %d: the right PIN after the lockout: %v", i, err)
		}
	}
}

// TestClusterAuditChain: records appended at once from three Stores make
// one chain, with no fork, that verifies from each of them; and the
// anchoring they do meanwhile, on one counter, stops none of them.
func TestClusterAuditChain(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 3, Options{})
	ti := newToken(t, st[0], "audited")
	if err := st[0].Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	const each = 40
	var wg sync.WaitGroup
	for i, s := range st {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := range each {
				if _, err := s.Audit(ctx, AuditActor{UID: uint32(i)}, "test.event", map[string]string{"n": fmt.Sprint(j)}); err != nil {
					t.Error(err)
					return
				}
				if j%10 == 0 {
					if _, err := s.Anchor(ctx); err != nil {
						t.Errorf("store %d: anchor: %v", i, err)
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			for j := range each / 4 {
				note := func(UUID) AuditNote { return AuditNote{Actor: AuditActor{UID: uint32(i)}, Event: "key.generate"} }
				if _, err := s.PutAudited(ctx, ti.UUID, keyAttrs(t, fmt.Sprint(i, j), false), []byte("sixteen byte key"), note); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	recs, err := st[0].AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]int64, len(recs))
	for i, r := range recs {
		seqs[i] = r.Seq
	}
	if !slices.IsSorted(seqs) || len(recs) < 3*(each+each/4) || seqs[len(seqs)-1] != int64(len(seqs)) {
		t.Fatalf("%d records, the last numbered %d", len(recs), seqs[len(seqs)-1])
	}
	for i, s := range st {
		rep, err := s.VerifyAudit(ctx)
		if err != nil || !rep.OK || rep.Records != int64(len(recs)) {
			t.Fatalf("store %d: verify: %+v %v", i, rep, err)
		}
		if _, err := s.Anchor(ctx); err != nil {
			t.Fatalf("store %d: anchor after: %v", i, err)
		}
	}
	anchorRecord(t, st[2]) // the record accounts for every row
}

// TestClusterPurgeTakenOver: a purge of expired deleted objects is one
// Store's at a time; a purger that dies half way (its job's connection
// gone, as when its process is killed) leaves the rest to another Store,
// which finishes it.
func TestClusterPurgeTakenOver(t *testing.T) {
	t.Parallel()
	st := clusterStores(t, 2, Options{})
	a, b := st[0], st[1]
	ti := newToken(t, a, "purged")
	const n = 12
	for i := range n {
		obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprint(i), false), []byte("sixteen byte key"))
		if err != nil {
			t.Fatal(err)
		}
		if kept, err := a.SoftDelete(ctx, obj.ID); err != nil || !kept {
			t.Fatalf("soft delete: %v %v", kept, err)
		}
	}
	later := time.Now().Add(time.Duration(DefaultRetentionDays+1) * 24 * time.Hour)

	stuck, dead := make(chan struct{}), make(chan struct{})
	steps := 0
	a.purgeStep = func() {
		if steps++; steps == 4 {
			close(stuck)
			<-dead // the purger stops here, as a killed one does
		}
	}
	first := make(chan []Deleted, 1)
	go func() {
		got, _ := a.PurgeExpired(ctx, later)
		first <- got
	}()
	<-stuck
	if got, err := b.PurgeExpired(ctx, later); err != nil || len(got) != 0 {
		t.Fatalf("a second purger while the first runs: %d purged, %v", len(got), err)
	}
	// The first purger's process dies: its connections go.
	if _, err := b.w.ExecContext(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hsmemu-job' AND datname = current_database()"); err != nil {
		t.Fatal(err)
	}
	var got []Deleted
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if got, err = b.PurgeExpired(ctx, later); err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(got) != n-4 {
		t.Fatalf("the second store purged %d of the %d left", len(got), n-4)
	}
	close(dead)
	if rest := <-first; len(rest) != 4 {
		t.Fatalf("the first purger reports %d purged, it purged 4", len(rest))
	}
	left, err := b.DeletedObjects(ctx, ti.UUID)
	if err != nil || len(left) != 0 {
		t.Fatalf("%d deleted objects left: %v", len(left), err)
	}
}

// TestClusterInvalidationLatency measures how long after a change is
// acknowledged on one Store another has dropped what it made stale:
// the notification's way through the server, the figure docs/cluster.md
// gives.
func TestClusterInvalidationLatency(t *testing.T) {
	st := clusterStores(t, 2, Options{Invalidation: DefaultInvalidation})
	a, b := st[0], st[1]
	ti := newToken(t, a, "latency")
	obj, err := a.Put(ctx, ti.UUID, keyAttrs(t, "k", false), []byte("sixteen byte key"))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan time.Time, 1)
	want := fmt.Sprintf("o%d", obj.ID)
	f := func(_ uint64, what string, own bool) {
		if what == want && !own {
			seen <- time.Now()
		}
	}
	b.sync.observe.Store(&f)
	const n = 300
	lat := make([]time.Duration, 0, n)
	attrs := keyAttrs(t, "k", false)
	for range n {
		if _, err := b.Open(ctx, obj.ID); err != nil {
			t.Fatal(err)
		}
		if err := a.Update(ctx, obj.ID, attrs, nil); err != nil {
			t.Fatal(err)
		}
		ack := time.Now()
		at := <-seen
		lat = append(lat, max(0, at.Sub(ack)))
	}
	slices.Sort(lat)
	t.Logf("invalidation after acknowledgement, %d changes: p50 %v, p99 %v, max %v", n,
		lat[n/2].Round(time.Microsecond), lat[n*99/100].Round(time.Microsecond), lat[n-1].Round(time.Microsecond))
}

// TestClusterAnchorPerNode: two nodes on one database anchor side by
// side, each in its own counter: node 1 holding its anchoring job does
// not make node 2 skip an anchor, though it does make node 1's own
// skip. (Anchoring was one job for the domain, and a node whose anchor
// met another's waited an interval.)
func TestClusterAnchorPerNode(t *testing.T) {
	t.Parallel()
	loc := pgServer.NewDatabase(t)
	s1, _ := newStoreAt(t, loc, Options{Invalidation: testBound})
	id1, _, err := s1.AdoptNode(ctx, fakeTPMID(1), []byte("import key 1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.AttachNode(ctx, id1); err != nil {
		t.Fatal(err)
	}
	c1, h1 := newCounter(t, s1)
	if _, err := s1.AttachAnchor(ctx, c1, AnchorOptions{Handle: h1}); err != nil {
		t.Fatal(err)
	}
	rec, err := s1.RootRecord(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := s1.AddNode(ctx, NodeSpec{TPMID: fakeTPMID(2), Sealed: rec.Sealed, ImportKey: []byte("import key 2")})
	if err != nil {
		t.Fatal(err)
	}
	s2 := reopen(t, loc, Options{Invalidation: testBound})
	if err := s2.AttachNode(ctx, id2); err != nil {
		t.Fatal(err)
	}
	c2, h2 := newCounter(t, s2)
	if _, err := s2.AttachAnchor(ctx, c2, AnchorOptions{Handle: h2, Reset: "domain join"}); err != nil {
		t.Fatal(err)
	}

	release, ok, err := s1.eng.job(ctx, s1.anchorJob(), false)
	if err != nil || !ok {
		t.Fatalf("node 1's anchoring job: %v %v", ok, err)
	}
	newToken(t, s2, "written on node 2")
	before, _, _ := c2.Value()
	if did, err := s2.Anchor(ctx); err != nil || !did {
		t.Fatalf("node 2 anchors while node 1 holds its job: %v %v", did, err)
	}
	if after, _, _ := c2.Value(); after != before+1 {
		t.Fatalf("node 2's counter %d, then %d: not anchored", before, after)
	}
	newToken(t, s1, "written on node 1")
	if did, err := s1.Anchor(ctx); err != nil || did {
		t.Fatalf("node 1 anchors while its job is held: %v %v", did, err)
	}
	release()
	if did, err := s1.Anchor(ctx); err != nil || !did {
		t.Fatalf("node 1 anchors once its job is free: %v %v", did, err)
	}
	// Each node's own counter checks out at its next start.
	for _, n := range []struct {
		s  *Store
		id int64
		c  *tpmroot.Counter
		h  uint32
	}{{s1, id1, c1, h1}, {s2, id2, c2, h2}} {
		n.s.Close()
		r := reopen(t, loc, Options{})
		if err := r.AttachNode(ctx, n.id); err != nil {
			t.Fatal(err)
		}
		if _, err := r.AttachAnchor(ctx, n.c, AnchorOptions{Handle: n.h}); err != nil {
			t.Fatalf("node %d at its next start: %v", n.id, err)
		}
		r.Close()
	}
}
