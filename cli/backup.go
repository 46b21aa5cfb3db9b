package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "write a consistent copy of the whole keystore, while the daemon runs",
		ArgsUsage: "FILE",
		Description: `Copies the state directory's keystore to FILE (SQLite's VACUUM INTO on a
read-only connection: one committed state, even while the daemon writes).
The copy is as protected as the keystore: every secret in it is sealed under
the TPM's master key, so it opens only in this security domain, on this TPM
or on one recovered from the custodians' shares.

With --db postgres://..., the keystore in PostgreSQL is read in one
REPEATABLE READ, read-only transaction (one committed state, while the
daemon writes) and written to FILE in hsmemu's own backup format: every
row as stored, sealed and MACed as in the database (docs/cluster.md).

Examples:
  hsmemu backup --state-dir /var/lib/hsmemu /backup/keystore-$(date +%F).db
  hsmemu backup --db 'postgres://hsm@db1,db2/keys?target_session_attrs=read-write' /backup/keystore-$(date +%F).hsmdump`,
		Flags: []cli.Flag{
			stateDirFlag("state directory"),
			dbFlags()[0], dbFlags()[1],
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 { // more are flags (prepare)
				return cli.Exit("hsmemu backup: give the FILE to write", 2)
			}
			dst := c.Args().First()
			if err := checkOut(c, dst); err != nil {
				return err
			}
			src := filepath.Join(c.String("state-dir"), daemon.DatabaseName)
			if db := c.String("db"); db != "" {
				kind, target, err := keystore.ParseDB(db)
				if err != nil {
					return cli.Exit("hsmemu backup: "+err.Error(), 2)
				}
				if kind == keystore.EnginePostgres {
					return runBackupPostgres(c, db, dst)
				}
				src = target
			}
			domain, err := keystore.DomainOf(c.Context, src)
			if err != nil {
				return cli.Exit("hsmemu backup: "+err.Error(), 1)
			}
			if err := keystore.CopyFile(c.Context, src, dst); err != nil {
				return outFileErr(c, dst, err)
			}
			fi, _ := os.Stat(dst)
			if c.Bool("json") {
				return printJSON(c.App.Writer, storeBackedUp{Domain: fmt.Sprintf("%x", domain), File: dst, Bytes: fi.Size()})
			}
			fmt.Fprintf(c.App.Writer, "backed up the keystore of domain %x to %s (%d bytes)\n", domain, dst, fi.Size())
			return nil
		},
	}
}

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "bring a keystore backup back into a stopped daemon's state directory",
		ArgsUsage: "FILE",
		Description: `Replaces the state directory's keystore with the backup FILE. The daemon must
be stopped (its socket must not answer). A backup of another security domain
than the keystore it replaces is refused. The keystore it replaces is kept
beside it as keystore.db.replaced-TIME. The restored keystore must open with
the state directory's TPM, and every token row in it must pass its integrity
check, or the old one is put back.

A backup is older than the keystore it replaces, and the daemon refuses a
keystore older than its anchor in the TPM: restore re-anchors the restored
keystore in the TPM's counter on purpose, says how many anchors it was
behind, and records it in the audit log (anchor.reset, reason restore).

With --db postgres://..., a backup hsmemu backup made of a keystore in
PostgreSQL goes back into that database: no daemon may hold it (exit 3),
the keystore there is moved whole into a schema hsmemu_replaced_TIME (drop
it when the restored one serves: DROP SCHEMA ... CASCADE), this build's
schema is made afresh and the backup's rows copied in, in one transaction;
then the same checks as above, and on failure the replaced keystore is
moved back. The state directory holds the TPM's state, as for serve.

Examples:
  hsmemu restore --state-dir /var/lib/hsmemu /backup/keystore-2026-11-27.db
  hsmemu restore --state-dir /var/lib/hsmemu --db 'postgres://hsm@db1/keys' /backup/keystore-2026-11-27.hsmdump`,
		Flags: []cli.Flag{
			stateDirFlag("state directory"),
			dbFlags()[0], dbFlags()[1],
			tpmFlag(),
			tpmStateKeyFlag(),
			&cli.StringFlag{Name: "socket", Usage: "the daemon's socket (default: STATE-DIR/hsmemu.sock)", EnvVars: []string{"HSMEMU_SOCKET"}},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: runRestore,
	}
}

