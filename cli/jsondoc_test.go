package cli

import (
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"hsmemu/internal/jsondoc"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/urfave/cli/v2"
)

// The scripts check outputs against docs/json.md (internal/jsondoc).

const jsonDoc = "../docs/json.md"

var (
	schemasOnce sync.Once
	schemasDoc  *jsondoc.Doc
	schemasErr  error
	schemasUsed sync.Map // command name -> true once an output was checked
)

func loadSchemas() (*jsondoc.Doc, error) {
	schemasOnce.Do(func() { schemasDoc, schemasErr = jsondoc.Load(jsonDoc) })
	return schemasDoc, schemasErr
}

// jsonschema NAME checks the last command's stdout against the schema of
// command NAME; jsonschema error and jsonschema warnings check its stderr
// against theirs.
// audit export's output is checked line by line (JSON Lines).
func cmdJSONSchema(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: jsonschema COMMAND")
	}
	name := args[0]
	doc, err := loadSchemas()
	ts.Check(err)
	out := ts.ReadFile("stdout")
	if name == "error" || name == "warnings" {
		out = ts.ReadFile("stderr")
	}
	docs := []string{out}
	if name == "audit export" {
		docs = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	}
	for _, d := range docs {
		if err := doc.Validate(name, []byte(d)); err != nil {
			ts.Fatalf("%v\n%s", err, d)
		}
	}
	schemasUsed.Store(name, true)
}

// checkSchemasUsed fails t for each documented schema no script checked.
func checkSchemasUsed(t *testing.T) {
	doc, err := loadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	schemasUsed.Range(func(any, any) bool { n++; return true })
	if n == 0 || t.Failed() {
		return // the JSON script did not run (go test -run picked others), or stopped
	}
	for _, name := range slices.Sorted(maps.Keys(doc.Raw)) {
		if _, ok := schemasUsed.Load(name); !ok && !uncheckedSchemas[name] {
			t.Errorf("no script checks the output of %q against docs/json.md", name)
		}
	}
}

// uncheckedSchemas are documented but not run by the scripts: bench
// measures against modules; cryptoki/e2e's TestBenchHarness runs it and
// checks its JSON against docs/json.md. domain join and domain leave
// need a domain in PostgreSQL: testdata/postgres checks them.
var uncheckedSchemas = map[string]bool{"bench": true, "domain join": true, "domain leave": true}

// TestJSONDoc: every command that takes --json has its schema in
// docs/json.md, and every schema there names a command; each schema
// lists every property as required and no others, so that a field left
// out, or one added without its documentation, fails.
func TestJSONDoc(t *testing.T) {
	doc, err := loadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"error": true, "warnings": true}
	var walk func(prefix string, cs []*cli.Command)
	walk = func(prefix string, cs []*cli.Command) {
		for _, c := range cs {
			if hasFlag(c.Flags, "json") {
				want[prefix+c.Name] = true
			}
			walk(prefix+c.Name+" ", c.Subcommands)
		}
	}
	walk("", New().Commands)
	for name := range want {
		if !doc.Has(name) {
			t.Errorf("%s takes --json, but docs/json.md has no schema for it", name)
		}
	}
	for name, s := range doc.Raw {
		if !want[name] {
			t.Errorf("docs/json.md documents %q, which is no command that takes --json", name)
		}
		strict(t, name, s)
	}
}

var snakeRE = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// strict checks that each object schema in s requires all its properties,
// allows no others, and names them in snake_case.
func strict(t *testing.T, where string, s any) {
	switch s := s.(type) {
	case map[string]any:
		if props, ok := s["properties"].(map[string]any); ok {
			req, _ := s["required"].([]any)
			var names []string
			for _, r := range req {
				names = append(names, r.(string))
			}
			for p := range props {
				if !slices.Contains(names, p) {
					t.Errorf("%s: property %q is not required: every field is present, null when empty", where, p)
				}
				if !snakeRE.MatchString(p) {
					t.Errorf("%s: property %q is not snake_case", where, p)
				}
			}
			if s["additionalProperties"] != false {
				t.Errorf("%s: an object schema without additionalProperties: false", where)
			}
		}
		for k, v := range s {
			if k == "properties" {
				for p, ps := range v.(map[string]any) {
					strict(t, where+"."+p, ps)
				}
				continue
			}
			strict(t, where+"/"+k, v)
		}
	case []any:
		for _, v := range s {
			strict(t, where, v)
		}
	}
}
