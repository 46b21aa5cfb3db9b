package cli

import (
	"errors"
	"fmt"
	"net"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/tpmroot"
)

func tpmCommand() *cli.Command {
	return &cli.Command{
		Name:  "tpm",
		Usage: "the state directory's managed swtpm",
		Subcommands: []*cli.Command{{
			Name:  "encrypt-state",
			Usage: "encrypt a stopped daemon's managed swtpm state under a key kept elsewhere",
			Description: `Encrypts the managed swtpm's state (the TPM's seeds, and so the master key
and every key under it) under the key in --tpm-state-key FILE, which is
created if it does not exist (32 random bytes in hex, mode 0600). The TPM
stays the same TPM: every key opens as before, given FILE. Keep FILE
outside the state directory; from now on every command on the state
directory needs it (hsmemu serve --tpm-state-key FILE, or the service's
tpm-state-key credential).

Copies of the state directory made before, and the unencrypted file's
blocks on the disk, stay unencrypted: they open without FILE. A state
directory provisioned with hsmemu init --tpm-state-key never had an
unencrypted state.

The daemon must be stopped (its socket must not answer).

Example:
  hsmemu tpm encrypt-state --state-dir /var/lib/hsmemu --tpm-state-key /etc/hsmemu/tpm-state.key`,
			Flags: []cli.Flag{
				stateDirFlag("state directory"),
				tpmStateKeyFlag(),
				&cli.StringFlag{Name: "socket", Usage: "the daemon's socket (default: STATE-DIR/hsmemu.sock)", EnvVars: []string{"HSMEMU_SOCKET"}},
			},
			Action: runEncryptState,
		}},
	}
}

func runEncryptState(c *cli.Context) error {
	dir := c.String("state-dir")
	key := tpmStateKey(c)
	if key == "" {
		return cli.Exit("hsmemu tpm encrypt-state: give --tpm-state-key FILE, the key's file (created if missing)", 2)
	}
	sock := c.String("socket")
	if sock == "" {
		sock = filepath.Join(dir, "hsmemu.sock")
	}
	if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		conn.Close()
		return cli.Exit("hsmemu tpm encrypt-state: the daemon is running on "+sock+"; stop it first", 3)
	}
	spec, err := tpmroot.ParseSpec("managed", dir)
	if err != nil {
		return cli.Exit("hsmemu tpm encrypt-state: "+err.Error(), 2)
	}
	spec.StateKey = key
	switch enc, exists, err := tpmroot.StateEncrypted(spec); {
	case err != nil:
		return cli.Exit("hsmemu tpm encrypt-state: "+err.Error(), 1)
	case !exists:
		return cli.Exit("hsmemu tpm encrypt-state: "+dir+" holds no managed swtpm state", 1)
	case enc:
		return cli.Exit("hsmemu tpm encrypt-state: the swtpm state in "+dir+" is encrypted already", 1)
	}
	newKey := false
	if !fileExists(key) {
		if err := tpmroot.NewStateKey(key, dir); err != nil {
			return cli.Exit("hsmemu tpm encrypt-state: --tpm-state-key: "+err.Error(), 2)
		}
		newKey = true
	} else if err := tpmroot.CheckStateKey(key, dir); err != nil {
		return cli.Exit("hsmemu tpm encrypt-state: --tpm-state-key: "+err.Error(), 2)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := tpmroot.EncryptState(ctx, spec); err != nil {
		if newKey {
			removeNewKey(key)
		}
		code := 1
		if errors.Is(err, tpmroot.ErrTPMInUse) {
			code = 3
		}
		return cli.Exit("hsmemu tpm encrypt-state: "+err.Error()+"; the state is as it was", code)
	}
	fmt.Fprintf(c.App.Writer, "encrypted the swtpm state of %s under %s; give it to every command on this state directory (--tpm-state-key)\n", dir, key)
	return nil
}

// removeNewKey removes a key file this command made and used for nothing.
func removeNewKey(path string) { _ = tpmroot.RemoveStateKey(path) }
