// Package p11uri reads and writes PKCS#11 URIs (RFC 7512), which name a
// token, an object, or both, the way OpenSSL, GnuTLS, p11-kit and OpenSSH
// take them:
//
//	pkcs11:token=signing;object=tls;type=private
//
// The path holds the attributes that select (token, manufacturer, serial,
// model, object, type, id, library and slot ones, and vendor ones); each
// at most once. The query holds the attributes that say how to get there
// (pin-source, pin-value, module-name, module-path, and vendor ones).
// Values are percent-encoded where RFC 7512 says so, and read back
// strictly: a malformed escape or a character the grammar does not allow
// is an error, never a guess. What a name means is left to the caller:
// this package does not know that a PIN must never come from argv, it
// only reports that pin-value was given.
package p11uri

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Scheme is the URI scheme, with its colon.
const Scheme = "pkcs11:"

// Path attribute names of RFC 7512.
const (
	Token               = "token"
	Manufacturer        = "manufacturer"
	Serial              = "serial"
	Model               = "model"
	LibraryManufacturer = "library-manufacturer"
	LibraryDescription  = "library-description"
	LibraryVersion      = "library-version"
	Object              = "object"
	Type                = "type"
	ID                  = "id"
	SlotDescription     = "slot-description"
	SlotManufacturer    = "slot-manufacturer"
	SlotID              = "slot-id"
)

// Query attribute names of RFC 7512.
const (
	PINSource  = "pin-source"
	PINValue   = "pin-value"
	ModuleName = "module-name"
	ModulePath = "module-path"
)

// pathOrder is the order String writes the path's standard attributes in.
var pathOrder = []string{Token, Manufacturer, Model, Serial, LibraryManufacturer, LibraryDescription, LibraryVersion,
	SlotDescription, SlotManufacturer, SlotID, ID, Object, Type}

// queryNames are the standard query attributes.
var queryNames = []string{PINSource, PINValue, ModuleName, ModulePath}

// Types are the values of the type attribute.
var Types = []string{"public", "private", "cert", "secret-key", "data"}

// Attr is one attribute: its name and its decoded value.
type Attr struct {
	Name  string
	Value string
}

// URI is a parsed PKCS#11 URI. Path and Query keep the attributes in the
// order they were written; a path attribute appears at most once.
type URI struct {
	Path  []Attr
	Query []Attr
}

// Get returns a path attribute's value and whether it is there.
func (u *URI) Get(name string) (string, bool) {
	for _, a := range u.Path {
		if a.Name == name {
			return a.Value, true
		}
	}
	return "", false
}

// GetQuery returns the first query attribute of the name.
func (u *URI) GetQuery(name string) (string, bool) {
	for _, a := range u.Query {
		if a.Name == name {
			return a.Value, true
		}
	}
	return "", false
}

// Set sets a path attribute, replacing one of the same name.
func (u *URI) Set(name, value string) {
	for i := range u.Path {
		if u.Path[i].Name == name {
			u.Path[i].Value = value
			return
		}
	}
	u.Path = append(u.Path, Attr{name, value})
}

// Standard says whether a path attribute name is one of RFC 7512's.
func Standard(name string) bool { return slices.Contains(pathOrder, name) }

// StandardQuery says whether a query attribute name is one of RFC 7512's.
func StandardQuery(name string) bool { return slices.Contains(queryNames, name) }

// ErrNotURI is Parse's error for a string that is not a PKCS#11 URI at all.
var ErrNotURI = errors.New("not a PKCS#11 URI (pkcs11:...)")

// IsURI says whether s is meant as a PKCS#11 URI: it starts with the
// scheme, in any case.
func IsURI(s string) bool {
	return len(s) >= len(Scheme) && strings.EqualFold(s[:len(Scheme)], Scheme)
}

// Parse reads a PKCS#11 URI.
func Parse(s string) (*URI, error) {
	if !IsURI(s) {
		return nil, ErrNotURI
	}
	rest := s[len(Scheme):]
	path, query, hasQuery := strings.Cut(rest, "?")
	u := &URI{}
	if path != "" {
		for _, part := range strings.Split(path, ";") {
			a, err := parseAttr(part, pathChar)
			if err != nil {
				return nil, err
			}
			if _, dup := u.Get(a.Name); dup {
				return nil, fmt.Errorf("%s is given twice", a.Name)
			}
			if err := checkPathValue(a); err != nil {
				return nil, err
			}
			u.Path = append(u.Path, a)
		}
	}
	if hasQuery && query != "" {
		for _, part := range strings.Split(query, "&") {
			a, err := parseAttr(part, queryChar)
			if err != nil {
				return nil, err
			}
			if StandardQuery(a.Name) {
				if _, dup := u.GetQuery(a.Name); dup {
					return nil, fmt.Errorf("%s is given twice", a.Name)
				}
			}
			u.Query = append(u.Query, a)
		}
	}
	return u, nil
}

