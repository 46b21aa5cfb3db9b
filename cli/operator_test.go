package cli

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The command line as a script uses it: exit codes, JSON on stdout, no
// reading of a stdin nobody filled.

// TestHelpUnknownTopic: `hsmemu help NAME` for a NAME that is no command
// is a usage error (exit 2), not urfave/cli's exit 3, which scripts read
// as a conflict.
func TestHelpUnknownTopic(t *testing.T) {
	for _, args := range [][]string{{"help", "frob"}, {"key", "help", "frob"}} {
		code, stdout, stderr := runCLI(t, args...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, `unknown command "frob"`) {
			t.Errorf("hsmemu %s: exit %d, stdout %q, stderr %q; want exit 2 and one line", strings.Join(args, " "), code, stdout, stderr)
		}
		code, _, stderr = runCLI(t, append(args, "--json")...)
		var e JSONError
		if err := json.Unmarshal([]byte(stderr), &e); err != nil || code != exitUsage || e.Error.Exit != exitUsage || e.Error.Code != "usage" {
			t.Errorf("hsmemu %s --json: exit %d, stderr %q; want a JSON usage error", strings.Join(args, " "), code, stderr)
		}
	}
	if code, stdout, _ := runCLI(t, "help", "key"); code != 0 || !strings.Contains(stdout, "generate") {
		t.Errorf("hsmemu help key: exit %d\n%s", code, stdout)
	}
}

// TestServeNegativeDurations: a negative duration given to serve is a
// usage error, before anything is opened, rather than taken as 0 (which
// turns the PIN failure delay or the PIN cache off). serve runs in a
// process of its own (runSubprocess): one that took the value would
// serve, and is stopped.
func TestServeNegativeDurations(t *testing.T) {
	for _, flag := range []string{"pin-failure-delay", "pin-cache-ttl", "anchor-interval", "purge-interval", "db-statement-timeout"} {
		dir := t.TempDir()
		st := filepath.Join(dir, "st")
		code, stdout, stderr := runSubprocess(t, "serve", "--state-dir", st, "--socket", filepath.Join(dir, "s"), "--tpm", "managed", "--lock-memory", "off", "--"+flag, "-1s")
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "--"+flag) {
			t.Errorf("serve --%s -1s: exit %d, stdout %q, stderr %q; want exit 2 naming the flag", flag, code, stdout, stderr)
		}
		if _, err := os.Stat(st); err == nil {
			t.Errorf("serve --%s -1s made the state directory", flag)
		}
	}
}

// TestURIPINNotEchoed: a PKCS#11 URI whose pin-value is malformed is a
// usage error that does not repeat the PIN, in words or in JSON.
func TestURIPINNotEchoed(t *testing.T) {
	for _, uri := range []string{"pkcs11:token=t;object=k?pin-value=hunter2 x", "pkcs11:token=t;object=k?pin-value=hunter2%zz"} {
		for _, asJSON := range []bool{false, true} {
			args := []string{"key", "show", "--socket", "/nonexistent/s"}
			if asJSON {
				args = append(args, "--json")
			}
			code, stdout, stderr := runCLI(t, append(args, uri)...)
			if code != exitUsage || strings.Contains(stdout+stderr, "hunter2") || !strings.Contains(stderr, "pin-value") {
				t.Errorf("key show %q (json %v): exit %d, stdout %q, stderr %q; want exit 2 without the PIN", uri, asJSON, code, stdout, stderr)
			}
		}
	}
}

