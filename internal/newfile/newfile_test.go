package newfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func write(s string) func(*os.File) error {
	return func(f *os.File) error { _, err := f.WriteString(s); return err }
}

// entries lists a directory's names: what a failed write left.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteNewFile(t *testing.T) {
	dir := t.TempDir()
	for _, perm := range []os.FileMode{0o600, 0o644} {
		p := filepath.Join(dir, perm.String())
		if err := Write(p, perm, write("data")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != perm {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), perm)
		}
		if b, _ := os.ReadFile(p); string(b) != "data" {
			t.Errorf("%s holds %q", p, b)
		}
	}
	if got := entries(t, dir); len(got) != 2 {
		t.Errorf("the directory holds %v, want the two files alone", got)
	}
}

func TestWriteRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "backup")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	called := false
	err := Write(p, 0o600, func(f *os.File) error { called = true; return nil })
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Write over an existing file: %v, want fs.ErrExist", err)
	}
	if called {
		t.Error("fill ran for a file that exists")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("the existing file holds %q", b)
	}
	// A dangling symbolic link is a name taken too: writing through it
	// would create a file elsewhere.
	l := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), l); err != nil {
		t.Fatal(err)
	}
	if err := Write(l, 0o600, write("x")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Write over a dangling link: %v, want fs.ErrExist", err)
	}
}

// A file created at the path while the data is written (after the first
// check) is not replaced.
func TestWriteRefusesFileCreatedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "backup")
	err := Write(p, 0o600, func(f *os.File) error {
		if err := os.WriteFile(p, []byte("other"), 0o600); err != nil {
			return err
		}
		_, err := f.WriteString("mine")
		return err
	})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Write: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "other" {
		t.Errorf("the file created meanwhile holds %q", b)
	}
	if got := entries(t, dir); len(got) != 1 {
		t.Errorf("the directory holds %v, want the other file alone", got)
	}
}

// A failure half-way leaves nothing: no truncated file, no temporary one.
func TestWriteFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "backup")
	boom := errors.New("disk full")
	err := Write(p, 0o600, func(f *os.File) error {
		if _, err := f.WriteString("half"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Write: %v, want the fill's error", err)
	}
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("a failed write left %v", got)
	}
}
