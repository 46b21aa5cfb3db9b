package jsondoc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = "# JSON\n\n### hsmemu thing show\n\nProse.\n\n```json\n" +
	`{"type": "object", "properties": {"t": {"$ref": "#/$defs/time"}}, "required": ["t"], "additionalProperties": false}` +
	"\n```\n\n## Definitions\n\n```json\n" + `{"$defs": {"time": {"type": "string", "pattern": "Z$"}}}` + "\n```\n"

func write(t *testing.T, text string) string {
	p := filepath.Join(t.TempDir(), "json.md")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	d, err := Load(write(t, sample))
	if err != nil {
		t.Fatal(err)
	}
	if !d.Has("thing show") || d.Has("Definitions") || len(d.Raw) != 1 {
		t.Fatalf("schemas: %v", d.Raw)
	}
	if err := d.Validate("thing show", []byte(`{"t": "2026-01-01T00:00:00Z"}`)); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{`{"t": "yesterday"}`, `{}`, `{"t": "Z", "u": 1}`, `not json`} {
		if err := d.Validate("thing show", []byte(bad)); err == nil {
			t.Errorf("%s passed", bad)
		}
	}
	if err := d.Validate("nothing", []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "no schema") {
		t.Errorf("an undocumented command: %v", err)
	}
	for _, broken := range []string{
		strings.Replace(sample, "## Definitions", "## Other", 1),
		strings.Replace(sample, "### hsmemu thing show\n", "### hsmemu thing show\n\n```json\n{}\n```\n", 1),
		strings.Replace(sample, `"#/$defs/time"`, `"#/$defs/nothing"`, 1),
	} {
		if _, err := Load(write(t, broken)); err == nil {
			t.Errorf("loaded a broken document:\n%s", broken)
		}
	}
}