// TestBadValues: a value out of range is a usage error (exit 2) found
// before the daemon is asked (so the socket need not answer), not the
// daemon's refusal or a "not found".
func TestBadValues(t *testing.T) {
	sock := []string{"--socket", "/nonexistent/s"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "set", "--token", "t", "--retention", "4000d"}, "--retention is 0d to 3650d"},
		{[]string{"token", "set", "--token", "t", "--retention-days", "-5"}, "--retention-days is 0 to 3650, not -5"},
		{[]string{"token", "set", "--token", "t", "--retention-days", "4000"}, "--retention-days is 0 to 3650, not 4000"},
		{[]string{"secret", "get", "--token", "t", "--name", "s", "--version", "-1"}, "--version is a version number"},
		{[]string{"secret", "get", "--token", "t", "--name", "s", "--version", "0"}, "--version is a version number"},
		{[]string{"audit", "export", "--after", "-3"}, "--after is a record number"},
	} {
		code, stdout, stderr := runCLI(t, append(tc.args, sock...)...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("hsmemu %s: exit %d, stdout %q, stderr %q; want exit 2 with %q", strings.Join(tc.args, " "), code, stdout, stderr, tc.want)
		}
	}
}

// withStdin runs f with os.Stdin reading the file at path.
func withStdin(t *testing.T, path string, f func()) {
	t.Helper()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	old := os.Stdin
	os.Stdin = in
	defer func() { os.Stdin = old }()
	f()
}

// TestOperatorScripting: --out is written under --json as without it,
// and the JSON printed is the documented one; secret get --out --json
// prints the details, never the value; secret set refuses an empty stdin
// it was not told to read.
func TestOperatorScripting(t *testing.T) {
	d := startDaemon(t)
	u := "--user-pin-file"
	d.must("token", "create", "--token", "t", "--tier", "premium", "--so-pin-file", "@so.pin", u, "@user.pin")
	d.must("key", "generate", "--token", "t", "--type", "ec-p256", "--key", "k", u, "@user.pin")
	d.pemKeyAndCert("c.pem", "web", true)
	d.must("cert", "import", "--token", "t", "--in", "@c.pem", u, "@user.pin")
	doc, err := loadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	valid := func(name, out string) {
		t.Helper()
		if err := doc.Validate(name, []byte(out)); err != nil {
			t.Errorf("%s --json: %v\n%s", name, err, out)
		}
	}
	fileHas := func(name, want string) {
		t.Helper()
		b, err := os.ReadFile(d.path(name))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: %v, %q; want it to hold %q", name, err, b, want)
		}
	}

	out := d.must("cert", "request", "--token", "t", "--key", "k", "--subject", "CN=x", "--out", "@req.csr", "--json", u, "@user.pin")
	valid("cert request", out)
	fileHas("req.csr", "-----BEGIN CERTIFICATE REQUEST-----")
	out = d.must("cert", "export", "--token", "t", "--cert", "web", "--out", "@chain.pem", "--json", u, "@user.pin")
	valid("cert export", out)
	fileHas("chain.pem", "-----BEGIN CERTIFICATE-----")
	// Without --out, the JSON alone on stdout.
	out = d.must("cert", "export", "--token", "t", "--cert", "web", "--json", u, "@user.pin")
	valid("cert export", out)

	d.write("v.txt", "the-value")
	d.must("secret", "set", "--token", "t", "--name", "s", "--in", "@v.txt", u, "@user.pin")
	var got struct {
		Value *string `json:"value"`
		File  *string `json:"file"`
	}
	out = d.must("secret", "get", "--token", "t", "--name", "s", "--out", "@got.txt", "--json", u, "@user.pin")
	valid("secret get", out)
	fileHas("got.txt", "the-value")
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Value != nil || got.File == nil || *got.File != d.path("got.txt") || strings.Contains(out, base64.StdEncoding.EncodeToString([]byte("the-value"))) {
		t.Errorf("secret get --out --json: %v\n%s\nwant value null and file %s", err, out, d.path("got.txt"))
	}
	out = d.must("secret", "get", "--token", "t", "--name", "s", "--json", u, "@user.pin")
	valid("secret get", out)
	got.Value, got.File = nil, nil
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Value == nil || *got.Value != base64.StdEncoding.EncodeToString([]byte("the-value")) || got.File != nil {
		t.Errorf("secret get --json: %v\n%s", err, out)
	}

	// stdin /dev/null, as under cron: refused, nothing stored.
	withStdin(t, os.DevNull, func() {
		code, stdout, stderr := d.run("secret", "set", "--token", "t", "--name", "s", u, "@user.pin")
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, "stdin is empty") {
			t.Errorf("secret set < /dev/null: exit %d, stdout %q, stderr %q; want exit 2", code, stdout, stderr)
		}
		// Asked for, an empty value is stored.
		d.must("secret", "set", "--token", "t", "--name", "empty", "--in", os.DevNull, u, "@user.pin")
	})
	var vs []json.RawMessage
	if err := json.Unmarshal([]byte(d.must("secret", "versions", "--token", "t", "--name", "s", "--json", u, "@user.pin")), &vs); err != nil || len(vs) != 1 {
		t.Errorf("secret s has %d versions (%v), want 1", len(vs), err)
	}
	// A pipe with the value in it still works.
	withStdin(t, d.path("v.txt"), func() {
		d.must("secret", "set", "--token", "t", "--name", "s", u, "@user.pin")
	})
}

