package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/urfave/cli/v2"
)

// docs/json.md documents each command's --json output as a JSON Schema:
// a "### hsmemu COMMAND" heading followed by a ```json block. The block
// under "## Definitions" holds the $defs the others refer to
// (#/$defs/NAME). The scripts check outputs against these schemas; the
// document is the one source.

const jsonDoc = "../docs/json.md"

type jsonSchemas struct {
	schemas map[string]*jsonschema.Schema
	raw     map[string]any // each command's schema, its $defs merged in
	used    sync.Map       // command name -> true once an output was checked
}

var (
	schemasOnce sync.Once
	schemasDoc  *jsonSchemas
	schemasErr  error
)

func loadSchemas() (*jsonSchemas, error) {
	schemasOnce.Do(func() { schemasDoc, schemasErr = parseJSONDoc(jsonDoc) })
	return schemasDoc, schemasErr
}

var headingRE = regexp.MustCompile("^### (?:hsmemu )?(.+?)\\s*$")

func parseJSONDoc(path string) (*jsonSchemas, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blocks := map[string]string{}
	var heading, defs string
	var inBlock bool
	var cur strings.Builder
	for sc := bufio.NewScanner(bytes.NewReader(b)); sc.Scan(); {
		line := sc.Text()
		switch {
		case inBlock && line == "```":
			inBlock = false
			if heading == "" {
				return nil, fmt.Errorf("a json block under no heading")
			}
			if heading == "## Definitions" {
				defs = cur.String()
			} else if _, dup := blocks[heading]; dup {
				return nil, fmt.Errorf("two schemas for %q", heading)
			} else {
				blocks[heading] = cur.String()
			}
			heading = "" // one block a heading
		case inBlock:
			cur.WriteString(line + "\n")
		case line == "```json":
			inBlock = true
			cur.Reset()
		case line == "## Definitions":
			heading = line
		case strings.HasPrefix(line, "## "):
			heading = ""
		case headingRE.MatchString(line):
			heading = headingRE.FindStringSubmatch(line)[1]
		}
	}
	if defs == "" {
		return nil, fmt.Errorf("%s has no ## Definitions block", path)
	}
	var d struct {
		Defs map[string]any `json:"$defs"`
	}
	if err := json.Unmarshal([]byte(defs), &d); err != nil {
		return nil, fmt.Errorf("the definitions: %v", err)
	}
	out := &jsonSchemas{schemas: map[string]*jsonschema.Schema{}, raw: map[string]any{}}
	for name, text := range blocks {
		var s map[string]any
		if err := json.Unmarshal([]byte(text), &s); err != nil {
			return nil, fmt.Errorf("the schema of %q: %v", name, err)
		}
		s["$defs"] = d.Defs
		c := jsonschema.NewCompiler()
		url := "mem:///" + strings.ReplaceAll(name, " ", "-") + ".json"
		if err := c.AddResource(url, s); err != nil {
			return nil, fmt.Errorf("the schema of %q: %v", name, err)
		}
		sch, err := c.Compile(url)
		if err != nil {
			return nil, fmt.Errorf("the schema of %q: %v", name, err)
		}
		out.schemas[name], out.raw[name] = sch, s
	}
	return out, nil
}

// jsonschema NAME checks the last command's stdout against the schema of
// command NAME; jsonschema error checks its stderr against the error's.
// audit export's output is checked line by line (JSON Lines).
func cmdJSONSchema(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: jsonschema COMMAND")
	}
	name := args[0]
	doc, err := loadSchemas()
	ts.Check(err)
	sch, ok := doc.schemas[name]
	if !ok {
		ts.Fatalf("docs/json.md has no schema for %q", name)
	}
	out := ts.ReadFile("stdout")
	if name == "error" {
		out = ts.ReadFile("stderr")
	}
	docs := []string{out}
	if name == "audit export" {
		docs = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	}
	for _, d := range docs {
		v, err := jsonschema.UnmarshalJSON(strings.NewReader(d))
		if err != nil {
			ts.Fatalf("%s: not JSON: %v\n%s", name, err, d)
		}
		if err := sch.Validate(v); err != nil {
			ts.Fatalf("%s: the output does not match docs/json.md: %v\n%s", name, err, d)
		}
	}
	doc.used.Store(name, true)
}

// checkSchemasUsed fails t for each documented schema no script checked.
func checkSchemasUsed(t *testing.T) {
	doc, err := loadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	doc.used.Range(func(any, any) bool { n++; return true })
	if n == 0 || t.Failed() {
		return // the JSON script did not run (go test -run picked others), or stopped
	}
	for _, name := range slices.Sorted(maps.Keys(doc.schemas)) {
		if _, ok := doc.used.Load(name); !ok && !uncheckedSchemas[name] {
			t.Errorf("no script checks the output of %q against docs/json.md", name)
		}
	}
}

// uncheckedSchemas are documented but not run by the scripts: bench
// measures for minutes against a module; cryptoki/e2e runs it and reads
// its JSON back.
var uncheckedSchemas = map[string]bool{"bench": true}

// TestJSONDoc: every command that takes --json has its schema in
// docs/json.md, and every schema there names a command; each schema
// lists every property as required and no others, so that a field left
// out, or one added without its documentation, fails.
func TestJSONDoc(t *testing.T) {
	doc, err := loadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"error": true}
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
		if doc.schemas[name] == nil {
			t.Errorf("%s takes --json, but docs/json.md has no schema for it", name)
		}
	}
	for name, s := range doc.raw {
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
