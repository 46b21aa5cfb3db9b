package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/internal/newfile"
	"hsmemu/keystore"
)

// runBackupPostgres writes a backup of the keystore in the PostgreSQL
// database db to dst, which must not exist.
func runBackupPostgres(c *cli.Context, db, dst string) error {
	var domain []byte
	var n int64
	err := newfile.Write(dst, 0o600, func(f *os.File) (err error) {
		domain, n, err = keystore.BackupPostgres(c.Context, db, keystore.Options{PasswordFile: c.String("db-password-file")}, f)
		return err
	})
	if err != nil {
		return outFileErr(c, dst, err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, storeBackedUp{Domain: fmt.Sprintf("%x", domain), File: dst, Bytes: n})
	}
	fmt.Fprintf(c.App.Writer, "backed up the keystore of domain %x to %s (%d bytes)\n", domain, dst, n)
	return nil
}

// readHead reads the first bytes of a file, to tell what it is.
func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 64)
	n, err := io.ReadFull(f, b)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	return b[:n], err
}

// runRestorePostgres puts the backup src in place of the keystore in the
// PostgreSQL database db, with the guarantees restore gives on SQLite:
// refused while a daemon holds the database or for another domain, the
// replaced keystore kept (in a schema of its own) and moved back if the
// restored one does not open with this TPM or a token row fails its
// integrity check, and the restored one re-anchored on purpose.
func runRestorePostgres(c *cli.Context, db, src string) error {
	dir := c.String("state-dir")
	opts := keystore.Options{PasswordFile: c.String("db-password-file")}
	d, err := keystore.ReadDumpFile(src)
	if errors.Is(err, keystore.ErrNotDump) {
		if head, herr := readHead(src); herr == nil && strings.HasPrefix(string(head), "SQLite format 3\x00") {
			return cli.Exit("hsmemu restore: "+src+" is a backup of a keystore in SQLite, which restores into a state directory, not with --db postgres://...", 2)
		}
		return failf(c, exitUsage, "bad_request", "the backup: %s is not a keystore backup", src)
	}
	if err != nil {
		// Damaged, cut short or unreadable: the operator's FILE is no
		// backup to restore, exit 2 as for key restore's altered blob.
		return failf(c, exitUsage, "bad_request", "the backup: %v", err)
	}
	aside := "hsmemu_replaced_" + replacedStamp(time.Now())
	replaced, err := keystore.RestorePostgres(c.Context, db, opts, d, aside)
	var dm *keystore.DomainMismatchError
	switch {
	case errors.Is(err, keystore.ErrDatabaseInUse):
		return cli.Exit("hsmemu restore: a daemon serves this database; stop it first (nothing was changed)", 3)
	case errors.As(err, &dm):
		return &exitErr{exit: exitConflict, code: "refused", msg: "hsmemu restore: " + strings.TrimPrefix(dm.Error(), "keystore: ") + "; nothing was changed"}
	case err != nil:
		return cli.Exit("hsmemu restore: "+err.Error()+"; nothing was changed", 1)
	}
	cfg := daemon.StateConfig{Dir: dir, DB: db, Store: opts, TPM: c.String("tpm"), TPMStateKey: tpmStateKey(c),
		Logger: slog.New(slog.DiscardHandler)}
	anchored := false
	failWith := func(msg string, code int) error {
		// Past a failed open the context may be done: the undo must run.
		ctx := context.WithoutCancel(c.Context)
		if err := keystore.UndoRestorePostgres(ctx, db, opts, replaced); err != nil {
			return cli.Exit(fmt.Sprintf("hsmemu restore: %s; moving the replaced keystore back failed too: %v (it is in schema %s)", msg, err, replaced), code)
		}
		if anchored && replaced != "" {
			// The counter moved on with the restored keystore's anchor.
			cfg := cfg
			cfg.Reanchor = "restore abandoned"
			st, err := daemon.OpenState(ctx, cfg)
			if err != nil {
				return cli.Exit("hsmemu restore: "+msg+"; the keystore it replaced is back, but does not open: "+err.Error(), code)
			}
			st.Close()
		}
		return cli.Exit("hsmemu restore: "+msg+"; the database is as it was", code)
	}
	anchor, where, err := openRestored(c.Context, cfg, &anchored, failWith)
	if err != nil {
		return err
	}
	note := ""
	if replaced != "" {
		note = "; the one it replaced is in schema " + replaced
	}
	return reportRestored(c, d.DomainID, dir, "PostgreSQL "+where, replaced, note, anchor)
}
