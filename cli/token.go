package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

func tokenCommand() *cli.Command {
	return &cli.Command{
		Name:  "token",
		Usage: "the running daemon's tokens",
		Description: `Token commands act on the running daemon through its socket, as its own
user or root. PINs come from a file (--so-pin-file ...), an environment
variable (HSMEMU_SO_PIN, HSMEMU_USER_PIN) or a prompt, never from the
command line.`,
		Subcommands: []*cli.Command{
			{
				Name:  "create",
				Usage: "create a token",
				Description: `Example:
   HSMEMU_SO_PIN=... HSMEMU_USER_PIN=... hsmemu token create --token signing --tier premium

Without a user PIN the token's user PIN awaits ` + "`hsmemu pin reset`" + ` or C_InitPIN.`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(),
					&cli.StringFlag{Name: "tier", Usage: "standard (secrets, software-protected keys) or premium (also HSM-protected keys)", Value: "standard"},
					soPIN.fileFlag(), userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, user, err := readTokenPINs(c, true)
					if err != nil {
						return err
					}
					defer clear(so)
					defer clear(user)
					var t adminapi.Token
					if err := adminCall(c, adminapi.OpTokenCreate, adminapi.TokenCreate{Label: c.String("token"), Tier: c.String("tier"), SOPIN: so, UserPIN: user}, &t); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, t)
					}
					fmt.Fprintf(c.App.Writer, "created %s token %q in slot %d (serial %s)\n", t.Tier, t.Label, t.Slot, t.Serial)
					if !t.UserPINSet {
						fmt.Fprintf(c.App.Writer, "its user PIN is not set: `hsmemu pin reset --token %s` sets it with the SO PIN\n", t.Label)
					}
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list the tokens",
				Description: `Example:
   hsmemu token list --json`,
				Flags: adminFlags(),
				Action: func(c *cli.Context) error {
					var ts []adminapi.Token
					if err := adminCall(c, adminapi.OpTokenList, nil, &ts); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, ts)
					}
					printTokens(c.App.Writer, ts)
					return nil
				},
			},
			{
				Name:  "show",
				Usage: "show one token",
				Description: `Example:
   hsmemu token show --token signing`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag()),
				Action: func(c *cli.Context) error {
					var t adminapi.Token
					if err := adminCall(c, adminapi.OpTokenShow, adminapi.TokenRef{Label: c.String("token")}, &t); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, t)
					}
					printToken(c.App.Writer, t)
					return nil
				},
			},
			{
				Name:  "set",
				Usage: "set a token's deletion policy, with its SO PIN",
				Description: `--retention is how long deleted keys and secrets are kept,
recoverable, before they are purged (0d to 3650d; 0d deletes at once).
--purge-protection, once on, refuses every purge before the retention ends,
and a token's deletion while it holds anything; it cannot be turned off,
needs at least 7 days of retention, and from then on the retention can only
grow.

Example:
   hsmemu token set --token signing --retention 30d --purge-protection`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(),
					&cli.StringFlag{Name: "retention", Usage: "how long deleted objects are kept, in whole days: 30d (or 720h)"},
					&cli.IntFlag{Name: "retention-days", Usage: "deprecated: --retention Nd", Hidden: true},
					&cli.BoolFlag{Name: "purge-protection", Usage: "turn purge protection on, for good"},
					soPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					args := adminapi.TokenSet{Label: c.String("token")}
					switch {
					case c.IsSet("retention") && c.IsSet("retention-days"):
						return usagef(c, "give --retention (--retention-days is its old form), not both")
					case c.IsSet("retention"):
						d, err := parseDays(c.String("retention"))
						if err != nil || d < 0 || d%(24*time.Hour) != 0 {
							return usagef(c, "--retention is whole days: 30d, 0d, or 720h; not %q", c.String("retention"))
						}
						days := int(d / (24 * time.Hour))
						if days > keystore.MaxRetentionDays {
							return usagef(c, "--retention is 0d to %dd, not %q", keystore.MaxRetentionDays, c.String("retention"))
						}
						args.RetentionDays = &days
					case c.IsSet("retention-days"):
						// Out of range is a usage error here, as for --retention,
						// not the daemon's policy refusal (exit 3) after the
						// SO PIN was checked.
						d := c.Int("retention-days")
						if d < 0 || d > keystore.MaxRetentionDays {
							return usagef(c, "--retention-days is 0 to %d, not %d", keystore.MaxRetentionDays, d)
						}
						warn(c, fmt.Sprintf("%s: --retention-days is deprecated: use --retention %dd", commandName(c), d))
						args.RetentionDays = &d
					}
					if c.IsSet("purge-protection") {
						if !c.Bool("purge-protection") {
							return cli.Exit("hsmemu token set: purge protection cannot be turned off", exitUsage)
						}
						on := true
						args.PurgeProtection = &on
					}
					if args.RetentionDays == nil && args.PurgeProtection == nil {
						return usagef(c, "nothing to set: give --retention or --purge-protection")
					}
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					args.SOPIN = so
					var t adminapi.Token
					if err := adminCall(c, adminapi.OpTokenSet, args, &t); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, t)
					}
					fmt.Fprintf(c.App.Writer, "token %q keeps deleted objects %d days; purge protection %s\n", t.Label, t.RetentionDays, onOff(t.PurgeProtection))
					return nil
				},
			},
			{
				Name:  "logout",
				Usage: "end every login of a token on every daemon, with its SO PIN",
				Description: `Every application logged in to the token, on this daemon and on every
other daemon serving the same keystore (docs/cluster.md), is logged out,
as C_Logout would: its sessions stay open, in the public state, and its
private keys answer CKR_USER_NOT_LOGGED_IN until it logs in again. This
daemon's sessions are logged out before the command returns, the other
daemons' within the invalidation bound (1 second by default). A login
made afterwards is not affected.

Example:
   hsmemu token logout --token signing --so-pin-file so.pin`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), soPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					var r adminapi.TokenLoggedOut
					if err := adminCall(c, adminapi.OpTokenLogout, adminapi.TokenLogout{Label: c.String("token"), SOPIN: so}, &r); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, r)
					}
					fmt.Fprintf(c.App.Writer, "logged out token %q on every daemon (login epoch %d; %d applications logged in here)\n", r.Token, r.LoginEpoch, r.Applications)
					return nil
				},
			},
			{
				Name:  "delete",
				Usage: "delete a token and every object on it, with its SO PIN",
				Description: `Refused while any application has a session on the token. What is
deleted cannot be brought back except from a backup.

Example:
   hsmemu token delete --token old --so-pin-file so.pin`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), soPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					if err := adminCall(c, adminapi.OpTokenDelete, adminapi.TokenDelete{Label: c.String("token"), SOPIN: so}, nil); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, tokenDeleted{Token: c.String("token"), Deleted: true})
					}
					fmt.Fprintf(c.App.Writer, "deleted token %q\n", c.String("token"))
					return nil
				},
			},
		},
	}
}

