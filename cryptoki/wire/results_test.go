package wire

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"

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
		{name: "null", spec: OutSpec{Present: false, Capacity: 1 << 20}, rv: ck.CKR_OK, withData: false},
		{name: "null-zero", spec: OutSpec{}, rv: ck.CKR_OK, withData: false},
		{name: "empty", spec: OutSpec{Present: true, Capacity: 0}, rv: ck.CKR_BUFFER_TOO_SMALL, withData: false},
		{name: "short-by-one", spec: OutSpec{Present: true, Capacity: 2}, rv: ck.CKR_BUFFER_TOO_SMALL, withData: false},
		{name: "exact", spec: OutSpec{Present: true, Capacity: 3}, rv: ck.CKR_OK, withData: true},
		{name: "larger", spec: OutSpec{Present: true, Capacity: 1<<64 - 1}, rv: ck.CKR_OK, withData: true},
		// A prefetch: a NULL buffer that gets the data with its length.
		{name: "prefetch", spec: OutSpec{Prefetch: true}, rv: ck.CKR_OK, withData: true},
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
		if tt.spec.Prefetch {
			continue // OutBytes only
		}
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
// A prefetch of more than MaxPrefetch bytes gets the length only, as a
// plain size query.
func TestPrefetchBound(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_Encrypt")
	for _, n := range []int{MaxPrefetch, MaxPrefetch + 1} {
		r := NewResults(c)
		data := make([]byte, n)
		if rv := r.OutBytes(OutSpec{Prefetch: true}, data); rv != ck.CKR_OK {
			t.Fatalf("%d bytes: rv %#x", n, rv)
		}
		vals, err := DecodeResults(c, ck.CKR_OK, r.Finish())
		if err != nil {
			t.Fatal(err)
		}
		if v := vals[2]; v.Length != uint64(n) || v.Null != (n > MaxPrefetch) {
			t.Fatalf("%d bytes: length %d, null %v", n, v.Length, v.Null)
		}
	}
}

