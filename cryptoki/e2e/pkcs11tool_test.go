package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"hsmemu/internal/testenv"
)

// OpenSC's pkcs11-tool and GnuTLS's p11tool, real clients, drive the
// module against a fresh daemon.

// toolTimeout bounds one run of a tool; pkcs11-tool waits up to 30 s for
// its --test-threads threads.
const toolTimeout = 60 * time.Second

// needTool returns the path of an installed tool, or skips (fails under
// CI) without it.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	return testenv.Command(t, name, pkg)
}

// toolRun runs a tool with env and returns its combined output and exit
// code; a tool that does not finish in time fails the test.
func toolRun(t *testing.T, env []string, tool string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no exit within %v\n%s", filepath.Base(tool), strings.Join(args, " "), toolTimeout, out.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee) && ee.Exited():
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("%s %s: %v\n%s", filepath.Base(tool), strings.Join(args, " "), err, out.String())
	return "", -1
}

// p11Slot finds the slot whose token has the label in `pkcs11-tool -L`
// output, and returns its id (what --slot takes; the number after "Slot"
// is its place in the list) and its block of lines.
func p11Slot(out, label string) (string, string, bool) {
	blocks := regexp.MustCompile(`(?m)^Slot `).Split(out, -1)
	for _, b := range blocks {
		if regexp.MustCompile(`(?m)^\s+token label\s+: ` + regexp.QuoteMeta(label) + `$`).MatchString(b) {
			m := regexp.MustCompile(`^\d+ \((0x[0-9a-f]+)\)`).FindStringSubmatch(b)
			if m == nil {
				continue
			}
			if id, err := strconv.ParseUint(m[1], 0, 64); err == nil {
				return strconv.FormatUint(id, 10), b, true
			}
		}
	}
	return "", "", false
}

