package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

// The handler's own rules, with no engine and no keystore: the table, the
// arguments' decoding and wiping, and a panic answered as internal. The
// calls themselves are tested against a live daemon (daemon/admin_*_test.go).

// TestOpsTable: every call adminapi names has a handler, and no handler
// answers to a name adminapi does not have.
func TestOpsTable(t *testing.T) {
	t.Parallel()
	_, here, _, _ := runtime.Caller(0)
	// Every file of adminapi: calls may be named beside their types.
	pkgs, err := parser.ParseDir(token.NewFileSet(), filepath.Join(filepath.Dir(here), "..", "adminapi"), func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, f := range pkgs["adminapi"].Files {
		ast.Inspect(f, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			for i, id := range vs.Names {
				if strings.HasPrefix(id.Name, "Op") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok {
						v, _ := strconv.Unquote(lit.Value)
						named[v] = true
					}
				}
			}
			return true
		})
	}
	if len(named) < 30 {
		t.Fatalf("found only %d calls in adminapi", len(named))
	}
	for op := range named {
		if ops[op] == nil {
			t.Errorf("adminapi names %q, which has no handler", op)
		}
	}
	for op := range ops {
		if !named[op] {
			t.Errorf("a handler for %q, which adminapi does not name", op)
		}
	}
}

func request(t *testing.T, op string, args any) adminapi.Request {
	t.Helper()
	req := adminapi.Request{Op: op}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			t.Fatal(err)
		}
		req.Args = b
	}
	return req
}

func codeOf(err error) string {
	var ae *adminapi.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// TestOpDecodes: arguments are required where a call takes some, unknown
// fields are refused, and a call that takes none ignores what comes.
func TestOpDecodes(t *testing.T) {
	t.Parallel()
	label := op(func(_ *call, _ context.Context, args adminapi.TokenRef) (string, error) { return args.Label, nil })
	ctx := context.Background()
	if got, err := label(ctx, &call{}, request(t, "x", map[string]string{"label": "vault"})); err != nil || got != "vault" {
		t.Errorf("decoded %v, %v", got, err)
	}
	for _, c := range []struct {
		name string
		req  adminapi.Request
	}{
		{name: "no arguments", req: adminapi.Request{Op: "x"}},
		{name: "unknown field", req: request(t, "x", map[string]string{"label": "vault", "lable": "typo"})},
		{name: "not JSON", req: adminapi.Request{Op: "x", Args: []byte("{")}},
	} {
		if _, err := label(ctx, &call{}, c.req); codeOf(err) != adminapi.CodeBadRequest {
			t.Errorf("%s: %v, want %s", c.name, err, adminapi.CodeBadRequest)
		}
	}
	ran := false
	none := done(func(_ *call, _ context.Context, _ noArgs) error { ran = true; return nil })
	if got, err := none(ctx, &call{}, request(t, "x", map[string]string{"anything": "at all"})); err != nil || got != nil || !ran {
		t.Errorf("a call without arguments: %v, %v, ran %v", got, err, ran)
	}
}

// TestOpWipesArguments: once a call returns, the PINs and key material
// it was given are zeros, whether it succeeded or failed.
func TestOpWipesArguments(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		var seen adminapi.KeyImport
		f := op(func(_ *call, _ context.Context, args adminapi.KeyImport) (int, error) {
			seen = args
			if fail {
				return 0, errors.New("refused")
			}
			return 1, nil
		})
		req := request(t, adminapi.OpKeyImport, adminapi.KeyImport{Token: "t", UserPIN: []byte("user-pin-1234"), Material: []byte("-----BEGIN PRIVATE KEY-----")})
		f(context.Background(), &call{}, req)
		if len(seen.UserPIN) == 0 || len(seen.Material) == 0 {
			t.Fatal("the call did not get its arguments")
		}
		if !bytes.Equal(seen.UserPIN, make([]byte, len(seen.UserPIN))) || !bytes.Equal(seen.Material, make([]byte, len(seen.Material))) {
			t.Errorf("after the call (failed %v): PIN %q, material %q", fail, seen.UserPIN, seen.Material)
		}
	}
}

func TestWipeReachesEveryByteSlice(t *testing.T) {
	t.Parallel()
	args := adminapi.RotateMasterBegin{Custodians: []adminapi.CustodianKey{{Name: "a", PEM: []byte("pem-a")}, {Name: "b", PEM: []byte("pem-b")}}}
	rot := adminapi.RotateToken{Label: "t", SOPIN: []byte("so-pin"), UserPIN: []byte("user-pin")}
	wipe(&args)
	wipe(&rot)
	for _, b := range [][]byte{args.Custodians[0].PEM, args.Custodians[1].PEM, rot.SOPIN, rot.UserPIN} {
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Errorf("not wiped: %q", b)
		}
	}
	if rot.Label != "t" {
		t.Error("a string was touched")
	}
}

// TestCallAnswersPanicsAndUnknownCalls: an unknown call is a bad request;
// a call that panics (here, status with no keystore behind it) is an
// internal error, and the handler goes on.
func TestCallAnswersPanicsAndUnknownCalls(t *testing.T) {
	t.Parallel()
	h := New(nil, nil, nil, Config{})
	who := keystore.AuditActor{Role: "admin"}
	if _, aerr := h.Call(context.Background(), who, adminapi.Request{Op: "no.such.call"}, nil); aerr == nil || aerr.Code != adminapi.CodeBadRequest {
		t.Errorf("unknown call: %v", aerr)
	}
	for range 2 {
		if _, aerr := h.Call(context.Background(), who, adminapi.Request{Op: adminapi.OpStatus}, nil); aerr == nil || aerr.Code != adminapi.CodeInternal {
			t.Errorf("a panicking call: %v", aerr)
		}
	}
}
