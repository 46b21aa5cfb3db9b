package wire

import (
	"errors"
	"fmt"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

// Attribute is one CK_ATTRIBUTE of a template.
//
// For a type whose calls.Attrs kind is AttrTemplate (ck.CKA_WRAP_TEMPLATE, ...)
// the value is a nested template: Nested holds it, and Null is set when the
// caller's pointer was NULL. For every other type the value is a byte string
// (CK_ULONG values already converted to 8 bytes big-endian by the module):
// Value holds it, and Null is set for a NULL pointer. A nested template may
// not itself contain a template attribute.
//
// Value may hold key material, so String does not print it.
type Attribute struct {
	Type   uint64
	Value  []byte
	Null   bool
	Nested []Attribute
}

// OutSpec is the request side of an OutBytes or OutUlongs argument: whether
// the caller passed a buffer, and its capacity (bytes, or items for arrays).
//
// Prefetch (presence byte 2, only for the calls of calls.Prefetches, from a
// module of version 3, for an Update of version 4) is a NULL buffer whose caller asks for the whole
// result with its length: the module keeps it and serves the follow-up
// call itself (docs/protocol.md, "Results ahead of the follow-up call").
type OutSpec struct {
	Present  bool
	Prefetch bool
	Capacity uint64
}

// Query is one attribute of C_GetAttributeValue's template: its type,
// whether the caller passed a buffer, and the buffer's capacity in wire
// units (docs/protocol.md, "Attribute values").
type Query struct {
	Type     uint64
	Present  bool
	Capacity uint64
}

// Answer is one attribute's outcome in C_GetAttributeValue's reply: the
// length (the value's wire length, or ck.CK_UNAVAILABLE_INFORMATION), and the
// value, or nil when none is returned.
type Answer struct {
	Length uint64
	Value  []byte
}

// AnswerFor applies C_GetAttributeValue's rules to one attribute whose
// value is value and may be returned: NULL buffer → the length, ck.CKR_OK;
// a buffer too small → ck.CK_UNAVAILABLE_INFORMATION, ck.CKR_BUFFER_TOO_SMALL;
// otherwise the value, ck.CKR_OK. (Sensitive and unknown attributes get
// Answer{Length: ck.CK_UNAVAILABLE_INFORMATION} from the daemon directly.)
// The capacity is compared in bytes, which holds for every attribute whose
// value travels as bytes.
func AnswerFor(q Query, value []byte) (Answer, uint64) {
	n := uint64(len(value))
	switch {
	case !q.Present:
		return Answer{Length: n}, ck.CKR_OK
	case q.Capacity < n:
		return Answer{Length: ck.CK_UNAVAILABLE_INFORMATION}, ck.CKR_BUFFER_TOO_SMALL
	}
	if value == nil {
		value = []byte{}
	}
	return Answer{Length: n, Value: value}, ck.CKR_OK
}

// Value is one argument or result of a call on the client side, the union
// of every kind: EncodeArgs reads the fields of each argument's kind, and
// DecodeResults fills those of each output's kind. Values are positional:
// one per calls.Call.Args entry, kinds that do not travel left zero.
//
//	Ulong      Ulong (and OutHandles' max, OutFilled's length in a request;
//	           OutUlong's result)
//	Byte       Byte
//	Bytes      Bytes, Label (with Null); OutBytes' result data (with Null);
//	           OutFilled's result data
//	Template   Template
//	Mechanism  Mechanism
//	Out        OutBytes, OutUlongs requests
//	Query      AttrQuery request
//	Length     OutBytes, OutUlongs results: the length or count
//	Ulongs     OutUlongs (with Null) and OutHandles results
//	Answers    AttrQuery result
//	Struct     OutStruct result
//	Param      MsgParam, MsgParamOut requests; MsgParamOut result (the
//	           output fields only, message.go); with calls.Arg.Mech, Ulong
//	           is the request's mechanism type
//	Out, Null  OptOutBytes request (Null: no length pointer); its result
//	           sets Null likewise, Length, and Bytes (nil: no data)
//
// Kind, when set, must match the table's kind; DecodeResults sets it.
type Value struct {
	Kind      calls.Kind
	Ulong     uint64
	Byte      byte
	Bytes     []byte
	Null      bool
	Template  []Attribute
	Mechanism *Mechanism
	Out       OutSpec
	Query     []Query
	Length    uint64
	Ulongs    []uint64
	Answers   []Answer
	Struct    Struct
	Param     *Param
}

// decodeTemplate reads a template. A nested one may not contain template
// attributes.
func (r *reader) template(nested bool) []Attribute {
	// The smallest attribute is a type and a presence byte.
	n, _ := r.count("template", MaxAttrs, 9, false)
	if r.err != nil {
		return nil
	}
	attrs := make([]Attribute, n)
	for i := range attrs {
		a := &attrs[i]
		a.Type = r.u64("attribute type")
		if calls.Attrs[a.Type] == calls.AttrTemplate {
			if nested {
				r.fail("attribute %#x: template nested in a template", a.Type)
				break
			}
			if r.present("nested template") {
				a.Nested = r.template(true)
			} else {
				a.Null = true
			}
		} else {
			a.Value, a.Null = r.bytes("attribute value")
		}
		if r.err != nil {
			break
		}
	}
	return attrs
}

func appendTemplate(b []byte, attrs []Attribute, nested bool) ([]byte, error) {
	if len(attrs) > MaxAttrs {
		return b, fmt.Errorf("wire: template of %d attributes over %d", len(attrs), MaxAttrs)
	}
	b = appendU32(b, uint32(len(attrs)))
	for _, a := range attrs {
		b = appendU64(b, a.Type)
		if calls.Attrs[a.Type] != calls.AttrTemplate {
			if a.Nested != nil {
				return b, fmt.Errorf("wire: attribute %#x is not a template", a.Type)
			}
			if err := checkBytes(a.Value, a.Null, "attribute value"); err != nil {
				return b, err
			}
			b = appendBytes(b, a.Value, a.Null)
			continue
		}
		switch {
		case nested:
			return b, fmt.Errorf("wire: attribute %#x: template nested in a template", a.Type)
		case a.Value != nil:
			return b, fmt.Errorf("wire: template attribute %#x has a byte value", a.Type)
		case a.Null:
			b = appendBool(b, false)
		default:
			b = appendBool(b, true)
			var err error
			if b, err = appendTemplate(b, a.Nested, true); err != nil {
				return b, err
			}
		}
	}
	return b, nil
}

func (r *reader) queries() []Query {
	n, _ := r.count("query", MaxAttrs, 17, false)
	if r.err != nil {
		return nil
	}
	q := make([]Query, n)
	for i := range q {
		q[i] = Query{Type: r.u64("query type"), Present: r.present("query"), Capacity: r.u64("query capacity")}
	}
	return q
}

func appendQueries(b []byte, q []Query) ([]byte, error) {
	if len(q) > MaxAttrs {
		return b, fmt.Errorf("wire: query of %d attributes over %d", len(q), MaxAttrs)
	}
	b = appendU32(b, uint32(len(q)))
	for _, x := range q {
		b = appendU64(b, x.Type)
		b = appendBool(b, x.Present)
		b = appendU64(b, x.Capacity)
	}
	return b, nil
}

// answers reads C_GetAttributeValue's results. A value, when present, must
// be as long as its length says.
func (r *reader) answers() []Answer {
	n, _ := r.count("answers", MaxAttrs, 12, false)
	if r.err != nil {
		return nil
	}
	a := make([]Answer, n)
	for i := range a {
		a[i].Length = r.u64("answer length")
		v, null := r.bytes("answer value")
		if r.err != nil {
			break
		}
		if !null {
			if uint64(len(v)) != a[i].Length && !isTemplateAnswer(a[i].Length, v) {
				r.fail("answer of length %d with %d bytes", a[i].Length, len(v))
				break
			}
			a[i].Value = v
		}
	}
	return a
}

// checkAnswers checks answers before they are encoded.
func checkAnswers(a []Answer) error {
	if len(a) > MaxAttrs {
		return fmt.Errorf("wire: %d answers over %d", len(a), MaxAttrs)
	}
	for _, x := range a {
		if x.Value != nil && uint64(len(x.Value)) != x.Length && !isTemplateAnswer(x.Length, x.Value) {
			return fmt.Errorf("wire: answer of length %d with %d bytes", x.Length, len(x.Value))
		}
		if err := checkBytes(x.Value, x.Value == nil, "answer value"); err != nil {
			return err
		}
	}
	return nil
}

// EncodeTemplate encodes the value of a template attribute's answer
// (docs/protocol.md, "Attribute values"): a template whose count is the
// answer's length, holding no further template.
func EncodeTemplate(attrs []Attribute) ([]byte, error) {
	return appendTemplate(nil, attrs, true)
}

// isTemplateAnswer reports whether v is the value of a template attribute's
// answer of the given length: the one exception to a value being exactly
// as long as its length. The answer does not name its type, so the bytes
// themselves must be a template of that many attributes, and nothing more.
func isTemplateAnswer(length uint64, v []byte) bool {
	r := reader{b: v}
	attrs := r.template(true)
	return r.done() == nil && uint64(len(attrs)) == length
}

func appendAnswers(b []byte, a []Answer) []byte {
	b = appendU32(b, uint32(len(a)))
	for _, x := range a {
		b = appendU64(b, x.Length)
		b = appendBytes(b, x.Value, x.Value == nil)
	}
	return b
}

// Redaction: values that may hold PINs or key material print their shape,
// never their bytes, and refuse JSON.

var errNoJSON = errors.New("wire: values that may hold secrets are not marshalled to JSON")

func shape(b []byte, null bool) string {
	if null {
		return "NULL"
	}
	return fmt.Sprintf("<%d bytes>", len(b))
}

// String prints the attribute's type and the shape of its value.
func (a Attribute) String() string {
	if calls.Attrs[a.Type] == calls.AttrTemplate && !a.Null {
		return fmt.Sprintf("{%#x: %v}", a.Type, a.Nested)
	}
	return fmt.Sprintf("{%#x: %s}", a.Type, shape(a.Value, a.Null))
}

// GoString is String, so that %#v does not print the value either.
func (a Attribute) GoString() string { return a.String() }

// MarshalJSON refuses: the value may be secret.
func (a Attribute) MarshalJSON() ([]byte, error) { return nil, errNoJSON }

// String prints the value's kind and shape, never its bytes.
func (v Value) String() string {
	switch v.Kind {
	case calls.Ulong, calls.OutUlong:
		return fmt.Sprint(v.Ulong)
	case calls.OutHandles:
		if v.Ulongs != nil {
			return fmt.Sprintf("%d handles", len(v.Ulongs))
		}
		return fmt.Sprintf("max %d", v.Ulong)
	case calls.OutFilled:
		if v.Bytes == nil {
			return fmt.Sprintf("fill %d", v.Ulong)
		}
	case calls.Byte:
		return fmt.Sprint(v.Byte)
	case calls.Template:
		return fmt.Sprint(v.Template)
	case calls.Mechanism:
		if v.Mechanism != nil {
			return fmt.Sprintf("mechanism %#x", v.Mechanism.Type)
		}
		return "no mechanism"
	case calls.OutBytes, calls.OutUlongs:
		if v.Length != 0 || v.Bytes != nil || v.Ulongs != nil || v.Null {
			return fmt.Sprintf("length %d", v.Length)
		}
		return fmt.Sprintf("%+v", v.Out)
	case calls.AttrQuery:
		if v.Answers != nil {
			return fmt.Sprintf("%d answers", len(v.Answers))
		}
		return fmt.Sprintf("%d queries", len(v.Query))
	case calls.OutStruct:
		if v.Struct != nil {
			return v.Struct.CType()
		}
	case calls.MsgParam, calls.MsgParamOut:
		if v.Param == nil || v.Param.Kind == calls.PNone {
			return "no parameter"
		}
		if v.Param.Kind == calls.PBytes {
			return shape(v.Param.Bytes, v.Param.Bytes == nil)
		}
		return v.Param.Struct
	case calls.OptOutBytes:
		if v.Null {
			return "no output"
		}
		if v.Length != 0 || v.Bytes != nil {
			return fmt.Sprintf("length %d", v.Length)
		}
		return fmt.Sprintf("%+v", v.Out)
	}
	return shape(v.Bytes, v.Null)
}

// GoString is String.
func (v Value) GoString() string { return v.String() }

// MarshalJSON refuses: the value may be secret.
func (v Value) MarshalJSON() ([]byte, error) { return nil, errNoJSON }
