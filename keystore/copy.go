package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"

	"hsmemu/internal/newfile"
)

// CopyFile writes a consistent copy of the keystore at src to dst, which
// must not exist: SQLite's VACUUM INTO, run on a read-only connection, so
// the copy is one committed state of src even while a daemon writes to it.
// What it copies is as protected as src: sealed objects and PIN records.
func CopyFile(ctx context.Context, src, dst string) error {
	if err := newfile.Exists(dst); err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	db, err := openReadOnly(src)
	if err != nil {
		return err
	}
	defer db.Close()
	// VACUUM INTO takes an empty file: the temporary one newfile makes
	// beside dst, so that dst appears whole, synced and 0600, or not at
	// all, and never replaces a file.
	err = newfile.Write(dst, 0o600, func(f *os.File) error {
		if _, err := db.ExecContext(ctx, "VACUUM INTO ?", f.Name()); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	return nil
}

// DomainOf reads the domain id a keystore file's root record names,
// without opening it as a store (nothing is written next to it).
func DomainOf(ctx context.Context, path string) ([]byte, error) {
	db, err := openReadOnly(path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var domain []byte
	err = db.QueryRowContext(ctx, "SELECT domain_id FROM root WHERE id = 1").Scan(&domain)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotProvisioned
	}
	if err != nil {
		return nil, fmt.Errorf("keystore: %s is not a keystore: %w", path, err)
	}
	return domain, nil
}

// openReadOnly opens an existing keystore file read-only: nothing is
// created or written next to it.
func openReadOnly(path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	return sql.Open("sqlite3", "file:"+path+"?mode=ro&_busy_timeout=10000")
}
