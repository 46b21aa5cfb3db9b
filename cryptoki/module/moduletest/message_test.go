//go:build cgo

package moduletest

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// recorder keeps the requests a peer saw.
type recorder struct {
	mu   sync.Mutex
	reqs []Req
}

// add keeps a copy of q: its arguments alias the peer's read buffer.
func (r *recorder) add(q Req) {
	if q.Args != nil {
		body, err := wire.EncodeArgs(q.Call, q.Args.Values())
		if err == nil {
			q.Args, err = wire.DecodeArgs(q.Call, body)
		}
		if err != nil {
			panic(err)
		}
	}
	r.mu.Lock()
	r.reqs = append(r.reqs, q)
	r.mu.Unlock()
}

func (r *recorder) take() []Req {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

func msgSession(t *testing.T, h Handler) (*Module, *recorder) {
	t.Helper()
	rec := &recorder{}
	m, _ := session(t, func(q Req) Resp {
		rec.add(q)
		return h(q)
	})
	return m, rec
}

// The module reads C_EncryptMessage's parameter as the structure its size
// says, sends the IV and generator, and for the tag only the size of the
// caller's buffer; it writes back the IV and the tag the reply carries
// when the ciphertext comes, and nothing when it does not. A size query
// asks for the whole result (a prefetch): nothing of it is written back
// then, and the follow-up with the same arguments gets it from the module.
func TestEncryptMessageParams(t *testing.T) {
	newIV, tag := bytes.Repeat([]byte{0x1F}, 12), bytes.Repeat([]byte{0x7A}, 16)
	var withOuts atomic.Bool
	withOuts.Store(true)
	m, rec := msgSession(t, func(q Req) Resp {
		if q.Call.Name != "C_EncryptMessage" {
			return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		}
		p, spec := q.Args.MsgParam(1), q.Args.Out(4)
		return Reply(q.Call.Name, func(r *wire.Results) uint64 {
			outs := map[string][]byte{}
			if withOuts.Load() && (spec.Present && spec.Capacity >= 4 || spec.Prefetch) && p.Kind == calls.PStruct {
				if p.Struct == "CK_GCM_MESSAGE_PARAMS" {
					outs["pIv"] = newIV
				}
				outs["pTag"] = tag
			}
			r.MsgOut(p, outs)
			return r.OutBytes(spec, []byte("ciph"))
		})
	})
	p := &MsgParam{GCM: true, IV: bytes.Repeat([]byte{0xAA}, 12), FixedBits: 32, Generator: ck.CKG_GENERATE_COUNTER,
		Tag: make([]byte, 16), TagBits: 128}

	// A size query: the length, nothing written back.
	o := m.EncryptMessage(1, p, []byte("aad"), []byte("plain"), Buf{Null: true})
	if o.RV != 0 || o.Len != 4 || !bytes.Equal(p.IV, bytes.Repeat([]byte{0xAA}, 12)) || !bytes.Equal(p.Tag, make([]byte, 16)) {
		t.Fatalf("size query: %+v, IV %x, tag %x", o, p.IV, p.Tag)
	}
	reqs := rec.take()
	if len(reqs) != 1 || !reqs[0].Args.Out(4).Prefetch {
		t.Fatalf("size query: the daemon saw %v, want one prefetch", reqs)
	}
	q := reqs[0]
	gp, err := q.Args.MsgParam(1).GCMMessageParams(true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gp.IV, bytes.Repeat([]byte{0xAA}, 12)) || gp.IVFixedBits != 32 || gp.IVGenerator != ck.CKG_GENERATE_COUNTER ||
		!gp.TagOut || gp.TagNull || gp.TagCap != 16 || gp.Tag != nil {
		t.Fatalf("the daemon saw %+v", gp)
	}
	if aad, _ := q.Args.Bytes(2); string(aad) != "aad" {
		t.Fatalf("AAD %q", aad)
	}

	// The real call: the ciphertext, the IV and the tag, from the
	// module; then from the daemon, with the end of the message the
	// module handed over ahead of it.
	for _, from := range []string{"the module", "the daemon"} {
		p.IV = bytes.Repeat([]byte{0xAA}, 12)
		p.Tag = make([]byte, 16)
		o = m.EncryptMessage(1, p, []byte("aad"), []byte("plain"), Buf{Cap: 16})
		if o.RV != 0 || string(o.Data) != "ciph" || !bytes.Equal(p.IV, newIV) || !bytes.Equal(p.Tag, tag) {
			t.Fatalf("encrypt from %s: %+v, IV %x, tag %x", from, o, p.IV, p.Tag)
		}
		reqs = rec.take()
		if from == "the module" && len(reqs) != 0 || from == "the daemon" && (len(reqs) != 2 ||
			reqs[0].Call.Name != "C_SessionCancel" || reqs[0].Args.Ulong(1) != ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage ||
			reqs[1].Call.Name != "C_EncryptMessage") {
			t.Fatalf("encrypt from %s: the daemon saw %v", from, reqs)
		}
	}

	// ChaCha20-Poly1305's structure, told apart by its size: the nonce
	// goes, the tag comes back.
	c := &MsgParam{ChaCha: true, IV: bytes.Repeat([]byte{3}, 24), Tag: make([]byte, 16)}
	o = m.EncryptMessage(1, c, nil, []byte("plain"), Buf{Cap: 16})
	if o.RV != 0 || !bytes.Equal(c.Tag, tag) || !bytes.Equal(c.IV, bytes.Repeat([]byte{3}, 24)) {
		t.Fatalf("ChaCha20-Poly1305: %+v, tag %x", o, c.Tag)
	}
	cp, err := rec.take()[0].Args.MsgParam(1).ChaCha20Poly1305MsgParams(true)
	if err != nil || !bytes.Equal(cp.Nonce, c.IV) || cp.TagCap != 16 {
		t.Fatalf("the daemon saw %+v %v", cp, err)
	}

	// A parameter of no known size travels as bytes.
	raw := &MsgParam{Raw: []byte{1, 2, 3, 4, 5}}
	if o = m.EncryptMessage(1, raw, nil, nil, Buf{Cap: 16}); o.RV != 0 {
		t.Fatalf("raw: %+v", o)
	}
	if rp := rec.take()[0].Args.MsgParam(1); rp.Kind != calls.PBytes || !bytes.Equal(rp.Bytes, []byte{1, 2, 3, 4, 5}) {
		t.Fatalf("raw parameter %+v", rp)
	}
}

// A reply whose outputs do not fit the caller's structure is the
// daemon's fault: CKR_DEVICE_ERROR, and nothing written.
func TestEncryptMessageMalformedOutputs(t *testing.T) {
	c, _ := calls.ByName("C_EncryptMessage")
	gcmOut := func(iv, tag []byte) *wire.Param {
		fv := func(name string, b []byte) wire.FieldValue {
			return wire.FieldValue{Name: name, Kind: calls.FBytes, Bytes: b, Null: b == nil}
		}
		return &wire.Param{Kind: calls.PStruct, Struct: "CK_GCM_MESSAGE_PARAMS", Fields: []wire.FieldValue{fv("pIv", iv), fv("pTag", tag)}}
	}
	for name, out := range map[string]*wire.Param{
		"an IV of 11 bytes": gcmOut(make([]byte, 11), nil),
		"a tag of 17 bytes": gcmOut(nil, make([]byte, 17)),
		"another structure": {Kind: calls.PStruct, Struct: "CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS", Fields: []wire.FieldValue{{Name: "pTag", Kind: calls.FBytes, Null: true}}},
		"another form":      {Kind: calls.PNone},
	} {
		t.Run(name, func(t *testing.T) {
			body, err := wire.EncodeResults(c, []wire.Value{{}, {Param: out}, {}, {}, {Length: 4, Bytes: []byte("ciph")}})
			if err != nil {
				t.Fatal(err)
			}
			m, _ := msgSession(t, func(q Req) Resp { return Resp{RV: ck.CKR_OK, Results: body} })
			p := &MsgParam{GCM: true, IV: make([]byte, 12), Generator: ck.CKG_GENERATE, Tag: make([]byte, 16), TagBits: 128}
			o := m.EncryptMessage(1, p, nil, []byte("plain"), Buf{Cap: 16})
			if o.RV != ck.CKR_DEVICE_ERROR || o.Len != 16 || !bytes.Equal(p.IV, make([]byte, 12)) || !bytes.Equal(p.Tag, make([]byte, 16)) {
				t.Fatalf("%+v, IV %x, tag %x", o, p.IV, p.Tag)
			}
		})
	}
}

// An error the module finds itself ends the current message, never the
// process: it tells the daemon with C_SessionCancel and the module's own
// flag; an Init with no mechanism ends the process.
func TestMessageRefusedLocally(t *testing.T) {
	m, rec := msgSession(t, func(q Req) Resp { return Resp{RV: ck.CKR_OK, Results: []byte{}} })
	p := &MsgParam{GCM: true, IV: make([]byte, 12), Generator: ck.CKG_GENERATE, Tag: make([]byte, 16), TagBits: 128}
	for _, tt := range []struct {
		name string
		call func() Out
		want uint64
	}{
		{"NULL length pointer", func() Out { return m.EncryptMessage(5, p, nil, []byte("x"), Buf{NullLen: true}) }, ck.CKR_ARGUMENTS_BAD},
		{"tag bits", func() Out {
			return m.EncryptMessage(5, &MsgParam{GCM: true, IV: make([]byte, 12), Tag: make([]byte, 16), TagBits: 127}, nil, nil, Buf{Cap: 4})
		}, ck.CKR_MECHANISM_PARAM_INVALID},
	} {
		if o := tt.call(); o.RV != RV(tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, o.RV, RV(tt.want))
		}
		reqs := rec.take()
		if len(reqs) != 1 || reqs[0].Call.Name != "C_SessionCancel" || reqs[0].Args.Ulong(0) != 5 ||
			reqs[0].Args.Ulong(1) != ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage {
			t.Errorf("%s: the daemon saw %v", tt.name, reqs)
		}
	}
	if rv := m.MessageInit(false, 5, nil, nil, 0); rv != 0 {
		t.Fatalf("NULL mechanism: %v", rv)
	}
	if reqs := rec.take(); len(reqs) != 1 || reqs[0].Call.Name != "C_SessionCancel" || reqs[0].Args.Ulong(1) != ck.CKF_MESSAGE_ENCRYPT {
		t.Fatalf("NULL mechanism: the daemon saw %v", reqs)
	}
	// An application's C_SessionCancel cannot pass the module's flag.
	if rv := m.SessionCancel(5, ck.CKF_MESSAGE_SIGN|calls.CancelCurrentMessage); rv != 0 {
		t.Fatal(rv)
	}
	if reqs := rec.take(); len(reqs) != 1 || reqs[0].Args.Ulong(1) != ck.CKF_MESSAGE_SIGN {
		t.Fatalf("C_SessionCancel: the daemon saw %v", reqs)
	}
}

