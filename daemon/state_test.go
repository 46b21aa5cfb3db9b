package daemon

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

func openState(t *testing.T, dir string) (*State, error) {
	t.Helper()
	tpmtest.Require(t)
	return OpenState(context.Background(), StateConfig{
		Dir:   dir,
		TPM:   "managed",
		Store: keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}},
	})
}

// TestStateProvisionThenOpen: the first open of an empty state directory
// provisions a domain; the next open (a new swtpm process on the same state)
// finds the same domain and the same keys.
func TestStateProvisionThenOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Provisioned {
		t.Fatal("first open did not provision")
	}
	domain := st.Root.DomainID()
	ti, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: "t", Tier: keystore.TierStandard, SOPIN: []byte("so"), UserPIN: []byte("user")})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, []byte("user")); err != nil {
		t.Fatal(err)
	}
	attrs, _ := keystore.NewAttributes(keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)})
	obj, err := st.Store.Put(ctx, ti.UUID, attrs, []byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st, err = openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Provisioned || !bytes.Equal(st.Root.DomainID(), domain) {
		t.Fatalf("reopen: provisioned=%v, same domain=%v", st.Provisioned, bytes.Equal(st.Root.DomainID(), domain))
	}
	if err := st.Store.Login(ctx, ti.UUID, keystore.RoleUser, []byte("user")); err != nil {
		t.Fatal(err)
	}
	got, err := st.Store.Open(ctx, obj.ID)
	if err != nil || string(got.Secret) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("object after restart: %v", err)
	}
}

// TestStateWrongTPM moves a keystore next to a fresh swtpm: the open fails
// with ErrWrongTPM and the database is left exactly as it was.
func TestStateWrongTPM(t *testing.T) {
	t.Parallel()
	a, b := t.TempDir(), t.TempDir()
	st, err := openState(t, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(filepath.Join(a, DatabaseName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, DatabaseName), db, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openState(t, b); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("open on another TPM: %v, want ErrWrongTPM", err)
	}
	after, err := os.ReadFile(filepath.Join(b, DatabaseName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, db) {
		t.Fatal("the keystore was modified by a refused open")
	}
}

// TestStateLostRoot: a keystore whose root record is gone but whose tokens
// remain is not provisioned anew.
func TestStateLostRoot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Store.CreateToken(context.Background(), keystore.TokenSpec{Label: "t", Tier: keystore.TierStandard, SOPIN: []byte("so-pin")}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, DatabaseName))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DELETE FROM root"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := openState(t, dir); err == nil {
		t.Fatal("a keystore with tokens and no root was provisioned anew")
	}
}
