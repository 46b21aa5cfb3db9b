package keystore

import (
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"
)

// A master key rotation on one node and a data key rotation of one of
// its tokens on another: both are legitimate, so both succeed, whichever
// reaches the token's row first, and neither is taken for tampering.
// Every object then opens on both nodes, no tamper.detected record is
// written and the audit chain verifies (docs/cluster.md, "A token's two
// rotations on two daemons"). On one Store (SQLite's only case) the
// token's rotation lock orders them: TestWritesDuringRekeyOfAnotherToken
// rotates the data key of the token whose rekey is held.

// clashToken makes a token on s with private, public and secret-less
// objects, and returns it with what each object holds.
func clashToken(t *testing.T, s *Store, label string) (TokenInfo, map[ObjectID][]byte) {
	t.Helper()
	ti := newToken(t, s, label)
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	want := map[ObjectID][]byte{}
	for i := range 12 {
		var secret []byte
		if i%4 != 3 {
			secret = fmt.Appendf(nil, "secret %02d, thirty-two bytes lon", i)
		}
		o, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprint("k", i), i%2 == 0), secret)
		if err != nil {
			t.Fatal(err)
		}
		want[o.ID] = secret
	}
	return ti, want
}

// checkClash checks, on each store, the token under master generation 2
// and data key generation dgen, every object of want opening as made, no
// integrity failure noted or recorded, and the audit chain intact.
func checkClash(t *testing.T, tok UUID, dgen uint32, want map[ObjectID][]byte, stores ...*Store) {
	t.Helper()
	for i, s := range stores {
		ti, err := s.Token(ctx, tok)
		if err != nil || ti.MasterGeneration != 2 || ti.DataGeneration != dgen {
			t.Fatalf("store %d: token: master generation %d, data key generation %d, %v", i, ti.MasterGeneration, ti.DataGeneration, err)
		}
		if err := s.Login(ctx, tok, RoleUser, userPIN); err != nil {
			t.Fatalf("store %d: login: %v", i, err)
		}
		for id, secret := range want {
			o, err := s.Open(ctx, id)
			if err != nil || string(o.Secret) != string(secret) {
				t.Fatalf("store %d: object %d: %v; want %q", i, id, err, secret)
			}
		}
		if s.tamper.any.Load() {
			t.Errorf("store %d: integrity failures noted", i)
		}
		if err := s.AuditTamper(ctx); err != nil {
			t.Fatal(err)
		}
		if n, err := s.TamperCount(ctx); err != nil || n != 0 {
			t.Fatalf("store %d: %d tamper.detected records, %v", i, n, err)
		}
		if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK {
			t.Fatalf("store %d: audit verify: %+v, %v", i, rep, err)
		}
	}
}

// rowWaiters waits until n transactions wait for a token row's lock
// taken FOR UPDATE (a rotation's first statement), as the server sees
// them.
func rowWaiters(t *testing.T, s *Store, n int) {
	t.Helper()
	for {
		var got int
		err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%FROM tokens WHERE%FOR UPDATE%'`).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// holdRow takes the token's row FOR UPDATE on s, as a rotation does: the
// rotations begun meanwhile queue for it, first come first served. The
// release commits.
func holdRow(t *testing.T, s *Store, rowID int64) func() {
	t.Helper()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := tx.QueryRowContext(ctx, "SELECT id FROM tokens WHERE id = ? FOR UPDATE", rowID).Scan(&id); err != nil {
		tx.Rollback()
		t.Fatal(err)
	}
	var once sync.Once
	release := func() {
		once.Do(func() {
			if err := tx.Commit(); err != nil && err != sql.ErrTxDone {
				t.Error(err)
			}
		})
	}
	t.Cleanup(release)
	return release
}

// clashOrder is who of the two rotations reaches the token first.
type clashOrder int

const (
	// The data key rotation commits after the master key rotation listed
	// the tokens and before it rekeys this one.
	dataAfterListing clashOrder = iota
	// The master key rotation waits for the row while the data key
	// rotation holds it.
	masterWaits
	// The data key rotation waits for the row while the master key
	// rotation rekeys the token, and finds the KEK moved.
	dataWaits
)

// clash rotates the master key from a and the token's data key from b,
// in the order given; c is a third Store of the database, whose writer
// holds the token's row while the two queue for it.
func clash(t *testing.T, order clashOrder) {
	st := clusterStores(t, 3, Options{CacheEntries: -1})
	a, b, c := st[0], st[1], st[2]
	ti, want := clashToken(t, a, "clash")
	other, wantOther := clashToken(t, a, "bystander")
	if err := b.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.rekeyHold = func(u UUID) {
		if u == ti.UUID {
			once.Do(func() {
				close(held)
				<-release
			})
		}
	}
	defer func() { a.rekeyHold = nil }()
	var unrow func()
	if order != dataAfterListing {
		unrow = holdRow(t, c, ti.ID)
	}
	mastered, dataRotated := make(chan error, 1), make(chan error, 1)
	go func() { mastered <- rotateMasterOnce(t, a, a, b) }()
	rotateData := func() {
		go func() {
			_, err := b.RotateDataKey(ctx, ti.UUID, soPIN, userPIN, nil)
			dataRotated <- err
		}()
	}
	select {
	case <-held:
	case err := <-mastered:
		t.Fatalf("the master key rotation ended before it rekeyed the token: %v", err)
	}
	switch order {
	case dataAfterListing:
		rotateData()
		if err := <-dataRotated; err != nil {
			close(release)
			<-mastered
			t.Fatalf("data key rotation: %v", err)
		}
		close(release)
	case masterWaits:
		rotateData()
		rowWaiters(t, a, 1)
		close(release)
		rowWaiters(t, a, 2)
		unrow()
	case dataWaits:
		close(release)
		rowWaiters(t, a, 1)
		rotateData()
		rowWaiters(t, a, 2)
		unrow()
	}
	if err := <-mastered; err != nil {
		t.Fatalf("master key rotation: %v", err)
	}
	if order != dataAfterListing {
		if err := <-dataRotated; err != nil {
			t.Fatalf("data key rotation: %v", err)
		}
	}
	checkClash(t, ti.UUID, 2, want, a, b)
	checkClash(t, other.UUID, 1, wantOther, a, b)
}

// TestClusterMasterAndDataKeyRotation: a master key rotation on one
// node and a data key rotation of a token on another, in each order they
// can reach the token's row, both succeed.
//
// Not parallel: it rotates the master key (TestClusterSealDuringMasterRotation).
func TestClusterMasterAndDataKeyRotation(t *testing.T) {
	for _, c := range []struct {
		name  string
		order clashOrder
	}{
		{"data key rotated after the listing", dataAfterListing},
		{"master key rotation waits", masterWaits},
		{"data key rotation waits", dataWaits},
	} {
		t.Run(c.name, func(t *testing.T) { clash(t, c.order) })
	}
}