func runRestore(c *cli.Context) error {
	if c.NArg() < 1 { // more are flags (prepare)
		return cli.Exit("hsmemu restore: give the backup FILE to restore", 2)
	}
	src := c.Args().First()
	dir := c.String("state-dir")
	sock := c.String("socket")
	if sock == "" {
		sock = filepath.Join(dir, "hsmemu.sock")
	}
	if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		conn.Close()
		return cli.Exit("hsmemu restore: the daemon is running on "+sock+"; stop it first", 3)
	}
	db := filepath.Join(dir, daemon.DatabaseName)
	if v := c.String("db"); v != "" {
		kind, target, err := keystore.ParseDB(v)
		if err != nil {
			return cli.Exit("hsmemu restore: "+err.Error(), 2)
		}
		if kind == keystore.EnginePostgres {
			return runRestorePostgres(c, v, src)
		}
		db = target
	}
	// A daemon on another socket than the one asked still holds the
	// state directory's managed TPM: found before the keystore it serves
	// is moved aside, not after, when the restored one fails to open.
	// (Into PostgreSQL, the database's writer lock finds any daemon, on
	// any machine, before anything moves.)
	if spec, err := tpmroot.ParseSpec(c.String("tpm"), dir); err == nil && tpmroot.ManagedInUse(spec) {
		return cli.Exit("hsmemu restore: the state directory's TPM is in use: a daemon runs on it (on another socket than "+sock+"?); stop it first; nothing was changed", 3)
	}
	if head, err := readHead(src); err == nil && keystore.IsDump(head) {
		return cli.Exit("hsmemu restore: "+src+" is a backup of a keystore in PostgreSQL: restore it with --db and the database's connection string", 2)
	}
	domain, err := keystore.DomainOf(c.Context, src)
	if err != nil {
		// The operator's FILE is no backup (or none to read): an input
		// error, exit 2, as key restore gives for a file that is no key
		// backup.
		return failf(c, exitUsage, "bad_request", "the backup: %v", err)
	}
	current, err := keystore.DomainOf(c.Context, db)
	switch {
	case err == nil && !bytes.Equal(current, domain):
		// Exit 3 and "refused", as key restore gives for a key backup of
		// another domain: the same refusal, one code for scripts.
		return &exitErr{exit: exitConflict, code: "refused", msg: fmt.Sprintf("hsmemu restore: the backup is of domain %x, the state directory's keystore of %x; nothing was changed", domain[:8], current[:8])}
	case err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, keystore.ErrNotProvisioned):
		return cli.Exit("hsmemu restore: the current keystore: "+err.Error(), 1)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cli.Exit("hsmemu restore: "+err.Error(), 1)
	}
	// The replaced keystore is moved aside whole (its WAL too) and put back
	// if the restored one does not open.
	aside := fmt.Sprintf("%s.replaced-%s", db, strings.ToUpper(replacedStamp(time.Now())))
	moved := map[string]string{}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if _, err := os.Stat(db + suffix); err == nil {
			if err := os.Rename(db+suffix, aside+suffix); err != nil {
				putBack(moved)
				return cli.Exit("hsmemu restore: "+err.Error(), 1)
			}
			moved[aside+suffix] = db + suffix
		}
	}
	// Once the restored keystore may have been anchored in the TPM's
	// counter, the one put back is behind it: it is re-anchored too.
	anchored := false
	failWith := func(msg string, code int) error {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			os.Remove(db + suffix)
		}
		putBack(moved)
		if anchored && len(moved) > 0 {
			st, err := daemon.OpenState(c.Context, daemon.StateConfig{Dir: dir, DB: "sqlite:" + db, TPM: c.String("tpm"), TPMStateKey: tpmStateKey(c),
				Logger: slog.New(slog.DiscardHandler), Reanchor: "restore abandoned"})
			if err != nil {
				return cli.Exit("hsmemu restore: "+msg+"; the keystore it replaced is back, but does not open: "+err.Error(), code)
			}
			st.Close()
		}
		return cli.Exit("hsmemu restore: "+msg+"; the state directory is as it was", code)
	}
	fail := func(err error) error { return failWith(err.Error(), 1) }
	if err := keystore.CopyFile(c.Context, src, db); err != nil {
		return fail(err)
	}
	cfg := daemon.StateConfig{Dir: dir, DB: "sqlite:" + db, TPM: c.String("tpm"), TPMStateKey: tpmStateKey(c), Logger: slog.New(slog.DiscardHandler)}
	anchor, _, err := openRestored(c.Context, cfg, &anchored, failWith)
	if err != nil {
		return err
	}
	replaced, note := "", ""
	if len(moved) > 0 {
		replaced, note = aside, "; the one it replaced is "+aside
	}
	return reportRestored(c, domain, dir, dir, replaced, note, anchor)
}

