package wire

import (
	"bufio"
	"bytes"
	"errors"
	"hsmemu/cryptoki/ck"
	"strings"
	"testing"

	"hsmemu/cryptoki/calls"
)

func TestResultsRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range resultCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			body, err := EncodeResults(tc.call, tc.vals)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeResults(tc.call, tc.rv, body)
			if err != nil {
				t.Fatal(err)
			}
			checkValues(t, tc.vals, got)
			again, err := EncodeResults(tc.call, got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, body) {
				t.Fatalf("re-encoded\n%x\nwant\n%x", again, body)
			}
			for k := range len(body) {
				if _, err := DecodeResults(tc.call, tc.rv, body[:k]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("truncated at %d of %d: %v", k, len(body), err)
				}
			}
			if _, err := DecodeResults(tc.call, tc.rv, append(body[:len(body):len(body)], 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("trailing byte: %v", err)
			}
		})
	}
}

// TestSizeQuery is the convention of docs/protocol.md: NULL → ck.CKR_OK with
// the length; short → ck.CKR_BUFFER_TOO_SMALL with the length; enough → data.
func TestSizeQuery(t *testing.T) {
	t.Parallel()
	data := []byte("0123456789")
	items := []uint64{1, 2, 3}
	tests := []struct {
		name     string
		spec     OutSpec
		rv       uint64
		withData bool
	}{
		{"null", OutSpec{Present: false, Capacity: 1 << 20}, ck.CKR_OK, false},
		{"null-zero", OutSpec{}, ck.CKR_OK, false},
		{"empty", OutSpec{Present: true, Capacity: 0}, ck.CKR_BUFFER_TOO_SMALL, false},
		{"short-by-one", OutSpec{Present: true, Capacity: 2}, ck.CKR_BUFFER_TOO_SMALL, false},
		{"exact", OutSpec{Present: true, Capacity: 3}, ck.CKR_OK, true},
		{"larger", OutSpec{Present: true, Capacity: 1<<64 - 1}, ck.CKR_OK, true},
	}
	for _, tt := range tests {
		t.Run("bytes/"+tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustCall(t, "C_Sign")
			spec := tt.spec
			if spec.Capacity == 2 || spec.Capacity == 3 {
				spec.Capacity += uint64(len(data)) - 3
			}
			r := NewResults(c)
			rv := r.OutBytes(spec, data)
			if rv != tt.rv {
				t.Fatalf("rv %#x, want %#x", rv, tt.rv)
			}
			vals, err := DecodeResults(c, rv, r.Finish())
			if err != nil {
				t.Fatal(err)
			}
			v := vals[2]
			if v.Length != uint64(len(data)) || v.Null == tt.withData || tt.withData && !bytes.Equal(v.Bytes, data) {
				t.Fatalf("got %s", dump(v))
			}
		})
		t.Run("ulongs/"+tt.name, func(t *testing.T) {
			t.Parallel()
			c := mustCall(t, "C_GetMechanismList")
			r := NewResults(c)
			rv := r.OutUlongs(tt.spec, items)
			if rv != tt.rv {
				t.Fatalf("rv %#x, want %#x", rv, tt.rv)
			}
			vals, err := DecodeResults(c, rv, r.Finish())
			if err != nil {
				t.Fatal(err)
			}
			v := vals[1]
			if v.Length != 3 || v.Null == tt.withData || tt.withData && !equalValue(Value{Ulongs: items}, Value{Ulongs: v.Ulongs}) {
				t.Fatalf("got %s", dump(v))
			}
		})
	}
}

