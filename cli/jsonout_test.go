package cli

import (
	"bytes"
	"testing"
	"time"

	"hsmemu/daemon/adminapi"
)

// TestPrintJSON: the form every --json output takes, whatever the type.
func TestPrintJSON(t *testing.T) {
	type inner struct {
		N int `json:"n"`
	}
	type embedded struct {
		E string `json:"e"`
	}
	type sample struct {
		embedded
		Label    string            `json:"label,omitempty"`
		Name     string            `json:"name"`
		Bits     int               `json:"bits,omitempty"`
		Count    int               `json:"count"`
		Flag     bool              `json:"flag,omitempty"`
		At       time.Time         `json:"at"`
		When     *time.Time        `json:"when,omitempty"`
		List     []string          `json:"list,omitempty"`
		Items    []inner           `json:"items"`
		Map      map[string]string `json:"map"`
		Ptr      *inner            `json:"ptr"`
		Hash     adminapi.Hex      `json:"hash,omitempty"`
		Raw      []byte            `json:"raw"`
		Const    *adminapi.CKConst `json:"const"`
		Skipped  string            `json:"-"`
		internal int
	}
	at := time.Date(2026, 12, 7, 5, 4, 3, 987654321, time.FixedZone("x", 3600))
	var b bytes.Buffer
	err := printJSON(&b, sample{Name: "", At: at, Hash: adminapi.Hex{0xab}, Const: &adminapi.CKConst{Name: "CKM_AES_KEY_GEN", Value: 0x1080}, Skipped: "x", internal: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "e": "",
  "label": null,
  "name": "",
  "bits": null,
  "count": 0,
  "flag": false,
  "at": "2026-12-07T04:04:03Z",
  "when": null,
  "list": [],
  "items": [],
  "map": {},
  "ptr": null,
  "hash": "ab",
  "raw": null,
  "const": {
    "name": "CKM_AES_KEY_GEN",
    "value": 4224
  }
}
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := writeJSONLine(&b, []inner{{1}}); err != nil || b.String() != "[{\"n\":1}]\n" {
		t.Errorf("a JSON line: %q %v", b.String(), err)
	}
}
