package adminapi

import (
	"encoding/json"
	"testing"
)

func TestKeyAttributes(t *testing.T) {
	var a KeyAttributes
	if !a.SetFlag("always_sensitive", true) || !a.SetFlag("extractable", false) || a.SetFlag("no_such_flag", true) || a.SetFlag("key_gen_mechanism", true) {
		t.Fatal("SetFlag takes the flags' JSON names and nothing else")
	}
	fs := a.Flags()
	if len(fs) != 2 || fs[0].Name != "extractable" || fs[0].Value || fs[1].Name != "always_sensitive" || !fs[1].Value {
		t.Fatalf("flags: %+v", fs)
	}
	b, err := json.Marshal(&a)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	// Every attribute is present: a flag the key has not is null, not left out.
	if v, ok := m["sign"]; !ok || v != nil || m["always_sensitive"] != true || m["extractable"] != false {
		t.Fatalf("%s", b)
	}
}

func TestCKConstString(t *testing.T) {
	for c, want := range map[*CKConst]string{
		nil: "-", {Name: "CKK_AES", Value: 0x1f}: "AES", {Name: "CKK_GENERIC_SECRET", Value: 0x10}: "generic-secret",
		{Name: "CKM_ECDSA_SHA256", Value: 0x1044}: "ECDSA_SHA256", {Name: "0x80000001", Value: 0x80000001}: "0x80000001",
	} {
		if got := c.String(); got != want {
			t.Errorf("%+v: %q, want %q", c, got, want)
		}
	}
}