func TestPkcs11Tool(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	// Real PIN hashing (the daemon's defaults; later flags win): a login
	// then takes long enough that --test-threads' threads end before the
	// main thread, which otherwise sleeps 30 s for them. Every login: the
	// PIN cache, which would make all but the first fast, is off.
	d := startDaemon(t, "--pin-kdf-time", "3", "--pin-kdf-memory", "65536", "--pin-cache-ttl", "0")
	env := d.env()
	const (
		label  = "p11tool-token"
		soPIN  = "so-pin-8765"
		pin    = "user-pin-1234"
		newPIN = "user-pin-5678"
	)
	// step runs pkcs11-tool with the module, wants the exit code, and
	// returns the output.
	step := func(what string, code int, args ...string) string {
		t.Helper()
		out, got := toolRun(t, env, tool, append([]string{"--module", a.module}, args...)...)
		if got != code {
			t.Fatalf("%s: pkcs11-tool %s: exit %d, want %d\n%s", what, strings.Join(args, " "), got, code, out)
		}
		return out
	}
	// has fails the step unless the output matches every pattern.
	has := func(what, out string, patterns ...string) {
		t.Helper()
		for _, p := range patterns {
			if !regexp.MustCompile(p).MatchString(out) {
				t.Fatalf("%s: output does not match %q:\n%s", what, p, out)
			}
		}
	}
	hasNot := func(what, out string, patterns ...string) {
		t.Helper()
		for _, p := range patterns {
			if regexp.MustCompile(p).MatchString(out) {
				t.Fatalf("%s: output matches %q:\n%s", what, p, out)
			}
		}
	}
	// pkcs11-tool numbers slots by their place in the list: the free slot
	// (id 0) is listed last.
	slot0 := `(?m)^Slot \d+ \(0x0\): hsmemu slot 0\n\s+token state:\s+uninitialized\n(\z|\n)`

	out := step("list slots", 0, "-L")
	has("list slots", out, slot0)
	if _, _, ok := p11Slot(out, label); ok {
		t.Fatalf("a token labelled %s before C_InitToken:\n%s", label, out)
	}

	out = step("init token", 0, "--init-token", "--slot", "0", "--label", label, "--so-pin", soPIN)
	has("init token", out, `Token successfully initialized`)

	out = step("list slots after init", 0, "-L")
	has("list slots after init", out, slot0)
	slot, block, ok := p11Slot(out, label)
	if !ok {
		t.Fatalf("no slot with the token labelled %s:\n%s", label, out)
	}
	has("new slot", block, `(?m)^\s+token flags\s+:.*\btoken initialized\b`, `(?m)^\s+token manufacturer\s+: hsmemu$`)
	hasNot("new slot", block, `PIN initialized`)
	if n, err := strconv.Atoi(slot); err != nil || n == 0 {
		t.Fatalf("the token is in slot %q", slot)
	}

	out = step("init PIN", 0, "--init-pin", "--slot", slot, "--so-pin", soPIN, "--pin", pin)
	has("init PIN", out, `User PIN successfully initialized`)
	out = step("list slots after init PIN", 0, "-L")
	_, block, _ = p11Slot(out, label)
	has("slot after init PIN", block, `(?m)^\s+token flags\s+:.*\bPIN initialized\b`)

	user := []string{"--slot", slot, "--login", "--pin", pin}
	out = step("list objects of the new token", 0, append(user, "--list-objects")...)
	if strings.TrimSpace(out) != "" {
		t.Fatalf("a new token lists objects:\n%s", out)
	}

	dir := t.TempDir()
	in, got := filepath.Join(dir, "in.bin"), filepath.Join(dir, "out.bin")
	data := []byte("pkcs11-tool wrote this private data object\x00\x01\x02\xff")
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out = step("write object", 0, append(user, "--write-object", in, "--type", "data", "--label", "D", "--private")...)
	has("write object", out, `Created Data Object`, `(?m)^\s+label:\s+'D'$`, `(?m)^\s+flags:.*\bprivate\b`)

	step("read object", 0, append(user, "--read-object", "--type", "data", "--label", "D", "--output-file", got)...)
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read object: %q (%v), want %q", b, err, data)
	}

	dataD := `(?m)^Data object \d+\n\s+label:\s+'D'$`
	out = step("list objects after login", 0, append(user, "--list-objects")...)
	has("list objects after login", out, dataD, `(?m)^\s+flags:.*\bprivate\b`)
	// Without --slot, pkcs11-tool takes the first slot with a token: the
	// initialised one, the free slot being listed last.
	out = step("list objects, no slot named", 0, "--login", "--pin", pin, "--list-objects")
	has("list objects, no slot named", out, dataD)
	out = step("list objects without login", 0, "--slot", slot, "--list-objects")
	hasNot("list objects without login", out, `'D'`)
	out = step("read object without login", 1, "--slot", slot, "--read-object", "--type", "data", "--label", "D",
		"--output-file", got)
	has("read object without login", out, `object not found`)

	step("delete object", 0, append(user, "--delete-object", "--type", "data", "--label", "D")...)
	out = step("list objects after delete", 0, append(user, "--list-objects")...)
	hasNot("list objects after delete", out, `'D'`, `Data object`)

	out = step("change PIN", 0, "--slot", slot, "--change-pin", "--login", "--pin", pin, "--new-pin", newPIN)
	has("change PIN", out, `PIN successfully changed`)
	out = step("login with the old PIN", 1, append(user, "--list-objects")...)
	has("login with the old PIN", out, `C_Login failed: rv = CKR_PIN_INCORRECT`)
	step("login with the new PIN", 0, "--slot", slot, "--login", "--pin", newPIN, "--list-objects")

	out = step("test fork", 0, "--test-fork")
	has("test fork", out, `Calling C_Initialize in forked child process`)

	// --test-threads: each argument starts a thread running its 2-letter
	// commands. The main thread's C_Initialize races the threads', so
	// CKR_CRYPTOKI_ALREADY_INITIALIZED is correct from either; every other
	// call must succeed.
	// T0 needs an SL before it. The main thread lists the slots, then
	// logs in and lists the objects, which gives the threads time to end.
	mainArgs := []string{"-L", "--slot", slot, "--login", "--pin", newPIN, "--list-objects"}
	for _, threads := range [][]string{
		{"--test-threads", "IN"},
		{"--test-threads", "ILGISLT0"},
		{"--test-threads", "ILGISLT0", "--test-threads", "INSLGIT0", "--test-threads", "ILSLT0GI",
			"--test-threads", "INGISLT0"},
	} {
		what := strings.Join(threads, " ")
		out := step(what, 0, append(threads, mainArgs...)...)
		checkThreads(t, what, out, strings.Count(what, "--test-threads"))
		_, block, ok := p11Slot(out, label)
		if !ok {
			t.Fatalf("%s: no slot labelled %s:\n%s", what, label, out)
		}
		has(what, block, `PIN initialized`)
	}

	// With no daemon the module still loads and shows slot 0, empty.
	var down []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HSMEMU_SOCKET=") {
			down = append(down, e)
		}
	}
	down = append(down, "HSMEMU_SOCKET="+filepath.Join(dir, "nonexistent", "hsmemu.sock"))
	out, code := toolRun(t, down, tool, "--module", a.module, "-L")
	if code != 0 {
		t.Fatalf("pkcs11-tool -L with no daemon: exit %d\n%s", code, out)
	}
	has("no daemon", out, `(?m)^Slot 0 \(0x0\): hsmemu \(daemon not running\)\n\s+\(empty\)$`)
	hasNot("no daemon", out, `(?m)^Slot [1-9]`, label)

	// GnuTLS's p11tool lists the token too.
	t.Run("p11tool", func(t *testing.T) {
		p11tool := needTool(t, "p11tool", "gnutls-bin")
		out, code := toolRun(t, env, p11tool, "--provider", a.module, "--list-tokens")
		if code != 0 {
			t.Fatalf("p11tool --list-tokens: exit %d\n%s", code, out)
		}
		for _, p := range []string{`(?m)^\s+Label: ` + label + `$`, `;token=` + label + `\b`,
			`(?m)^\s+Manufacturer: hsmemu$`, `(?m)^\s+Flags: .*Requires login`} {
			if !regexp.MustCompile(p).MatchString(out) {
				t.Errorf("p11tool --list-tokens: output does not match %q:\n%s", p, out)
			}
		}
	})
}

