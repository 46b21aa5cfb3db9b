package wire

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

func mustCall(t testing.TB, name string) *calls.Call {
	t.Helper()
	c, ok := calls.ByName(name)
	if !ok {
		t.Fatalf("no call %s", name)
	}
	return c
}

func TestArgsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range argCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body, err := EncodeArgs(tc.call, tc.vals)
			if err != nil {
				t.Fatal(err)
			}
			a, err := DecodeArgs(tc.call, body)
			if err != nil {
				t.Fatal(err)
			}
			checkValues(t, tc.vals, a.Values())
			again, err := EncodeArgs(tc.call, a.Values())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, body) {
				t.Fatalf("re-encoded\n%x\nwant\n%x", again, body)
			}
		})
	}
}

func TestEveryForwardedCallHasCases(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, tc := range argCases() {
		seen[tc.call.Name] = true
	}
	for _, c := range forwarded() {
		if !seen[c.Name] {
			t.Errorf("%s has no round-trip case", c.Name)
		}
	}
}

// TestArgsMalformed: every strict prefix of every case, and every case with
// a trailing byte, is ErrMalformed, never a panic.
func TestArgsMalformed(t *testing.T) {
	t.Parallel()
	for _, tc := range argCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body, err := EncodeArgs(tc.call, tc.vals)
			if err != nil {
				t.Fatal(err)
			}
			var a Args
			for k := range len(body) {
				if err := a.Decode(tc.call, body[:k]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("truncated at %d of %d: %v", k, len(body), err)
				}
			}
			if err := a.Decode(tc.call, append(body[:len(body):len(body)], 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("trailing byte: %v", err)
			}
			if a.Call() != nil || a.Len() != 0 {
				t.Fatal("Args not empty after an error")
			}
		})
	}
}

// Hand-made bodies that break one rule each.
func TestArgsRefused(t *testing.T) {
	t.Parallel()
	u32 := func(v uint32) []byte { return appendU32(nil, v) }
	u64 := be
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	session := u64(1)
	tests := []struct {
		name string
		call string
		body []byte
	}{
		{name: "bytes over cap", call: "C_SeedRandom", body: cat(session, u32(MaxBytes+1))},
		{name: "bytes over input", call: "C_SeedRandom", body: cat(session, u32(10), []byte("short"))},
		{name: "label short", call: "C_InitToken", body: cat(u64(0), u32(nullLen), u32(3), []byte("abc"))},
		{name: "label long", call: "C_InitToken", body: cat(u64(0), u32(nullLen), u32(33), bytes.Repeat([]byte{' '}, 33))},
		{name: "outspec presence 3", call: "C_Sign", body: cat(session, u32(0), []byte{3}, u64(32))},
		{name: "prefetch where none is", call: "C_EncapsulateKey", body: cat(session, u64(ck.CKM_ML_KEM), []byte{0}, u64(2), u32(0), []byte{2}, u64(32))},
		{name: "filled over cap", call: "C_GenerateRandom", body: cat(session, u64(MaxBytes+1))},
		{name: "template over cap", call: "C_FindObjectsInit", body: cat(session, u32(MaxAttrs+1))},
		{name: "template count over input", call: "C_FindObjectsInit", body: cat(session, u32(MaxAttrs))},
		{name: "template NULL marker", call: "C_FindObjectsInit", body: cat(session, u32(nullLen))},
		{name: "nested presence 2", call: "C_FindObjectsInit", body: cat(session, u32(1), u64(ck.CKA_WRAP_TEMPLATE), []byte{2})},
		{name: "nested too deep", call: "C_FindObjectsInit", body: cat(session, u32(1), u64(ck.CKA_WRAP_TEMPLATE), []byte{1},
			u32(1), u64(ck.CKA_UNWRAP_TEMPLATE), []byte{0})},
		{name: "query over cap", call: "C_GetAttributeValue", body: cat(session, u64(2), u32(MaxAttrs+1))},
		{name: "query presence 2", call: "C_GetAttributeValue", body: cat(session, u64(2), u32(1), u64(ck.CKA_VALUE), []byte{2}, u64(0))},
		{name: "mechanism presence 2", call: "C_DigestInit", body: cat(session, u64(ck.CKM_SHA256), []byte{2})},
		{name: "mechanism empty bytes param", call: "C_EncryptInit", body: cat(session, u64(ck.CKM_AES_CBC), []byte{1}, u32(0), u64(2))},
		{name: "mechanism NULL bytes param", call: "C_EncryptInit", body: cat(session, u64(ck.CKM_AES_CBC), []byte{1}, u32(nullLen), u64(2))},
		{name: "unlisted empty param", call: "C_DigestInit", body: cat(session, u64(ck.CKM_SHA256), []byte{1}, u32(0))},
		{name: "struct truncated", call: "C_SignInit", body: cat(session, u64(ck.CKM_RSA_PKCS_PSS), []byte{1}, u64(ck.CKM_SHA256), u64(2))},
		{name: "nested struct presence 2", call: "C_WrapKey", body: cat(session, u64(ck.CKM_RSA_AES_KEY_WRAP), []byte{1}, u64(256), []byte{2})},
		{name: "struct bytes over cap", call: "C_EncryptInit", body: cat(session, u64(ck.CKM_AES_GCM), []byte{1}, u32(MaxBytes+1))},
		{name: "empty body", call: "C_CloseSession", body: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeArgs(mustCall(t, tt.call), tt.body)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
			if RV(err) != ck.CKR_ARGUMENTS_BAD {
				t.Fatalf("RV %#x", RV(err))
			}
		})
	}
}

