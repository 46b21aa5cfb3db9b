// Package cli is hsmemu's command line: the daemon and, in time, the
// administrator's commands, built on urfave/cli.
package cli

import (
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// Version is set at build time with -ldflags "-X hsmemu/cli.Version=...".
var Version = "dev"

// New returns the hsmemu application.
func New() *cli.App {
	return &cli.App{
		Name:    "hsmemu",
		Usage:   "a PKCS#11 HSM emulator whose master key lives in a TPM",
		Version: Version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"HSMEMU_LOG_LEVEL"}},
		},
		Commands:             []*cli.Command{serveCommand(), initCommand(), domainCommand(), backupCommand(), restoreCommand(), benchCommand(), completionCommand()},
		EnableBashCompletion: true,
	}
}

func logger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
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
