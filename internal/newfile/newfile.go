// Package newfile writes a file that must not exist yet, so that it either
// appears whole, durable and with its final mode, or not at all.
//
// A backup, a key's backup or a custodian's share may be the only copy of
// what it holds: overwriting an older one silently, or leaving a truncated
// file in its place when the disk fills or the process dies half-way,
// loses it. So the data goes to a temporary file in the same directory,
// which is synced, given its mode and then linked to its name with
// RENAME_NOREPLACE: an existing file is never replaced, even one created
// between a check and the write.
package newfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Exists reports a path's file exists: the error to refuse it with. It
// wraps fs.ErrExist.
func Exists(path string) error {
	if _, err := os.Lstat(path); err == nil {
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Write creates path with mode perm from what fill writes into f, a
// temporary file beside it, and refuses (fs.ErrExist) a path that exists.
// fill may also write f's name by other means (SQLite's VACUUM INTO).
// On any failure nothing is left at path or beside it.
func Write(path string, perm os.FileMode, fill func(f *os.File) error) (err error) {
	if err := Exists(path); err != nil {
		return err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// CreateTemp makes it 0600: what it holds is no one else's before
	// it has its final mode.
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// renameNoReplace moves from to to, unless to exists; a file system
// without RENAME_NOREPLACE gets a hard link, which refuses one as well.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		if err = os.Link(from, to); err == nil {
			return os.Remove(from)
		}
		var le *os.LinkError
		if errors.As(err, &le) {
			err = le.Err
		}
	}
	if errors.Is(err, unix.EEXIST) {
		return &fs.PathError{Op: "create", Path: to, Err: fs.ErrExist}
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", to, err)
	}
	return nil
}

// syncDir makes a directory's entries durable: the new name.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
