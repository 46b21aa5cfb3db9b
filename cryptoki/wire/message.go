package wire

import (
	"fmt"
	"slices"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// The parameters of PKCS#11 3.0's message-based calls (docs/protocol.md,
// "Message parameters"). A call's pParameter is a void pointer whose
// structure depends on the mechanism its process began with; the module
// tells the structures of calls.MessageParams apart by their sizes and
// says which one it read in a form byte:
//
//	msgparam: u8 form, then
//	  0: nothing (NULL pointer, or a zero length)
//	  1: bytes, neither NULL nor empty (a parameter of no known size)
//	  2+i: the fields of calls.MessageParams[i], as a mechanism
//	       parameter's, except that an FBytes field of a parameter the
//	       call writes back (MsgParamOut) whose Out is FOutOnly is an
//	       outspec: whether the caller's buffer is there, and its size
//
// and the reply of a MsgParamOut:
//
//	msgout: u8 form (the request's), then
//	  1: bytes, NULL when nothing is written back
//	  2+i: per FBytes field whose Out is not FIn, in order, bytes: NULL
//	       when nothing is written back, else exactly the length of the
//	       caller's buffer for it
//
// On the daemon's side a decoded parameter is a Param: Kind PNone (form
// 0), PBytes (form 1), or PStruct with Struct and Fields (the outspec
// fields with Null for a NULL buffer and Cap its size).

const (
	formNone   = 0
	formBytes  = 1
	formStruct = 2
)

// messageForm returns a decoded parameter's form byte.
func messageForm(p *Param) (byte, error) {
	switch p.Kind {
	case calls.PNone:
		return formNone, nil
	case calls.PBytes:
		return formBytes, nil
	case calls.PStruct:
		if i := slices.Index(calls.MessageParams, p.Struct); i >= 0 {
			return formStruct + byte(i), nil
		}
	}
	return 0, fmt.Errorf("wire: %s is not a message parameter", p.Struct)
}

// messageStruct is the structure of form f, if arg takes it.
func messageStruct(arg *calls.Arg, f byte) (string, bool) {
	i := int(f) - formStruct
	if i < 0 || i >= len(calls.MessageParams) || !slices.Contains(arg.Structs, calls.MessageParams[i]) {
		return "", false
	}
	return calls.MessageParams[i], true
}

// outOnly says whether field f of a parameter of kind k travels as an
// outspec.
func outOnly(k calls.Kind, f calls.Field) bool {
	return k == calls.MsgParamOut && f.Kind == calls.FBytes && f.Out == calls.FOutOnly
}

func (r *reader) msgParam(arg *calls.Arg) (p Param) {
	f := r.u8(arg.Name)
	if r.err != nil {
		return p
	}
	switch f {
	case formNone:
		p.Kind = calls.PNone
	case formBytes:
		var null bool
		p.Kind = calls.PBytes
		p.Bytes, null = r.bytes(arg.Name)
		if r.err == nil && (null || len(p.Bytes) == 0) {
			r.fail("%s: bytes that are NULL or empty", arg.Name)
		}
	default:
		name, ok := messageStruct(arg, f)
		if !ok {
			r.fail("%s: form %d", arg.Name, f)
			return p
		}
		p.Kind, p.Struct = calls.PStruct, name
		spec := structFields(calls.Params, name)
		p.Fields = make([]FieldValue, len(spec))
		for i, fs := range spec {
			v := &p.Fields[i]
			v.Name, v.Kind = fs.Name, fs.Kind
			switch {
			case outOnly(arg.Kind, fs):
				v.Null = !r.present(fs.Name)
				v.Cap = r.u64(fs.Name)
			case fs.Kind == calls.FBytes:
				v.Bytes, v.Null = r.bytes(fs.Name)
			case fs.Kind == calls.FUlong:
				v.Ulong = r.u64(fs.Name)
			case fs.Kind == calls.FByte:
				v.Byte = r.u8(fs.Name)
			default:
				panic(fmt.Sprintf("wire: internal error: message parameter field %s has kind %d", fs.Name, fs.Kind))
			}
			if r.err != nil {
				break
			}
		}
	}
	return p
}

func appendMsgParam(b []byte, arg *calls.Arg, p *Param) ([]byte, error) {
	if p == nil {
		return append(b, formNone), nil
	}
	f, err := messageForm(p)
	if err != nil {
		return b, err
	}
	b = append(b, f)
	switch f {
	case formNone:
		return b, nil
	case formBytes:
		if len(p.Bytes) == 0 {
			return b, fmt.Errorf("wire: %s: empty bytes", arg.Name)
		}
		if err := checkBytes(p.Bytes, false, arg.Name); err != nil {
			return b, err
		}
		return appendBytes(b, p.Bytes, false), nil
	}
	if _, ok := messageStruct(arg, f); !ok {
		return b, fmt.Errorf("wire: %s does not take a %s", arg.Name, p.Struct)
	}
	spec := structFields(calls.Params, p.Struct)
	if len(p.Fields) != len(spec) {
		return b, fmt.Errorf("wire: %d field values for %d fields", len(p.Fields), len(spec))
	}
	for i, fs := range spec {
		v := &p.Fields[i]
		if v.Name != fs.Name || v.Kind != fs.Kind {
			return b, fmt.Errorf("wire: field %d is %s, not %s", i, fs.Name, v.Name)
		}
		switch {
		case outOnly(arg.Kind, fs):
			b = appendBool(b, !v.Null)
			b = appendU64(b, v.Cap)
		case fs.Kind == calls.FBytes:
			if err := checkBytes(v.Bytes, v.Null, fs.Name); err != nil {
				return b, err
			}
			b = appendBytes(b, v.Bytes, v.Null)
		case fs.Kind == calls.FUlong:
			b = appendU64(b, v.Ulong)
		case fs.Kind == calls.FByte:
			b = appendU8(b, v.Byte)
		}
	}
	return b, nil
}

// outFields are the fields of structure name that a MsgParamOut reply
// carries.
func outFields(name string) []calls.Field {
	var out []calls.Field
	for _, f := range structFields(calls.Params, name) {
		if f.Kind == calls.FBytes && f.Out != calls.FIn {
			out = append(out, f)
		}
	}
	return out
}

// msgOut reads a msgout reply into a Param whose Fields are the output
// fields only.
func (r *reader) msgOut(arg *calls.Arg) *Param {
	f := r.u8(arg.Name)
	if r.err != nil {
		return nil
	}
	p := &Param{}
	switch f {
	case formNone:
		p.Kind = calls.PNone
	case formBytes:
		p.Kind = calls.PBytes
		p.Bytes, _ = r.bytes(arg.Name) // nil for NULL: nothing written back
	default:
		name, ok := messageStruct(arg, f)
		if !ok {
			r.fail("%s: form %d", arg.Name, f)
			return nil
		}
		p.Kind, p.Struct = calls.PStruct, name
		for _, fs := range outFields(name) {
			v := FieldValue{Name: fs.Name, Kind: fs.Kind}
			v.Bytes, v.Null = r.bytes(fs.Name)
			p.Fields = append(p.Fields, v)
		}
	}
	return p
}

// appendMsgOut writes a msgout from a Param shaped as msgOut returns it.
func appendMsgOut(b []byte, arg *calls.Arg, p *Param) ([]byte, error) {
	if p == nil {
		return b, fmt.Errorf("wire: %s: no parameter", arg.Name)
	}
	f, err := messageForm(p)
	if err != nil {
		return b, err
	}
	b = append(b, f)
	switch f {
	case formNone:
		return b, nil
	case formBytes:
		if err := checkBytes(p.Bytes, p.Bytes == nil, arg.Name); err != nil {
			return b, err
		}
		return appendBytes(b, p.Bytes, p.Bytes == nil), nil
	}
	if _, ok := messageStruct(arg, f); !ok {
		return b, fmt.Errorf("wire: %s does not take a %s", arg.Name, p.Struct)
	}
	spec := outFields(p.Struct)
	if len(p.Fields) != len(spec) {
		return b, fmt.Errorf("wire: %d output values for %d output fields", len(p.Fields), len(spec))
	}
	for i, fs := range spec {
		v := &p.Fields[i]
		if v.Name != fs.Name {
			return b, fmt.Errorf("wire: output %d is %s, not %s", i, fs.Name, v.Name)
		}
		if err := checkBytes(v.Bytes, v.Null, fs.Name); err != nil {
			return b, err
		}
		b = appendBytes(b, v.Bytes, v.Null)
	}
	return b, nil
}

// MsgParam returns MsgParam or MsgParamOut argument i. The pointer is into
// a, and its byte slices alias the request.
func (a *Args) MsgParam(i int) *Param {
	a.at(i, calls.MsgParam, calls.MsgParamOut)
	return &a.param
}

// MsgMechanism returns a MsgParam or MsgParamOut argument i that is a
// mechanism (calls.Arg.Mech): its type and its message parameter.
func (a *Args) MsgMechanism(i int) (uint64, *Param) {
	v := a.at(i, calls.MsgParam, calls.MsgParamOut)
	return v.ulong, &a.param
}

// OptOut returns OptOutBytes argument i: the output specification, and
// whether the caller passed a length pointer at all.
func (a *Args) OptOut(i int) (spec OutSpec, wanted bool) {
	v := a.at(i, calls.OptOutBytes)
	return v.out, !v.null
}

// MsgOut supplies a MsgParamOut output: what the call writes back into the
// parameter p it was given (Args.MsgParam), by field name; a field that is
// not in outs is not written. For a parameter that came as bytes, outs[""]
// is written back whole. Each value must be exactly as long as the
// caller's buffer for it (panics otherwise: the daemon checks first).
func (r *Results) MsgOut(p *Param, outs map[string][]byte) {
	arg := r.expect(calls.MsgParamOut)
	if !MsgOutFits(p, outs) {
		panic(fmt.Sprintf("wire: internal error: %s written back with outputs that do not fit it", arg.Name))
	}
	q := &Param{Kind: p.Kind, Struct: p.Struct}
	switch p.Kind {
	case calls.PBytes:
		if v, ok := outs[""]; ok {
			q.Bytes = nonNilBytes(v)
		}
	case calls.PStruct:
		for _, fs := range outFields(p.Struct) {
			v, ok := outs[fs.Name]
			fv := FieldValue{Name: fs.Name, Kind: fs.Kind, Null: !ok}
			if ok {
				fv.Bytes = nonNilBytes(v)
			}
			q.Fields = append(q.Fields, fv)
		}
	}
	var err error
	if r.buf, err = appendMsgOut(r.buf, arg, q); err != nil {
		panic("wire: internal error: " + err.Error())
	}
}

// MsgOutFits says whether MsgOut may write outs back into p, an in/out
// parameter (MsgParamOut): each value exactly as long as the caller's
// buffer for it, and the buffer there.
func MsgOutFits(p *Param, outs map[string][]byte) bool {
	switch p.Kind {
	case calls.PBytes:
		v, ok := outs[""]
		return !ok || len(v) == len(p.Bytes)
	case calls.PStruct:
		for _, fs := range outFields(p.Struct) {
			v, ok := outs[fs.Name]
			if !ok {
				continue
			}
			in := p.field(fs.Name)
			size := uint64(len(in.Bytes))
			if outOnly(calls.MsgParamOut, fs) {
				size = in.Cap
			}
			if in.Null || uint64(len(v)) != size {
				return false
			}
		}
		return true
	}
	return len(outs) == 0
}

// OptOutBytes supplies an OptOutBytes output: nothing but the wanted byte
// when the caller passed no length pointer, else as OutBytes does, a
// prefetch's included.
func (r *Results) OptOutBytes(spec OutSpec, wanted bool, data []byte) uint64 {
	r.expect(calls.OptOutBytes)
	r.buf = appendBool(r.buf, wanted)
	if !wanted {
		return ck.CKR_OK
	}
	if spec.Prefetch && !spec.Present && len(data) <= MaxPrefetch {
		r.buf = appendU64(r.buf, uint64(len(data)))
		r.buf = appendBytes(r.buf, data, false)
		return ck.CKR_OK
	}
	if rv, fits := r.outLength(spec, uint64(len(data))); !fits {
		return rv
	}
	r.buf = appendBytes(r.buf, data, false)
	return ck.CKR_OK
}

func nonNilBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// field returns the decoded field name of a structure parameter.
func (p *Param) field(name string) *FieldValue {
	for i := range p.Fields {
		if p.Fields[i].Name == name {
			return &p.Fields[i]
		}
	}
	panic("wire: internal error: no field " + name)
}

// Typed message parameters.

// GCMMessageParams is CK_GCM_MESSAGE_PARAMS as it travels: the IV (nil for
// a NULL pIv), its fixed bits and generator, and the tag: an input
// parameter's bytes (nil for a NULL pTag), or, in a parameter the call
// writes back, the size of the caller's buffer for it (TagCap, with TagOut
// set, and TagNull for a NULL pTag).
type GCMMessageParams struct {
	IV          []byte
	IVFixedBits uint64
	IVGenerator uint64
	Tag         []byte
	TagOut      bool
	TagCap      uint64
	TagNull     bool
}

// ChaCha20Poly1305MsgParams is CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS,
// with the tag as in GCMMessageParams.
type ChaCha20Poly1305MsgParams struct {
	Nonce   []byte
	Tag     []byte
	TagOut  bool
	TagCap  uint64
	TagNull bool
}

// tag reads a tag field: its bytes, or its buffer's size when it is an
// output (a decoded MsgParamOut's FOutOnly field has no bytes and is never
// both NULL and sized by its bytes).
func (fs members) tag(name string, out bool) (b []byte, null bool, capacity uint64) {
	v := fs.get(name, calls.FBytes)
	if out {
		return nil, v.Null, v.Cap
	}
	return v.Bytes, v.Null, uint64(len(v.Bytes))
}

// GCMMessageParams returns a message parameter as CK_GCM_MESSAGE_PARAMS;
// out says it was decoded as a MsgParamOut (its tag is an output).
func (p *Param) GCMMessageParams(out bool) (GCMMessageParams, error) {
	fs, err := p.structure("CK_GCM_MESSAGE_PARAMS")
	if err != nil {
		return GCMMessageParams{}, err
	}
	g := GCMMessageParams{IV: fs.bytes("pIv"), IVFixedBits: fs.ulong("ulIvFixedBits"), IVGenerator: fs.ulong("ivGenerator"), TagOut: out}
	g.Tag, g.TagNull, g.TagCap = fs.tag("pTag", out)
	return g, nil
}

// ChaCha20Poly1305MsgParams returns a message parameter as
// CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS.
func (p *Param) ChaCha20Poly1305MsgParams(out bool) (ChaCha20Poly1305MsgParams, error) {
	fs, err := p.structure("CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS")
	if err != nil {
		return ChaCha20Poly1305MsgParams{}, err
	}
	c := ChaCha20Poly1305MsgParams{Nonce: fs.bytes("pNonce"), TagOut: out}
	c.Tag, c.TagNull, c.TagCap = fs.tag("pTag", out)
	return c, nil
}

// Param returns p in generic form, as the module sends it in a call that
// writes the parameter back when p.TagOut is set.
func (p GCMMessageParams) Param() Param {
	return structParam("CK_GCM_MESSAGE_PARAMS", fb("pIv", p.IV), fu("ulIvFixedBits", p.IVFixedBits),
		fu("ivGenerator", p.IVGenerator), tagField(p.Tag, p.TagOut, p.TagCap, p.TagNull))
}

// Param returns p in generic form (see GCMMessageParams.Param).
func (p ChaCha20Poly1305MsgParams) Param() Param {
	return structParam("CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS", fb("pNonce", p.Nonce),
		tagField(p.Tag, p.TagOut, p.TagCap, p.TagNull))
}

func tagField(tag []byte, out bool, capacity uint64, null bool) FieldValue {
	if out {
		return FieldValue{Name: "pTag", Kind: calls.FBytes, Null: null, Cap: capacity}
	}
	return fb("pTag", tag)
}