func TestArgsNotForwarded(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"C_Initialize", "C_GetInfo", "C_CancelFunction", "C_GetInterface"} {
		c := mustCall(t, name)
		if _, err := DecodeArgs(c, nil); !errors.Is(err, ErrUnsupported) || RV(err) != ck.CKR_FUNCTION_NOT_SUPPORTED {
			t.Errorf("%s: DecodeArgs: %v", name, err)
		}
		if _, err := EncodeArgs(c, nil); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: EncodeArgs: %v", name, err)
		}
	}
	if _, err := DecodeArgs(nil, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("nil call: %v", err)
	}
}

// NULL, empty and absent stay distinct through the codec.
func TestArgsNullIsNotEmpty(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_Login")
	for _, tt := range []struct {
		name string
		pin  Value
	}{{name: "null", pin: Value{Null: true}}, {name: "empty", pin: Value{Bytes: []byte{}}}, {name: "nil-means-empty", pin: Value{}}} {
		body, err := EncodeArgs(c, []Value{{Ulong: 1}, {Ulong: 1}, tt.pin})
		if err != nil {
			t.Fatal(err)
		}
		a, err := DecodeArgs(c, body)
		if err != nil {
			t.Fatal(err)
		}
		pin, null := a.Bytes(2)
		if null != tt.pin.Null || len(pin) != 0 {
			t.Errorf("%s: got %q null=%v", tt.name, pin, null)
		}
	}
}

func TestArgsAccessors(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_UnwrapKey")
	vals := []Value{{Ulong: 9}, {Mechanism: sampleMechanism(0)}, {Ulong: 10}, {Bytes: []byte("wrapped")},
		{Template: sampleTemplate(2)}, {}}
	body, err := EncodeArgs(c, vals)
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeArgs(c, body)
	if err != nil {
		t.Fatal(err)
	}
	if a.Call() != c || a.Len() != 6 || a.Ulong(0) != 9 || a.Ulong(2) != 10 {
		t.Fatal("wrong ulongs or call")
	}
	if b, null := a.Bytes(3); string(b) != "wrapped" || null {
		t.Fatalf("bytes %q %v", b, null)
	}
	tmpl := a.Template(4)
	if !equalAttrs(tmpl, sampleTemplate(2)) || tmpl[0].Nested[0].Type != ck.CKA_CLASS || !tmpl[1].Null {
		t.Fatal("template")
	}
	gcm, err := a.Mechanism(1).Param.GCMParams()
	if err != nil || gcm.TagBits != 128 || string(gcm.AAD) != "aad" {
		t.Fatalf("gcm %+v %v", gcm, err)
	}
	for name, f := range map[string]func(){
		"wrong kind":     func() { a.Bytes(0) },
		"out of range":   func() { a.Ulong(6) },
		"negative":       func() { a.Ulong(-1) },
		"output":         func() { a.Out(5) },
		"template as ul": func() { a.Ulong(4) },
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(r.(string), "internal error") {
					t.Errorf("%s: recovered %v", name, r)
				}
			}()
			f()
		}()
	}
}

