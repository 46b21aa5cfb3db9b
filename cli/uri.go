package cli

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/adminapi/p11uri"
)

// uriArgs is the ArgsUsage of the commands that name their token, key,
// secret or certificate with a PKCS#11 URI (RFC 7512) as well as with
// flags: every command on the daemon that takes --token.
const uriArgs = "[PKCS11-URI]"

// uriState is what a command's URI says beyond its flags: the object's
// type, and the token's attributes that are checked against the token.
type uriState struct {
	typ   string // the URI's type: public, private, secret-key, cert, data
	token map[string]string
}

// uriObjectFlags are the flags an object= may stand for, by the kind of
// object the command names, and the URI types that kind takes.
var uriObjectFlags = []struct {
	flag  string
	types []string
}{
	{"cert", []string{"cert"}},
	{"name", []string{"data"}},
	{"key", []string{"private", "public", "secret-key"}},
}

// applyURI reads a command's PKCS#11 URI argument into its flags: token=
// into --token, object= into --key, --name or --cert, id= into --id (in
// hex). A flag given too must say the same. A PIN in the URI
// (pin-value) is refused: PINs never come from the command line.
func applyURI(c *cli.Context, st *runState) error {
	if c.NArg() == 0 {
		return nil
	}
	arg := c.Args().First()
	if err := trailingFlags(c, c.Args().Tail(), "one PKCS#11 URI at most"); err != nil {
		return err
	}
	// A --json after the URI holds for the warnings below too.
	st.json = hasFlag(c.Command.Flags, "json") && c.Bool("json")
	if !p11uri.IsURI(arg) {
		return usagef(c, "%q is not a PKCS#11 URI (pkcs11:token=...;object=...); flags go before it", arg)
	}
	u, err := p11uri.Parse(arg)
	if err != nil {
		return usagef(c, "the PKCS#11 URI: %v", err)
	}
	for _, q := range u.Query {
		switch q.Name {
		case p11uri.PINValue:
			return usagef(c, "the PKCS#11 URI carries a PIN (pin-value): a PIN never comes from the command line, where other users see it; use pin-source=file:PATH, --user-pin-file or HSMEMU_USER_PIN")
		case p11uri.PINSource:
			path, ok := strings.CutPrefix(q.Value, "file:")
			if !ok && !strings.HasPrefix(q.Value, "/") {
				return usagef(c, "the PKCS#11 URI's pin-source is a file (file:/PATH or /PATH), not %q", q.Value)
			}
			if !ok {
				path = q.Value
			}
			if !hasFlag(c.Command.Flags, "user-pin-file") {
				warnf(c, "the PKCS#11 URI's pin-source is ignored: this command takes no user PIN")
				continue
			}
			if err := setFromURI(c, "user-pin-file", path, "pin-source"); err != nil {
				return err
			}
		default:
			warnf(c, "the PKCS#11 URI's %s is ignored", q.Name)
		}
	}
	us := &uriState{token: map[string]string{}}
	objFlag, objTypes := "", []string(nil)
	for _, f := range uriObjectFlags {
		if hasFlag(c.Command.Flags, f.flag) {
			objFlag, objTypes = f.flag, f.types
			break
		}
	}
	for _, a := range u.Path {
		switch a.Name {
		case p11uri.Token:
			if err := setFromURI(c, "token", a.Value, a.Name); err != nil {
				return err
			}
		case p11uri.Object:
			if objFlag == "" {
				return usagef(c, "the PKCS#11 URI names an object; this command names a token only")
			}
			if err := setFromURI(c, objFlag, a.Value, a.Name); err != nil {
				return err
			}
		case p11uri.ID:
			if objFlag == "" || !hasFlag(c.Command.Flags, "id") {
				return usagef(c, "the PKCS#11 URI has an id; this command names no object by id")
			}
			if err := setFromURI(c, "id", hex.EncodeToString([]byte(a.Value)), a.Name); err != nil {
				return err
			}
		case p11uri.Type:
			if !containsString(objTypes, a.Value) {
				return usagef(c, "the PKCS#11 URI's type=%s is not what this command names (%s)", a.Value, orNone(objTypes))
			}
			us.typ = a.Value
		case p11uri.Serial, p11uri.Manufacturer, p11uri.Model, p11uri.SlotID, p11uri.SlotDescription, p11uri.SlotManufacturer,
			p11uri.LibraryManufacturer, p11uri.LibraryDescription:
			us.token[a.Name] = a.Value
		case p11uri.LibraryVersion:
			warnf(c, "the PKCS#11 URI's library-version is ignored")
		default:
			return usagef(c, "the PKCS#11 URI's attribute %q is not one hsmemu knows: refusing rather than ignoring what may narrow the choice", a.Name)
		}
	}
	st.uri = us
	if len(us.token) > 0 {
		return checkURIToken(c, us.token)
	}
	return nil
}