// TestJSONWarnings: under --json a warning (a deprecated flag, an ignored
// URI attribute) is never a line of text before the JSON error: stderr is
// one JSON value, the error with the warnings in it; without --json, the
// warning is a line of its own before the error's.
func TestJSONWarnings(t *testing.T) {
	dir := t.TempDir()
	pin := filepath.Join(dir, "pin")
	if err := os.WriteFile(pin, []byte("so-pin-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nothing.sock") // no daemon: exit 1
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "show", "--label", "t"}, "hsmemu token show: --label is deprecated: use --token"},
		{[]string{"token", "set", "--token", "t", "--retention-days", "5", "--so-pin-file", pin}, "hsmemu token set: --retention-days is deprecated: use --retention 5d"},
		{[]string{"pin", "unlock", "--label", "t", "--role", "user", "--so-pin-file", pin}, "hsmemu pin unlock: --label is deprecated: use --token"},
		{[]string{"key", "show", "--user-pin-file", pin, "pkcs11:token=t;object=k?module-path=/x.so"}, "hsmemu key show: warning: the PKCS#11 URI's module-path is ignored"},
	} {
		args := append(slices.Clone(tc.args), "--socket", sock)
		if strings.HasPrefix(tc.args[len(tc.args)-1], "pkcs11:") {
			// Flags before the URI, as a script writes them.
			args = append(slices.Clone(tc.args[:len(tc.args)-1]), "--socket", sock, tc.args[len(tc.args)-1])
		}
		code, stdout, stderr := runCLI(t, append(args, "--json")...)
		dec := json.NewDecoder(strings.NewReader(stderr))
		dec.DisallowUnknownFields()
		var e JSONError
		err := dec.Decode(&e)
		if err == nil && dec.More() {
			err = errors.New("more than one JSON value")
		}
		if err != nil || code != exitError || stdout != "" || e.Error.Exit != exitError || e.Error.Code != "no_daemon" || !slices.Equal(e.Warnings, []string{tc.want}) {
			t.Errorf("hsmemu %s --json: exit %d, stdout %q, stderr %q (%v); want one JSON error, exit 1, warnings [%q]", strings.Join(args, " "), code, stdout, stderr, err, tc.want)
		}
		code, _, stderr = runCLI(t, args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		if code != exitError || len(lines) != 2 || lines[0] != tc.want || !strings.Contains(lines[1], "no daemon answers") {
			t.Errorf("hsmemu %s: exit %d, stderr %q; want the warning, then the error", strings.Join(args, " "), code, stderr)
		}
	}
	// An error without warnings has them empty, not left out.
	_, _, stderr := runCLI(t, "token", "show", "--token", "t", "--socket", sock, "--json")
	if !strings.Contains(stderr, `"warnings":[]`) {
		t.Errorf("token show --json without warnings: stderr %q; want \"warnings\":[]", stderr)
	}
}