// The builder writes what EncodeResults writes for the same outputs.
func TestResultsBuilder(t *testing.T) {
	t.Parallel()
	token := &TokenInfo{Label: "tok", ManufacturerID: "hsmemu", Flags: 0x40D, MaxPinLen: 64,
		HardwareVersion: CKVersion{1, 0}, UTCTime: "2026010112000000"}
	tests := []struct {
		call  string
		build func(r *Results)
		vals  []Value
	}{
		{"C_CloseSession", func(r *Results) {}, []Value{{}}},
		{"C_OpenSession", func(r *Results) { r.Ulong(42) }, []Value{{}, {}, {}, {}, {Ulong: 42}}},
		{"C_GenerateKeyPair", func(r *Results) { r.Ulong(1); r.Ulong(2) },
			[]Value{{}, {}, {}, {}, {Ulong: 1}, {Ulong: 2}}},
		{"C_GetTokenInfo", func(r *Results) { r.Struct(token) }, []Value{{}, {Struct: token}}},
		{"C_FindObjects", func(r *Results) { r.Handles([]uint64{5, 6}) }, []Value{{}, {Ulongs: []uint64{5, 6}}}},
		{"C_FindObjects", func(r *Results) { r.Handles(nil) }, []Value{{}, {Ulongs: []uint64{}}}},
		{"C_GenerateRandom", func(r *Results) { r.Filled([]byte("abcd")) }, []Value{{}, {Bytes: []byte("abcd")}}},
		{"C_GetAttributeValue", func(r *Results) {
			r.Answers([]Answer{{3, []byte("abc")}, {ck.CK_UNAVAILABLE_INFORMATION, nil}})
		}, []Value{{}, {}, {Answers: []Answer{{3, []byte("abc")}, {ck.CK_UNAVAILABLE_INFORMATION, nil}}}}},
	}
	var r Results // reused across calls
	for _, tt := range tests {
		c := mustCall(t, tt.call)
		r.Reset(c)
		tt.build(&r)
		got := r.Finish()
		if got == nil {
			t.Fatalf("%s: nil results", tt.call)
		}
		want, err := EncodeResults(c, tt.vals)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: builder\n%x\nEncodeResults\n%x", tt.call, got, want)
		}
	}
}

func TestResultsAppendReply(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_Sign")
	r := NewResults(c)
	for _, tt := range []struct {
		spec OutSpec
		has  bool
	}{{OutSpec{}, true}, {OutSpec{true, 1}, true}, {OutSpec{true, 64}, true}} {
		r.Reset(c)
		rv := r.OutBytes(tt.spec, []byte("sig"))
		p, _, err := ReadReply(bufio.NewReader(bytes.NewReader(r.AppendReply(nil, 9, rv))), nil)
		if err != nil || p.HasResults != tt.has || p.RV != rv {
			t.Fatalf("%+v: %v %v", tt.spec, p, err)
		}
	}
	// An error rv goes without results, even when some were supplied or
	// some are missing.
	r.Reset(c)
	p, _, err := ReadReply(bufio.NewReader(bytes.NewReader(r.AppendReply(nil, 9, ck.CKR_KEY_HANDLE_INVALID))), nil)
	if err != nil || p.HasResults || p.RV != ck.CKR_KEY_HANDLE_INVALID {
		t.Fatalf("%v %v", p, err)
	}
}

func TestResultsMisusePanics(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		call  string
		build func(r *Results)
	}{
		"wrong kind":     {"C_OpenSession", func(r *Results) { r.OutBytes(OutSpec{}, nil) }},
		"too many":       {"C_OpenSession", func(r *Results) { r.Ulong(1); r.Ulong(2) }},
		"none expected":  {"C_CloseSession", func(r *Results) { r.Ulong(1) }},
		"missing":        {"C_GenerateKeyPair", func(r *Results) { r.Ulong(1); r.Finish() }},
		"wrong struct":   {"C_GetTokenInfo", func(r *Results) { r.Struct(&SlotInfo{}) }},
		"bad answer":     {"C_GetAttributeValue", func(r *Results) { r.Answers([]Answer{{Length: 2, Value: []byte{1}}}) }},
		"too many items": {"C_FindObjects", func(r *Results) { r.Handles(make([]uint64, MaxUlongs+1)) }},
		"no call":        {"", func(r *Results) { r.Finish() }},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var r Results
			if tt.call != "" {
				r.Reset(mustCall(t, tt.call))
			}
			defer func() {
				if p := recover(); p == nil || !strings.Contains(p.(string), "internal error") {
					t.Fatalf("recovered %v", p)
				}
			}()
			tt.build(&r)
			r.Finish()
		})
	}
}

