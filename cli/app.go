// Package cli is hsmemu's command line: the daemon and the
// administrator's commands, built on urfave/cli.
package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

// Version and Commit are the build's, as the Makefile stamps them
// (adminapi.Build).
var Version, Commit = adminapi.Build()

// New returns the hsmemu application.
func New() *cli.App {
	return &cli.App{
		Name:    "hsmemu",
		Usage:   "a PKCS#11 HSM emulator whose master key lives in a TPM",
		Version: Version,
		Description: `hsmemu serve runs the daemon; the other commands provision and administer
it. PINs never come from the command line: each comes from a file
(--so-pin-file, --user-pin-file, ...), an environment variable
(HSMEMU_SO_PIN, HSMEMU_USER_PIN, ...) or a prompt. Every command that
prints a result takes --json (docs/json.md describes each shape).

Exit codes, for every command: 0 done, 1 failed (the daemon is not running,
or failed: its log says why), 2 usage, 3 conflict (exists, ambiguous,
deleted, in use, refused by a policy), 4 not found, 5 a PIN is wrong or
locked, 6 verification failed (tampering). Each command's --help says which
it can give.

Environment: HSMEMU_STATE_DIR, HSMEMU_SOCKET, HSMEMU_DB, HSMEMU_TPM,
HSMEMU_TPM_STATE_KEY, HSMEMU_LOG_LEVEL, HSMEMU_LOG_FORMAT, and the PIN
variables above.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"HSMEMU_LOG_LEVEL"}},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json (one JSON object a line, slog's)", EnvVars: []string{"HSMEMU_LOG_FORMAT"}},
			&cli.StringFlag{Name: "server", Usage: "administer a remote daemon at tls://HOST:PORT (a comma-separated list: the first that answers) instead of the local socket, with an administrator's certificate", EnvVars: []string{"HSMEMU_SERVER"}},
			&cli.StringFlag{Name: "tls-cert", Usage: "the client certificate for --server (PEM)", EnvVars: []string{"HSMEMU_TLS_CERT"}},
			&cli.StringFlag{Name: "tls-key", Usage: "its key (PEM, mode 0600)", EnvVars: []string{"HSMEMU_TLS_KEY"}},
			&cli.StringFlag{Name: "tls-ca", Usage: "the CA bundle that verifies the daemon (PEM)", EnvVars: []string{"HSMEMU_TLS_CA"}},
		},
		Commands: []*cli.Command{serveCommand(), initCommand(), statusCommand(), tokenCommand(), keyCommand(), certCommand(), secretCommand(), pinCommand(), rotateCommand(), auditCommand(),
			domainCommand(), backupCommand(), restoreCommand(), tpmCommand(), benchCommand(), completionCommand(), versionCommand(), manCommand()},
		EnableBashCompletion: true,
	}
}

func logger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: redactErrAttr}
	if c.String("log-format") == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// redactErrAttr logs an error as its text without a password a --db
// value in it held. The keystore redacts where it reads the connection
// string; this is the last line for an error from anywhere else (a
// driver's, a path's), at the cost of a look at errors, which are rare.
func redactErrAttr(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindAny {
		if err, ok := a.Value.Any().(error); ok && err != nil {
			return slog.String(a.Key, keystore.RedactDB(err.Error()))
		}
	}
	return a
}

// checkLogFormat refuses a --log-format other than text or json (or
// empty, the default).
func checkLogFormat(c *cli.Context) error {
	if f := c.String("log-format"); f != "" && f != "text" && f != "json" {
		return fmt.Errorf("--log-format is text or json, not %q", f)
	}
	return nil
}

// stateDirFlag is --state-dir, as every command that works on a state
// directory takes it.
func stateDirFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Usage: usage, EnvVars: []string{"HSMEMU_STATE_DIR"}, Value: defaultStateDir()}
}

// dbFlags are --db and --db-password-file, as the commands that open the
// keystore where a daemon keeps it take them.
func dbFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "db", EnvVars: []string{"HSMEMU_DB"}, Usage: "the keystore's database: sqlite:PATH, or a PostgreSQL connection string " +
			"(postgres://host1,host2/db?target_session_attrs=read-write&sslmode=verify-full, or host=... dbname=...; never with a password in it) " +
			"(default: sqlite in the state directory)"},
		&cli.StringFlag{Name: "db-password-file", Usage: "a file whose one line is the PostgreSQL password (or PGPASSFILE, as libpq reads it)"},
	}
}

// tpmFlag is --tpm, as every command that opens the TPM takes it.
func tpmFlag() cli.Flag {
	return &cli.StringFlag{Name: "tpm", Usage: "managed, a device path such as /dev/tpmrm0, or swtpm:unix:PATH", EnvVars: []string{"HSMEMU_TPM"}}
}

// tpmStateKeyFlag names the key a managed swtpm's state is encrypted under.
func tpmStateKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "tpm-state-key", EnvVars: []string{"HSMEMU_TPM_STATE_KEY"},
		Usage: "the file (64 hex digits, mode 0600, outside the state directory) of the key a managed swtpm's state is encrypted under; default: the service's tpm-state-key credential, if any"}
}

// tpmStateKey is --tpm-state-key, or the systemd credential tpm-state-key
// (LoadCredential=tpm-state-key:FILE in the unit) when the flag is unset.
func tpmStateKey(c *cli.Context) string {
	if k := c.String("tpm-state-key"); k != "" {
		return k
	}
	if d := os.Getenv("CREDENTIALS_DIRECTORY"); d != "" {
		if p := filepath.Join(d, "tpm-state-key"); fileExists(p) {
			return p
		}
	}
	return ""
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// defaultStateDir is $XDG_DATA_HOME/hsmemu, else ~/.local/share/hsmemu.
func defaultStateDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "hsmemu")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "hsmemu-state"
	}
	return filepath.Join(home, ".local", "share", "hsmemu")
}