// TestDBPasswordNotEchoed: a password in a --db value or a --server
// address, whatever its kind (a URL hsmemu does not take, a SQLite path
// or URI, a remote address), is never printed, in words or in JSON: the
// rest of the value is, redacted as a PostgreSQL one is.
func TestDBPasswordNotEchoed(t *testing.T) {
	dir := t.TempDir()
	d := &daemonT{t: t, dir: dir}
	d.pemKeyAndCert("both.pem", "admin", true) // a key (0600) and its certificate: all --server needs to get as far as the address
	tlsFlags := []string{"--tls-cert", d.path("both.pem"), "--tls-key", d.path("both.pem"), "--tls-ca", d.path("both.pem")}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backup", "--db", "mysql://u@h/db?password=s3cret"}, exitUsage, "mysql://u@h/db?password=xxxxx"},
		{[]string{"backup", "--db", "mysql://u:s3cret@h/db"}, exitUsage, "mysql://u:xxxxx@h/db"},
		{[]string{"backup", "--db", "sqlite://u:s3cret@host/x.db"}, exitError, "//u:xxxxx@host/x.db"},
		{[]string{"restore", "--state-dir", dir, "--db", "sqlite:file:" + dir + "/k.db?_auth_user=u&_auth_pass=s3cret"}, exitUsage, "_auth_pass=xxxxx"},
		{append([]string{"--server", "tls://admin:s3cret@127.0.0.1:1"}, append(tlsFlags, "status")...), exitError, "tls://admin:xxxxx@127.0.0.1:1"},
	} {
		for _, asJSON := range []bool{false, true} {
			args := slices.Clone(tc.args)
			if asJSON {
				args = append(args, "--json")
			}
			if args[0] != "--server" {
				args = append(args, dir+"/b.db")
			}
			code, stdout, stderr := runCLI(t, args...)
			if code != tc.code || strings.Contains(stdout+stderr, "s3cret") || !strings.Contains(stderr, tc.want) {
				t.Errorf("hsmemu %s: exit %d, stdout %q, stderr %q; want exit %d naming %q without the password", strings.Join(args, " "), code, stdout, stderr, tc.code, tc.want)
			}
		}
	}
}

// TestStatusKeystoreRedacted: status, in words and JSON, shows where the
// keystore is without a password its --db held, a SQLite one's too.
func TestStatusKeystoreRedacted(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "k.db?_auth_pass=s3cret") // a file's name, as sqlite:PATH takes it
	d := startDaemon(t, "--db", "sqlite:"+db)
	for _, args := range [][]string{{"status"}, {"status", "--json"}} {
		out := d.must(args...)
		if strings.Contains(out, "s3cret") || !strings.Contains(out, filepath.Join(dir, "k.db?_auth_pass=xxxxx")) {
			t.Errorf("hsmemu %s:\n%s\nwant the keystore's file without its password", strings.Join(args, " "), out)
		}
	}
}

// TestStatusStarted: status --json's started, unlike uptime_seconds, is
// the same from one call to the next (docs/json.md): what a script that
// compares outputs keeps.
func TestStatusStarted(t *testing.T) {
	d := startDaemon(t)
	var a, b struct {
		Started *string  `json:"started"`
		Uptime  *float64 `json:"uptime_seconds"`
	}
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &a); err != nil {
		t.Fatal(err)
	}
	d.must("token", "create", "--token", "t", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin")
	if err := json.Unmarshal([]byte(d.must("status", "--json")), &b); err != nil {
		t.Fatal(err)
	}
	if a.Started == nil || b.Started == nil || *a.Started != *b.Started || a.Uptime == nil || b.Uptime == nil || *b.Uptime < *a.Uptime {
		t.Fatalf("status --json twice: started %v then %v, uptime %v then %v; want one started, uptime not going back", a.Started, b.Started, a.Uptime, b.Uptime)
	}
	if _, err := time.Parse(time.RFC3339, *a.Started); err != nil || !strings.HasSuffix(*a.Started, "Z") {
		t.Errorf("started %q: want RFC 3339 in UTC (%v)", *a.Started, err)
	}
}

