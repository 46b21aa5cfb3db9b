package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/adminapi"
)

// exitCase is one command line and the exit code it must give.
type exitCase struct {
	args   []string // after hsmemu; @NAME is a file of the test's directory
	want   int
	stderr string // a regular expression the error matches, when given
}

// exitCases are the cases of TestExitCodes, run in order against one
// daemon set up by exitFixture; every command's usage error (an unknown
// flag) is added to them.
var exitCases = []exitCase{
	{[]string{"domain", "leave", "1"}, 3, `the node this daemon runs on`},
	{[]string{"domain", "leave", "9"}, 4, `not found`},
	{[]string{"token", "create", "--token", "t", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin"}, 3, `a token labelled "t" exists`},
	{[]string{"token", "create", "--token", "x", "--tier", "gold", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin"}, 2, `unknown tier`},
	{[]string{"token", "show", "--token", "nope"}, 4, `no token is labelled "nope"`},
	{[]string{"token", "show"}, 2, `--token is required`},
	{[]string{"token", "set", "--token", "pp", "--retention", "1d", "--so-pin-file", "@so.pin"}, 3, `can only grow`},
	{[]string{"token", "set", "--token", "nope", "--retention", "9d", "--so-pin-file", "@so.pin"}, 4, ``},
	{[]string{"token", "set", "--token", "locked", "--retention", "9d", "--so-pin-file", "@wrong.pin"}, 5, `locked`},
	{[]string{"token", "set", "--token", "t", "--retention", "a while", "--so-pin-file", "@so.pin"}, 2, `whole days`},
	{[]string{"token", "delete", "--token", "pp", "--so-pin-file", "@so.pin"}, 3, `purge protection`},
	{[]string{"token", "delete", "--token", "nope", "--so-pin-file", "@so.pin"}, 4, ``},
	{[]string{"token", "delete", "--token", "locked", "--so-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"token", "logout", "--token", "nope", "--so-pin-file", "@so.pin"}, 4, `no token is labelled "nope"`},
	{[]string{"token", "logout", "--token", "locked", "--so-pin-file", "@wrong.pin"}, 5, ``},

	{[]string{"key", "generate", "--token", "t", "--type", "ec-p256", "--key", "k", "--user-pin-file", "@user.pin"}, 3, `has a key labelled "k" already`},
	{[]string{"key", "generate", "--token", "t", "--type", "ec-p999", "--key", "k2", "--user-pin-file", "@user.pin"}, 2, `unknown key type`},
	{[]string{"key", "generate", "--token", "nope", "--type", "ec-p256", "--key", "k", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "generate", "--token", "locked", "--type", "ec-p256", "--key", "k", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "import", "--token", "t", "--key", "k", "--in", "@imp.pem", "--user-pin-file", "@user.pin"}, 3, `already`},
	{[]string{"key", "import", "--token", "nope", "--key", "k", "--in", "@imp.pem", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "import", "--token", "locked", "--key", "k", "--in", "@imp.pem", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "list", "--token", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "list", "--token", "locked", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "show", "--token", "t", "--key", "dup", "--user-pin-file", "@user.pin"}, 3, `2 keys match label "dup"`},
	{[]string{"key", "show", "--token", "t", "--key", "gone", "--user-pin-file", "@user.pin"}, 3, `was deleted on .* key recover`},
	{[]string{"key", "show", "--token", "t", "--key", "nope", "--user-pin-file", "@user.pin"}, 4, `no key matches`},
	{[]string{"key", "show", "--token", "locked", "--key", "k", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "show", "--token", "t", "--user-pin-file", "@user.pin"}, 2, `name the key`},
	{[]string{"key", "export-public", "--token", "t", "--key", "dup", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"key", "export-public", "--token", "t", "--key", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "export-public", "--token", "locked", "--key", "k", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "delete", "--token", "t", "--key", "dup", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"key", "delete", "--token", "t", "--key", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "delete", "--token", "locked", "--key", "k", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "recover", "--token", "t", "--key", "ddup", "--user-pin-file", "@user.pin"}, 3, `2 keys match`},
	{[]string{"key", "recover", "--token", "t", "--key", "nope", "--user-pin-file", "@user.pin"}, 4, `no deleted key`},
	{[]string{"key", "recover", "--token", "locked", "--key", "k", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "backup", "--token", "t", "--key", "dup", "--out", "@x.hsmkey", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"key", "backup", "--token", "t", "--key", "nope", "--out", "@x.hsmkey", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "backup", "--token", "locked", "--key", "k", "--out", "@x.hsmkey", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "restore", "--token", "t", "--in", "@k.hsmkey", "--user-pin-file", "@user.pin"}, 3, `exists in this keystore`},
	{[]string{"key", "restore", "--token", "nope", "--in", "@k.hsmkey", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"key", "restore", "--token", "locked", "--in", "@k.hsmkey", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"key", "purge", "--token", "pp", "--key", "pk", "--so-pin-file", "@so.pin"}, 3, `purge protection`},
	{[]string{"key", "purge", "--token", "t", "--key", "nope", "--so-pin-file", "@so.pin"}, 4, ``},
	{[]string{"key", "purge", "--token", "locked", "--key", "k", "--so-pin-file", "@wrong.pin"}, 5, ``},

	{[]string{"cert", "import", "--token", "t", "--in", "@c1.pem", "--user-pin-file", "@user.pin"}, 3, `already`},
	{[]string{"cert", "import", "--token", "t", "--in", "@c3.pem", "--user-pin-file", "@user.pin"}, 4, `no private key`},
	{[]string{"cert", "import", "--token", "locked", "--in", "@c3.pem", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"cert", "request", "--token", "t", "--key", "dup", "--subject", "CN=x", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"cert", "request", "--token", "t", "--key", "nope", "--subject", "CN=x", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"cert", "request", "--token", "locked", "--key", "k", "--subject", "CN=x", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"cert", "list", "--token", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"cert", "list", "--token", "locked", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"cert", "show", "--token", "t", "--cert", "web", "--user-pin-file", "@user.pin"}, 3, `2 certificates match`},
	{[]string{"cert", "show", "--token", "t", "--cert", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"cert", "show", "--token", "locked", "--cert", "web", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"cert", "export", "--token", "t", "--cert", "web", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"cert", "export", "--token", "t", "--cert", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"cert", "export", "--token", "locked", "--cert", "web", "--user-pin-file", "@wrong.pin"}, 5, ``},

	{[]string{"secret", "set", "--token", "t", "--name", "sd", "--in", "@v.txt", "--user-pin-file", "@user.pin"}, 3, `is deleted`},
	{[]string{"secret", "set", "--token", "nope", "--name", "s", "--in", "@v.txt", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "set", "--token", "locked", "--name", "s", "--in", "@v.txt", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "set", "--token", "t", "--name", "s", "--in", "@v.txt", "--expires", "soon", "--user-pin-file", "@user.pin"}, 2, `--expires takes`},
	{[]string{"secret", "get", "--token", "t", "--name", "off", "--user-pin-file", "@user.pin"}, 3, `disabled`},
	{[]string{"secret", "get", "--token", "t", "--name", "sd", "--user-pin-file", "@user.pin"}, 3, `was deleted on .* secret recover`},
	{[]string{"secret", "get", "--token", "t", "--name", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "get", "--token", "locked", "--name", "s", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "list", "--token", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "list", "--token", "locked", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "versions", "--token", "t", "--name", "sd", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"secret", "versions", "--token", "t", "--name", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "versions", "--token", "locked", "--name", "s", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "delete", "--token", "t", "--name", "sd", "--user-pin-file", "@user.pin"}, 3, ``},
	{[]string{"secret", "delete", "--token", "t", "--name", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "delete", "--token", "locked", "--name", "s", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "recover", "--token", "t", "--name", "r", "--user-pin-file", "@user.pin"}, 3, `a live secret is named "r"`},
	{[]string{"secret", "recover", "--token", "t", "--name", "nope", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"secret", "recover", "--token", "locked", "--name", "s", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"secret", "purge", "--token", "pp", "--name", "ps", "--so-pin-file", "@so.pin"}, 3, `purge protection`},
	{[]string{"secret", "purge", "--token", "t", "--name", "nope", "--so-pin-file", "@so.pin"}, 4, ``},
	{[]string{"secret", "purge", "--token", "locked", "--name", "s", "--so-pin-file", "@wrong.pin"}, 5, ``},

	{[]string{"pin", "change", "--token", "nope", "--old-pin-file", "@user.pin", "--new-pin-file", "@user.pin"}, 4, ``},
	{[]string{"pin", "change", "--token", "locked", "--old-pin-file", "@wrong.pin", "--new-pin-file", "@user.pin"}, 5, ``},
	{[]string{"pin", "reset", "--token", "nope", "--so-pin-file", "@so.pin", "--new-pin-file", "@user.pin"}, 4, ``},
	{[]string{"pin", "reset", "--token", "locked", "--so-pin-file", "@wrong.pin", "--new-pin-file", "@user.pin"}, 5, ``},
	{[]string{"pin", "reset", "--token", "t", "--so-pin-file", "@so.pin", "--new-pin-file", "@short.pin"}, 2, `4 to 255 bytes`},
	{[]string{"pin", "unlock", "--token", "nope", "--role", "user", "--so-pin-file", "@so.pin"}, 4, ``},
	{[]string{"pin", "unlock", "--token", "locked", "--role", "user", "--so-pin-file", "@wrong.pin"}, 5, ``},

	{[]string{"rotate", "token", "--token", "nope", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin"}, 4, ``},
	{[]string{"rotate", "token", "--token", "locked", "--so-pin-file", "@wrong.pin", "--user-pin-file", "@wrong.pin"}, 5, ``},
	{[]string{"audit", "show", "999999"}, 4, `no record 999999`},
	{[]string{"audit", "show", "many"}, 2, ``},
	{[]string{"backup", "--state-dir", "$ST", "@b.db"}, 0, ``},
	{[]string{"restore", "--tpm", "managed", "@b.db"}, 3, `the daemon is running`},
	{[]string{"tpm", "encrypt-state", "--tpm-state-key", "$DIR/tpm-state.key"}, 3, `the daemon is running`},
	{[]string{"bench", "--pin", "1234", "--module", "x.so"}, 2, `a PIN never comes from the command line`},
	{[]string{"bench", "--module", "x.so", "--concurrency", "0"}, 2, `--concurrency`},
	{[]string{"rotate", "master", "--resume"}, 4, `no master key rotation is under way`},
	// Last: a rotation begun and not finished (exitFixture's "rotation
	// begun" step, below).
	{[]string{"rotate", "master"}, 3, `a master key rotation is under way`},
}

// exitScripts are the codes the scripts assert, where a case needs more
// than one running daemon: a rolled-back or edited keystore, a second
// state directory with custodians. TestExitCodes checks that the script
// has the line.
var exitScripts = map[string]string{
	"serve 6":          "rollback.txtar",
	"init 3":           "init.txtar",
	"domain recover 3": "recover.txtar",
	"restore 6":        "backup.txtar",
	"audit verify 6":   "admin.txtar",
}

// exitFixture makes what the cases name: token t (keys k, dup twice,
// gone deleted, ddup twice deleted; certificates web twice; secrets s,
// off disabled, sd deleted, r deleted with a live one made by a PKCS#11
// application), token pp under purge protection with a deleted key pk
// and a deleted secret ps, and token locked, whose PINs are both locked.
func exitFixture(d *daemonT) {
	u := "--user-pin-file"
	d.write("v.txt", "value")
	d.write("short.pin", "12\n")
	d.must("token", "create", "--token", "t", "--tier", "premium", "--so-pin-file", "@so.pin", u, "@user.pin")
	d.must("key", "generate", "--token", "t", "--type", "ec-p256", "--key", "k", u, "@user.pin")
	d.must("key", "backup", "--token", "t", "--key", "k", "--out", "@k.hsmkey", u, "@user.pin")
	for _, l := range []string{"dup", "dup", "ddup", "ddup", "gone"} {
		d.must("key", "generate", "--token", "t", "--type", "ec-p256", "--key", l, "--allow-duplicate-label", u, "@user.pin")
	}
	d.must("key", "delete", "--token", "t", "--key", "gone", u, "@user.pin")
	for _, uuid := range uuidsOf(d, "t", "ddup") {
		d.must("key", "delete", "--token", "t", "--uuid", uuid, u, "@user.pin")
	}
	d.pemKeyAndCert("c1.pem", "web", true)
	d.pemKeyAndCert("c2.pem", "web", true)
	d.pemKeyAndCert("c3.pem", "stray", false)
	d.pemKeyAndCert("imp.pem", "imp", true)
	d.must("cert", "import", "--token", "t", "--in", "@c1.pem", u, "@user.pin")
	d.must("cert", "import", "--token", "t", "--in", "@c2.pem", "--allow-duplicate-label", u, "@user.pin")
	for _, name := range []string{"s", "sd", "r"} {
		d.must("secret", "set", "--token", "t", "--name", name, "--in", "@v.txt", u, "@user.pin")
	}
	d.must("secret", "set", "--token", "t", "--name", "off", "--disabled", "--in", "@v.txt", u, "@user.pin")
	d.must("secret", "delete", "--token", "t", "--name", "sd", u, "@user.pin")
	d.must("secret", "delete", "--token", "t", "--name", "r", u, "@user.pin")
	d.createData("t", "user-pin-1234", []wire.Attribute{{Type: ck.CKA_LABEL, Value: []byte("r")},
		{Type: ck.CKA_APPLICATION, Value: []byte(ck.SecretApplication)}, {Type: ck.CKA_VALUE, Value: []byte("v")}})

	d.must("token", "create", "--token", "pp", "--so-pin-file", "@so.pin", u, "@user.pin")
	d.must("key", "generate", "--token", "pp", "--type", "aes-256", "--key", "pk", u, "@user.pin")
	d.must("secret", "set", "--token", "pp", "--name", "ps", "--in", "@v.txt", u, "@user.pin")
	d.must("token", "set", "--token", "pp", "--retention", "7d", "--purge-protection", "--so-pin-file", "@so.pin")
	d.must("key", "delete", "--token", "pp", "--key", "pk", u, "@user.pin")
	d.must("secret", "delete", "--token", "pp", "--name", "ps", u, "@user.pin")

	d.must("token", "create", "--token", "locked", "--so-pin-file", "@so.pin", u, "@user.pin")
	for range 3 {
		d.run("pin", "change", "--token", "locked", "--role", "user", "--old-pin-file", "@wrong.pin", "--new-pin-file", "@user.pin")
		d.run("pin", "change", "--token", "locked", "--role", "so", "--old-pin-file", "@wrong.pin", "--new-pin-file", "@so.pin")
	}
	if out := d.must("token", "show", "--token", "locked", "--json"); strings.Count(out, `_locked": true`) != 2 {
		d.t.Fatalf("token locked is not locked:\n%s", out)
	}
}

// uuidsOf are the uuids of a token's live keys labelled label.
func uuidsOf(d *daemonT, token, label string) []string {
	d.t.Helper()
	var keys []struct {
		UUID  string `json:"uuid"`
		Label string `json:"label"`
	}
	if err := json.Unmarshal([]byte(d.must("key", "list", "--token", token, "--json", "--user-pin-file", "@user.pin")), &keys); err != nil {
		d.t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if k.Label == label {
			out = append(out, k.UUID)
		}
	}
	return out
}

// beginRotation begins a master key rotation and leaves it unfinished,
// as an interrupted `rotate master` would.
func beginRotation(d *daemonT) {
	cl, err := adminapi.Dial(d.sock)
	if err != nil {
		d.t.Fatal(err)
	}
	defer cl.Close()
	var begun adminapi.MasterBegun
	if err := cl.Call(adminapi.OpRotateMasterBegin, adminapi.RotateMasterBegin{}, &begun); err != nil {
		d.t.Fatal(err)
	}
}

// TestExitCodes asserts the exit code of each kind of error on each
// command: usage (every command), conflict, not found, PIN and
// integrity, as each command's help lists them (exitCodes). Each code a
// command's help lists has a case, or a script that asserts it; each
// case's code is one its command's help lists. Under --json, the same
// error is JSON on stderr with the same exit code.
func TestExitCodes(t *testing.T) {
	d := startDaemon(t)
	exitFixture(d)

	cases := slices.Clone(exitCases)
	walk(New().Commands, nil, func(path []string, c *cli.Command) {
		if c.Action != nil || len(c.Subcommands) == 0 {
			cases = append(cases, exitCase{append(path, "--no-such-flag"), 2, "unknown flag --no-such-flag"})
		}
	})
	covered := map[string]bool{}
	for key, script := range exitScripts {
		name, code, _ := strings.Cut(key, " ")
		if i := strings.LastIndex(key, " "); i > 0 {
			name, code = key[:i], key[i+1:]
		}
		b, err := os.ReadFile(filepath.Join("testdata", "script", script))
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`(?m)^exits ` + code + ` (env \S+ )*hsmemu ` + regexp.QuoteMeta(name) + `\b`)
		if !re.Match(b) {
			t.Errorf("%s asserts no exit %s of hsmemu %s", script, code, name)
		}
		covered[key] = true
	}
	for _, tc := range cases {
		name := commandOf(tc.args)
		if tc.args[len(tc.args)-1] == "master" && tc.want == 3 {
			beginRotation(d)
		}
		code, stdout, stderr := d.run(tc.args...)
		line := strings.Join(tc.args, " ")
		switch {
		case code != tc.want:
			t.Errorf("hsmemu %s: exit %d, want %d\n%s%s", line, code, tc.want, stdout, stderr)
		case tc.want != 0 && strings.Count(stderr, "\n") != 1 && !strings.Contains(stderr, "is deprecated"):
			t.Errorf("hsmemu %s: the error is not one line:\n%s", line, stderr)
		case tc.stderr != "" && !regexp.MustCompile(tc.stderr).MatchString(stderr):
			t.Errorf("hsmemu %s: stderr does not match %q:\n%s", line, tc.stderr, stderr)
		}
		covered[fmt.Sprintf("%s %d", name, tc.want)] = true
		if tc.want > 2 && !documented(name, tc.want) {
			t.Errorf("hsmemu %s exits %d, which its help does not list", line, tc.want)
		}
		if tc.want >= 2 && takesJSON(tc.args) {
			jargs := append(slices.Clone(tc.args[:len(strings.Fields(name))]), append([]string{"--json"}, tc.args[len(strings.Fields(name)):]...)...)
			code, _, stderr := d.run(jargs...)
			var e JSONError
			if err := json.Unmarshal([]byte(stderr), &e); err != nil || code != tc.want || e.Error.Exit != tc.want || e.Error.Code == "" {
				t.Errorf("hsmemu %s: exit %d, stderr %s; want a JSON error with exit %d", strings.Join(jargs, " "), code, stderr, tc.want)
			}
		}
	}
	for name, docs := range exitCodes {
		for _, doc := range append([]exitDoc{{code: 2}}, docs...) {
			if !covered[fmt.Sprintf("%s %d", name, doc.code)] {
				t.Errorf("hsmemu %s: no case gives exit %d, which its help lists", name, doc.code)
			}
		}
	}
}

// commandOf is the path of the command a command line runs.
func commandOf(args []string) string {
	cmds := New().Commands
	var path []string
	for _, a := range args {
		var c *cli.Command
		for _, x := range cmds {
			if x.Name == a {
				c = x
			}
		}
		if c == nil {
			break
		}
		path = append(path, a)
		cmds = c.Subcommands
	}
	return strings.Join(path, " ")
}

func documented(name string, code int) bool {
	for _, d := range exitCodes[name] {
		if d.code == code {
			return true
		}
	}
	return false
}

// takesJSON says whether the command a command line runs has --json.
func takesJSON(args []string) bool {
	cmds := New().Commands
	var c *cli.Command
	for _, a := range args {
		var next *cli.Command
		for _, x := range cmds {
			if x.Name == a {
				next = x
			}
		}
		if next == nil {
			break
		}
		c, cmds = next, next.Subcommands
	}
	return c != nil && hasFlag(c.Flags, "json")
}
