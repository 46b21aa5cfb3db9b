package wire

import (
	"os/exec"
	"strings"
	"testing"

	"hsmemu/internal/testenv"
)

// TestDependencies holds the package to its rule: the standard library and
// the call table and the constants, nothing of the daemon, the keystore, or any module.
func TestDependencies(t *testing.T) {
	t.Parallel()
	goTool := testenv.Command(t, "go", "golang")
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := map[string]bool{"hsmemu/cryptoki/wire": true, "hsmemu/cryptoki/calls": true, "hsmemu/cryptoki/ck": true}
	for _, p := range strings.Fields(string(out)) {
		if !allowed[p] {
			t.Errorf("hsmemu/cryptoki/wire depends on %s", p)
		}
	}
}