// TestFlagsAfterArgument: the flags of backup, restore, audit show and
// domain leave may follow their one argument, as they may follow a URI:
// `hsmemu backup FILE --json` is not told to give the FILE; a second
// argument is a usage error that names it.
func TestFlagsAfterArgument(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "nothing.sock")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"audit", "show", "1", "--socket", sock}, exitError, "no daemon answers on " + sock},
		{[]string{"domain", "leave", "2", "--socket=" + sock}, exitError, "no daemon answers on " + sock},
		{[]string{"backup", filepath.Join(dir, "b.db"), "--state-dir", filepath.Join(dir, "none")}, exitError, filepath.Join(dir, "none")},
		{[]string{"restore", filepath.Join(dir, "b.db"), "--db", "mysql://h/db"}, exitUsage, `--db "mysql://h/db" is neither`},
		{[]string{"backup", filepath.Join(dir, "b.db"), "extra"}, exitUsage, `one FILE at most: "extra" is another argument`},
		{[]string{"audit", "show", "1", "--frob"}, exitUsage, "unknown flag --frob"},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != tc.code || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("hsmemu %s: exit %d, stdout %q, stderr %q; want exit %d with %q", strings.Join(tc.args, " "), code, stdout, stderr, tc.code, tc.want)
		}
	}
	// --json after the argument: the error is JSON, from the command.
	code, _, stderr := runCLI(t, "audit", "show", "1", "--socket", sock, "--json")
	var e JSONError
	if err := json.Unmarshal([]byte(stderr), &e); err != nil || code != exitError || e.Error.Code != "no_daemon" {
		t.Errorf("audit show 1 --socket S --json: exit %d, stderr %q; want the JSON no_daemon error", code, stderr)
	}
}

