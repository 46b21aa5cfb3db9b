package wire

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"testing"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

// The round-trip table: representative values for every forwarded call,
// shared by the table tests and the fuzz targets' seed corpora.

type argCase struct {
	name string
	call *calls.Call
	vals []Value
}

type resultCase struct {
	name string
	call *calls.Call
	rv   uint64
	vals []Value
}

func be(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// Variants of each kind: 0 typical, 1 NULL / absent / empty lists, 2 the
// edges (empty non-NULL, nested templates, maximal numbers).
const variants = 3

var variantNames = [variants]string{"typical", "null", "edges"}

func sampleTemplate(variant int) []Attribute {
	switch variant {
	case 0:
		return []Attribute{
			{Type: ck.CKA_CLASS, Value: be(4)},
			{Type: ck.CKA_TOKEN, Value: []byte{1}},
			{Type: ck.CKA_LABEL, Value: []byte("key")},
			{Type: ck.CKA_VALUE_LEN, Value: be(32)},
		}
	case 1:
		return nil
	}
	return []Attribute{
		{Type: ck.CKA_WRAP_TEMPLATE, Nested: []Attribute{
			{Type: ck.CKA_CLASS, Value: be(4)},
			{Type: ck.CKA_ID, Value: []byte{}},
			{Type: ck.CKA_LABEL, Null: true},
		}},
		{Type: ck.CKA_UNWRAP_TEMPLATE, Null: true},
		{Type: ck.CKA_DERIVE_TEMPLATE, Nested: []Attribute{}},
		{Type: ck.CKA_ALLOWED_MECHANISMS, Value: append(be(ck.CKM_AES_GCM), be(ck.CKM_ECDSA)...)},
		{Type: ck.CKA_ID, Value: []byte{}},
		{Type: ck.CKA_LABEL, Null: true},
		{Type: ck.CKA_VALUE_LEN, Value: []byte{32}}, // not 8 bytes: travels unchanged
		{Type: ck.CKA_VENDOR_DEFINED | 7, Value: bytes.Repeat([]byte{0xA5}, 300)},
	}
}

func sampleMechanism(variant int) *Mechanism {
	switch variant {
	case 0:
		return &Mechanism{Type: ck.CKM_AES_GCM, Present: true, Param: GCMParams{
			IV: bytes.Repeat([]byte{1}, 12), IVBits: 96, AAD: []byte("aad"), TagBits: 128}.Param()}
	case 1:
		return &Mechanism{Type: ck.CKM_SHA256}
	}
	return &Mechanism{Type: ck.CKM_RSA_AES_KEY_WRAP, Present: true, Param: RSAAESKeyWrapParams{
		AESKeyBits: 256, OAEP: &OAEPParams{HashAlg: ck.CKM_SHA256, MGF: 2, Source: 1, SourceData: []byte{}}}.Param()}
}

func sampleArg(arg *calls.Arg, variant int) Value {
	v := Value{Kind: arg.Kind}
	switch arg.Kind {
	case calls.Ulong:
		v.Ulong = [variants]uint64{1, 0, 1<<64 - 1}[variant]
	case calls.Byte:
		v.Byte = [variants]byte{1, 0, 0xFF}[variant]
	case calls.Bytes:
		switch variant {
		case 0:
			v.Bytes = []byte("some data of " + arg.Name)
		case 1:
			v.Null = true
		case 2:
			v.Bytes = []byte{}
		}
	case calls.Label:
		switch variant {
		case 0:
			v.Bytes = []byte(Pad("token", LabelSize))
		case 1:
			v.Null = true
		case 2:
			v.Bytes = []byte(Pad("jeton à clés ✓", LabelSize))
		}
	case calls.Template:
		v.Template = sampleTemplate(variant)
	case calls.Mechanism:
		v.Mechanism = sampleMechanism(variant)
	case calls.OutBytes, calls.OutUlongs:
		v.Out = [variants]OutSpec{{Present: true, Capacity: 256}, {Present: false, Capacity: 0}, {Present: false, Capacity: 1<<64 - 1}}[variant]
	case calls.OutHandles:
		v.Ulong = [variants]uint64{16, 0, 1 << 40}[variant]
	case calls.OutFilled:
		v.Ulong = [variants]uint64{32, 0, MaxBytes}[variant]
	case calls.MsgParam, calls.MsgParamOut:
		v.Param = sampleMsgParam(arg, variant)
	case calls.OptOutBytes:
		v.Null = variant == 1
		v.Out = [variants]OutSpec{{Present: true, Capacity: 256}, {}, {Present: false, Capacity: 7}}[variant]
	case calls.AttrQuery:
		v.Query = [variants][]Query{
			{{Type: ck.CKA_VALUE, Present: true, Capacity: 32}, {Type: ck.CKA_CLASS, Present: false, Capacity: 0}, {Type: ck.CKA_LABEL, Present: true, Capacity: 0}},
			nil,
			{{Type: ck.CKA_WRAP_TEMPLATE, Present: true, Capacity: 4}, {Type: ck.CKA_ALLOWED_MECHANISMS, Present: false, Capacity: 1<<64 - 1}},
		}[variant]
	}
	return v
}

// mechanismCases are every mechanism of calls.Mechanisms with a parameter
// of its kind, and the unlisted and absent cases.
func mechanismCases() map[string]*Mechanism {
	m := map[string]*Mechanism{
		"unlisted-with-param": {Type: ck.CKM_VENDOR_DEFINED | 1, Present: true, Param: Param{Kind: calls.PBytes, Bytes: []byte{1, 2, 3}}},
		"unlisted-absent":     {Type: ck.CKM_VENDOR_DEFINED | 1},
		"listed-absent":       {Type: ck.CKM_AES_GCM},
		"wrap-null-oaep":      {Type: ck.CKM_RSA_AES_KEY_WRAP, Present: true, Param: RSAAESKeyWrapParams{AESKeyBits: 128}.Param()},
		"hkdf-nulls":          {Type: ck.CKM_HKDF_DATA, Present: true, Param: HKDFParams{Expand: true, Info: []byte{}}.Param()},
	}
	for t, mp := range calls.Mechanisms {
		mech := &Mechanism{Type: t, Present: true}
		switch mp.Kind {
		case calls.PBytes:
			mech.Param = Param{Kind: calls.PBytes, Bytes: bytes.Repeat([]byte{7}, 16)}
		case calls.PUlong:
			mech.Param = Param{Kind: calls.PUlong, Ulong: 12}
		case calls.PStruct:
			mech.Param = sampleParam(mp.Struct)
		}
		m[fmt.Sprintf("%#x", t)] = mech
	}
	return m
}

// sampleParam is a typed structure of each kind of calls.Params.
func sampleParam(ctype string) Param {
	switch ctype {
	case "CK_GCM_PARAMS":
		return GCMParams{IV: []byte("0123456789ab"), IVBits: 96, AAD: nil, TagBits: 128}.Param()
	case "CK_AES_CTR_PARAMS":
		return CTRParams{CounterBits: 32, CB: [16]byte{15: 1}}.Param()
	case "CK_RSA_PKCS_OAEP_PARAMS":
		return OAEPParams{HashAlg: ck.CKM_SHA256, MGF: 2, Source: 1, SourceData: []byte("label")}.Param()
	case "CK_RSA_PKCS_PSS_PARAMS":
		return PSSParams{HashAlg: ck.CKM_SHA256, MGF: 2, SaltLen: 32}.Param()
	case "CK_ECDH1_DERIVE_PARAMS":
		return ECDH1DeriveParams{KDF: 1, SharedData: nil, PublicData: bytes.Repeat([]byte{4}, 65)}.Param()
	case "CK_RSA_AES_KEY_WRAP_PARAMS":
		return RSAAESKeyWrapParams{AESKeyBits: 256, OAEP: &OAEPParams{HashAlg: ck.CKM_SHA256, MGF: 2, Source: 1}}.Param()
	case "CK_EDDSA_PARAMS":
		return EdDSAParams{PHFlag: true, ContextData: []byte("ctx")}.Param()
	case "CK_HKDF_PARAMS":
		return HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256, SaltType: 2,
			Salt: []byte("salt"), SaltKey: 0, Info: []byte("info")}.Param()
	case "CK_CHACHA20_PARAMS":
		return ChaCha20Params{BlockCounter: []byte{1, 0, 0, 0}, Nonce: []byte("0123456789ab")}.Param()
	case "CK_SALSA20_CHACHA20_POLY1305_PARAMS":
		return ChaCha20Poly1305Params{Nonce: []byte("0123456789ab"), AAD: nil}.Param()
	case "CK_SIGN_ADDITIONAL_CONTEXT":
		return SignContext{HedgeVariant: ck.CKH_DETERMINISTIC_REQUIRED, Context: []byte("ctx")}.Param()
	case "CK_HASH_SIGN_ADDITIONAL_CONTEXT":
		return HashSignContext{SignContext{HedgeVariant: ck.CKH_HEDGE_REQUIRED, Context: nil}, ck.CKM_SHA3_256}.Param()
	}
	panic("no sample for " + ctype)
}

