package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"hsmemu/daemon/adminapi"
)

// adminFlags are the flags every command on the running daemon takes.
func adminFlags(extra ...cli.Flag) []cli.Flag {
	return append([]cli.Flag{
		stateDirFlag("the daemon's state directory, where its socket is by default"),
		&cli.StringFlag{Name: "socket", Usage: "the daemon's socket (default: STATE-DIR/hsmemu.sock)", EnvVars: []string{"HSMEMU_SOCKET"}},
		&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
	}, extra...)
}

// socketPath is --socket, else STATE-DIR/hsmemu.sock.
func socketPath(c *cli.Context) string {
	if s := c.String("socket"); s != "" {
		return s
	}
	return filepath.Join(c.String("state-dir"), "hsmemu.sock")
}

// dialAdmin opens an admin connection; a failure comes back as the
// command's error.
func dialAdmin(c *cli.Context) (*adminapi.Client, error) {
	if c.String("server") != "" {
		cl, err := dialRemoteAdmin(c)
		if errors.Is(err, adminapi.ErrNoDaemon) {
			return nil, failf(c, exitError, "no_daemon", "%v", err)
		}
		if err != nil {
			return nil, cli.Exit(commandName(c)+": "+err.Error(), exitError)
		}
		return cl, nil
	}
	cl, err := adminapi.Dial(socketPath(c))
	if errors.Is(err, adminapi.ErrNoDaemon) {
		return nil, failf(c, exitError, "no_daemon", "%v", err)
	}
	if err != nil {
		return nil, failf(c, exitError, "failed", "%v", err)
	}
	return cl, nil
}

// adminCall opens an admin connection, makes one call and closes it. An
// error comes back as a cli.Exit with the documented code, prefixed by
// the command's name.
func adminCall(c *cli.Context, op string, args, result any) error {
	return adminCallProgress(c, op, args, result, nil)
}

// adminCallProgress is adminCall for a long call, whose progress reports
// go to progress.
func adminCallProgress(c *cli.Context, op string, args, result any, progress func(adminapi.Progress)) error {
	cl, err := dialAdmin(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.CallProgress(op, args, result, progress); err != nil {
		return adminExit(c, err)
	}
	return nil
}

// adminExit maps a daemon's refusal onto an exit code.
func adminExit(c *cli.Context, err error) error {
	code, name := exitError, "failed"
	var ae *adminapi.Error
	if errors.As(err, &ae) {
		name = adminErrorCode(ae)
		switch ae.Code {
		case adminapi.CodeBadRequest, adminapi.CodePINInvalid:
			code = exitUsage
		case adminapi.CodeExists, adminapi.CodeInUse, adminapi.CodeAmbiguous, adminapi.CodeRefused, adminapi.CodeDeleted:
			code = exitConflict
		case adminapi.CodeNotFound:
			code = exitNotFound
		case adminapi.CodePINIncorrect, adminapi.CodePINLocked:
			code = exitAuth
		case adminapi.CodeTampered:
			code = exitTampered
		}
	}
	return failf(c, code, name, "%v", err)
}

// commandName is "hsmemu token create" and the like.
func commandName(c *cli.Context) string {
	names := []string{}
	for _, l := range c.Lineage() {
		if l.Command != nil && l.Command.Name != "" && l.Command.Name != c.App.Name {
			names = append([]string{l.Command.Name}, names...)
		}
	}
	return strings.Join(append([]string{c.App.Name}, names...), " ")
}

// A PIN comes from a file (--NAME-file), an environment variable, or a
// prompt on the terminal without echo; never from the command line, where
// other users see it in the process list.
type pinSource struct {
	flag   string // e.g. "so-pin": the flag is --so-pin-file
	env    string // e.g. HSMEMU_SO_PIN
	prompt string // e.g. "SO PIN"
}

var (
	soPIN      = pinSource{"so-pin", "HSMEMU_SO_PIN", "SO PIN"}
	userPIN    = pinSource{"user-pin", "HSMEMU_USER_PIN", "user PIN"}
	oldPIN     = pinSource{"old-pin", "HSMEMU_OLD_PIN", "current PIN"}
	newPIN     = pinSource{"new-pin", "HSMEMU_NEW_PIN", "new PIN"}
	newUserPIN = pinSource{"new-pin", "HSMEMU_NEW_PIN", "new user PIN"}
)

func (p pinSource) fileFlag() cli.Flag {
	return &cli.StringFlag{Name: p.flag + "-file", Usage: "read the " + p.prompt + " from this file (first line), or set " + p.env + "; without either it is asked for"}
}

// read returns the PIN. confirm asks twice at a prompt (for a new PIN).
// optional returns nil when no file and no variable gives it and stdin is
// not a terminal.
func (p pinSource) read(c *cli.Context, confirm bool) ([]byte, error) {
	if f := c.String(p.flag + "-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("--%s-file: %w", p.flag, err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		clear(b)
		return []byte(strings.TrimSuffix(line, "\r")), nil
	}
	// Empty is unset, as for every HSMEMU_ variable (and as
	// readOptionalPIN has it): PIN=$UNSET in a script is no PIN.
	if v := os.Getenv(p.env); v != "" {
		return []byte(v), nil
	}
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, fmt.Errorf("no %s: give --%s-file or set %s (stdin is not a terminal to ask on)", p.prompt, p.flag, p.env)
	}
	ask := func(prompt string) ([]byte, error) {
		fmt.Fprintf(os.Stderr, "%s: ", prompt)
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		return b, err
	}
	pin, err := ask(p.prompt)
	if err != nil {
		return nil, err
	}
	if confirm {
		again, err := ask(p.prompt + " again")
		if err != nil {
			clear(pin)
			return nil, err
		}
		same := string(again) == string(pin)
		clear(again)
		if !same {
			clear(pin)
			return nil, errors.New("the two entries differ")
		}
	}
	return pin, nil
}

