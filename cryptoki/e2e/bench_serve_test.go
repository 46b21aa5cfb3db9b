package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"slices"
	"testing"

	"hsmemu/bench"
	"hsmemu/internal/pgtest"
)

// TestBenchServe runs `hsmemu bench --serve sqlite --serve postgres://...`
// for a moment: the harness starts a daemon on each engine (each with a
// managed swtpm of its own), measures both through the module in one run
// with each labelled by its engine, and stops them and removes their
// directories. It asserts no speed.
func TestBenchServe(t *testing.T) {
	a := need(t)
	srv := pgtest.StartT(t)
	dsn, err := srv.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cmd := exec.Command(a.daemon, "bench", "--module", a.module, "--serve", "sqlite", "--serve", dsn, "--setup",
		"--op", "wrap", "--op", "generate-aes-256", "--duration", "40ms", "--warmup", "5ms", "--runs", "1", "--json")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HSMEMU_SOCKET=", "HSMEMU_SERVER=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hsmemu bench --serve: %v\n%s", err, stderr.String())
	}
	rep, err := bench.ReadJSON(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, out)
	}
	if want := []string{"hsmemu-pkcs11.so (sqlite)", "hsmemu-pkcs11.so (postgres)"}; !slices.Equal(rep.Modules, want) {
		t.Fatalf("modules %q, want %q", rep.Modules, want)
	}
	if len(rep.Results) != 4 {
		t.Fatalf("%d results, want 4", len(rep.Results))
	}
	for _, r := range rep.Results {
		if r.Status != "ok" || r.OpsPerS <= 0 {
			t.Errorf("%s on %s: %s %s", r.Op, r.Module, r.Status, r.Reason)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the daemons' directories were left behind: %v", left)
	}
}