func TestArgsStringRedacts(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_CreateObject")
	secret := "TOP-SECRET-KEY-MATERIAL"
	body, err := EncodeArgs(c, []Value{{Ulong: 1}, {Template: []Attribute{{Type: ck.CKA_VALUE, Value: []byte(secret)}}}, {}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeArgs(c, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{a.String(), a.GoString(), a.Values()[1].String()} {
		if strings.Contains(s, secret) || strings.Contains(s, "TOP") {
			t.Fatalf("leaks: %s", s)
		}
	}
	t.Log(a)
}

func TestEncodeArgsRefuses(t *testing.T) {
	t.Parallel()
	gcm := &Mechanism{Type: ck.CKM_AES_GCM, Present: true, Param: PSSParams{}.Param()}
	nested := []Attribute{{Type: ck.CKA_WRAP_TEMPLATE, Nested: []Attribute{{Type: ck.CKA_DERIVE_TEMPLATE}}}}
	tests := []struct {
		name string
		call string
		vals []Value
	}{
		{name: "count", call: "C_CloseSession", vals: []Value{{}, {}}},
		{name: "kind", call: "C_CloseSession", vals: []Value{{Kind: calls.Bytes}}},
		{name: "label", call: "C_InitToken", vals: []Value{{}, {Null: true}, {Bytes: []byte("short")}}},
		{name: "nil mechanism", call: "C_DigestInit", vals: []Value{{}, {}}},
		{name: "param of another struct", call: "C_EncryptInit", vals: []Value{{}, {Mechanism: gcm}, {}}},
		{name: "empty bytes param", call: "C_EncryptInit", vals: []Value{{}, {Mechanism: &Mechanism{Type: ck.CKM_AES_CBC, Present: true, Param: Param{Kind: calls.PBytes}}}, {}}},
		{name: "nested too deep", call: "C_CreateObject", vals: []Value{{}, {Template: nested}, {}}},
		{name: "template with bytes", call: "C_CreateObject", vals: []Value{{}, {Template: []Attribute{{Type: ck.CKA_WRAP_TEMPLATE, Value: []byte{1}}}}, {}}},
		{name: "bytes with template", call: "C_CreateObject", vals: []Value{{}, {Template: []Attribute{{Type: ck.CKA_LABEL, Nested: []Attribute{}}}}, {}}},
		{name: "too many attributes", call: "C_CreateObject", vals: []Value{{}, {Template: make([]Attribute, MaxAttrs+1)}, {}}},
		{name: "over a frame", call: "C_SeedRandom", vals: []Value{{}, {Bytes: make([]byte, MaxFrame-8)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := EncodeArgs(mustCall(t, tt.call), tt.vals); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParamAccessors(t *testing.T) {
	t.Parallel()
	structs := map[string]func(p *Param) (any, error){
		"CK_GCM_PARAMS":                       func(p *Param) (any, error) { return p.GCMParams() },
		"CK_AES_CTR_PARAMS":                   func(p *Param) (any, error) { return p.CTRParams() },
		"CK_RSA_PKCS_OAEP_PARAMS":             func(p *Param) (any, error) { return p.OAEPParams() },
		"CK_RSA_PKCS_PSS_PARAMS":              func(p *Param) (any, error) { return p.PSSParams() },
		"CK_ECDH1_DERIVE_PARAMS":              func(p *Param) (any, error) { return p.ECDH1DeriveParams() },
		"CK_RSA_AES_KEY_WRAP_PARAMS":          func(p *Param) (any, error) { return p.RSAAESKeyWrapParams() },
		"CK_EDDSA_PARAMS":                     func(p *Param) (any, error) { return p.EdDSAParams() },
		"CK_HKDF_PARAMS":                      func(p *Param) (any, error) { return p.HKDFParams() },
		"CK_CHACHA20_PARAMS":                  func(p *Param) (any, error) { return p.ChaCha20Params() },
		"CK_SALSA20_CHACHA20_POLY1305_PARAMS": func(p *Param) (any, error) { return p.ChaCha20Poly1305Params() },
		"CK_SIGN_ADDITIONAL_CONTEXT":          func(p *Param) (any, error) { return p.SignContext() },
		"CK_HASH_SIGN_ADDITIONAL_CONTEXT":     func(p *Param) (any, error) { return p.HashSignContext() },
	}
	for name := range calls.Params {
		if slices.Contains(calls.MessageParams, name) {
			continue // TestMessageParamAccessors
		}
		if structs[name] == nil {
			t.Errorf("no typed accessor for %s", name)
		}
	}
	for name, get := range structs {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := sampleParam(name)
			// Through the wire: find a mechanism of this structure.
			var mt uint64
			for mtype, mp := range calls.Mechanisms {
				if mp.Struct == name {
					mt = mtype
				}
			}
			var r reader
			r.b, _ = appendMechanism(nil, &Mechanism{Type: mt, Present: true, Param: p})
			m := r.mechanism()
			if err := r.done(); err != nil {
				t.Fatal(err)
			}
			typed, err := get(&m.Param)
			if err != nil {
				t.Fatal(err)
			}
			// The typed value's Param is the generic form again.
			back := typed.(interface{ Param() Param }).Param()
			if !equalFields(back.Fields, p.Fields) || back.Struct != name {
				t.Fatalf("typed round trip: %+v", typed)
			}
			// Every other accessor refuses it.
			for other, get := range structs {
				if other == name {
					continue
				}
				if _, err := get(&m.Param); !errors.Is(err, ErrParam) || RV(err) != ck.CKR_MECHANISM_PARAM_INVALID {
					t.Errorf("%s accessor accepted %s: %v", other, name, err)
				}
			}
			if _, err := get(&Param{}); !errors.Is(err, ErrParam) {
				t.Errorf("absent parameter: %v", err)
			}
		})
	}
}

func TestParamTypedNulls(t *testing.T) {
	t.Parallel()
	p := GCMParams{IV: []byte{}, AAD: nil}.Param()
	g, err := p.GCMParams()
	if err != nil {
		t.Fatal(err)
	}
	if g.IV == nil || g.AAD != nil {
		t.Fatalf("IV nil=%v AAD nil=%v", g.IV == nil, g.AAD == nil)
	}
	wp := RSAAESKeyWrapParams{AESKeyBits: 1}.Param()
	w, _ := wp.RSAAESKeyWrapParams()
	if w.OAEP != nil {
		t.Fatal("NULL OAEP decoded as present")
	}
	ep := EdDSAParams{PHFlag: true}.Param()
	e, _ := ep.EdDSAParams()
	if !e.PHFlag {
		t.Fatal("phFlag")
	}
}

// TestParamUlong covers PUlong, which no mechanism of the table uses today.
// It edits calls.Mechanisms, so it does not run in parallel (parallel tests
// start only after every sequential one has finished).
func TestParamUlong(t *testing.T) {
	const vendor = ck.CKM_VENDOR_DEFINED | 0x77
	calls.Mechanisms[vendor] = calls.MechParam{Kind: calls.PUlong}
	defer delete(calls.Mechanisms, vendor)
	c := mustCall(t, "C_SignInit")
	m := &Mechanism{Type: vendor, Present: true, Param: Param{Kind: calls.PUlong, Ulong: 16}}
	body, err := EncodeArgs(c, []Value{{}, {Mechanism: m}, {}})
	if err != nil {
		t.Fatal(err)
	}
	if len(body) != 8+8+1+8+8 {
		t.Fatalf("body of %d bytes", len(body))
	}
	a, err := DecodeArgs(c, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Mechanism(1); !equalMech(got, m) {
		t.Fatalf("got %+v", got)
	}
	if _, err := DecodeArgs(c, body[:len(body)-9]); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
}

// Args keeps one mechanism and one message parameter per call, outside
// its per-argument storage: no call of the table may take two, or one of
// each, or the second would overwrite the first.
func TestOneMechanismPerCall(t *testing.T) {
	for _, c := range calls.Table {
		n := 0
		for _, a := range c.Args {
			switch a.Kind {
			case calls.Mechanism, calls.MsgParam, calls.MsgParamOut:
				n++
			}
		}
		if n > 1 {
			t.Errorf("%s takes %d mechanisms and message parameters; Args keeps one", c.Name, n)
		}
	}
}