// trailingFlags sets the flags written after the URI, which urfave/cli
// (like Go's flag package) leaves as arguments: a URI pasted first and
// --json added after it is the natural order.
func trailingFlags(c *cli.Context, rest []string, only string) error {
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			return usagef(c, "%s: %q is another argument", only, a)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		var f cli.Flag
		for _, g := range c.Command.Flags {
			if containsString(g.Names(), name) {
				f = g
			}
		}
		if f == nil || name == "help" {
			return usagef(c, "unknown flag --%s", name)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasVal {
			val = "true"
		} else if !hasVal {
			if i++; i >= len(rest) {
				return usagef(c, "flag needs a value: --%s", name)
			}
			val = rest[i]
		}
		if err := c.Set(f.Names()[0], val); err != nil {
			return usagef(c, "invalid value %q for --%s", val, name)
		}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "no object"
	}
	return "type " + strings.Join(list, ", ")
}

// setFromURI sets a flag from the URI, refusing a flag that says
// otherwise.
func setFromURI(c *cli.Context, flag, value, attr string) error {
	if c.IsSet(flag) && c.String(flag) != value {
		return usagef(c, "--%s %q and the PKCS#11 URI's %s %q differ", flag, c.String(flag), attr, value)
	}
	if err := c.Set(flag, value); err != nil {
		return usagef(c, "--%s: %v", flag, err)
	}
	return nil
}

func warnf(c *cli.Context, format string, args ...any) {
	warn(c, fmt.Sprintf("%s: warning: %s", commandName(c), fmt.Sprintf(format, args...)))
}

// What the module reports of its tokens, slots and itself
// (daemon/token/slots.go, cryptoki/module/local.c).
const (
	moduleManufacturer = "hsmemu"
	moduleDescription  = "hsmemu PKCS#11 module"
)

// checkURIToken finds the token the URI's token attributes describe
// (--token, when given, must be it): a URI may name its token by serial
// or slot alone.
func checkURIToken(c *cli.Context, want map[string]string) error {
	var ts []adminapi.Token
	if err := adminCall(c, adminapi.OpTokenList, nil, &ts); err != nil {
		return err
	}
	for _, t := range ts {
		if t.Tampered != "" || c.IsSet("token") && t.Label != c.String("token") {
			continue
		}
		has := map[string]string{
			p11uri.Serial: t.Serial, p11uri.Manufacturer: moduleManufacturer, p11uri.Model: "hsmemu " + t.Tier,
			p11uri.SlotID: fmt.Sprint(t.Slot), p11uri.SlotDescription: fmt.Sprintf("hsmemu slot %d", t.Slot),
			p11uri.SlotManufacturer: moduleManufacturer, p11uri.LibraryManufacturer: moduleManufacturer,
			p11uri.LibraryDescription: moduleDescription,
		}
		match := true
		for k, v := range want {
			match = match && has[k] == v
		}
		if match {
			return setFromURI(c, "token", t.Label, "token")
		}
	}
	var desc []string
	for _, k := range []string{p11uri.Manufacturer, p11uri.Model, p11uri.Serial, p11uri.SlotID, p11uri.SlotDescription,
		p11uri.SlotManufacturer, p11uri.LibraryManufacturer, p11uri.LibraryDescription} {
		if v, ok := want[k]; ok {
			desc = append(desc, fmt.Sprintf("%s %q", k, v))
		}
	}
	if c.IsSet("token") {
		desc = append([]string{fmt.Sprintf("label %q", c.String("token"))}, desc...)
	}
	return failf(c, exitNotFound, "not_found", "no token has %s (`hsmemu token list` lists them)", strings.Join(desc, ", "))
}

// uriClass is the key class a command's URI narrows its key to.
func uriClass(c *cli.Context) string {
	st, _ := c.App.Metadata["state"].(*runState)
	if st == nil || st.uri == nil {
		return ""
	}
	return map[string]string{"private": "private-key", "public": "public-key", "secret-key": "secret-key"}[st.uri.typ]
}
