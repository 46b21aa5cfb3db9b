package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

// Exit codes, the same for every command (docs/admin.md).
const (
	exitError    = 1 // the daemon is not there, or failed
	exitUsage    = 2 // bad flags or arguments
	exitConflict = 3 // the name is taken or ambiguous, the object deleted, the token in use, or a policy refuses
	exitNotFound = 4 // no such token or record
	exitAuth     = 5 // a PIN was wrong, or is locked
	exitTampered = 6 // the keystore or its audit log failed verification
)

// exitCodeNames name the exit codes in JSON errors, for errors that carry
// no more precise code of their own.
var exitCodeNames = map[int]string{
	exitError: "failed", exitUsage: "usage", exitConflict: "conflict",
	exitNotFound: "not_found", exitAuth: "pin", exitTampered: "integrity",
}

// exitErr is a command's failure: its exit code, a code for scripts (the
// daemon's, in snake_case, when the daemon refused) and a message of one
// line for people.
type exitErr struct {
	exit int
	code string
	msg  string
}

func (e *exitErr) Error() string { return e.msg }
func (e *exitErr) ExitCode() int { return e.exit }

// failf is a failure of the running command, its name in front.
func failf(c *cli.Context, exit int, code, format string, args ...any) error {
	return &exitErr{exit: exit, code: code, msg: commandName(c) + ": " + fmt.Sprintf(format, args...)}
}

// usagef is a usage error of the running command.
func usagef(c *cli.Context, format string, args ...any) error {
	return failf(c, exitUsage, "usage", format, args...)
}

// JSONError is what a command given --json writes on stderr when it fails:
// the error, and the warnings the command gave on the way (a deprecated
// flag, an ignored URI attribute), which under --json are never lines of
// text, so that stderr parses as one JSON value (docs/json.md).
type JSONError struct {
	Error    JSONErrorBody `json:"error"`
	Warnings []string      `json:"warnings"`
}

// JSONWarnings is what a command given --json writes on stderr when it
// succeeds with warnings: stdout holds its result alone.
type JSONWarnings struct {
	Warnings []string `json:"warnings"`
}

// JSONErrorBody says what failed: Code is one of the documented codes
// (docs/json.md), Exit the exit code, Message the sentence people read.
type JSONErrorBody struct {
	Code    string `json:"code"`
	Exit    int    `json:"exit"`
	Message string `json:"message"`
}

// runState is what one run of the command line learns on the way to an
// error: which command ran, and whether it was asked for JSON.
type runState struct {
	args []string // as run was given them
	path []string // "hsmemu", "key", "show"
	json bool
	// required are the flags prepare cleared the Required mark of.
	required map[cli.Flag]bool
	// uri is what the command's PKCS#11 URI said beyond its flags.
	uri *uriState
	// helpNotFound is `hsmemu help NAME`'s error for a NAME that is no
	// command: urfave/cli would exit 3, the code of a conflict.
	helpNotFound error
	// warnings are those given under --json, held for the one JSON value
	// run writes on stderr.
	warnings []string
}

// warn gives a warning of the running command: a line on stderr, or
// under --json one of the warnings of the JSON value run writes there.
func warn(c *cli.Context, msg string) {
	msg = keystore.RedactDB(msg)
	if st, _ := c.App.Metadata["state"].(*runState); st != nil && st.json {
		st.warnings = append(st.warnings, msg)
		return
	}
	fmt.Fprintln(c.App.ErrWriter, msg)
}

// Main runs the command line with args (os.Args) and returns the exit
// code: every error is reported here, once, on stderr.
func Main(args []string) int {
	return run(context.Background(), args, os.Stdout, os.Stderr)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	st := &runState{args: args}
	app := newApp(st)
	app.Writer, app.ErrWriter = stdout, stderr
	err := app.RunContext(ctx, args)
	if err == nil && st.helpNotFound != nil {
		err = st.helpNotFound
	}
	warnings := st.warnings
	if warnings == nil {
		warnings = []string{}
	}
	if err == nil {
		if len(st.warnings) > 0 {
			json.NewEncoder(stderr).Encode(JSONWarnings{Warnings: warnings})
		}
		return 0
	}
	if !st.json {
		st.json = jsonAsked(args)
	}
	e := asExitErr(err, st)
	if st.json {
		enc := json.NewEncoder(stderr)
		enc.Encode(JSONError{Error: JSONErrorBody{Code: e.code, Exit: e.exit, Message: e.msg}, Warnings: warnings})
	} else if e.msg != "" {
		fmt.Fprintln(stderr, e.msg)
	}
	return e.exit
}

