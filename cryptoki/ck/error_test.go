package ck

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strings"
	"testing"
)

// TestErrorNames: every return value ck.go defines has its name, so a log
// line never shows a bare number for one of them.
func TestErrorNames(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "ck.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ast.Inspect(f, func(node ast.Node) bool {
		id, ok := node.(*ast.Ident)
		if !ok || id.Obj == nil || id.Obj.Kind != ast.Con || !strings.HasPrefix(id.Name, "CKR_") {
			return true
		}
		vs := id.Obj.Decl.(*ast.ValueSpec)
		if vs.Names[0] != id {
			return true // a use, not the declaration
		}
		n++
		found := false
		for v, name := range rvNames {
			if name == id.Name {
				found = true
				if Error(v).Error() != id.Name {
					t.Errorf("Error(%#x) = %q, want %q", v, Error(v).Error(), id.Name)
				}
			}
		}
		if !found {
			t.Errorf("%s has no name in rvNames", id.Name)
		}
		return true
	})
	if n < 90 {
		t.Fatalf("found only %d CKR_ constants in ck.go", n)
	}
	if got := Error(0x7fff0001).Error(); got != "CK_RV 0x7fff0001" {
		t.Errorf("an unknown CK_RV reads %q", got)
	}
}

func TestErrorMatching(t *testing.T) {
	t.Parallel()
	if Err(CKR_OK) != nil {
		t.Fatal("Err(CKR_OK) is not nil")
	}
	if rv, ok := RVOf(nil); !ok || rv != CKR_OK {
		t.Fatalf("RVOf(nil) = %#x, %v", rv, ok)
	}
	plain := Err(CKR_PIN_INCORRECT)
	why := Errorf(CKR_TEMPLATE_INCONSISTENT, "an HSM-protected key needs a %s token", "premium")
	wrapped := fmt.Errorf("login: %w", plain)
	for _, c := range []struct {
		name   string
		err    error
		rv     uint64
		reason string
	}{
		{name: "plain", err: plain, rv: CKR_PIN_INCORRECT},
		{name: "with a reason", err: why, rv: CKR_TEMPLATE_INCONSISTENT, reason: "an HSM-protected key needs a premium token"},
		{name: "wrapped", err: wrapped, rv: CKR_PIN_INCORRECT},
		{name: "wrapped reason", err: fmt.Errorf("generate: %w", why), rv: CKR_TEMPLATE_INCONSISTENT, reason: "an HSM-protected key needs a premium token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rv, ok := RVOf(c.err)
			if !ok || rv != c.rv {
				t.Errorf("RVOf = %#x, %v; want %#x", rv, ok, c.rv)
			}
			if !errors.Is(c.err, Error(c.rv)) {
				t.Errorf("errors.Is(%v, %v) is false", c.err, Error(c.rv))
			}
			if errors.Is(c.err, Error(CKR_GENERAL_ERROR)) {
				t.Errorf("errors.Is matches another CK_RV")
			}
			r, ok := Reason(c.err)
			if r != c.reason || ok != (c.reason != "") {
				t.Errorf("Reason = %q, %v; want %q", r, ok, c.reason)
			}
			if c.reason != "" && !strings.Contains(c.err.Error(), c.reason) {
				t.Errorf("the text %q drops the reason", c.err.Error())
			}
		})
	}
	if _, ok := RVOf(errors.New("disk on fire")); ok {
		t.Error("an error with no CK_RV has one")
	}
}
