package mech

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"hsmemu/internal/testenv"
)

// TestDependencies holds the package to its rule: the call table, the
// codec and the constants, the standard library and crypto libraries;
// nothing of the token engine, the keystore, the TPM or the daemon. Its
// tests, too, need none of them.
func TestDependencies(t *testing.T) {
	t.Parallel()
	goTool := testenv.Command(t, "go", "golang")
	allowed := map[string]bool{
		"hsmemu/daemon/mech":                    true,
		"hsmemu/daemon/mech/internal/rsaraw":    true,
		"hsmemu/daemon/mech/internal/ecverify":  true,
		"hsmemu/daemon/mech/internal/ecnonce":   true,
		"hsmemu/daemon/mech/internal/nistcurve": true,
		"hsmemu/daemon/mech/mechtest":           true, // tests only
		"hsmemu/internal/testenv":               true, // tests only
		"hsmemu/cryptoki/wire":                  true,
		"hsmemu/cryptoki/calls":                 true,
		"hsmemu/cryptoki/ck":                    true,
		"filippo.io/bigmod":                     true,
		"golang.org/x/sys/cpu":                  true,
	}
	// The crypto libraries, whole: x/crypto (ChaCha20 and its AEAD),
	// circl (Ed448, X448, the post-quantum signatures), filippo.io/mldsa
	// (HashML-DSA), decred's secp256k1.
	libraries := []string{
		"golang.org/x/crypto/",
		"github.com/cloudflare/circl/",
		"filippo.io/mldsa",
		"github.com/decred/dcrd/dcrec/secp256k1/v4",
	}
	for _, test := range []bool{false, true} {
		args := []string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}
		if test {
			args = append(args, "-test")
		}
		out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		for _, p := range strings.Fields(string(out)) {
			p, _, _ = strings.Cut(p, " ") // "pkg [pkg.test]"
			if p == "hsmemu/daemon/mech.test" || strings.HasPrefix(p, "[") {
				continue
			}
			if !allowed[p] && !slices.ContainsFunc(libraries, func(l string) bool { return strings.HasPrefix(p, l) }) {
				t.Errorf("hsmemu/daemon/mech depends on %s (tests: %v)", p, test)
			}
		}
	}
}
