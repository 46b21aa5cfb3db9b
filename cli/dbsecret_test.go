package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDBConnectErrorsNoPassword: a --db that fails to parse, or points
// at a port where nothing listens, gives an error and log lines (the
// daemon's own, at debug level, text and JSON) that hold no password;
// a connection string whose password only pgx (not net/url) finds is
// refused as any other, and one pgx cannot parse is an error, not a
// crash. serve, backup and init read --db each their way.
func TestDBConnectErrorsNoPassword(t *testing.T) {
	for _, tc := range []struct {
		db, want string
		usage    bool // a --db written wrong: exit 2 from every command
	}{
		// pgx's parse error without a wrapped error: it crashed hsmemu.
		{"postgres://hsm@127.0.0.1:bad/keys?sslpassword=s3cretpw", "invalid port", false},
		// Passwords net/url does not see.
		{"postgres://hsm:s3cr^etpw@127.0.0.1:1/keys", "carries a password", true},
		{"postgres://hsm:s3cretpw@127.0.0.1:1,127.0.0.1/keys", "carries a password", true},
		// A quote never closed: pgx's own redaction leaves "pw" in sight.
		{"host=127.0.0.1 port=1 dbname=keys sslpassword='s3cret pw", "unterminated quoted string", false},
		// Nothing listens: pgx's connect error.
		{"postgres://hsm@127.0.0.1:1/keys?sslmode=disable&sslpassword=s3cretpw", "connection refused", false},
		// Neither engine.
		{"mysql://hsm:s3cretpw@127.0.0.1/keys", "neither sqlite:PATH", true},
	} {
		for _, format := range []string{"text", "json"} {
			dir := t.TempDir()
			for _, args := range [][]string{
				{"serve", "--state-dir", filepath.Join(dir, "st"), "--socket", filepath.Join(dir, "s"), "--tpm", "managed", "--lock-memory", "off", "--db", tc.db},
				{"backup", "--db", tc.db, filepath.Join(dir, "b.dump")},
				{"init", "--state-dir", filepath.Join(dir, "st2"), "--tpm", "managed", "--db", tc.db},
			} {
				args = append([]string{"--log-level", "debug", "--log-format", format}, args...)
				code, stdout, stderr := runSubprocess(t, args...)
				lines := strings.Split(strings.TrimSpace(stderr), "\n")
				last := lines[len(lines)-1]
				if code == 0 || strings.Contains(stdout+stderr, "s3c") || strings.Contains(stderr, "panic") ||
					!strings.HasPrefix(last, "hsmemu "+args[4]+": ") || !strings.Contains(last, tc.want) {
					t.Errorf("hsmemu %s: exit %d, stdout %q, stderr:\n%s\nwant a failure naming %q, and no password in any line", strings.Join(args, " "), code, stdout, stderr, tc.want)
				}
				if tc.usage && code != 2 {
					t.Errorf("hsmemu %s: exit %d, want 2 (usage: the --db is written wrong)", strings.Join(args, " "), code)
				}
			}
		}
	}
}

// runSubprocess runs hsmemu in a process of its own (a crash is its, not
// the test's), stopping a serve that serves after a minute.
func runSubprocess(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1", "PGPASSFILE=/nonexistent", "PGPASSWORD=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		// Not a timed assertion: a serve still running took the --db.
		cmd.Process.Signal(syscall.SIGINT)
		<-done
		t.Errorf("hsmemu %s served", strings.Join(args, " "))
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}
