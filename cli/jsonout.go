package cli

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
)

// printJSON writes v indented, for --json, in the form docs/json.md
// promises for every command: every field present, an empty optional
// value (a field tagged omitempty: a string, a number, a time, a pointer;
// never a boolean) as null rather than left out, lists and maps as [] and {} rather than null, and
// times in RFC 3339, UTC, to the second. The daemon's replies keep their
// own encoding; this is the one place the command line's is decided.
func printJSON(w io.Writer, v any) error {
	var b bytes.Buffer
	if err := encodeOut(&b, reflect.ValueOf(v), false); err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err := w.Write(out.Bytes())
	return err
}

var (
	timeType      = reflect.TypeFor[time.Time]()
	marshalerType = reflect.TypeFor[json.Marshaler]()
	textType      = reflect.TypeFor[encoding.TextMarshaler]()
)

// jsonTime is a time as every --json output gives it.
func jsonTime(t time.Time) string { return t.UTC().Truncate(time.Second).Format(time.RFC3339) }

// encodeOut writes v; optional says its field was tagged omitempty, so
// that an empty string stands for "none" and is written null.
func encodeOut(b *bytes.Buffer, v reflect.Value, optional bool) error {
	if !v.IsValid() {
		b.WriteString("null")
		return nil
	}
	t := v.Type()
	switch {
	case t == timeType:
		if tm := v.Interface().(time.Time); tm.IsZero() {
			b.WriteString("null")
		} else {
			b.WriteString(`"` + jsonTime(tm) + `"`)
		}
		return nil
	case t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface && (t.Implements(marshalerType) || t.Implements(textType)):
		if optional && v.IsZero() {
			b.WriteString("null")
			return nil
		}
		return plain(b, v.Interface())
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			b.WriteString("null")
			return nil
		}
		return encodeOut(b, v.Elem(), false)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		if optional && v.IsZero() { // a count or size that is 0 where it means unknown
			b.WriteString("null")
			return nil
		}
		return plain(b, v.Interface())
	case reflect.String:
		if optional && v.Len() == 0 {
			b.WriteString("null")
			return nil
		}
		return plain(b, v.Interface())
	case reflect.Struct:
		b.WriteByte('{')
		first := true
		if err := encodeFields(b, v, &first); err != nil {
			return err
		}
		b.WriteByte('}')
		return nil
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 { // bytes, base64 as encoding/json writes them
			if v.Len() == 0 {
				b.WriteString("null")
				return nil
			}
			return plain(b, v.Interface())
		}
		fallthrough
	case reflect.Array:
		b.WriteByte('[')
		for i := range v.Len() {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := encodeOut(b, v.Index(i), false); err != nil {
				return err
			}
		}
		b.WriteByte(']')
		return nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("--json: a map keyed by %s", t.Key())
		}
		keys := v.MapKeys()
		slices.SortFunc(keys, func(x, y reflect.Value) int { return strings.Compare(x.String(), y.String()) })
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			plain(b, k.String())
			b.WriteByte(':')
			if err := encodeOut(b, v.MapIndex(k), false); err != nil {
				return err
			}
		}
		b.WriteByte('}')
		return nil
	}
	return plain(b, v.Interface())
}

// encodeFields writes a struct's fields, those of embedded structs in
// place, as encoding/json names them.
func encodeFields(b *bytes.Buffer, v reflect.Value, first *bool) error {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			if err := encodeFields(b, v.Field(i), first); err != nil {
				return err
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if !*first {
			b.WriteByte(',')
		}
		*first = false
		plain(b, name)
		b.WriteByte(':')
		if err := encodeOut(b, v.Field(i), slices.Contains(strings.Split(opts, ","), "omitempty")); err != nil {
			return err
		}
	}
	return nil
}

func plain(b *bytes.Buffer, v any) error {
	j, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b.Write(j)
	return nil
}

// writeJSONLine writes v on one line, in the same form as printJSON: a
// record of a JSON Lines stream.
func writeJSONLine(w io.Writer, v any) error {
	var b bytes.Buffer
	if err := encodeOut(&b, reflect.ValueOf(v), false); err != nil {
		return err
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}
