package e2e

import (
	"bytes"
	"encoding/csv"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/bench"
	"hsmemu/internal/jsondoc"
	"hsmemu/internal/testenv"
)

// softhsm returns SoftHSMv2's module and an environment with a fresh
// token directory, or skips (fails under CI) without it.
func softhsm(t testing.TB) (string, []string) {
	t.Helper()
	for _, p := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(p); err == nil {
			dir := t.TempDir()
			tokens := filepath.Join(dir, "tokens")
			if err := os.Mkdir(tokens, 0o700); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "softhsm2.conf")
			text := "directories.tokendir = " + tokens + "\nobjectstore.backend = file\nlog.level = ERROR\n"
			if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			return p, []string{"SOFTHSM2_CONF=" + conf}
		}
	}
	testenv.Missing(t, "SoftHSMv2 (Debian softhsm2) is not installed")
	return "", nil
}

// TestBenchHarness runs `hsmemu bench` for a moment against hsmemu and
// SoftHSMv2 in one run, creating both tokens, and checks that the run
// completes, every operation is measured or reported unsupported (none
// failed), and the JSON, CSV and SVG outputs parse. It asserts no speed.
func TestBenchHarness(t *testing.T) {
	d := startDaemon(t)
	a := need(t)
	soft, softEnv := softhsm(t)
	env := append(d.env(), softEnv...)
	chart := filepath.Join(t.TempDir(), "chart.svg")
	report := filepath.Join(t.TempDir(), "report.html")
	args := []string{"bench", "--module", a.module, "--module", soft, "--setup",
		"--duration", "40ms", "--warmup", "5ms", "--runs", "2", "--find-among", "30", "--concurrency", "1,2"}

	run := func(extra ...string) []byte {
		t.Helper()
		cmd := exec.Command(a.daemon, append(args, extra...)...)
		cmd.Env = env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("hsmemu bench %s: %v\n%s", strings.Join(extra, " "), err, stderr.String())
		}
		return out
	}

	out := run("--json", "--chart", chart, "--html", report, "--convention", "two-call,one-call")
	rep, err := bench.ReadJSON(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out)
	}
	doc, err := jsondoc.Load(filepath.Join(a.root, "docs", "json.md"))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate("bench", out); err != nil {
		t.Errorf("%v\n%.2000s", err, out)
	}
	if page, err := os.ReadFile(report); err != nil || !bytes.Contains(page, []byte("libsofthsm2.so")) ||
		bytes.Count(page, []byte(`<g class="panel"`)) != len(bench.OpNames())+len(bench.OutputOps()) || !bytes.Contains(page, []byte("<h2>Set-up</h2>")) {
		t.Errorf("the HTML report: %v\n%.1000s", err, page)
	}
	if len(rep.Modules) != 2 || rep.Modules[0] != "hsmemu-pkcs11.so" || rep.Modules[1] != "libsofthsm2.so" {
		t.Fatalf("modules %v", rep.Modules)
	}
	if want := (len(bench.OpNames()) + len(bench.OutputOps())) * 2 * 2; len(rep.Results) != want {
		t.Fatalf("%d results, want %d (every op x module x concurrency, those with an output buffer in both conventions)", len(rep.Results), want)
	}
	convs := map[string]int{}
	for _, r := range rep.Results {
		convs[r.Convention]++
	}
	if n := len(bench.OutputOps()) * 2 * 2; convs["one-call"] != n || convs["two-call"] != n || rep.Keys != "token" {
		t.Errorf("conventions %v, keys %q: want %d of each, token objects", convs, rep.Keys, n)
	}
	for _, r := range rep.Results {
		switch r.Status {
		case "ok":
			if r.Runs != 2 || r.OpsPerS <= 0 || r.P50 <= 0 || r.P99 < r.P50 || r.OpsPerSMin > r.OpsPerS || r.OpsPerSMax < r.OpsPerS {
				t.Errorf("%s %s c=%d: implausible figures %+v", r.Op, r.Module, r.Concurrency, r)
			}
		case "unsupported":
			if r.Reason == "" {
				t.Errorf("%s %s c=%d unsupported without a reason", r.Op, r.Module, r.Concurrency)
			}
			// hsmemu has every op; login is per application.
			if r.Module == "hsmemu-pkcs11.so" && !(r.Op == "login" && r.Concurrency > 1) {
				t.Errorf("hsmemu: %s c=%d unsupported: %s", r.Op, r.Concurrency, r.Reason)
			}
		default:
			t.Errorf("%s %s c=%d: %s: %s", r.Op, r.Module, r.Concurrency, r.Status, r.Reason)
		}
		if r.Op == "wrap" && r.Status == "ok" && !strings.HasPrefix(r.Mechanism, "CKM_AES_KEY_WRAP") {
			t.Errorf("wrap on %s does not say its mechanism: %q", r.Module, r.Mechanism)
		}
	}
	if f := rep.Floor; f == nil || f.Status != "ok" || f.P50 <= 0 || f.Runs != 2 {
		t.Errorf("the bare round trip was not measured: %+v", rep.Floor)
	}
	var setups int
	for _, n := range rep.Setup {
		if strings.Contains(n.What, "created token") || strings.Contains(n.What, "populated 30 objects") {
			setups++
		}
	}
	if setups != 4 {
		t.Errorf("setup notes %+v: want both tokens created and both populated", rep.Setup)
	}
	svg, err := os.ReadFile(chart)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("chart is not XML: %v", err)
		}
	}

	// A second run finds both tokens and their objects: no setup again.
	out = run("--csv", "--op", "random-32", "--op", "find")
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("CSV output does not parse: %v\n%s", err, out)
	}
	if len(rows) != 1+2*2*2+2 || rows[0][0] != "op" {
		t.Fatalf("CSV has %d rows (header %v), want a header, 8 and the two floors", len(rows), rows[0])
	}
	if floors := rows[len(rows)-2:]; floors[0][0] != "socket-roundtrip" || floors[1][0] != "ring-roundtrip" || floors[1][4] != "ok" {
		t.Fatalf("the CSV's floors: %v", floors)
	}

	// And the table, for a person: session-object keys, both conventions.
	out = run("--op", "sign-ecdsa-p256", "--objects", "session", "--convention", "one-call,two-call")
	for _, want := range []string{"sign-ecdsa-p256/one-call", "sign-ecdsa-p256/two-call", "libsofthsm2.so", "keys: session objects"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Fatalf("table without %q:\n%s", want, out)
		}
	}
}