func forwarded() []*calls.Call {
	var cs []*calls.Call
	for i := range calls.Table {
		if calls.Table[i].Mode == calls.Forwarded {
			cs = append(cs, &calls.Table[i])
		}
	}
	return cs
}

func argCases() []argCase {
	var cases []argCase
	for _, c := range forwarded() {
		for variant := range variants {
			vals := make([]Value, len(c.Args))
			for i := range c.Args {
				vals[i] = sampleArg(&c.Args[i], variant)
			}
			cases = append(cases, argCase{name: c.Name + "/" + variantNames[variant], call: c, vals: vals})
		}
	}
	c, _ := calls.ByName("C_EncryptInit")
	mechs := mechanismCases()
	names := make([]string, 0, len(mechs))
	for n := range mechs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		vals := []Value{{Ulong: 1}, {Mechanism: mechs[n]}, {Ulong: 2}}
		cases = append(cases, argCase{name: "C_EncryptInit/mechanism/" + n, call: c, vals: vals})
	}
	return cases
}

func sampleStruct(ctype string, variant int) Struct {
	s, ok := newStruct(ctype)
	if !ok {
		panic("no Go type for " + ctype)
	}
	if variant == 1 {
		return s // zero: empty strings pad to blanks
	}
	for i, m := range s.members() {
		switch p := m.(type) {
		case *uint64:
			*p = uint64(i+1) * 0x0101010101
		case *CKVersion:
			*p = CKVersion{Major: byte(i), Minor: byte(i + 1)}
		case *string:
			*p = fmt.Sprintf("field %d", i)
		}
	}
	return s
}

