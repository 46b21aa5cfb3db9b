package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// runCLI runs the command line in process, as Main does.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"hsmemu"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// TestUsageErrors: a usage error is one line on stderr, pointing at the
// command's --help, with exit code 2, and never the whole help.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // in the one line
	}{
		{"unknown command", []string{"frob"}, `hsmemu: unknown command "frob": want serve, init, `},
		{"unknown subcommand", []string{"key", "frob"}, `hsmemu key: unknown command "frob": want generate, import, `},
		{"unknown flag", []string{"key", "show", "--frob"}, "hsmemu key show: unknown flag --frob (see `hsmemu key show --help`)"},
		{"unknown global flag", []string{"--frob", "status"}, "hsmemu: unknown flag --frob (see `hsmemu --help`)"},
		{"missing flag", []string{"key", "show", "--key", "x"}, "hsmemu key show: --token is required (see `hsmemu key show --help`)"},
		{"missing value", []string{"secret", "get", "--token"}, "hsmemu secret get: flag needs a value: --token"},
		{"bad value", []string{"audit", "tail", "-n", "many"}, `hsmemu audit tail: invalid value "many" for --n`},
		{"bad boolean", []string{"key", "list", "--json=maybe"}, "hsmemu key list: invalid value \"maybe\" for --json (see `hsmemu key list --help`)"},
		{"bad log level", []string{"--log-level", "loud", "status"}, `--log-level (HSMEMU_LOG_LEVEL) is debug, info, warn or error, not "loud"`},
		{"bad log format", []string{"--log-format", "xml", "status"}, `--log-format is text or json, not "xml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want 2", code)
			}
			if stdout != "" {
				t.Errorf("stdout not empty:\n%s", stdout)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr is not one line with %q:\n%s", tc.want, stderr)
			}
		})
	}
}

// TestJSONErrors: under --json, an error is one JSON object on stderr.
func TestJSONErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code string
		exit int
	}{
		{[]string{"key", "show", "--json", "--frob"}, "usage", 2},
		{[]string{"status", "--json", "--socket", "/nonexistent/hsmemu.sock"}, "no_daemon", 1},
		{[]string{"token", "list", "--socket", "/nonexistent/hsmemu.sock", "--json"}, "no_daemon", 1},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		var e JSONError
		d := json.NewDecoder(strings.NewReader(stderr))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			t.Errorf("%v: stderr is not a JSON error: %v\n%s", tc.args, err, stderr)
			continue
		}
		if code != tc.exit || e.Error.Exit != tc.exit || e.Error.Code != tc.code || e.Error.Message == "" || stdout != "" {
			t.Errorf("%v: exit %d, %+v, stdout %q; want exit and code %d %s", tc.args, code, e, stdout, tc.exit, tc.code)
		}
	}
}

// TestBareGroup: a command that holds others, given none, shows its help.
func TestBareGroup(t *testing.T) {
	code, stdout, _ := runCLI(t, "key")
	if code != 0 || !strings.Contains(stdout, "generate") {
		t.Errorf("hsmemu key: exit %d\n%s", code, stdout)
	}
}
