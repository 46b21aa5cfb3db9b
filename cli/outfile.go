package cli

import (
	"errors"
	"io/fs"
	"os"

	"github.com/urfave/cli/v2"

	"hsmemu/internal/newfile"
)

// Every command that writes a file (backup, key backup, key
// export-public, cert request, cert export, secret get --out, the shares
// of init and rotate master, bench's charts) refuses one that exists, as
// a usage error: the operator named it, and it may be the only copy of
// an earlier backup. None takes a --force; move the old file away.

// outExists is the refusal of an existing file to write.
func outExists(c *cli.Context, path string) error {
	return failf(c, exitUsage, "file_exists", "%s exists; move it away or choose another file (nothing was written)", path)
}

// checkOut refuses an existing path to write before the command does
// anything; an empty path (stdout) is no file.
func checkOut(c *cli.Context, path string) error {
	if path == "" {
		return nil
	}
	if err := newfile.Exists(path); errors.Is(err, fs.ErrExist) {
		return outExists(c, path)
	} else if err != nil {
		return failf(c, exitUsage, "usage", "%v", err)
	}
	return nil
}

// writeOutFile writes data to path with mode perm, whole or not at all,
// refusing a file that exists (one created since checkOut too).
func writeOutFile(c *cli.Context, path string, perm os.FileMode, data []byte) error {
	err := newfile.Write(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
	return outFileErr(c, path, err)
}

// outFileErr is the command's failure for newfile.Write's error.
func outFileErr(c *cli.Context, path string, err error) error {
	if errors.Is(err, fs.ErrExist) {
		return outExists(c, path)
	}
	if err != nil {
		return failf(c, exitError, "failed", "%v", err)
	}
	return nil
}
