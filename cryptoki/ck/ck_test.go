package ck

import (
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"hsmemu/internal/testenv"
)

// pkcs11H is the PKCS#11 header of p11-kit's development package, which the
// module builds against.
const pkcs11H = "/usr/include/p11-kit-1/p11-kit/pkcs11.h"

// TestConstantsMatchHeader checks every constant of the package that the
// header also defines (with a plain number, or CKF_ARRAY_ATTRIBUTE |
// number) against the header's value. Names the header lacks (3.0
// additions) pass.
func TestConstantsMatchHeader(t *testing.T) {
	t.Parallel()
	h, err := os.ReadFile(pkcs11H)
	if err != nil {
		testenv.Missing(t, "%v (install libp11-kit-dev)", err)
	}
	header := map[string]uint64{}
	re := regexp.MustCompile(`(?m)^#define\s+(CK[A-Z]?_\w+)\s+\((CKF_ARRAY_ATTRIBUTE \| )?(0x[0-9a-fA-F]+|[0-9]+)UL\)`)
	for _, m := range re.FindAllStringSubmatch(string(h), -1) {
		v, err := strconv.ParseUint(m[3], 0, 64)
		if err != nil {
			t.Fatal(err)
		}
		if m[2] != "" {
			v |= CKF_ARRAY_ATTRIBUTE
		}
		header[m[1]] = v
	}
	if len(header) < 300 {
		t.Fatalf("parsed only %d constants from %s", len(header), pkcs11H)
	}

	// Evaluate the package's constants with go/types: the files without
	// imports (error.go has the error type, which needs the standard
	// library, and no constant the header has).
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, f := range pkgs["ck"].Files {
		if len(f.Imports) == 0 {
			files = append(files, f)
		}
	}
	pkg, err := new(types.Config).Check("ck", fset, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok || !strings.HasPrefix(name, "CK") {
			continue
		}
		want, ok := header[name]
		if !ok {
			continue
		}
		got, exact := constant.Uint64Val(c.Val())
		if !exact || got != want {
			t.Errorf("%s = %#x, header says %#x", name, got, want)
		}
		checked++
	}
	if checked < 100 {
		t.Fatalf("checked only %d constants", checked)
	}
}
