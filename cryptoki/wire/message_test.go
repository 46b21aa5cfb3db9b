package wire

import (
	"bytes"
	"errors"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// A message parameter's form must be one its argument takes, and its bytes
// neither NULL nor empty; anything else is malformed.
func TestMsgParamForms(t *testing.T) {
	t.Parallel()
	enc := mustCall(t, "C_EncryptMessageBegin")
	sig := mustCall(t, "C_SignMessageBegin")
	session := appendU64(nil, 1)
	gcm := GCMMessageParams{IV: make([]byte, 12), IVGenerator: ck.CKG_GENERATE, TagOut: true, TagCap: 16}.Param()
	good, err := EncodeArgs(enc, []Value{{}, {Param: &gcm}, {Bytes: []byte("aad")}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeArgs(enc, good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.MsgParam(1).GCMMessageParams(true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.IV) != 12 || got.IVGenerator != ck.CKG_GENERATE || !got.TagOut || got.TagCap != 16 || got.TagNull || got.Tag != nil {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := a.MsgParam(1).ChaCha20Poly1305MsgParams(true); !errors.Is(err, ErrParam) {
		t.Fatalf("the other structure's accessor: %v", err)
	}
	for _, tt := range []struct {
		name string
		call *calls.Call
		body []byte
	}{
		{"form unknown", enc, append(append(session, 9), appendU32(nil, 0)...)},
		{"structure the call does not take", sig, append(append(session, formStruct), good[9:]...)},
		{"empty bytes", sig, append(append(session, formBytes), appendU32(nil, 0)...)},
		{"NULL bytes", sig, append(append(session, formBytes), appendU32(nil, nullLen)...)},
		{"outspec presence", enc, bytes.Replace(good, []byte{1, 0, 0, 0, 0, 0, 0, 0, 16}, []byte{2, 0, 0, 0, 0, 0, 0, 0, 16}, 1)},
		{"truncated", enc, good[:20]},
	} {
		if _, err := DecodeArgs(tt.call, tt.body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// The daemon writes back exactly what the caller's buffers hold; a wrong
// length is a bug in the daemon, caught before it reaches the wire.
func TestMsgOutLengths(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_EncryptMessage")
	p := GCMMessageParams{IV: make([]byte, 12), TagOut: true, TagCap: 12}.Param()
	r := NewResults(c)
	r.MsgOut(&p, map[string][]byte{"pIv": bytes.Repeat([]byte{7}, 12), "pTag": bytes.Repeat([]byte{8}, 12)})
	r.OutBytes(OutSpec{Present: true, Capacity: 4}, []byte("ciph"))
	vals, err := DecodeResults(c, ck.CKR_OK, r.Finish())
	if err != nil {
		t.Fatal(err)
	}
	out := vals[1].Param
	if out.Struct != "CK_GCM_MESSAGE_PARAMS" || len(out.Fields) != 2 || !bytes.Equal(out.Fields[0].Bytes, bytes.Repeat([]byte{7}, 12)) ||
		!bytes.Equal(out.Fields[1].Bytes, bytes.Repeat([]byte{8}, 12)) {
		t.Fatalf("decoded %+v", out)
	}
	for name, outs := range map[string]map[string][]byte{
		"short IV":          {"pIv": make([]byte, 11)},
		"tag over its size": {"pTag": make([]byte, 16)},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: written back", name)
				}
			}()
			NewResults(c).MsgOut(&p, outs)
		}()
	}
	// Nothing written back: NULLs.
	r = NewResults(c)
	r.MsgOut(&p, nil)
	r.OutBytes(OutSpec{}, []byte("ciph"))
	vals, err = DecodeResults(c, ck.CKR_OK, r.Finish())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range vals[1].Param.Fields {
		if !f.Null {
			t.Errorf("%s written back", f.Name)
		}
	}
}

func TestOptOutBytes(t *testing.T) {
	t.Parallel()
	c := mustCall(t, "C_SignMessageNext")
	for _, tt := range []struct {
		name   string
		wanted bool
		spec   OutSpec
		rv     uint64
		data   bool
	}{
		{"no length pointer", false, OutSpec{}, ck.CKR_OK, false},
		{"size query", true, OutSpec{}, ck.CKR_OK, false},
		{"short", true, OutSpec{Present: true, Capacity: 3}, ck.CKR_BUFFER_TOO_SMALL, false},
		{"fits", true, OutSpec{Present: true, Capacity: 64}, ck.CKR_OK, true},
	} {
		body, err := EncodeArgs(c, []Value{{Ulong: 1}, {}, {Bytes: []byte("part")}, {Out: tt.spec, Null: !tt.wanted}})
		if err != nil {
			t.Fatal(err)
		}
		a, err := DecodeArgs(c, body)
		if err != nil {
			t.Fatal(err)
		}
		spec, wanted := a.OptOut(3)
		if wanted != tt.wanted || spec != tt.spec {
			t.Fatalf("%s: decoded %+v %v", tt.name, spec, wanted)
		}
		r := NewResults(c)
		rv := r.OptOutBytes(spec, wanted, []byte("signature"))
		if rv == 0 {
			rv = ck.CKR_OK
		}
		if rv != tt.rv {
			t.Fatalf("%s: rv %#x", tt.name, rv)
		}
		vals, err := DecodeResults(c, rv, r.Finish())
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		v := vals[3]
		if v.Null != !tt.wanted || (v.Bytes != nil) != tt.data || tt.wanted && v.Length != 9 {
			t.Fatalf("%s: result %+v", tt.name, v)
		}
	}
}
