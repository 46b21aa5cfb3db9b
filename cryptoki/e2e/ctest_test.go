package e2e

import (
	"bufio"
	"bytes"
	"io"
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

// The C end-to-end program, cryptoki/e2e/c/e2e.c, built by `make build`
// into build/e2e and, with the sanitizers, build/e2e-asan. It loads the
// module, talks to the daemon this test starts, and asks this test to
// restart, kill and start the daemon through its stdin and stdout.

// ctestTimeout bounds one run of the program; its own alarm ends a section
// that hangs well before.
const ctestTimeout = 3 * time.Minute

// ctestSections are the sections every run must report, in order.
var ctestSections = []string{"setup", "fork", "threads", "badargs", "restart", "tlsfiles"}

var (
	ctestSummary = regexp.MustCompile(`(?m)^e2e: (\d+) passed, (\d+) failed$`)
	ctestSection = regexp.MustCompile(`(?m)^SECTION (\w+): (\d+) passed, (\d+) failed in ([0-9.]+)s$`)
	ctestThreads = regexp.MustCompile(`(?m)^threads: .*$`)
)

// ctestNeedBuilt returns the path of a built file under the repository root, or
// skips (fails under CI) when it is missing.
func ctestNeedBuilt(t *testing.T, rel string) string {
	t.Helper()
	a := need(t)
	p := filepath.Join(a.root, rel)
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "%s not built (run make build): %v", rel, err)
	}
	return p
}

// TestCProgram runs the C program against a fresh daemon with the module,
// then the sanitized program with the ASan/UBSan module.
func TestCProgram(t *testing.T) {
	a := need(t)
	runs := []struct {
		name, prog, module string
		env                []string
	}{
		{name: "normal", prog: "build/e2e", module: a.module, env: []string{"HSMEMU_TRANSPORT=socket"}},
		{name: "asan", prog: "build/e2e-asan", module: a.asanModule, env: []string{
			"HSMEMU_TRANSPORT=socket",
			"ASAN_OPTIONS=detect_leaks=1:abort_on_error=1",
			"UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1",
		}},
		// The same through the shared-memory rings (docs/protocol.md,
		// "Rings"): fork, threads, restart.
		{name: "ring", prog: "build/e2e", module: a.module, env: []string{"HSMEMU_TRANSPORT=ring"}},
		{name: "ring-asan", prog: "build/e2e-asan", module: a.asanModule, env: []string{
			"HSMEMU_TRANSPORT=ring",
			"ASAN_OPTIONS=detect_leaks=1:abort_on_error=1",
			"UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1",
		}},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			prog := ctestNeedBuilt(t, r.prog)
			module := ctestNeedBuilt(t, strings.TrimPrefix(r.module, a.root+string(filepath.Separator)))
			stats := filepath.Join(t.TempDir(), "stats")
			runCProgram(t, prog, module, append(r.env, "HSMEMU_MODULE_STATS="+stats), ctestSections, 250)
			checkTransport(t, stats, strings.HasPrefix(r.name, "ring"))
		})
	}
}

// moduleStats is the line stats.c writes at C_Finalize.
var moduleStats = regexp.MustCompile(`(?m)^hsmemu-pkcs11: pid \d+: (\d+) calls, (\d+) round trips, (\d+) through rings$`)

// checkTransport reads the module's counts of every process that
// finalized: with rings, the round trips went through them; without,
// none did.
func checkTransport(t *testing.T, stats string, ring bool) {
	t.Helper()
	b, err := os.ReadFile(stats)
	if err != nil {
		t.Fatal(err)
	}
	var trips, rings int
	for _, m := range moduleStats.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.Atoi(m[2])
		k, _ := strconv.Atoi(m[3])
		trips += n
		rings += k
	}
	t.Logf("%d round trips, %d through rings", trips, rings)
	switch {
	case trips == 0:
		t.Fatalf("no round trips counted:\n%s", b)
	case ring && rings < trips*9/10:
		// A few go through the socket: calls in the restart section while
		// the daemon is down fail before any ring exists, but count.
		t.Errorf("%d of %d round trips through rings, want nearly all", rings, trips)
	case !ring && rings != 0:
		t.Errorf("%d round trips through rings with the socket transport", rings)
	}
}

