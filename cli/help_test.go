package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// walk calls f on every visible command, with its path under hsmemu.
func walk(cmds []*cli.Command, path []string, f func(path []string, c *cli.Command)) {
	for _, c := range cmds {
		if c.Hidden || c.Name == "help" {
			continue
		}
		p := append(append([]string{}, path...), c.Name)
		f(p, c)
		walk(c.Subcommands, p, f)
	}
}

// helpOf is what `hsmemu PATH --help` prints.
func helpOf(t *testing.T, path []string) string {
	t.Helper()
	code, stdout, stderr := runCLI(t, append(append([]string{}, path...), "--help")...)
	if code != 0 || stderr != "" {
		t.Fatalf("hsmemu %s --help: exit %d\n%s", strings.Join(path, " "), code, stderr)
	}
	return stdout
}

// TestHelp: every command's help lists its exit codes, a command that
// holds others lists each of them in its parent's help, and every
// command that does something has an example.
func TestHelp(t *testing.T) {
	top := helpOf(t, nil)
	walk(newApp(&runState{}).Commands, nil, func(path []string, c *cli.Command) {
		name := strings.Join(path, " ")
		help := helpOf(t, path)
		if !strings.Contains(help, "Exit codes: 0 done") {
			t.Errorf("hsmemu %s --help lists no exit codes:\n%s", name, help)
		}
		parent := top
		if len(path) > 1 {
			parent = helpOf(t, path[:len(path)-1])
		}
		line := ""
		for _, l := range strings.Split(parent, "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.TrimSuffix(f[0], ",") == c.Name {
				line = l
			}
		}
		if line == "" {
			t.Errorf("the help of hsmemu %s does not list %s", strings.Join(path[:len(path)-1], " "), c.Name)
		}
		for _, sub := range c.Subcommands {
			if !sub.Hidden && sub.Name != "help" && !strings.Contains(line, sub.Name) {
				t.Errorf("the help of hsmemu %s says of %s %q, which omits %s", strings.Join(path[:len(path)-1], " "), c.Name, line, sub.Name)
			}
		}
		if c.Action != nil && len(c.Subcommands) == 0 && len(examples(c, path)) == 0 {
			t.Errorf("hsmemu %s --help has no example", name)
		}
		if _, ok := exitCodes[name]; !ok && len(c.Subcommands) == 0 {
			t.Errorf("hsmemu %s has no entry in exitCodes", name)
		}
	})
}

// examples are the command lines of a command's help that run it.
func examples(c *cli.Command, path []string) [][]string {
	var out [][]string
	text := strings.ReplaceAll(c.Description, "\\\n", " ")
	for _, l := range strings.Split(text, "\n") {
		i := strings.Index(l, "hsmemu "+strings.Join(path, " "))
		if i < 0 || !strings.HasPrefix(strings.TrimSpace(l), "hsmemu") && !strings.Contains(l[:i], "| ") && !strings.Contains(l[:i], "=") &&
			!strings.Contains(l[:i], "$(") {
			continue
		}
		line := l[i:]
		if strings.Contains(l[:i], "$(") {
			line, _, _ = strings.Cut(line, ")") // eval "$(hsmemu completion bash)"
		}
		words, err := shellWords(line)
		if err != nil {
			continue
		}
		// hsmemu bench's help shows hsmemu bench hotpath too.
		if len(words) > len(path)+1 && c.Command(words[len(path)+1]) != nil {
			continue
		}
		// What follows a pipe or a redirection is not hsmemu's.
		for j, w := range words {
			if w == "|" || w == ">" || w == "#" || strings.HasPrefix(w, ">") {
				words = words[:j]
				break
			}
		}
		out = append(out, words)
	}
	return out
}

// shellWords splits a command line as sh would, quotes and all, for the
// simple lines of examples.
func shellWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	in, q := false, byte(0)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case q != 0 && ch == q:
			q = 0
		case q != 0:
			w.WriteByte(ch)
		case ch == '\'' || ch == '"':
			q, in = ch, true
		case ch == '$' && strings.HasPrefix(s[i:], "$("):
			// A command substitution is part of its word, spaces and all:
			// backup /backup/keystore-$(date +%F).db is one FILE.
			j := strings.IndexByte(s[i:], ')')
			if j < 0 {
				return nil, errUnterminated
			}
			w.WriteString(s[i : i+j+1])
			i += j
			in = true
		case ch == ' ' || ch == '\t':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteByte(ch)
			in = true
		}
	}
	if q != 0 {
		return nil, errUnterminated
	}
	if in {
		words = append(words, w.String())
	}
	return words, nil
}

var errUnterminated = &exitErr{msg: "unterminated quote"}

// TestExamplesParse: every example in every command's help parses
// against the command's flags (a flag it does not have, a missing
// required one, a bad value or an argument it does not take fail) and
// reaches the command it shows.
func TestExamplesParse(t *testing.T) {
	n := 0
	walk(New().Commands, nil, func(path []string, c *cli.Command) {
		for _, ex := range examples(c, path) {
			n++
			app := New()
			ran := ""
			walk(app.Commands, nil, func(p []string, c *cli.Command) {
				if c.Action != nil {
					name := strings.Join(p, " ")
					c.Action = func(*cli.Context) error { ran = name; return nil }
				}
			})
			st := &runState{}
			app = prepareApp(app, st)
			var out, errb bytes.Buffer
			app.Writer, app.ErrWriter = &out, &errb
			err := app.RunContext(context.Background(), ex)
			if err != nil || ran != strings.Join(path, " ") {
				t.Errorf("the example %q: ran %q (want %q), %v\n%s", strings.Join(ex, " "), ran, strings.Join(path, " "), err, errb.String())
			}
		}
	})
	if n < 40 {
		t.Errorf("only %d examples found", n)
	}
}

// TestBenchHelpPINDefaults: hsmemu bench never prompts for a PIN (a run is
// unattended; without a file or a variable it uses the scratch token's
// PINs), so its PIN flags' help must say so rather than promise a prompt.
func TestBenchHelpPINDefaults(t *testing.T) {
	help := helpOf(t, []string{"bench"})
	for flag, def := range map[string]string{"--user-pin-file": "1234", "--so-pin-file": "12345678"} {
		line := ""
		for _, l := range strings.Split(help, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == flag {
				line = l
			}
		}
		if line == "" {
			t.Fatalf("hsmemu bench --help lists no %s:\n%s", flag, help)
		}
		if strings.Contains(line, "asked for") || !strings.Contains(line, def) {
			t.Errorf("hsmemu bench --help says of %s %q; bench asks for no PIN and uses %s without one", flag, strings.TrimSpace(line), def)
		}
	}
}

// TestHelpNamesEveryEnvVar: the top-level help's list of environment
// variables names every one a flag of any command reads.
func TestHelpNamesEveryEnvVar(t *testing.T) {
	app := newApp(&runState{})
	top := helpOf(t, nil)
	check := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			ev, ok := f.(interface{ GetEnvVars() []string })
			if !ok {
				continue
			}
			for _, v := range ev.GetEnvVars() {
				if !strings.Contains(top, v) {
					t.Errorf("%s reads %s, which `hsmemu --help` does not name", where, v)
				}
			}
		}
	}
	check("hsmemu", app.Flags)
	walk(app.Commands, nil, func(path []string, c *cli.Command) {
		check("hsmemu "+strings.Join(path, " "), c.Flags)
	})
}
