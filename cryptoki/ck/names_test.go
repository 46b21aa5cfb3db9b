package ck

import (
	"go/ast"
	"go/constant"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"strings"
	"testing"
)

// TestNames: every mechanism, key type and class this package defines has
// its name in names.go, so logs, metrics and the audit table never show a
// bare number for one of them.
func TestNames(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, f := range pkgs["ck"].Files {
		files = append(files, f)
	}
	pkg, err := (&types.Config{Importer: importer.Default()}).Check("ck", fset, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string]map[uint64]string{"CKM_": mechNames, "CKK_": keyTypeNames, "CKO_": classNames}
	aliases := map[string]bool{"CKK_ECDSA": true} // CKK_EC's old name
	n := 0
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok || len(name) < 4 || tables[name[:4]] == nil || strings.HasSuffix(name, "_VENDOR_DEFINED") || aliases[name] {
			continue
		}
		v, exact := constant.Uint64Val(c.Val())
		if !exact {
			continue
		}
		n++
		if got := tables[name[:4]][v]; got != name {
			t.Errorf("%s (%#x) is named %q in names.go", name, v, got)
		}
	}
	if n < 150 {
		t.Fatalf("found only %d constants", n)
	}
	if MechanismName(CKM_ECDSA) != "CKM_ECDSA" || KeyTypeName(CKK_EC) != "CKK_EC" || ClassName(CKO_CERTIFICATE) != "CKO_CERTIFICATE" || MechanismName(0xdeadbeef) != "0xdeadbeef" {
		t.Error("lookups are wrong")
	}
}