// asExitErr makes any error an *exitErr, a usage error's message ending
// in a pointer to the command's --help.
func asExitErr(err error, st *runState) *exitErr {
	e := &exitErr{exit: exitError, msg: err.Error()}
	var ee *exitErr
	var ec cli.ExitCoder
	switch {
	case errors.As(err, &ee):
		e = &exitErr{exit: ee.exit, code: ee.code, msg: ee.msg}
	case errors.As(err, &ec):
		e.exit = ec.ExitCode()
	}
	if e.code == "" {
		e.code = exitCodeNames[e.exit]
		if e.code == "" {
			e.code = "failed"
		}
	}
	// One line: a message that spans more keeps its first.
	e.msg = strings.TrimSpace(e.msg)
	// Wherever an error quotes a --db value or a --server address (a
	// SQLite path, a URL, a pgx error), a password in it is not echoed:
	// every message passes here, whichever package wrote it.
	e.msg = keystore.RedactDB(e.msg)
	if e.exit == exitUsage && !strings.Contains(e.msg, "--help") {
		e.msg += fmt.Sprintf(" (see `%s --help`)", strings.Join(st.path, " "))
	}
	return e
}

// jsonAsked says whether the arguments ask for --json, for errors met
// before a command could read its flags.
func jsonAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "--json=true", "-json=true":
			return true
		}
	}
	return false
}

// newApp is New, made ready to report every error the same way:
// urfave/cli's own reports (a usage error followed by the whole help, a
// missing flag's help, an unknown command's silence and exit 0) become
// errors of one line with their documented codes, returned to run.
func newApp(st *runState) *cli.App { return prepareApp(New(), st) }

// prepareApp readies an application as newApp does.
func prepareApp(app *cli.App, st *runState) *cli.App {
	st.path = []string{app.Name}
	st.required = map[cli.Flag]bool{}
	app.Metadata = map[string]any{"state": st}
	app.ExitErrHandler = func(*cli.Context, error) {} // run reports
	// Without this, `hsmemu help frob` exits 3 (conflict), urfave/cli's
	// code for a help topic it does not know; it is a usage error.
	app.CommandNotFound = func(c *cli.Context, name string) {
		where := commandName(c)
		st.path = strings.Fields(where)
		st.helpNotFound = &exitErr{exit: exitUsage, code: "usage", msg: fmt.Sprintf("%s help: unknown command %q", where, name)}
	}
	app.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		st.path = []string{app.Name}
		return &exitErr{exit: exitUsage, code: "usage", msg: app.Name + ": " + flagError(err)}
	}
	app.Before = func(c *cli.Context) error {
		// An empty value (HSMEMU_LOG_LEVEL= in an environment file) is the
		// default; anything else must be a level.
		var level slog.Level
		if l := c.String("log-level"); l != "" && level.UnmarshalText([]byte(l)) != nil {
			return &exitErr{exit: exitUsage, code: "usage", msg: fmt.Sprintf("%s: --log-level (HSMEMU_LOG_LEVEL) is debug, info, warn or error, not %q", app.Name, c.String("log-level"))}
		}
		if err := checkLogFormat(c); err != nil {
			return &exitErr{exit: exitUsage, code: "usage", msg: app.Name + ": " + err.Error() + " (HSMEMU_LOG_FORMAT)"}
		}
		return nil
	}
	app.Action = groupAction(st, []string{app.Name}, app.Commands)
	app.BashComplete = completer(st, nil, app.Flags)
	for _, cmd := range app.Commands {
		prepare(st, []string{app.Name}, cmd)
	}
	return app
}

// groupAction serves a command that only holds others: given none, its
// help; given an unknown one, a usage error.
func groupAction(st *runState, path []string, subs []*cli.Command) cli.ActionFunc {
	return func(c *cli.Context) error {
		st.path = path
		if c.NArg() == 0 {
			return cli.ShowSubcommandHelp(c)
		}
		return &exitErr{exit: exitUsage, code: "usage",
			msg: fmt.Sprintf("%s: unknown command %q: want %s", strings.Join(path, " "), c.Args().First(), strings.Join(visibleNames(subs), ", "))}
	}
}

// visibleNames are the names of the commands that are not hidden.
func visibleNames(cmds []*cli.Command) []string {
	var names []string
	for _, s := range cmds {
		if !s.Hidden && s.Name != "help" {
			names = append(names, s.Name)
		}
	}
	return names
}

// deprecatedFlags are old names kept, hidden, for the scripts that use
// them: old name to new. Each still works, with a warning on stderr.
var deprecatedFlags = map[string]string{"label": "token"}