// TestDaemonOnOtherSocket: restore and init on the state directory of a
// daemon that listens on another socket than the one they look at are
// refused as a running daemon is (exit 3), by the managed TPM it holds,
// before anything is moved: the daemon's keystore stays where it is.
func TestDaemonOnOtherSocket(t *testing.T) {
	d := startDaemon(t)
	d.must("token", "create", "--token", "t", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin")
	d.must("backup", "--state-dir", d.st, "@b.db")
	other := d.path("other.sock") // nothing listens there
	for _, args := range [][]string{
		{"restore", "--state-dir", d.st, "--tpm", "managed", "--socket", other, d.path("b.db")},
		{"init", "--state-dir", d.st, "--tpm", "managed"},
	} {
		code, stdout, stderr := runCLI(t, args...)
		if code != exitConflict || stdout != "" || !strings.Contains(stderr, "in use") || !strings.Contains(stderr, "nothing was changed") {
			t.Errorf("hsmemu %s: exit %d, stdout %q, stderr %q; want exit 3, the TPM in use", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(d.st, "keystore.db.replaced-*")); len(left) != 0 {
		t.Errorf("restore moved the daemon's keystore aside: %v", left)
	}
	if out := d.must("token", "list"); !strings.Contains(out, "t") {
		t.Errorf("the daemon lost its token:\n%s", out)
	}
}

// TestRemoteNoDaemon: nothing listening at any --server address is the
// same failure, to a script, as nothing on the socket: exit 1, code
// no_daemon.
func TestRemoteNoDaemon(t *testing.T) {
	d := &daemonT{t: t, dir: t.TempDir()}
	d.pemKeyAndCert("both.pem", "admin", true)
	l, err := net.Listen("tcp", "127.0.0.1:0") // a port known free: taken, then let go
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	for _, args := range [][]string{
		{"--server", "tls://" + addr, "status", "--json"},
		{"--server", "tls://" + addr + ",tls://" + addr, "token", "list", "--json"},
	} {
		args = append([]string{"--tls-cert", d.path("both.pem"), "--tls-key", d.path("both.pem"), "--tls-ca", d.path("both.pem")}, args...)
		code, _, stderr := runCLI(t, args...)
		var e JSONError
		if err := json.Unmarshal([]byte(stderr), &e); err != nil || code != exitError || e.Error.Code != "no_daemon" || !strings.Contains(e.Error.Message, "no daemon answers") {
			t.Errorf("hsmemu %s: exit %d, stderr %q; want exit 1, code no_daemon", strings.Join(args, " "), code, stderr)
		}
	}
}

// TestEmptyPINNotSent: an empty PIN (a PIN file's empty first line, an
// empty HSMEMU_USER_PIN) is a usage error found before the daemon is
// asked, not a wrong PIN counted: three runs of a script whose variable
// was empty would have locked the token.
func TestEmptyPINNotSent(t *testing.T) {
	d := startDaemon(t)
	d.must("token", "create", "--token", "t", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin")
	d.write("empty.pin", "\n")
	withStdin(t, os.DevNull, func() {
		for range 4 {
			code, _, stderr := d.run("key", "list", "--token", "t", "--user-pin-file", "@empty.pin")
			if code != exitUsage || !strings.Contains(stderr, "the user PIN is empty") {
				t.Errorf("key list --user-pin-file empty.pin: exit %d, stderr %q; want exit 2, the PIN empty", code, stderr)
			}
			code, _, stderr = d.run("token", "delete", "--token", "t", "--so-pin-file", "@empty.pin")
			if code != exitUsage || !strings.Contains(stderr, "the SO PIN is empty") {
				t.Errorf("token delete --so-pin-file empty.pin: exit %d, stderr %q; want exit 2, the PIN empty", code, stderr)
			}
		}
		t.Setenv("HSMEMU_USER_PIN", "")
		for range 4 {
			code, _, stderr := d.run("key", "list", "--token", "t")
			if code != exitUsage || !strings.Contains(stderr, "no user PIN") {
				t.Errorf("HSMEMU_USER_PIN= key list: exit %d, stderr %q; want exit 2, no user PIN", code, stderr)
			}
		}
	})
	var tok struct {
		SOFailures   int `json:"so_failures"`
		UserFailures int `json:"user_failures"`
	}
	if err := json.Unmarshal([]byte(d.must("token", "show", "--token", "t", "--json")), &tok); err != nil || tok.SOFailures != 0 || tok.UserFailures != 0 {
		t.Errorf("after empty PINs: %+v (%v); want no failure counted", tok, err)
	}
	d.must("key", "list", "--token", "t", "--user-pin-file", "@user.pin")
}

// TestCompletionEmptyPIN: completing a key label with a --user-pin-file
// whose first line is empty sends no PIN: a Tab never counts a wrong one.
func TestCompletionEmptyPIN(t *testing.T) {
	d := startDaemon(t)
	d.must("token", "create", "--token", "t", "--so-pin-file", "@so.pin", "--user-pin-file", "@user.pin")
	d.write("empty.pin", "\n")
	t.Setenv("HSMEMU_USER_PIN", "")
	for range 4 {
		d.run("key", "show", "--token", "t", "--user-pin-file", "@empty.pin", "--key", "--generate-bash-completion")
	}
	var tok struct {
		UserFailures int `json:"user_failures"`
	}
	if err := json.Unmarshal([]byte(d.must("token", "show", "--token", "t", "--json")), &tok); err != nil || tok.UserFailures != 0 {
		t.Errorf("after completions with an empty PIN file: %+v (%v); want no failure counted", tok, err)
	}
}
