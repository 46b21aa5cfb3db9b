// Package jsondoc reads docs/json.md, where each command's --json output
// is documented as a JSON Schema, and checks outputs against it: the
// document is the one source, read by the tests of the commands that
// print JSON. Used by tests only.
package jsondoc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Doc is docs/json.md's schemas, by command name ("key list", "error").
type Doc struct {
	schemas map[string]*jsonschema.Schema
	// Raw is each command's schema as written, its $defs merged in.
	Raw map[string]map[string]any
}

// A schema is a "### hsmemu COMMAND" heading's first ```json block; the
// block under "## Definitions" holds the $defs they refer to
// (#/$defs/NAME).
var headingRE = regexp.MustCompile("^### (?:hsmemu )?(.+?)\\s*$")

// Load reads and compiles the schemas of the document at path.
func Load(path string) (*Doc, error) {
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
				return nil, fmt.Errorf("%s: a json block under no command's heading", path)
			}
			if heading == "## Definitions" {
				defs = cur.String()
			} else if _, dup := blocks[heading]; dup {
				return nil, fmt.Errorf("%s: two schemas for %q", path, heading)
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
		return nil, fmt.Errorf("%s: the definitions: %v", path, err)
	}
	out := &Doc{schemas: map[string]*jsonschema.Schema{}, Raw: map[string]map[string]any{}}
	for name, text := range blocks {
		var s map[string]any
		if err := json.Unmarshal([]byte(text), &s); err != nil {
			return nil, fmt.Errorf("%s: the schema of %q: %v", path, name, err)
		}
		s["$defs"] = d.Defs
		c := jsonschema.NewCompiler()
		url := "mem:///" + strings.ReplaceAll(name, " ", "-") + ".json"
		if err := c.AddResource(url, s); err != nil {
			return nil, fmt.Errorf("%s: the schema of %q: %v", path, name, err)
		}
		sch, err := c.Compile(url)
		if err != nil {
			return nil, fmt.Errorf("%s: the schema of %q: %v", path, name, err)
		}
		out.schemas[name], out.Raw[name] = sch, s
	}
	return out, nil
}

// Has says whether the document has a schema for the command.
func (d *Doc) Has(name string) bool { return d.schemas[name] != nil }

// Validate checks one JSON document against the command's schema.
func (d *Doc) Validate(name string, data []byte) error {
	sch, ok := d.schemas[name]
	if !ok {
		return fmt.Errorf("docs/json.md has no schema for %q", name)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: not JSON: %v", name, err)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s: the output does not match docs/json.md: %v", name, err)
	}
	return nil
}