func sampleOutput(arg *calls.Arg, variant int) Value {
	v := Value{Kind: arg.Kind}
	switch arg.Kind {
	case calls.OutUlong:
		v.Ulong = [variants]uint64{7, 0, 1<<64 - 1}[variant]
	case calls.OutBytes:
		switch variant {
		case 0:
			v.Bytes = []byte("result")
			v.Length = 6
		case 1:
			v.Length, v.Null = 300, true
		case 2:
			v.Bytes = []byte{}
		}
	case calls.OutUlongs:
		switch variant {
		case 0:
			v.Ulongs, v.Length = []uint64{1, 2}, 2
		case 1:
			v.Length, v.Null = 10, true
		case 2:
			v.Ulongs = []uint64{}
		}
	case calls.OutHandles:
		v.Ulongs = [variants][]uint64{{1, 2, 3}, {}, {1<<64 - 1}}[variant]
	case calls.OutFilled:
		v.Bytes = [variants][]byte{[]byte("random"), {}, {0}}[variant]
	case calls.AttrQuery:
		v.Answers = [variants][]Answer{
			{{Length: 32, Value: bytes.Repeat([]byte{9}, 32)}, {Length: ck.CK_UNAVAILABLE_INFORMATION, Value: nil}, {Length: 0, Value: []byte{}}},
			{},
			{{Length: 8, Value: nil}},
		}[variant]
	case calls.OutStruct:
		v.Struct = sampleStruct(arg.Struct, variant)
	case calls.MsgParamOut:
		v.Param = sampleMsgOut(arg, variant)
	case calls.OptOutBytes:
		switch variant {
		case 0:
			v.Bytes, v.Length = []byte("signature"), 9
		case 1:
			v.Null = true
		case 2:
			v.Length = 64 // a size query's answer
		}
	}
	return v
}

// sampleMsgParam is a message parameter of each form arg takes.
func sampleMsgParam(arg *calls.Arg, variant int) *Param {
	out := arg.Kind == calls.MsgParamOut
	switch {
	case variant == 1:
		return &Param{Kind: calls.PNone}
	case len(arg.Structs) == 0 || variant == 2 && !out:
		return &Param{Kind: calls.PBytes, Bytes: []byte("bytes of " + arg.Name)}
	case variant == 0:
		p := GCMMessageParams{IV: bytes.Repeat([]byte{1}, 12), IVFixedBits: 32, IVGenerator: ck.CKG_GENERATE_COUNTER,
			Tag: bytes.Repeat([]byte{2}, 16), TagOut: out, TagCap: 16}
		if out {
			p.Tag = nil
		}
		q := p.Param()
		return &q
	}
	q := ChaCha20Poly1305MsgParams{Nonce: []byte{}, TagOut: true, TagNull: true, TagCap: 16}.Param()
	return &q
}

// sampleMsgOut is what a MsgParamOut reply writes back, in each form.
func sampleMsgOut(arg *calls.Arg, variant int) *Param {
	switch variant {
	case 0:
		return &Param{Kind: calls.PStruct, Struct: "CK_GCM_MESSAGE_PARAMS", Fields: []FieldValue{
			{Name: "pIv", Kind: calls.FBytes, Bytes: bytes.Repeat([]byte{3}, 12)},
			{Name: "pTag", Kind: calls.FBytes, Bytes: bytes.Repeat([]byte{4}, 16)},
		}}
	case 1:
		return &Param{Kind: calls.PNone}
	}
	return &Param{Kind: calls.PStruct, Struct: "CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS", Fields: []FieldValue{
		{Name: "pTag", Kind: calls.FBytes, Null: true},
	}}
}