var (
	threadEnd    = regexp.MustCompile(`(?m)^test_threads thread:(\d+) state:(-?\d+), rv:(\w+)$`)
	threadCall   = regexp.MustCompile(`(?m)^Test thread (\d+) (C_\w+).* returned (\w+)$`)
	threadMainRV = regexp.MustCompile(`(?m)^Main C_Initialize\(NULL\) rv:(\w+)$`)
)

// checkThreads reads pkcs11-tool's --test-threads report: n threads ended,
// and every call returned CKR_OK but a C_Initialize, which may also find
// the library initialised by another thread.
func checkThreads(t *testing.T, what, out string, n int) {
	t.Helper()
	okInit := func(rv string) bool { return rv == "CKR_OK" || rv == "CKR_CRYPTOKI_ALREADY_INITIALIZED" }
	// A thread still running at cleanup is reported, waited for (30 s),
	// and reported again: its last report counts.
	last := map[string]string{}
	for _, e := range threadEnd.FindAllStringSubmatch(out, -1) {
		last[e[1]] = e[3]
	}
	if len(last) != n || !strings.Contains(out, "test_threads cleanup finished") {
		t.Fatalf("%s: %d threads reported, want %d:\n%s", what, len(last), n, out)
	}
	for id, rv := range last {
		if !okInit(rv) {
			t.Errorf("%s: thread %s ended with %s", what, id, rv)
		}
	}
	if strings.Contains(out, "waiting for 30 seconds") {
		t.Logf("%s: pkcs11-tool's main thread ended before its threads and waited 30 s for them", what)
	}
	calls := threadCall.FindAllStringSubmatch(out, -1)
	if len(calls) < n {
		t.Errorf("%s: %d calls reported by %d threads", what, len(calls), n)
	}
	for _, c := range calls {
		if c[3] != "CKR_OK" && !(c[2] == "C_Initialize" && okInit(c[3])) {
			t.Errorf("%s: thread %s: %s returned %s", what, c[1], c[2], c[3])
		}
	}
	for _, m := range threadMainRV.FindAllStringSubmatch(out, -1) {
		if !okInit(m[1]) {
			t.Errorf("%s: main C_Initialize returned %s", what, m[1])
		}
	}
	if t.Failed() {
		t.Logf("%s output:\n%s", what, out)
	}
}