// parseAttr reads name=value, the value percent-decoded; allowed says
// which characters may stand unencoded in the value.
func parseAttr(part string, allowed func(byte) bool) (Attr, error) {
	name, raw, ok := strings.Cut(part, "=")
	if !ok {
		return Attr{}, fmt.Errorf("%q is not name=value", part)
	}
	if name == "" {
		return Attr{}, fmt.Errorf("%q has no attribute name", part)
	}
	for i := 0; i < len(name); i++ {
		if !nameChar(name[i]) {
			return Attr{}, fmt.Errorf("attribute name %q: only letters, digits, - and _", name)
		}
	}
	v, err := decode(raw, allowed)
	if err != nil {
		if strings.EqualFold(name, PINValue) {
			// The error quotes the value: a PIN, which errors never show.
			return Attr{}, fmt.Errorf("%s: not percent-encoded as RFC 7512 asks (the value is not shown)", name)
		}
		return Attr{}, fmt.Errorf("%s: %w", name, err)
	}
	return Attr{Name: name, Value: v}, nil
}

// checkPathValue checks the values RFC 7512 gives a grammar of their own.
func checkPathValue(a Attr) error {
	switch a.Name {
	case Type:
		if !slices.Contains(Types, a.Value) {
			return fmt.Errorf("type is %s, not %q", strings.Join(Types, ", "), a.Value)
		}
	case SlotID:
		if _, err := strconv.ParseUint(a.Value, 10, 64); err != nil {
			return fmt.Errorf("slot-id is a number, not %q", a.Value)
		}
	case LibraryVersion:
		major, minor, dot := strings.Cut(a.Value, ".")
		if !digits(major) || dot && !digits(minor) {
			return fmt.Errorf("library-version is MAJOR or MAJOR.MINOR, not %q", a.Value)
		}
	}
	return nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// decode undoes percent-encoding, refusing a malformed escape and a
// character that should have been encoded.
func decode(s string, allowed func(byte) bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) {
				return "", fmt.Errorf("%q: a %% not followed by two hex digits", s)
			}
			h, ok1 := unhex(s[i+1])
			l, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("%q: a %% not followed by two hex digits", s)
			}
			b.WriteByte(h<<4 | l)
			i += 2
		case allowed(c):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("%q: %q must be percent-encoded (%%%02X)", s, c, c)
		}
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// unreserved is RFC 3986's.
func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0
}

// resAvail is RFC 7512's pk11-res-avail.
func resAvail(c byte) bool { return strings.IndexByte(":[]@!$'()*+,=", c) >= 0 }

// pathChar may stand unencoded in a path value (pk11-pchar, with "&").
func pathChar(c byte) bool { return unreserved(c) || resAvail(c) || c == '&' }

// queryChar may stand unencoded in a query value (pk11-qchar).
func queryChar(c byte) bool { return unreserved(c) || resAvail(c) || strings.IndexByte("/?|", c) >= 0 }

// String writes the URI: the standard path attributes first, in a fixed
// order, then the others as given; values percent-encoded where needed,
// an id wholly (%01%02..., as p11tool writes it).
func (u *URI) String() string {
	var b strings.Builder
	b.WriteString(Scheme)
	first := true
	put := func(a Attr) {
		if !first {
			b.WriteByte(';')
		}
		first = false
		b.WriteString(a.Name)
		b.WriteByte('=')
		b.WriteString(encode(a.Value, pathChar, a.Name == ID))
	}
	for _, name := range pathOrder {
		if v, ok := u.Get(name); ok {
			put(Attr{name, v})
		}
	}
	for _, a := range u.Path {
		if !Standard(a.Name) {
			put(a)
		}
	}
	for i, a := range u.Query {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(a.Name)
		b.WriteByte('=')
		b.WriteString(encode(a.Value, queryChar, false))
	}
	return b.String()
}

// encode percent-encodes what allowed does not allow; all of it when
// every byte is to be encoded.
func encode(v string, allowed func(byte) bool, every bool) string {
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !every && allowed(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	return b.String()
}
