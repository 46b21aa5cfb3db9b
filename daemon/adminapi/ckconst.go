package adminapi

import (
	"reflect"
	"strings"
)

// CKConst is a PKCS#11 constant, a key type or a mechanism, by its name
// in the specification with its number beside: {"name": "CKM_AES_KEY_GEN",
// "value": 4224}.
type CKConst struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// shortNames are what people read for the key types hsmemu holds.
var shortNames = map[string]string{"CKK_GENERIC_SECRET": "generic-secret", "CKK_EC_EDWARDS": "EC-Edwards"}

// String is the constant for people: its name less the prefix (EC, AES,
// ECDSA_SHA256), "-" for none.
func (c *CKConst) String() string {
	if c == nil {
		return "-"
	}
	if s, ok := shortNames[c.Name]; ok {
		return s
	}
	if _, rest, ok := strings.Cut(c.Name, "_"); ok && strings.HasPrefix(c.Name, "CK") {
		return rest
	}
	return c.Name
}

// KeyAttributes are a key's attributes as `key show` reports them: each
// flag true, false, or null where the key's class has no such attribute.
type KeyAttributes struct {
	Token              *bool `json:"token"`
	Private            *bool `json:"private"`
	Modifiable         *bool `json:"modifiable"`
	Copyable           *bool `json:"copyable"`
	Destroyable        *bool `json:"destroyable"`
	Sensitive          *bool `json:"sensitive"`
	Extractable        *bool `json:"extractable"`
	AlwaysSensitive    *bool `json:"always_sensitive"`
	NeverExtractable   *bool `json:"never_extractable"`
	Local              *bool `json:"local"`
	Trusted            *bool `json:"trusted"`
	WrapWithTrusted    *bool `json:"wrap_with_trusted"`
	AlwaysAuthenticate *bool `json:"always_authenticate"`
	Encrypt            *bool `json:"encrypt"`
	Decrypt            *bool `json:"decrypt"`
	Sign               *bool `json:"sign"`
	Verify             *bool `json:"verify"`
	Wrap               *bool `json:"wrap"`
	Unwrap             *bool `json:"unwrap"`
	Derive             *bool `json:"derive"`
	Encapsulate        *bool `json:"encapsulate"`
	Decapsulate        *bool `json:"decapsulate"`
	// KeyGenMechanism made the key (CKA_KEY_GEN_MECHANISM), when known.
	KeyGenMechanism *CKConst `json:"key_gen_mechanism"`
	// AllowedMechanisms are CKA_ALLOWED_MECHANISMS: none for any.
	AllowedMechanisms []CKConst `json:"allowed_mechanisms"`
}

// SetFlag sets the flag of that JSON name; false for a name it has not.
func (a *KeyAttributes) SetFlag(name string, v bool) bool {
	f, ok := a.flag(name)
	if ok {
		f.Set(reflect.ValueOf(&v))
	}
	return ok
}

func (a *KeyAttributes) flag(name string) (reflect.Value, bool) {
	rv := reflect.ValueOf(a).Elem()
	for i := range rv.NumField() {
		if strings.Split(rv.Type().Field(i).Tag.Get("json"), ",")[0] == name && rv.Field(i).Type() == reflect.TypeFor[*bool]() {
			return rv.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// Flags are the flags that are set, in order: name (JSON's) and value.
func (a *KeyAttributes) Flags() []struct {
	Name  string
	Value bool
} {
	var out []struct {
		Name  string
		Value bool
	}
	rv := reflect.ValueOf(a).Elem()
	for i := range rv.NumField() {
		f := rv.Field(i)
		if f.Type() != reflect.TypeFor[*bool]() || f.IsNil() {
			continue
		}
		out = append(out, struct {
			Name  string
			Value bool
		}{strings.Split(rv.Type().Field(i).Tag.Get("json"), ",")[0], f.Elem().Bool()})
	}
	return out
}
