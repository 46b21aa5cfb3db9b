package cli

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"hsmemu/daemon/adminapi"
)

func secretFlags(extra ...cli.Flag) []cli.Flag {
	return adminFlags(append([]cli.Flag{
		tokenFlag(),
		&cli.StringFlag{Name: "name", Usage: "the secret's name", Required: true},
		userPIN.fileFlag(),
	}, extra...)...)
}

func secretRef(c *cli.Context) (adminapi.SecretRef, error) {
	pin, err := readPIN(c, userPIN, false)
	return adminapi.SecretRef{Token: c.String("token"), UserPIN: pin, Name: c.String("name")}, err
}

// callWithSecretRef names the secret, reads the user PIN, and makes op
// with them, for the secret commands that take nothing else.
func callWithSecretRef[T any](c *cli.Context, op string) (T, error) {
	var res T
	ref, err := secretRef(c)
	if err != nil {
		return res, err
	}
	defer clear(ref.UserPIN)
	return res, adminCall(c, op, ref, &res)
}

// readValue reads a secret's value from --in (a file, or - for stdin), or
// from stdin when it is not a terminal: never from the command line.
func readValue(c *cli.Context) ([]byte, error) {
	in := c.String("in")
	if in == "" {
		if term.IsTerminal(int(os.Stdin.Fd())) {
			return nil, cli.Exit(commandName(c)+": give the value with --in FILE, or on stdin (never on the command line)", exitUsage)
		}
		in = "-"
	}
	v, err := readIn(in, adminapi.MaxSecretSize+1)
	if err != nil {
		return nil, cli.Exit(commandName(c)+": --in: "+err.Error(), exitUsage)
	}
	if len(v) == 0 && c.String("in") == "" {
		// Nothing on a stdin that was not named (/dev/null under cron or
		// systemd, a forgotten pipe) would store an empty version over
		// the value: an empty value must be asked for.
		return nil, cli.Exit(commandName(c)+": stdin is empty: give the value with --in FILE or on stdin (an empty value with --in /dev/null)", exitUsage)
	}
	if len(v) > adminapi.MaxSecretSize {
		clear(v)
		return nil, cli.Exit(fmt.Sprintf("%s: a secret's value is at most %d bytes", commandName(c), adminapi.MaxSecretSize), exitUsage)
	}
	return v, nil
}

// parseExpiry reads --expires: an RFC 3339 time, or a duration from now
// (30d, 720h, 1d12h).
func parseExpiry(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.Unix(), nil
	}
	d, err := parseDays(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--expires takes a time (2027-01-31T00:00:00Z) or a duration from now (30d, 720h), not %q", s)
	}
	return time.Now().Add(d).Unix(), nil
}

// parseDays reads a duration as Go writes one (720h, 90m) or in days
// (30d), which may be followed by a Go duration (1d12h).
func parseDays(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		return time.ParseDuration(s)
	}
	n, err := strconv.ParseUint(days, 10, 16)
	if err != nil || days == "" || days[0] == '+' {
		return 0, fmt.Errorf("%q: days are a whole number before d (30d)", s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("%q: after the days, a duration such as 12h", s)
		}
		d += r
	}
	return d, nil
}

