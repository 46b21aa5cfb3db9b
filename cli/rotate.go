package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"hsmemu/daemon/adminapi"
)

func rotateCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate",
		Usage: "new master keys and token data keys, while clients keep working",
		Subcommands: []*cli.Command{
			{
				Name:  "master",
				Usage: "make a new master key in the TPM and move every token to it, while clients keep working",
				Description: `A new master key is made in the TPM; every token gets a new KEK derived
from it, its public objects are resealed and its row authenticated anew,
and the root record switches to the new key, which is then the only one
the keystore needs. No PIN is needed: each PIN record is rewrapped under
the new KEK at its role's next login. The domain's id, its audit chain and
its key backups carry over.

An escrowed domain's new master key must be escrowed too: give the
custodians (--custodian, --threshold) as to ` + "`hsmemu init`" + `; their new shares are
written to --shares-dir as NAME.gN.share (N the new key's generation)
before the keystore moves to the key. Shares of earlier master keys are
void from then on. A rotation interrupted while moving the keystore is
finished by --resume, or by the daemon's next start; one begun and not yet
moving it (say, its shares could not be written) is forgotten by --abort.

Examples:
   hsmemu rotate master
   hsmemu rotate master --custodian alice.pem --custodian bob.pem --custodian carol.pem --threshold 2 --shares-dir shares
   hsmemu rotate master --resume`,
				Flags: adminFlags(
					&cli.StringSliceFlag{Name: "custodian", Usage: "a custodian's public key, PEM (repeat for each)"},
					&cli.IntFlag{Name: "threshold", Usage: "how many custodians' shares recreate the new master key"},
					&cli.StringFlag{Name: "shares-dir", Value: ".", Usage: "where to write the custodians' new shares"},
					&cli.BoolFlag{Name: "resume", Usage: "finish a rotation under way"},
					&cli.BoolFlag{Name: "abort", Usage: "forget a rotation begun that has not begun moving the keystore"}),
				Action: runRotateMaster,
			},
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
   hsmemu rotate token --token signing --so-pin-file so.pin --user-pin-file user.pin`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), soPIN.fileFlag(), userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, user, err := readTokenPINs(c, false)
					if err != nil {
						return err
					}
					defer clear(so)
					defer clear(user)
					bar := newProgressBar(c)
					var res adminapi.Rotated
					err = adminCallProgress(c, adminapi.OpRotateToken, adminapi.RotateToken{Label: c.String("token"), SOPIN: so, UserPIN: user}, &res, bar.show)
					bar.end()
					if err != nil {
						return err
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

func runRotateMaster(c *cli.Context) error {
	var args adminapi.RotateMasterBegin
	for _, path := range c.StringSlice("custodian") {
		b, err := os.ReadFile(path)
		if err != nil {
			return cli.Exit("hsmemu rotate master: --custodian: "+err.Error(), exitUsage)
		}
		args.Custodians = append(args.Custodians, adminapi.CustodianKey{Name: strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)), PEM: b})
	}
	args.Threshold = c.Int("threshold")
	if c.Bool("abort") {
		if err := adminCall(c, adminapi.OpRotateMasterAbort, nil, nil); err != nil {
			return err
		}
		if c.Bool("json") {
			var st adminapi.Status
			if err := adminCall(c, adminapi.OpStatus, nil, &st); err != nil {
				return err
			}
			return printJSON(c.App.Writer, masterRotated{Generation: st.MasterGeneration, Aborted: true})
		}
		fmt.Fprintln(c.App.Writer, "the master key rotation is forgotten; the current master key stays")
		return nil
	}
	if c.Bool("resume") && len(args.Custodians) > 0 {
		return cli.Exit("hsmemu rotate master: --resume finishes a rotation whose shares were written when it began: give no custodians", exitUsage)
	}
	cl, err := dialAdmin(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	var begun adminapi.MasterBegun
	var written []shareWrite
	if !c.Bool("resume") {
		// Where the shares go is checked before the key is made.
		var st adminapi.Status
		if err := cl.Call(adminapi.OpStatus, nil, &st); err != nil {
			return adminExit(c, err)
		}
		dir := c.String("shares-dir")
		for _, cu := range args.Custodians {
			p := filepath.Join(dir, fmt.Sprintf("%s.g%d.share", cu.Name, st.MasterGeneration+1))
			if _, err := os.Stat(p); err == nil {
				return cli.Exit(fmt.Sprintf("hsmemu rotate master: %s exists; move it away or choose another --shares-dir", p), exitUsage)
			}
		}
		if len(args.Custodians) > 0 {
			if err := checkWritable(dir); err != nil {
				return cli.Exit("hsmemu rotate master: --shares-dir: "+err.Error(), exitUsage)
			}
		}
		if err := cl.Call(adminapi.OpRotateMasterBegin, args, &begun); err != nil {
			return adminExit(c, err)
		}
		for _, sh := range begun.Shares {
			p := filepath.Join(dir, fmt.Sprintf("%s.g%d.share", sh.Custodian, begun.Generation))
			written = append(written, shareWrite{Custodian: sh.Custodian, Fingerprint: sh.Fingerprint, Index: sh.Index, File: p})
			if err := writeDurably(p, sh.File); err != nil {
				// No key becomes the master before its shares exist.
				msg := fmt.Sprintf("hsmemu rotate master: writing %s failed: %v; ", p, err)
				if aerr := cl.Call(adminapi.OpRotateMasterAbort, nil, nil); aerr != nil {
					msg += "and the rotation could not be forgotten (" + aerr.Error() + "): run `hsmemu rotate master --abort`"
				} else {
					msg += "the rotation is forgotten, the current master key stays"
				}
				return cli.Exit(msg, exitError)
			}
			if !c.Bool("json") {
				fmt.Fprintf(c.App.Writer, "share %d for %s (key %s): %s\n", sh.Index, sh.Custodian, sh.Fingerprint, p)
			}
		}
	}
	bar := newProgressBar(c)
	var done adminapi.MasterRotated
	err = cl.CallProgress(adminapi.OpRotateMasterFinish, nil, &done, bar.show)
	bar.end()
	if err != nil {
		return adminExit(c, err)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, masterRotated{Generation: done.Generation, Shares: written})
	}
	fmt.Fprintf(c.App.Writer, "the keystore is under master key generation %d; the old master key is flushed from the TPM\n", done.Generation)
	if len(begun.Shares) > 0 {
		fmt.Fprintln(c.App.Writer, "give each new share to its custodian; shares of earlier master keys no longer recover this keystore")
	}
	return nil
}