// TestCHeldResults runs cryptoki/e2e/c/held.c (build/e2e-held): results
// held by the module ahead of the follow-up call, their round trips
// counted in both calling conventions, a follow-up that brings other
// input than its length query, PKCS#11's operation state while they are
// held, threads, no lock held while a follow-up waits for a stopped
// daemon with the table of owed cancels full, fork() waiting for a
// thread inside the module's locks, and a C_WaitForSlotEvent that
// C_Finalize overtakes; normal and ASan/UBSan, socket and rings.
func TestCHeldResults(t *testing.T) {
	a := need(t)
	runs := []struct {
		name, prog, module string
		env                []string
	}{
		{name: "normal", prog: "build/e2e-held", module: a.module, env: []string{"HSMEMU_TRANSPORT=socket"}},
		{name: "asan", prog: "build/e2e-held-asan", module: a.asanModule, env: []string{
			"HSMEMU_TRANSPORT=socket",
			"ASAN_OPTIONS=detect_leaks=1:abort_on_error=1",
			"UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1",
		}},
		{name: "ring", prog: "build/e2e-held", module: a.module, env: []string{"HSMEMU_TRANSPORT=ring"}},
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			prog := ctestNeedBuilt(t, r.prog)
			module := ctestNeedBuilt(t, strings.TrimPrefix(r.module, a.root+string(filepath.Separator)))
			out := runCProgram(t, prog, module, append(r.env, "TMPDIR="+t.TempDir()),
				[]string{"setup", "trips", "input", "rules", "threads", "fulltable", "forklock", "finrace", "msgsetup", "msgtrips", "msgrules",
					"wraptrips", "wraprules"}, 220)
			for _, l := range regexp.MustCompile(`(?m)^trips: .*$`).FindAllString(out, -1) {
				t.Log(l)
			}
		})
	}
}

// runCProgram runs prog with module against a fresh daemon; it must run
// the sections given, in order, and pass at least minPassed checks. It
// returns the program's output.
func runCProgram(t *testing.T, prog, module string, env []string, sections []string, minPassed int) string {
	var d *daemonProc
	// Registered first, so it runs after the daemon's own cleanup has
	// stopped it and its log is no longer written.
	t.Cleanup(func() {
		if t.Failed() && d != nil && d.log != nil {
			t.Logf("daemon log (last start):\n%s", d.log)
		}
	})
	d = startDaemon(t)
	return runCProgramOn(t, d, prog, module, append(d.env(), env...), sections, minPassed)
}

// programDaemons are the daemons the C program's restart section asks the
// driver to restart, kill and start again: one daemon, or a cluster's.
type programDaemons interface {
	restart()
	kill()
	startAgain()
	lastLog() string
}

// runCProgramOn runs the program against d with the environment env, as
// runCProgram does.
func runCProgramOn(t *testing.T, d programDaemons, prog, module string, env []string, sections []string, minPassed int) string {
	t.Cleanup(func() {
		if l := d.lastLog(); t.Failed() && l != "" {
			t.Logf("daemon log:\n%s", l)
		}
	})
	cmd := exec.Command(prog, module)
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	timer := time.AfterFunc(ctestTimeout, func() { cmd.Process.Kill() })
	defer timer.Stop()

	// Read the program's output on the test's goroutine, which is the one
	// that may restart the daemon (the harness calls t.Fatal).
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		out.WriteString(line + "\n")
		switch line {
		case "RESTART":
			d.restart()
		case "KILL":
			d.kill()
		case "START":
			d.startAgain()
		default:
			continue
		}
		if _, err := io.WriteString(stdin, "OK\n"); err != nil {
			t.Errorf("answering %s: %v", line, err)
		}
	}
	err = cmd.Wait()
	waited = true
	elapsed := time.Since(start)
	output := out.String()
	if err != nil || t.Failed() {
		t.Errorf("%s %s: %v after %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(prog), filepath.Base(module),
			err, elapsed.Round(time.Millisecond), output, stderr.String())
		return output
	}
	for _, s := range []string{"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"} {
		if strings.Contains(stderr.String(), s) {
			t.Errorf("sanitizer report on stderr:\n%s", stderr.String())
		}
	}
	if strings.Contains(output, "FAIL") {
		t.Errorf("failures in the output:\n%s", output)
	}

	m := ctestSummary.FindStringSubmatch(output)
	if m == nil {
		t.Errorf("no summary line in the output:\n%s", output)
		return output
	}
	passed, _ := strconv.Atoi(m[1])
	failed, _ := strconv.Atoi(m[2])
	if failed != 0 || passed < minPassed {
		t.Errorf("%d passed, %d failed; want at least %d passed and none failed\n%s", passed, failed, minPassed, output)
	}
	var got []string
	for _, s := range ctestSection.FindAllStringSubmatch(output, -1) {
		got = append(got, s[1])
		if s[3] != "0" {
			t.Errorf("section %s: %s failed", s[1], s[3])
		}
		t.Logf("section %-8s %4s passed in %ss", s[1], s[2], s[4])
	}
	if strings.Join(got, " ") != strings.Join(sections, " ") {
		t.Errorf("sections run: %v, want %v\n%s", got, sections, output)
	}
	t.Logf("%s; %s; %d checks in %v", filepath.Base(prog), ctestThreads.FindString(output), passed,
		elapsed.Round(time.Millisecond))
	return output
}
