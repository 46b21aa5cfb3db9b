package wire

import (
	"reflect"
	"strings"
	"testing"
	"unicode"

	"hsmemu/cryptoki/calls"
)

// goName is the Go field name a C member maps to: "ulMaxPinLen" →
// "maxpinlen", "slotDescription" → "slotdescription", compared in lower case.
func goName(c string) string {
	if len(c) > 2 && strings.HasPrefix(c, "ul") && unicode.IsUpper(rune(c[2])) {
		c = c[2:]
	}
	return strings.ToLower(c)
}

// TestStructsFollowTable walks calls.Structs and checks that each Go
// structure has exactly those fields, in that order, of that kind and size.
func TestStructsFollowTable(t *testing.T) {
	t.Parallel()
	for name, spec := range calls.Structs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, ok := newStruct(name)
			if !ok {
				t.Fatalf("no Go type for %s", name)
			}
			if s.CType() != name {
				t.Fatalf("CType %s", s.CType())
			}
			rv := reflect.ValueOf(s).Elem()
			members := s.members()
			if rv.NumField() != len(spec) || len(members) != len(spec) {
				t.Fatalf("%d Go fields, %d members, %d in the table", rv.NumField(), len(members), len(spec))
			}
			size := 0
			for i, f := range spec {
				gf := rv.Type().Field(i)
				if strings.ToLower(gf.Name) != goName(f.Name) {
					t.Errorf("field %d: Go %s, C %s", i, gf.Name, f.Name)
				}
				if rv.Field(i).Addr().Interface() != members[i] {
					t.Errorf("field %d: members() out of order", i)
				}
				want := map[calls.FieldKind]reflect.Type{
					calls.FUlong:   reflect.TypeFor[uint64](),
					calls.FVersion: reflect.TypeFor[CKVersion](),
					calls.FChars:   reflect.TypeFor[string](),
				}[f.Kind]
				if gf.Type != want {
					t.Errorf("field %s: Go type %v for kind %d", f.Name, gf.Type, f.Kind)
				}
				size += map[calls.FieldKind]int{calls.FUlong: 8, calls.FVersion: 2, calls.FChars: f.Size}[f.Kind]
			}
			// Encode distinct values and decode them generically by the table.
			s = sampleStruct(name, 0)
			b := appendStruct(nil, s)
			if len(b) != size {
				t.Fatalf("encoded %d bytes, table says %d", len(b), size)
			}
			r := reader{b: b}
			fv := r.fields(spec, 0)
			if err := r.done(); err != nil {
				t.Fatal(err)
			}
			rv = reflect.ValueOf(s).Elem()
			for i, f := range fv {
				switch x := rv.Field(i).Interface().(type) {
				case uint64:
					if f.Ulong != x {
						t.Errorf("%s: %d, want %d", f.Name, f.Ulong, x)
					}
				case CKVersion:
					if f.Bytes[0] != x.Major || f.Bytes[1] != x.Minor {
						t.Errorf("%s: %v, want %v", f.Name, f.Bytes, x)
					}
				case string:
					if string(f.Bytes) != Pad(x, spec[i].Size) {
						t.Errorf("%s: %q, want %q", f.Name, f.Bytes, x)
					}
				}
			}
		})
	}
}

func TestPad(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{s: "", n: 4, want: "    "},
		{s: "ab", n: 4, want: "ab  "},
		{s: "abcd", n: 4, want: "abcd"},
		{s: "abcdef", n: 4, want: "abcd"},
		{s: "aé", n: 2, want: "a "},   // é is two bytes: cut before it, then padded
		{s: "ééé", n: 5, want: "éé "}, // never half a character
		{s: "x", n: 0, want: ""},
		{s: "x", n: -1, want: ""},
	} {
		if got := Pad(tt.s, tt.n); got != tt.want {
			t.Errorf("Pad(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}
