package cli

import (
	"context"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon: open (or provision) the state directory and hold the keystore",
		Description: `The first start on an empty state directory provisions a new master key
in the TPM and says so; later starts open it. Without --tpm the daemon uses
/dev/tpmrm0 when present, else a swtpm it starts and stops itself, with its
state under the state directory.

Example:
   hsmemu serve --state-dir /var/lib/hsmemu --tpm managed`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Usage: "state directory", EnvVars: []string{"HSMEMU_STATE_DIR"}, Value: defaultStateDir()},
			&cli.StringFlag{Name: "tpm", Usage: "managed, a device path such as /dev/tpmrm0, or swtpm:unix:PATH", EnvVars: []string{"HSMEMU_TPM"}},
		},
		Action: func(c *cli.Context) error {
			log := logger(c)
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			st, err := daemon.OpenState(ctx, daemon.StateConfig{Dir: c.String("state-dir"), TPM: c.String("tpm"), Logger: log})
			if err != nil {
				return cli.Exit(fmt.Sprintf("hsmemu serve: %v", err), 1)
			}
			toks, err := st.Store.Tokens(ctx)
			if err != nil {
				st.Close()
				return cli.Exit(fmt.Sprintf("hsmemu serve: %v", err), 1)
			}
			log.Info("keystore open", "state_dir", c.String("state-dir"), "tokens", len(toks))
			<-ctx.Done()
			log.Info("shutting down")
			if err := st.Close(); err != nil && err != context.Canceled {
				return cli.Exit(fmt.Sprintf("hsmemu serve: close: %v", err), 1)
			}
			return nil
		},
	}
}