// A message Init's AEAD parameter is its message structure: the module
// checks its size and sends none; a signature Init's travels as always.
// Message Inits are never held back: each is a request.
func TestMessageInitParameter(t *testing.T) {
	m, rec := msgSession(t, func(q Req) Resp { return Resp{RV: ck.CKR_OK, Results: []byte{}} })
	gcm := uint64(ck.CKM_AES_GCM)
	p := &MsgParam{GCM: true, IV: make([]byte, 12), Tag: make([]byte, 16), TagBits: 128}
	for i := 0; i < 3; i++ {
		if rv := m.MessageInit(false, 1, &gcm, p, 9); rv != 0 {
			t.Fatal(rv)
		}
	}
	reqs := rec.take()
	if len(reqs) != 3 {
		t.Fatalf("%d requests for 3 Inits", len(reqs))
	}
	if mech := reqs[0].Args.Mechanism(1); mech.Type != ck.CKM_AES_GCM || mech.Present || reqs[0].Args.Ulong(2) != 9 {
		t.Fatalf("the daemon saw %+v", mech)
	}
	if rv := m.MessageInit(false, 1, &gcm, &MsgParam{Raw: make([]byte, 7)}, 9); rv != ck.CKR_MECHANISM_PARAM_INVALID {
		t.Fatalf("a parameter of another size: %v", rv)
	}
	if reqs := rec.take(); len(reqs) != 0 {
		t.Fatalf("sent %v", reqs)
	}
	pss := uint64(ck.CKM_SHA256_RSA_PKCS_PSS)
	param := wire.PSSParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256, SaltLen: 32}
	raw := make([]byte, 0, 24)
	for _, v := range []uint64{param.HashAlg, param.MGF, param.SaltLen} {
		raw = append(raw, Ulong(v)...)
	}
	if rv := m.MessageInit(true, 1, &pss, &MsgParam{Raw: raw}, 9); rv != 0 {
		t.Fatal(rv)
	}
	got, err := rec.take()[0].Args.Mechanism(1).Param.PSSParams()
	if err != nil || got != param {
		t.Fatalf("PSS parameter %+v %v", got, err)
	}
}