func lockState(failures int, locked bool) string {
	switch {
	case locked:
		return "LOCKED"
	case failures > 0:
		return fmt.Sprintf("%d failures", failures)
	}
	return "ok"
}

func printTokens(w io.Writer, ts []adminapi.Token) {
	if len(ts) == 0 {
		fmt.Fprintln(w, "no tokens (`hsmemu token create` makes one)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tLABEL\tTIER\tSERIAL\tOBJECTS\tSESSIONS\tSO PIN\tUSER PIN")
	for _, t := range ts {
		if t.Tampered != "" {
			// The row failed its integrity check: nothing in it is
			// believed, not even the label, which is quoted as read.
			fmt.Fprintf(tw, "%d\t%q\tTAMPERED (%s)\t-\t-\t-\t-\t-\n", t.Slot, t.Label, t.Tampered)
			continue
		}
		user := lockState(t.UserFailures, t.UserLocked)
		if !t.UserPINSet {
			user = "not set"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", t.Slot, printable(t.Label), t.Tier, t.Serial, t.Objects, t.Sessions, lockState(t.SOFailures, t.SOLocked), user)
	}
	tw.Flush()
}

func printToken(w io.Writer, t adminapi.Token) {
	user := lockState(t.UserFailures, t.UserLocked)
	if !t.UserPINSet {
		user = "not set"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "label:\t%s\n", printable(t.Label))
	fmt.Fprintf(tw, "slot:\t%d\n", t.Slot)
	fmt.Fprintf(tw, "tier:\t%s\n", t.Tier)
	fmt.Fprintf(tw, "serial:\t%s\n", t.Serial)
	fmt.Fprintf(tw, "uuid:\t%s\n", t.UUID)
	fmt.Fprintf(tw, "created:\t%s\n", t.Created.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "objects:\t%d\n", t.Objects)
	fmt.Fprintf(tw, "sessions:\t%d\n", t.Sessions)
	fmt.Fprintf(tw, "logged in:\t%v\n", t.LoggedIn)
	fmt.Fprintf(tw, "SO PIN:\t%s\n", lockState(t.SOFailures, t.SOLocked))
	fmt.Fprintf(tw, "user PIN:\t%s\n", user)
	fmt.Fprintf(tw, "retention:\t%d days\n", t.RetentionDays)
	fmt.Fprintf(tw, "purge protection:\t%s\n", onOff(t.PurgeProtection))
	tw.Flush()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func pinCommand() *cli.Command {
	roleFlag := &cli.StringFlag{Name: "role", Usage: "user or so", Value: "user"}
	return &cli.Command{
		Name:        "pin",
		Usage:       "a token's PINs",
		Description: ``,
		Subcommands: []*cli.Command{
			{
				Name:  "change",
				Usage: "change the user's or the SO's PIN, giving the current one",
				Description: `Example:
   hsmemu pin change --token signing --role user --old-pin-file old --new-pin-file new`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), roleFlag, oldPIN.fileFlag(), newPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					old, err := readPIN(c, oldPIN, false)
					if err != nil {
						return err
					}
					defer clear(old)
					nw, err := readPIN(c, newPIN, true)
					if err != nil {
						return err
					}
					defer clear(nw)
					if err := adminCall(c, adminapi.OpPINChange, adminapi.PINChange{Label: c.String("token"), Role: c.String("role"), Old: old, New: nw}, nil); err != nil {
						return err
					}
					return done(c, "change", fmt.Sprintf("changed the %s PIN of token %q", c.String("role"), c.String("token")))
				},
			},
			{
				Name:  "reset",
				Usage: "set a new user PIN with the SO PIN (also unlocks a locked user PIN)",
				Description: `Example:
   hsmemu pin reset --token signing --so-pin-file so.pin --new-pin-file user.pin`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), soPIN.fileFlag(), newUserPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					nw, err := readPIN(c, newUserPIN, true)
					if err != nil {
						return err
					}
					defer clear(nw)
					if err := adminCall(c, adminapi.OpPINReset, adminapi.PINReset{Label: c.String("token"), SOPIN: so, New: nw}, nil); err != nil {
						return err
					}
					return done(c, "reset", fmt.Sprintf("set a new user PIN on token %q", c.String("token")))
				},
			},
			{
				Name:  "unlock",
				Usage: "clear a locked PIN's failure count, keeping the PIN",
				Description: `The user's PIN is unlocked with the SO PIN. The SO's own PIN is unlocked by
the administrator alone (the daemon's user or root, who hold the TPM the
keys depend on).

Examples:
   hsmemu pin unlock --token signing --role user --so-pin-file so.pin
   hsmemu pin unlock --token signing --role so`,
				Flags: adminFlags(tokenFlag(), deprecatedLabelFlag(), roleFlag, soPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					var so []byte
					if c.String("role") == "user" {
						var err error
						if so, err = readPIN(c, soPIN, false); err != nil {
							return err
						}
						defer clear(so)
					}
					if err := adminCall(c, adminapi.OpPINUnlock, adminapi.PINUnlock{Label: c.String("token"), Role: c.String("role"), SOPIN: so}, nil); err != nil {
						return err
					}
					return done(c, "unlock", fmt.Sprintf("unlocked the %s PIN of token %q", c.String("role"), c.String("token")))
				},
			},
		},
	}
}

// done reports a PIN command, which has no result but its success.
func done(c *cli.Context, action, msg string) error {
	if c.Bool("json") {
		role := c.String("role")
		if role == "" {
			role = "user" // pin reset sets the user's
		}
		return printJSON(c.App.Writer, pinDone{Token: c.String("token"), Role: role, Action: action})
	}
	fmt.Fprintln(c.App.Writer, msg)
	return nil
}