// readPIN is read with the command's name on its error, as a usage error.
// An empty PIN (an empty first line, an empty entry at the prompt) is one
// too: no PIN is empty, and sent it would count as a wrong one, three of
// which lock the token.
func readPIN(c *cli.Context, p pinSource, confirm bool) ([]byte, error) {
	pin, err := p.read(c, confirm)
	if err != nil {
		return nil, cli.Exit(commandName(c)+": "+err.Error(), exitUsage)
	}
	if len(pin) == 0 {
		return nil, usagef(c, "the %s is empty (--%s-file's first line, or the entry at the prompt); nothing was sent", p.prompt, p.flag)
	}
	return pin, nil
}

// readOptionalPIN is readPIN for a PIN that may be left unset: with no
// file, no variable and no terminal it is nil, and at a prompt an empty
// entry leaves it unset.
func readOptionalPIN(c *cli.Context, p pinSource) ([]byte, error) {
	if c.String(p.flag+"-file") == "" && os.Getenv(p.env) == "" && !term.IsTerminal(int(os.Stdin.Fd())) {
		return nil, nil
	}
	if c.String(p.flag+"-file") == "" && os.Getenv(p.env) == "" {
		p.prompt += " (empty: set it later)"
	}
	pin, err := p.read(c, true)
	if err != nil {
		return nil, cli.Exit(commandName(c)+": "+err.Error(), exitUsage)
	}
	if len(pin) == 0 {
		return nil, nil
	}
	return pin, nil
}

// readTokenPINs reads a token's SO PIN (confirmed at a prompt when
// confirmSO) and its optional user PIN; the caller wipes both.
func readTokenPINs(c *cli.Context, confirmSO bool) (so, user []byte, err error) {
	if so, err = readPIN(c, soPIN, confirmSO); err != nil {
		return nil, nil, err
	}
	if user, err = readOptionalPIN(c, userPIN); err != nil {
		clear(so)
		return nil, nil, err
	}
	return so, user, nil
}

// readIn reads --in: a file, or stdin for "-", of which it reads at most
// limit bytes.
func readIn(in string, limit int64) ([]byte, error) {
	if in == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, limit))
	}
	return os.ReadFile(in)
}

// tokenFlag names a token by its label, as every command does.
func tokenFlag() cli.Flag {
	return &cli.StringFlag{Name: "token", Usage: "the token's label", Required: true}
}

// deprecatedLabelFlag is --label, --token's old name in the token, pin and
// rotate commands: hidden, and still taken, with a warning, so that
// scripts written for it keep working.
func deprecatedLabelFlag() cli.Flag {
	return &cli.StringFlag{Name: "label", Usage: "deprecated: --token", Hidden: true}
}
