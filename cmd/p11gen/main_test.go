package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/internal/testenv"
)

func TestDeterministic(t *testing.T) {
	a, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		b, err := Generate()
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != len(b) {
			t.Fatalf("run %d: %d files, then %d", i, len(a), len(b))
		}
		for name := range a {
			if !bytes.Equal(a[name], b[name]) {
				t.Fatalf("run %d: %s differs", i, name)
			}
		}
	}
}

func TestEveryCall(t *testing.T) {
	files, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	stubs, lists, cases := string(files["stubs.c"]), string(files["lists.c"]), string(files["argcases.c"])
	for _, c := range calls.Table {
		if !strings.Contains(lists, "."+c.Name+" = ") {
			t.Errorf("%s is not in the function lists", c.Name)
		}
		if c.Mode != calls.Forwarded {
			if strings.Contains(stubs, "CK_RV "+c.Name+"(") {
				t.Errorf("%s is %v but has a stub", c.Name, c.Mode)
			}
			continue
		}
		if !strings.Contains(stubs, "CK_RV "+c.Name+"(") {
			t.Errorf("forwarded %s has no stub", c.Name)
		}
		if !strings.Contains(cases, "f->"+c.Name+"(") {
			t.Errorf("forwarded %s has no argument cases", c.Name)
		}
	}
}

// TestCompiles checks the output against the system's <p11-kit/pkcs11.h>:
// every stub's prototype must match the header's declaration, and every
// function list entry its member's type.
func TestCompiles(t *testing.T) {
	cc, err := exec.LookPath("gcc")
	if err == nil {
		err = exec.Command("pkg-config", "--exists", "p11-kit-1").Run()
	}
	if err != nil {
		testenv.Missing(t, "gcc and libp11-kit-dev are needed: %v", err)
	}
	cflags, err := exec.Command("pkg-config", "--cflags", "p11-kit-1").Output()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := run([]string{"-o", dir}); err != nil {
		t.Fatal(err)
	}
	module, _ := filepath.Abs(filepath.Join("..", "..", "cryptoki", "module"))
	args := append(strings.Fields(string(cflags)), "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
		"-I"+module, "-I"+filepath.Join(module, "test"), "-I"+dir)
	for _, f := range []string{"stubs.c", "codec.c", "lists.c", "argcases.c"} {
		out, err := exec.Command(cc, append(args, filepath.Join(dir, f))...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", f, err, out)
		}
	}
}

func TestRewritesOnlyChanges(t *testing.T) {
	dir := t.TempDir()
	if err := run([]string{"-o", dir}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "stubs.c")
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"-o", dir}); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !before.ModTime().Equal(after.ModTime()) || !os.SameFile(before, after) {
		t.Error("an unchanged file was rewritten")
	}
}