func resultCases() []resultCase {
	var cases []resultCase
	for _, c := range forwarded() {
		for variant := range variants {
			vals := make([]Value, len(c.Args))
			for i := range c.Args {
				vals[i] = sampleOutput(&c.Args[i], variant)
			}
			cases = append(cases, resultCase{name: c.Name + "/" + variantNames[variant], call: c, rv: ck.CKR_OK, vals: vals})
		}
	}
	// The size-query replies of ck.CKR_BUFFER_TOO_SMALL, and C_GetAttributeValue's
	// other rvs that carry results.
	for _, name := range []string{"C_Sign", "C_GetSlotList", "C_Encrypt"} {
		c, _ := calls.ByName(name)
		vals := make([]Value, len(c.Args))
		for i := range c.Args {
			vals[i] = sampleOutput(&c.Args[i], 1)
		}
		cases = append(cases, resultCase{name: name + "/too-small", call: c, rv: ck.CKR_BUFFER_TOO_SMALL, vals: vals})
	}
	c, _ := calls.ByName("C_GetAttributeValue")
	for _, rv := range []uint64{ck.CKR_ATTRIBUTE_SENSITIVE, ck.CKR_ATTRIBUTE_TYPE_INVALID, ck.CKR_BUFFER_TOO_SMALL} {
		vals := []Value{{}, {}, sampleOutput(&c.Args[2], 0)}
		cases = append(cases, resultCase{name: fmt.Sprintf("C_GetAttributeValue/rv-%#x", rv), call: c, rv: rv, vals: vals})
	}
	return cases
}

// Equality of decoded values: nil and empty slices are equal (the Null
// flags carry NULL), everything else must match.

func equalAttrs(a, b []Attribute) bool {
	return slices.EqualFunc(a, b, func(x, y Attribute) bool {
		return x.Type == y.Type && x.Null == y.Null && bytes.Equal(x.Value, y.Value) && equalAttrs(x.Nested, y.Nested)
	})
}

func equalFields(a, b []FieldValue) bool {
	return slices.EqualFunc(a, b, func(x, y FieldValue) bool {
		return x.Name == y.Name && x.Kind == y.Kind && x.Ulong == y.Ulong && x.Byte == y.Byte &&
			bytes.Equal(x.Bytes, y.Bytes) && x.Null == y.Null && x.Cap == y.Cap && equalFields(x.Fields, y.Fields)
	})
}

func equalMech(a, b *Mechanism) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Type == b.Type && a.Present == b.Present && a.Param.Kind == b.Param.Kind &&
		a.Param.Struct == b.Param.Struct && bytes.Equal(a.Param.Bytes, b.Param.Bytes) &&
		a.Param.Ulong == b.Param.Ulong && equalFields(a.Param.Fields, b.Param.Fields)
}

func equalParam(a, b *Param) bool {
	if a == nil || b == nil {
		return a == b || a == nil && b.Kind == calls.PNone || b == nil && a.Kind == calls.PNone
	}
	return a.Kind == b.Kind && a.Struct == b.Struct && bytes.Equal(a.Bytes, b.Bytes) &&
		(a.Bytes == nil) == (b.Bytes == nil) && equalFields(a.Fields, b.Fields)
}

func equalValue(a, b Value) bool {
	sa, sb := "", ""
	if a.Struct != nil {
		sa = string(appendStruct(nil, a.Struct))
	}
	if b.Struct != nil {
		sb = string(appendStruct(nil, b.Struct))
	}
	return a.Ulong == b.Ulong && a.Byte == b.Byte && bytes.Equal(a.Bytes, b.Bytes) && a.Null == b.Null &&
		equalAttrs(a.Template, b.Template) && equalMech(a.Mechanism, b.Mechanism) && a.Out == b.Out &&
		slices.Equal(a.Query, b.Query) && a.Length == b.Length && slices.Equal(a.Ulongs, b.Ulongs) &&
		slices.EqualFunc(a.Answers, b.Answers, func(x, y Answer) bool {
			return x.Length == y.Length && bytes.Equal(x.Value, y.Value) && (x.Value == nil) == (y.Value == nil)
		}) && sa == sb && equalParam(a.Param, b.Param)
}

func checkValues(t *testing.T, want, got []Value) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d values, want %d", len(got), len(want))
	}
	for i := range want {
		if !equalValue(want[i], got[i]) {
			t.Errorf("value %d: got %s, want %s", i, dump(got[i]), dump(want[i]))
		}
	}
}

// dump prints a value in full, for test failures (String redacts).
func dump(v Value) string {
	type plain Value
	return fmt.Sprintf("%+v", plain(v))
}