// TestBenchHotpathQuick runs `hsmemu bench hotpath --quick`: the six
// measurements come back, each with a time.
func TestBenchHotpathQuick(t *testing.T) {
	a := need(t)
	cmd := exec.Command(a.daemon, "bench", "hotpath", "--quick", "--count", "1", "--json")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hsmemu bench hotpath: %v\n%s", err, stderr.String())
	}
	if !bytes.Contains(out, []byte(`"socket-roundtrip"`)) || !bytes.Contains(out, []byte(`"open-warm"`)) {
		t.Fatalf("hotpath output:\n%s", out)
	}
}

// Unknown ops and missing tokens are clear errors, not crashes.
func TestBenchHarnessErrors(t *testing.T) {
	d := startDaemon(t)
	a := need(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{args: []string{"bench", "--module", a.module, "--op", "teleport"}, want: "unknown op"},
		{args: []string{"bench", "--module", a.module, "--token", "nosuch"}, want: "--setup"},
		{args: []string{"bench"}, want: "no module"},
		{args: []string{"bench", "--module", "/nonexistent.so"}, want: "nonexistent"},
		{args: []string{"bench", "--module", a.module, "--concurrency", "1,x"}, want: "--concurrency"},
		{args: []string{"bench", "--module", a.module, "--objects", "10000"}, want: "--find-among"},
		{args: []string{"bench", "--module", a.module, "--convention", "three-call"}, want: "convention"},
	} {
		cmd := exec.Command(a.daemon, c.args...)
		cmd.Env = d.env()
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: err %v, output %q; want a failure saying %q", c.args, err, out, c.want)
		}
	}
}