// C_SignMessageNext without a length pointer is a part; C_VerifyMessageNext
// with a NULL signature likewise. The last part's size query prefetches
// (protocol version 5).
func TestMessageNextParts(t *testing.T) {
	m, rec := msgSession(t, func(q Req) Resp {
		switch q.Call.Name {
		case "C_SignMessageNext":
			spec, wanted := q.Args.OptOut(3)
			return Reply(q.Call.Name, func(r *wire.Results) uint64 {
				return r.OptOutBytes(spec, wanted, []byte("signature"))
			})
		}
		return Resp{RV: ck.CKR_OK, Results: []byte{}}
	})
	if o := m.SignMessageNext(1, []byte("part"), Buf{NullLen: true}); o.RV != 0 {
		t.Fatalf("a part: %+v", o)
	}
	if o := m.SignMessageNext(1, []byte("last"), Buf{Null: true}); o.RV != 0 || o.Len != 9 {
		t.Fatalf("the last part's size: %+v", o)
	}
	if o := m.SignMessageNext(1, []byte("last"), Buf{Cap: 5}); o.RV != ck.CKR_BUFFER_TOO_SMALL || o.Len != 9 {
		t.Fatalf("a short buffer: %+v", o)
	}
	if o := m.SignMessageNext(1, []byte("last"), Buf{Cap: 64}); o.RV != 0 || string(o.Data) != "signature" {
		t.Fatalf("the signature: %+v", o)
	}
	// The last part's size query asked for the whole signature (a
	// prefetch), and the module answered the rest itself.
	reqs := rec.take()
	if len(reqs) != 2 {
		t.Fatalf("the daemon saw %d calls, want a part and a prefetch", len(reqs))
	}
	for i, want := range []bool{false, true} {
		if spec, wanted := reqs[i].Args.OptOut(3); wanted != want || spec.Prefetch != want {
			t.Errorf("call %d: length pointer %v, %+v", i, wanted, spec)
		}
	}
	if rv := m.VerifyMessageNext(1, []byte("part"), In{Null: true}); rv != 0 {
		t.Fatal(rv)
	}
	if rv := m.VerifyMessageNext(1, []byte("last"), In{Data: []byte("sig")}); rv != 0 {
		t.Fatal(rv)
	}
	// Ahead of them, the end of the signed message the module handed over.
	reqs = rec.take()
	if len(reqs) != 3 || reqs[0].Call.Name != "C_SessionCancel" || reqs[0].Args.Ulong(1) != ck.CKF_MESSAGE_SIGN|calls.CancelCurrentMessage {
		t.Fatalf("the daemon saw %v", reqs)
	}
	reqs = reqs[1:]
	if _, null := reqs[0].Args.Bytes(3); !null {
		t.Error("a part's signature is not NULL")
	}
	if sig, null := reqs[1].Args.Bytes(3); null || string(sig) != "sig" {
		t.Error("the last part's signature")
	}
}