func secretCommand() *cli.Command {
	return &cli.Command{
		Name:  "secret",
		Usage: "a token's secrets, with versions",
		Description: `A secret is a named value with versions, each a private data object of the
token (so PKCS#11 clients logged in as the user read it too), with a content
type, an enabled flag and an expiry. Secret commands act as the token's user
(--user-pin-file or HSMEMU_USER_PIN, else a prompt); purge takes the SO PIN.
Values come from a file or stdin, never from the command line. A deleted
secret is kept, recoverable, for the token's retention period.`,
		Subcommands: []*cli.Command{
			{
				Name:  "set",
				Usage: "add a version (the first makes the secret)",
				Description: `Examples:
   hsmemu secret set --token app --name db-password --in password.txt
   printf %s "$VALUE" | hsmemu secret set --token app --name api-key --content-type text/plain --expires 30d`,
				Flags: secretFlags(
					&cli.StringFlag{Name: "in", Usage: "read the value from this file, or - for stdin (default: stdin)"},
					&cli.StringFlag{Name: "content-type", Usage: "a media type for the value, e.g. text/plain"},
					&cli.StringFlag{Name: "expires", Usage: "when the version stops being readable: a time (RFC 3339) or a duration from now (30d, 720h)"},
					&cli.BoolFlag{Name: "disabled", Usage: "store the version disabled"}),
				Action: func(c *cli.Context) error {
					exp, err := parseExpiry(c.String("expires"))
					if err != nil {
						return cli.Exit(commandName(c)+": "+err.Error(), exitUsage)
					}
					value, err := readValue(c)
					if err != nil {
						return err
					}
					defer clear(value)
					ref, err := secretRef(c)
					if err != nil {
						return err
					}
					defer clear(ref.UserPIN)
					var v adminapi.SecretVersion
					args := adminapi.SecretSet{Token: ref.Token, UserPIN: ref.UserPIN, Name: ref.Name, Value: value,
						ContentType: c.String("content-type"), Expires: exp, Disabled: c.Bool("disabled")}
					if err := adminCall(c, adminapi.OpSecretSet, args, &v); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, v)
					}
					fmt.Fprintf(c.App.Writer, "set version %d of secret %q\n", v.Version, v.Name)
					return nil
				},
			},
			{
				Name:  "get",
				Usage: "write a version's value (the newest unless --version)",
				Description: `The value goes to stdout (or --out) as it was stored; --json wraps it,
base64-encoded, with the version's details (with --out, the details and
the file, never the value).

Examples:
   hsmemu secret get --token app --name db-password
   hsmemu secret get --token app --name db-password --version 2 --out old.txt`,
				Flags: secretFlags(
					&cli.Int64Flag{Name: "version", Usage: "the version to read (default: the newest)"},
					&cli.StringFlag{Name: "out", Usage: "write the value to this file (mode 0600; it must not exist) instead of stdout"}),
				Action: func(c *cli.Context) error {
					if c.IsSet("version") && c.Int64("version") < 1 {
						return usagef(c, "--version is a version number, from 1 (`hsmemu secret versions` lists them), not %d", c.Int64("version"))
					}
					if err := checkOut(c, c.String("out")); err != nil {
						return err
					}
					ref, err := secretRef(c)
					if err != nil {
						return err
					}
					defer clear(ref.UserPIN)
					var v adminapi.SecretValue
					if err := adminCall(c, adminapi.OpSecretGet, adminapi.SecretGet{Token: ref.Token, UserPIN: ref.UserPIN, Name: ref.Name, Version: c.Int64("version")}, &v); err != nil {
						return err
					}
					defer clear(v.Value)
					if out := c.String("out"); out != "" {
						if err := writeOutFile(c, out, 0o600, v.Value); err != nil {
							return err
						}
						if c.Bool("json") {
							// The details, and not the value: --out keeps it
							// off stdout.
							return printJSON(c.App.Writer, secretGot{SecretValue: adminapi.SecretValue{SecretVersion: v.SecretVersion}, File: out})
						}
						return nil
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, secretGot{SecretValue: v})
					}
					_, err = c.App.Writer.Write(v.Value)
					return err
				},
			},
			{
				Name:  "list",
				Usage: "list the token's secrets (--deleted: the deleted ones)",
				Description: `Example:
   hsmemu secret list --token app --deleted`,
				Flags: adminFlags(tokenFlag(),
					&cli.BoolFlag{Name: "deleted", Usage: "list the deleted secrets"}, userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var ss []adminapi.Secret
					if err := adminCall(c, adminapi.OpSecretList, adminapi.SecretList{Token: c.String("token"), UserPIN: pin, Deleted: c.Bool("deleted")}, &ss); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, ss)
					}
					printSecrets(c.App.Writer, ss, c.Bool("deleted"))
					return nil
				},
			},
			{
				Name:  "versions",
				Usage: "list a secret's versions",
				Description: `Example:
   hsmemu secret versions --token app --name db-password`,
				Flags: secretFlags(),
				Action: func(c *cli.Context) error {
					vs, err := callWithSecretRef[[]adminapi.SecretVersion](c, adminapi.OpSecretVersions)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, vs)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "VERSION\tCREATED\tENABLED\tEXPIRES\tCONTENT TYPE")
					for _, v := range vs {
						fmt.Fprintf(tw, "%d\t%s\t%v\t%s\t%s\n", v.Version, v.Created.Format(time.RFC3339), v.Enabled, expiry(v.Expires), v.ContentType)
					}
					return tw.Flush()
				},
			},
			{
				Name:  "delete",
				Usage: "delete a secret, every version, kept recoverable for the token's retention period",
				Description: `Example:
   hsmemu secret delete --token app --name old-password`,
				Flags: secretFlags(),
				Action: func(c *cli.Context) error {
					res, err := callWithSecretRef[adminapi.SecretDeleted](c, adminapi.OpSecretDelete)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					fmt.Fprintf(c.App.Writer, "deleted secret %q (%d versions)\n", res.Name, res.Versions)
					if res.Kept {
						fmt.Fprintf(c.App.Writer, "recoverable with `hsmemu secret recover` until %s\n", res.PurgeAfter.UTC().Format(time.RFC3339))
					}
					return nil
				},
			},
			{
				Name:  "recover",
				Usage: "bring a deleted secret back, every version",
				Description: `Example:
   hsmemu secret recover --token app --name old-password`,
				Flags: secretFlags(),
				Action: func(c *cli.Context) error {
					res, err := callWithSecretRef[adminapi.SecretDeleted](c, adminapi.OpSecretRecover)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					fmt.Fprintf(c.App.Writer, "recovered secret %q (%d versions)\n", res.Name, res.Versions)
					return nil
				},
			},
			{
				Name:  "purge",
				Usage: "remove a deleted secret for good, with the SO PIN (refused under purge protection)",
				Description: `Example:
   hsmemu secret purge --token app --name old-password --so-pin-file so.pin`,
				Flags: adminFlags(tokenFlag(),
					&cli.StringFlag{Name: "name", Usage: "the secret's name", Required: true}, soPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					var res adminapi.SecretDeleted
					if err := adminCall(c, adminapi.OpSecretPurge, adminapi.SecretPurge{Token: c.String("token"), SOPIN: so, Name: c.String("name")}, &res); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					fmt.Fprintf(c.App.Writer, "purged secret %q (%d versions)\n", res.Name, res.Versions)
					return nil
				},
			},
		},
	}
}

func expiry(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func printSecrets(w io.Writer, ss []adminapi.Secret, deleted bool) {
	if len(ss) == 0 {
		if deleted {
			fmt.Fprintln(w, "no deleted secrets")
		} else {
			fmt.Fprintln(w, "no secrets")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if deleted {
		fmt.Fprintln(tw, "NAME\tVERSIONS\tDELETED\tPURGED AFTER")
		for _, s := range ss {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", s.Name, s.Versions, s.DeletedAt.UTC().Format(time.RFC3339), s.PurgeAfter.UTC().Format(time.RFC3339))
		}
	} else {
		fmt.Fprintln(tw, "NAME\tVERSION\tVERSIONS\tENABLED\tEXPIRES\tCONTENT TYPE")
		for _, s := range ss {
			if s.Current == nil {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\t%s\n", s.Name, strconv.FormatInt(s.Current.Version, 10), s.Versions, s.Current.Enabled, expiry(s.Current.Expires), s.Current.ContentType)
		}
	}
	tw.Flush()
}
