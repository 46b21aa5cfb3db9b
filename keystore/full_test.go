package keystore

import (
	"errors"
	"fmt"
	"testing"
)

// capFile makes every write that needs a page the file does not have
// fail with SQLITE_FULL, as a full filesystem makes them fail, by capping
// the writer connection's database at its current size; lift undoes it.
func capFile(t *testing.T, s *Store) (lift func()) {
	t.Helper()
	var pages int64
	if err := s.w.QueryRowContext(ctx, "PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, fmt.Sprintf("PRAGMA max_page_count = %d", pages)); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := s.w.ExecContext(ctx, "PRAGMA max_page_count = 1073741823"); err != nil {
			t.Fatal(err)
		}
	}
}

// untilFull repeats a write until it fails, and returns its error.
func untilFull(t *testing.T, what string, write func(i int) error) error {
	t.Helper()
	for i := range 10000 {
		if err := write(i); err != nil {
			return err
		}
	}
	t.Fatalf("%s: 10,000 writes into a capped file all succeeded", what)
	return nil
}

// TestFull: on a full filesystem, every write fails with ErrFull (the
// daemon's CKR_DEVICE_MEMORY), reads go on, and writes succeed once space
// returns.
func TestFull(t *testing.T) {
	sqliteOnly(t, "fills the file with max_page_count; a PostgreSQL server's disk is the server's")
	t.Parallel()
	s, _ := newStore(t, Options{})
	ti := newToken(t, s, "full")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	before, err := s.Put(ctx, ti.UUID, keyAttrs(t, "before", true), []byte("secret material of the first key"))
	if err != nil {
		t.Fatal(err)
	}

	lift := capFile(t, s)
	for _, tc := range []struct {
		name  string
		write func(i int) error
	}{
		{name: "Put", write: func(i int) error {
			_, err := s.Put(ctx, ti.UUID, keyAttrs(t, fmt.Sprintf("k%d", i), i%2 == 0), make([]byte, 512))
			return err
		}},
		{name: "CreateToken", write: func(i int) error {
			_, err := s.CreateToken(ctx, TokenSpec{Label: fmt.Sprintf("t%d", i), Tier: TierStandard, SOPIN: soPIN})
			return err
		}},
		{name: "Audit", write: func(i int) error {
			_, err := s.Audit(ctx, AuditActor{Role: "admin"}, "test.fill", map[string]string{"i": fmt.Sprint(i)})
			return err
		}},
		{name: "Update", write: func(i int) error {
			return s.Update(ctx, before.ID, keyAttrs(t, fmt.Sprintf("before-%d", i), true), make([]byte, 2048+i*512))
		}},
	} {
		if err := untilFull(t, tc.name, tc.write); !errors.Is(err, ErrFull) {
			t.Errorf("%s on a full filesystem: %v, want ErrFull", tc.name, err)
		}
	}
	if obj, err := s.Open(ctx, before.ID); err != nil || string(obj.Secret) != "secret material of the first key" {
		t.Fatalf("a read on a full filesystem: %v", err)
	}
	lift()
	if _, err := s.Put(ctx, ti.UUID, keyAttrs(t, "after", true), []byte("x")); err != nil {
		t.Fatalf("a write once space returned: %v", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