// openRestored opens a restored keystore as the daemon will, re-anchoring
// it on purpose (anchor.reset, reason restore), and refuses it whole when
// it does not open or a token row fails its integrity check: a backup
// whose rows were edited (a failure counter, a retention) is not one to
// trust. *anchored says, before failWith runs, whether the TPM's counter
// may have moved with it. It returns the anchoring and where the keystore
// is, as the store reports it.
func openRestored(ctx context.Context, cfg daemon.StateConfig, anchored *bool, failWith func(msg string, code int) error) (keystore.AnchorReport, string, error) {
	cfg.Reanchor = "restore"
	st, err := daemon.OpenState(ctx, cfg)
	// A keystore refused as edited was refused before anything was
	// written; any other failure may come after the anchoring.
	*anchored = err == nil || stateExit(err) != exitTampered
	if err != nil {
		return keystore.AnchorReport{}, "", failWith(fmt.Sprintf("the restored keystore does not open here: %v", err), stateExit(err))
	}
	anchor, where := st.Anchor, st.Store.Storage().Location
	tampered := st.Tampered
	st.Close() // before failWith, which moves the keystore it replaced back
	if len(tampered) > 0 {
		slots := make([]string, len(tampered))
		for i, ti := range tampered {
			slots[i] = fmt.Sprintf("slot %d (%s)", ti.ID, keystore.TamperWhat(ti.Tampered))
		}
		return keystore.AnchorReport{}, "", failWith(fmt.Sprintf("the backup's token rows failed their integrity check: %s", strings.Join(slots, ", ")), exitTampered)
	}
	return anchor, where, nil
}

// reportRestored prints what restore did: the domain restored into where,
// what it replaced (note says so in words) and its new anchor.
func reportRestored(c *cli.Context, domain []byte, dir, where, replaced, note string, anchor keystore.AnchorReport) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, storeRestored{Domain: fmt.Sprintf("%x", domain), StateDir: dir, Replaced: replaced,
			Reanchored: reanchored{Counter: fmt.Sprintf("0x%08x", anchor.Handle), Value: anchor.Anchored, AnchorsBehind: anchor.Behind}})
	}
	fmt.Fprintf(c.App.Writer, "restored the keystore of domain %x into %s%s\n", domain, where, note)
	fmt.Fprintf(c.App.Writer, "re-anchored it in the TPM's counter 0x%08x at %d: it was %d anchor(s) behind (recorded in the audit log as anchor.reset)\n",
		anchor.Handle, anchor.Anchored, anchor.Behind)
	return nil
}

func putBack(moved map[string]string) {
	for from, to := range moved {
		os.Rename(from, to)
	}
}

// replacedStamp names a replaced keystore by the time of its restore, to
// the microsecond: two restores in one second must not meet (a schema
// that exists refuses the second; a file renamed over would lose the
// first's replaced keystore).
func replacedStamp(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s_%06dz", t.Format("20060102t150405"), t.Nanosecond()/1000)
}
