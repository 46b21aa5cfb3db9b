package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"hsmemu/daemon/adminapi"
)

func rotateCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate",
		Usage: "rotate a token's data key while clients keep working",
		Description: `Exit codes: 0 done, 1 the daemon failed or is not running, 2 usage,
4 no such token, 5 a PIN is wrong or locked.`,
		Subcommands: []*cli.Command{
			{
				Name:  "token",
				Usage: "replace a token's data key, resealing every object under it",
				Description: `A new random data key replaces the token's: every private object is opened
and sealed again under it, and it is wrapped anew under the SO PIN and the
user PIN, so both are needed (the keystore holds neither, only what each
unwraps). It is one transaction: interrupted, the old key stays in force.
Clients keep working: signatures and reads go on, and writes, logins and
PIN changes wait for the rotation to end. A progress bar shows on a
terminal.

Example:
   hsmemu rotate token --label signing --so-pin-file so.pin --user-pin-file user.pin`,
				Flags: adminFlags(&cli.StringFlag{Name: "label", Usage: "the token's label", Required: true}, soPIN.fileFlag(), userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					user, err := readOptionalPIN(c, userPIN)
					if err != nil {
						return err
					}
					defer clear(user)
					cl, err := adminapi.Dial(socketPath(c))
					if err != nil {
						return cli.Exit(commandName(c)+": "+err.Error(), exitError)
					}
					defer cl.Close()
					bar := newProgressBar(c)
					var res adminapi.Rotated
					err = cl.CallProgress(adminapi.OpRotateToken, adminapi.RotateToken{Label: c.String("label"), SOPIN: so, UserPIN: user}, &res, bar.show)
					bar.end()
					if err != nil {
						return adminExit(c, err)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					fmt.Fprintf(c.App.Writer, "rotated the data key of token %q: %d objects resealed, data key generation %d\n", res.Label, res.Resealed, res.DataGeneration)
					return nil
				},
			},
		},
	}
}

// progressBar draws a long call's progress on stderr when it is a
// terminal, and nothing otherwise.
type progressBar struct {
	on    bool
	drawn bool
}

func newProgressBar(c *cli.Context) *progressBar {
	return &progressBar{on: !c.Bool("json") && term.IsTerminal(int(os.Stderr.Fd()))}
}

func (b *progressBar) show(p adminapi.Progress) {
	if !b.on || p.Total <= 0 {
		return
	}
	const width = 40
	n := p.Done * width / p.Total
	fmt.Fprintf(os.Stderr, "\r[%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(" ", width-n), p.Done, p.Total)
	b.drawn = true
}

func (b *progressBar) end() {
	if b.drawn {
		fmt.Fprintln(os.Stderr)
	}
}
