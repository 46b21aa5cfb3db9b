// Package testenv holds the one rule for tests that need something from
// outside the Go toolchain (swtpm, a Debian tool, a file of test vectors):
// without it they skip on a developer's machine, and fail under CI=true,
// where a suite that skips its real parts would prove nothing.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing ends a test whose requirement is missing: a skip, or under
// CI=true a failure. The message says what is missing and how to get it.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatal(msg + " (CI=true: a suite that skips its real parts proves nothing)")
	}
	t.Skip(msg)
}

// Command returns the path of a program the test runs, or ends the test
// as Missing says; pkg names the Debian package that has it.
func Command(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s not found: install the Debian package %s", name, pkg)
	}
	return p
}
