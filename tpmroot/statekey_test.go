package tpmroot_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

func openErr(spec tpmroot.Spec) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tpm, err := tpmroot.Open(ctx, spec)
	if err == nil {
		tpm.Close()
	}
	return err
}

// TestStateKey: a managed swtpm's state kept under a key opens with that
// key only. A copy of the state directory without it opens nothing, with
// a wrong key neither, and the TPM it holds is the same TPM, with the
// same master key, whenever it opens.
func TestStateKey(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	state, keys := t.TempDir(), t.TempDir()
	key, wrong := filepath.Join(keys, "state.key"), filepath.Join(keys, "wrong.key")
	for _, k := range []string{key, wrong} {
		if err := tpmroot.NewStateKey(k, state); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new key file: %v %v", fi, err)
	}
	spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state, StateKey: key}
	tpm := tpmtest.Open(t, spec)
	sealed, kek := provisionAndKEK(t, tpm)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if enc, exists, err := tpmroot.StateEncrypted(spec); err != nil || !exists || !enc {
		t.Fatalf("StateEncrypted = %v %v %v, want an encrypted state", enc, exists, err)
	}
	// A copy of the directory, as a thief would take it.
	stolen := t.TempDir()
	copyTree(t, state, stolen)
	if err := openErr(tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: stolen}); !errors.Is(err, tpmroot.ErrStateEncrypted) {
		t.Fatalf("the copy without its key: %v, want ErrStateEncrypted", err)
	}
	if err := openErr(tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: stolen, StateKey: wrong}); !errors.Is(err, tpmroot.ErrWrongStateKey) {
		t.Fatalf("the copy with a wrong key: %v, want ErrWrongStateKey", err)
	}
	// Edited to look unencrypted, it is not a state swtpm reads either.
	perm := filepath.Join(stolen, "swtpm", "tpm2-00.permall")
	b, err := os.ReadFile(perm)
	if err != nil {
		t.Fatal(err)
	}
	b[5] &^= 1
	os.WriteFile(perm, b, 0o600)
	if err := openErr(tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: stolen}); err == nil {
		t.Fatal("the copy with its encryption flag cleared opened")
	}
	// With its key, the copy is the TPM, master key and all.
	tpm2 := tpmtest.Open(t, tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state, StateKey: key})
	if got := loadKEK(t, tpm2, sealed); !bytes.Equal(got, kek) {
		t.Errorf("KEK with the key = %x, want %x", got, kek)
	}
}

// TestEncryptState encrypts a state that was not: the same TPM opens with
// the key, and no longer without it.
func TestEncryptState(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	state := t.TempDir()
	key := filepath.Join(t.TempDir(), "state.key")
	plain := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state}
	tpm := tpmtest.Open(t, plain)
	sealed, kek := provisionAndKEK(t, tpm)
	if err := tpm.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tpmroot.NewStateKey(key, state); err != nil {
		t.Fatal(err)
	}
	keyed := plain
	keyed.StateKey = key
	if err := openErr(keyed); !errors.Is(err, tpmroot.ErrStateNotEncrypted) {
		t.Fatalf("a key for an unencrypted state: %v, want ErrStateNotEncrypted", err)
	}
	if err := tpmroot.EncryptState(context.Background(), keyed); err != nil {
		t.Fatal(err)
	}
	if err := tpmroot.EncryptState(context.Background(), keyed); err == nil || !strings.Contains(err.Error(), "encrypted already") {
		t.Fatalf("encrypting twice: %v", err)
	}
	if err := openErr(plain); !errors.Is(err, tpmroot.ErrStateEncrypted) {
		t.Fatalf("without the key after encrypting: %v, want ErrStateEncrypted", err)
	}
	entries, _ := os.ReadDir(filepath.Join(state, "swtpm"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".encrypt-") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	tpm2 := tpmtest.Open(t, keyed)
	if got := loadKEK(t, tpm2, sealed); !bytes.Equal(got, kek) {
		t.Errorf("KEK after encrypting = %x, want %x", got, kek)
	}
}

// TestStateKeyFileChecks: a key file inside the state directory, open to
// others, or not 32 bytes of hex is refused before swtpm starts.
func TestStateKeyFileChecks(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	if err := tpmroot.NewStateKey(filepath.Join(state, "inside.key"), state); err == nil || !strings.Contains(err.Error(), "inside the state directory") {
		t.Errorf("a key inside the state directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(state, "inside.key")); err == nil {
		t.Error("the refused key file was left behind")
	}
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"open":  {content: strings.Repeat("ab", 32), mode: 0o644, want: "open to other users"},
		"short": {content: strings.Repeat("ab", 16), mode: 0o600, want: "64 hex digits"},
		"text":  {content: strings.Repeat("zz", 32), mode: 0o600, want: "64 hex digits"},
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(tc.content), tc.mode)
		os.Chmod(p, tc.mode)
		if err := tpmroot.CheckStateKey(p, state); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, 0o700)
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, fi.Mode().Perm())
		}
		return nil // sockets are not state
	})
	if err != nil {
		t.Fatal(err)
	}
}