// prepare readies a command and its subcommands: usage errors of one
// line, required flags checked by the command (so that a missing one is
// a usage error, not the command's help), deprecated flags mapped to
// their new names.
func prepare(st *runState, parent []string, cmd *cli.Command) {
	path := append(slices.Clone(parent), cmd.Name)
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
		st.path = path
		return &exitErr{exit: exitUsage, code: "usage", msg: strings.Join(path, " ") + ": " + flagError(err)}
	}
	withExitCodes(path, cmd)
	cmd.BashComplete = completer(st, cmd, cmd.Flags)
	if len(cmd.Subcommands) > 0 {
		for _, sub := range cmd.Subcommands {
			prepare(st, path, sub)
		}
		if cmd.Action == nil {
			// What it holds, in the listing of its parent's help.
			cmd.Usage += ": " + strings.Join(visibleNames(cmd.Subcommands), ", ")
			cmd.Action = groupAction(st, path, cmd.Subcommands)
			return
		}
	}
	required := takeRequired(st.required, cmd.Flags)
	takesURI := hasFlag(cmd.Flags, "token") && hasFlag(cmd.Flags, "socket") && cmd.ArgsUsage == ""
	noArgs := !takesURI && strings.TrimSpace(cmd.ArgsUsage) == ""
	// backup FILE, restore FILE, audit show SEQ, domain leave NODE: flags
	// may follow the argument, as they may follow a URI, rather than be
	// taken by urfave/cli for more arguments ("give the FILE", of a
	// command given one).
	oneArg := !takesURI && !noArgs && !strings.ContainsAny(strings.TrimSpace(cmd.ArgsUsage), " .[")
	argName := strings.TrimSpace(cmd.ArgsUsage)
	switch {
	case takesURI:
		cmd.ArgsUsage = uriArgs
	case noArgs:
		cmd.ArgsUsage = " " // not urfave/cli's "[arguments...]"
	}
	action := cmd.Action
	if action == nil {
		return
	}
	cmd.Action = func(c *cli.Context) error {
		st.path = path
		st.json = hasFlag(cmd.Flags, "json") && c.Bool("json")
		if takesURI {
			if err := applyURI(c, st); err != nil {
				return err
			}
			st.json = hasFlag(cmd.Flags, "json") && c.Bool("json")
		} else if noArgs && c.NArg() > 0 {
			return usagef(c, "unexpected argument %q: this command takes none (flags go before arguments)", c.Args().First())
		} else if oneArg && c.NArg() > 1 {
			if err := trailingFlags(c, c.Args().Tail(), "one "+argName+" at most"); err != nil {
				return err
			}
			st.json = hasFlag(cmd.Flags, "json") && c.Bool("json")
		}
		for old, nw := range deprecatedFlags {
			if hasFlag(cmd.Flags, old) && hasFlag(cmd.Flags, nw) && c.IsSet(old) {
				if c.IsSet(nw) && c.String(nw) != c.String(old) {
					return usagef(c, "--%s and --%s (its old name) differ", nw, old)
				}
				warn(c, fmt.Sprintf("%s: --%s is deprecated: use --%s", commandName(c), old, nw))
				if err := c.Set(nw, c.String(old)); err != nil {
					return usagef(c, "--%s: %v", old, err)
				}
			}
		}
		for _, name := range required {
			if !c.IsSet(name) {
				return usagef(c, "--%s is required", name)
			}
		}
		return action(c)
	}
}

// flagError says what Go's flag package says, with flags spelt as they
// are typed: "unknown flag --frob", "invalid value "x" for --retention".
func flagError(err error) string {
	msg := err.Error()
	if m := undefinedFlag.FindStringSubmatch(msg); m != nil {
		return "unknown flag --" + m[1]
	}
	if m := invalidValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("invalid value %s for --%s%s", m[1], m[2], strings.TrimSuffix(m[3], ": parse error"))
	}
	return strings.Replace(msg, "flag needs an argument: -", "flag needs a value: --", 1)
}

var (
	undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	// Go's flag package says "invalid boolean value "x" for -json" of a
	// boolean flag, "invalid value "x" for flag -n" of the others.
	invalidValue = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-+([^:]+)(.*)$`)
)

func hasFlag(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return true
		}
	}
	return false
}

// takeRequired clears the Required mark of a command's flags, which
// urfave/cli enforces by printing the whole help, and returns their
// names for the command to check itself. A flag shared by several
// commands is cleared once and required by each.
func takeRequired(cleared map[cli.Flag]bool, flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		rf, ok := f.(cli.RequiredFlag)
		if !ok {
			continue
		}
		v := reflect.ValueOf(f)
		if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
			continue
		}
		field := v.Elem().FieldByName("Required")
		if !field.IsValid() || field.Kind() != reflect.Bool {
			continue
		}
		if rf.IsRequired() {
			field.SetBool(false)
			cleared[f] = true
			if u := v.Elem().FieldByName("Usage"); u.IsValid() && u.Kind() == reflect.String {
				u.SetString(u.String() + " (required)")
			}
		}
		if cleared[f] {
			names = append(names, f.Names()[0])
		}
	}
	return names
}

// adminErrorCode is a daemon's error code as the JSON errors spell it.
func adminErrorCode(ae *adminapi.Error) string {
	return strings.ReplaceAll(ae.Code, "-", "_")
}