func TestDecodeResultsRefuses(t *testing.T) {
	t.Parallel()
	u32 := func(v uint32) []byte { return appendU32(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		call string
		rv   uint64
		body []byte
	}{
		{"rv without results", "C_Sign", ck.CKR_KEY_HANDLE_INVALID, nil},
		{"sensitive outside GetAttributeValue", "C_Sign", ck.CKR_ATTRIBUTE_SENSITIVE, cat(be(0), u32(nullLen))},
		{"length disagrees", "C_Sign", ck.CKR_OK, cat(be(3), u32(2), []byte("ab"))},
		{"data with too-small", "C_Sign", ck.CKR_BUFFER_TOO_SMALL, cat(be(2), u32(2), []byte("ab"))},
		{"count disagrees", "C_GetSlotList", ck.CKR_OK, cat(be(2), u32(1), be(7))},
		{"ulongs over cap", "C_GetSlotList", ck.CKR_OK, cat(be(2), u32(MaxUlongs+1))},
		{"NULL handles", "C_FindObjects", ck.CKR_OK, u32(nullLen)},
		{"NULL filled", "C_GenerateRandom", ck.CKR_OK, u32(nullLen)},
		{"answer disagrees", "C_GetAttributeValue", ck.CKR_OK, cat(u32(1), be(4), u32(3), []byte("abc"))},
		{"answers over cap", "C_GetAttributeValue", ck.CKR_OK, u32(MaxAttrs + 1)},
		{"struct short", "C_GetSessionInfo", ck.CKR_OK, cat(be(1), be(2), be(3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := DecodeResults(mustCall(t, tt.call), tt.rv, tt.body); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := DecodeResults(mustCall(t, "C_GetInfo"), ck.CKR_OK, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("local call: %v", err)
	}
}

func TestHasResults(t *testing.T) {
	t.Parallel()
	get, sign := mustCall(t, "C_GetAttributeValue"), mustCall(t, "C_Sign")
	for _, tt := range []struct {
		c    *calls.Call
		rv   uint64
		want bool
	}{
		{sign, ck.CKR_OK, true}, {sign, ck.CKR_BUFFER_TOO_SMALL, true}, {sign, ck.CKR_ATTRIBUTE_SENSITIVE, false},
		{sign, ck.CKR_GENERAL_ERROR, false}, {get, ck.CKR_ATTRIBUTE_SENSITIVE, true},
		{get, ck.CKR_ATTRIBUTE_TYPE_INVALID, true}, {get, ck.CKR_OBJECT_HANDLE_INVALID, false},
	} {
		if got := HasResults(tt.c, tt.rv); got != tt.want {
			t.Errorf("%s rv %#x: %v", tt.c.Name, tt.rv, got)
		}
	}
}

func TestAnswerFor(t *testing.T) {
	t.Parallel()
	v := []byte("value")
	for _, tt := range []struct {
		name string
		q    Query
		want Answer
		rv   uint64
	}{
		{"null", Query{Capacity: 1}, Answer{Length: 5}, ck.CKR_OK},
		{"short", Query{Present: true, Capacity: 4}, Answer{Length: ck.CK_UNAVAILABLE_INFORMATION}, ck.CKR_BUFFER_TOO_SMALL},
		{"exact", Query{Present: true, Capacity: 5}, Answer{Length: 5, Value: v}, ck.CKR_OK},
	} {
		got, rv := AnswerFor(tt.q, v)
		if rv != tt.rv || got.Length != tt.want.Length || !bytes.Equal(got.Value, tt.want.Value) || (got.Value == nil) != (tt.want.Value == nil) {
			t.Errorf("%s: %+v %#x", tt.name, got, rv)
		}
	}
	if a, _ := AnswerFor(Query{Present: true}, nil); a.Value == nil || a.Length != 0 {
		t.Error("an empty value must be returned non-NULL")
	}
}