func TestResultsBuilder(t *testing.T) {
	t.Parallel()
	token := &TokenInfo{Label: "tok", ManufacturerID: "hsmemu", Flags: 0x40D, MaxPinLen: 64,
		HardwareVersion: CKVersion{Major: 1, Minor: 0}, UTCTime: "2026010112000000"}
	tests := []struct {
		call  string
		build func(r *Results)
		vals  []Value
	}{
		{call: "C_CloseSession", build: func(r *Results) {}, vals: []Value{{}}},
		{call: "C_OpenSession", build: func(r *Results) { r.Ulong(42) }, vals: []Value{{}, {}, {}, {}, {Ulong: 42}}},
		{call: "C_GenerateKeyPair", build: func(r *Results) { r.Ulong(1); r.Ulong(2) },
			vals: []Value{{}, {}, {}, {}, {Ulong: 1}, {Ulong: 2}}},
		{call: "C_GetTokenInfo", build: func(r *Results) { r.Struct(token) }, vals: []Value{{}, {Struct: token}}},
		{call: "C_FindObjects", build: func(r *Results) { r.Handles([]uint64{5, 6}) }, vals: []Value{{}, {Ulongs: []uint64{5, 6}}}},
		{call: "C_FindObjects", build: func(r *Results) { r.Handles(nil) }, vals: []Value{{}, {Ulongs: []uint64{}}}},
		{call: "C_GenerateRandom", build: func(r *Results) { r.Filled([]byte("abcd")) }, vals: []Value{{}, {Bytes: []byte("abcd")}}},
		{call: "C_GetAttributeValue", build: func(r *Results) {
			r.Answers([]Answer{{Length: 3, Value: []byte("abc")}, {Length: ck.CK_UNAVAILABLE_INFORMATION, Value: nil}})
		}, vals: []Value{{}, {}, {Answers: []Answer{{Length: 3, Value: []byte("abc")}, {Length: ck.CK_UNAVAILABLE_INFORMATION, Value: nil}}}}},
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
	}{{spec: OutSpec{}, has: true}, {spec: OutSpec{Present: true, Capacity: 1}, has: true}, {spec: OutSpec{Present: true, Capacity: 64}, has: true}} {
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
		"wrong kind":     {call: "C_OpenSession", build: func(r *Results) { r.OutBytes(OutSpec{}, nil) }},
		"too many":       {call: "C_OpenSession", build: func(r *Results) { r.Ulong(1); r.Ulong(2) }},
		"none expected":  {call: "C_CloseSession", build: func(r *Results) { r.Ulong(1) }},
		"missing":        {call: "C_GenerateKeyPair", build: func(r *Results) { r.Ulong(1); r.Finish() }},
		"wrong struct":   {call: "C_GetTokenInfo", build: func(r *Results) { r.Struct(&SlotInfo{}) }},
		"bad answer":     {call: "C_GetAttributeValue", build: func(r *Results) { r.Answers([]Answer{{Length: 2, Value: []byte{1}}}) }},
		"too many items": {call: "C_FindObjects", build: func(r *Results) { r.Handles(make([]uint64, MaxUlongs+1)) }},
		"no call":        {call: "", build: func(r *Results) { r.Finish() }},
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
		{name: "rv without results", call: "C_Sign", rv: ck.CKR_KEY_HANDLE_INVALID, body: nil},
		{name: "sensitive outside GetAttributeValue", call: "C_Sign", rv: ck.CKR_ATTRIBUTE_SENSITIVE, body: cat(be(0), u32(nullLen))},
		{name: "length disagrees", call: "C_Sign", rv: ck.CKR_OK, body: cat(be(3), u32(2), []byte("ab"))},
		{name: "data with too-small", call: "C_Sign", rv: ck.CKR_BUFFER_TOO_SMALL, body: cat(be(2), u32(2), []byte("ab"))},
		{name: "count disagrees", call: "C_GetSlotList", rv: ck.CKR_OK, body: cat(be(2), u32(1), be(7))},
		{name: "ulongs over cap", call: "C_GetSlotList", rv: ck.CKR_OK, body: cat(be(2), u32(MaxUlongs+1))},
		{name: "NULL handles", call: "C_FindObjects", rv: ck.CKR_OK, body: u32(nullLen)},
		{name: "NULL filled", call: "C_GenerateRandom", rv: ck.CKR_OK, body: u32(nullLen)},
		{name: "answer disagrees", call: "C_GetAttributeValue", rv: ck.CKR_OK, body: cat(u32(1), be(4), u32(3), []byte("abc"))},
		{name: "answers over cap", call: "C_GetAttributeValue", rv: ck.CKR_OK, body: u32(MaxAttrs + 1)},
		{name: "struct short", call: "C_GetSessionInfo", rv: ck.CKR_OK, body: cat(be(1), be(2), be(3))},
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
		{c: sign, rv: ck.CKR_OK, want: true}, {c: sign, rv: ck.CKR_BUFFER_TOO_SMALL, want: true}, {c: sign, rv: ck.CKR_ATTRIBUTE_SENSITIVE, want: false},
		{c: sign, rv: ck.CKR_GENERAL_ERROR, want: false}, {c: get, rv: ck.CKR_ATTRIBUTE_SENSITIVE, want: true},
		{c: get, rv: ck.CKR_ATTRIBUTE_TYPE_INVALID, want: true}, {c: get, rv: ck.CKR_OBJECT_HANDLE_INVALID, want: false},
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
		{name: "null", q: Query{Capacity: 1}, want: Answer{Length: 5}, rv: ck.CKR_OK},
		{name: "short", q: Query{Present: true, Capacity: 4}, want: Answer{Length: ck.CK_UNAVAILABLE_INFORMATION}, rv: ck.CKR_BUFFER_TOO_SMALL},
		{name: "exact", q: Query{Present: true, Capacity: 5}, want: Answer{Length: 5, Value: v}, rv: ck.CKR_OK},
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
