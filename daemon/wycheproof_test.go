package daemon

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// Wycheproof's vectors come from the test-only requirement
// github.com/c2sp/wycheproof (its go.mod declares the lower-case path;
// wycheproof_tools.go keeps it in go.mod). `go mod download` fetches it on
// first use and says where it is.

var wycheproofDir struct {
	once sync.Once
	dir  string
	err  error
}

// wycheproofFile returns a file of the module's testvectors_v1. Without the
// module the test skips, except under CI=true.
func wycheproofFile(t testing.TB, name string) []byte {
	t.Helper()
	wycheproofDir.once.Do(func() {
		// go test puts its own go first on PATH.
		out, err := exec.Command("go", "mod", "download", "-json", "github.com/c2sp/wycheproof").Output()
		if err != nil {
			wycheproofDir.err = err
			return
		}
		var info struct{ Dir string }
		wycheproofDir.err = json.Unmarshal(out, &info)
		wycheproofDir.dir = info.Dir
	})
	if wycheproofDir.err != nil || wycheproofDir.dir == "" {
		msg := "the Wycheproof module is not available (go mod download github.com/c2sp/wycheproof)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v", msg, wycheproofDir.err)
		}
		t.Skipf("%s: %v", msg, wycheproofDir.err)
	}
	b, err := os.ReadFile(filepath.Join(wycheproofDir.dir, "testvectors_v1", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
