package wire

import (
	"fmt"

	"hsmemu/cryptoki/calls"
)

// Mechanism is a CK_MECHANISM: its type and, when Present, its parameter.
// Present is false when the caller's pParameter was NULL or its length 0.
type Mechanism struct {
	Type    uint64
	Present bool
	Param   Param
}

// Param is a mechanism parameter in generic form, decoded as calls.Mechanisms
// says for the mechanism's type:
//   - PBytes: Bytes (never empty: an empty parameter is not Present);
//   - PUlong: Ulong;
//   - PStruct: Struct names the C type in calls.Params, Fields its members
//     in declaration order.
//
// A mechanism the table does not list, whose caller passed a parameter
// anyway, has Kind PBytes: the daemon decides whether that is valid (and
// answers ck.CKR_MECHANISM_PARAM_INVALID when it is not).
//
// The typed accessors (GCMParams, ...) return ErrParam when the parameter
// is not the structure asked for.
type Param struct {
	Kind   calls.ParamKind
	Struct string
	Bytes  []byte
	Ulong  uint64
	Fields []FieldValue
}

// FieldValue is one member of a structure, generic form:
//   - FUlong: Ulong;
//   - FByte: Byte;
//   - FVersion, FChars: Bytes, exactly 2 or Size bytes;
//   - FBytes: Bytes, or Null for a NULL pointer; in a message parameter
//     the call writes back, an FOutOnly field has no Bytes but Cap, the
//     size of the caller's buffer (message.go);
//   - FStruct: Fields of the nested structure, or Null for a NULL pointer.
type FieldValue struct {
	Name   string
	Kind   calls.FieldKind
	Ulong  uint64
	Byte   byte
	Bytes  []byte
	Null   bool
	Fields []FieldValue
	Cap    uint64
}

// maxStructDepth bounds nested structure pointers. The table nests one
// level (CK_RSA_AES_KEY_WRAP_PARAMS → CK_RSA_PKCS_OAEP_PARAMS); the bound
// keeps a mistaken self-referencing entry from recursing on peer input.
const maxStructDepth = 4

// mechParam is the parameter kind a present parameter of mechanism t has.
func mechParam(t uint64) calls.MechParam {
	mp, ok := calls.Mechanisms[t]
	if !ok || mp.Kind == calls.PNone {
		return calls.MechParam{Kind: calls.PBytes}
	}
	return mp
}

func (r *reader) mechanism() (m Mechanism) {
	m.Type = r.u64("mechanism type")
	m.Present = r.present("mechanism parameter")
	if !m.Present || r.err != nil {
		return m
	}
	mp := mechParam(m.Type)
	m.Param.Kind = mp.Kind
	switch mp.Kind {
	case calls.PBytes:
		var null bool
		m.Param.Bytes, null = r.bytes("mechanism parameter")
		if r.err == nil && (null || len(m.Param.Bytes) == 0) {
			r.fail("mechanism %#x: a present parameter that is empty", m.Type)
		}
	case calls.PUlong:
		m.Param.Ulong = r.u64("mechanism parameter")
	case calls.PStruct:
		m.Param.Struct = mp.Struct
		m.Param.Fields = r.fields(structFields(calls.Params, mp.Struct), 0)
	default:
		panic(fmt.Sprintf("wire: internal error: mechanism %#x has parameter kind %d", m.Type, mp.Kind))
	}
	return m
}

func appendMechanism(b []byte, m *Mechanism) ([]byte, error) {
	if m == nil {
		return b, fmt.Errorf("wire: NULL mechanism")
	}
	b = appendU64(b, m.Type)
	b = appendBool(b, m.Present)
	if !m.Present {
		return b, nil
	}
	mp := mechParam(m.Type)
	p := &m.Param
	if p.Kind != mp.Kind || p.Struct != mp.Struct {
		return b, fmt.Errorf("wire: mechanism %#x takes a parameter of kind %d %s, not %d %s",
			m.Type, mp.Kind, mp.Struct, p.Kind, p.Struct)
	}
	switch mp.Kind {
	case calls.PBytes:
		if len(p.Bytes) == 0 {
			return b, fmt.Errorf("wire: mechanism %#x: a present parameter that is empty", m.Type)
		}
		if err := checkBytes(p.Bytes, false, "mechanism parameter"); err != nil {
			return b, err
		}
		return appendBytes(b, p.Bytes, false), nil
	case calls.PUlong:
		return appendU64(b, p.Ulong), nil
	}
	return appendFields(b, structFields(calls.Params, mp.Struct), p.Fields, 0)
}

// structFields returns the fields of a named structure; a name missing from
// the table is a broken invariant of package calls.
func structFields(table map[string][]calls.Field, name string) []calls.Field {
	f, ok := table[name]
	if !ok {
		panic("wire: internal error: no structure " + name + " in package calls")
	}
	return f
}

// fields decodes a structure field by field. Nested structures are looked
// up in calls.Params.
func (r *reader) fields(spec []calls.Field, depth int) []FieldValue {
	if depth > maxStructDepth {
		r.fail("structures nested deeper than %d", maxStructDepth)
		return nil
	}
	fv := make([]FieldValue, len(spec))
	for i, f := range spec {
		v := &fv[i]
		v.Name, v.Kind = f.Name, f.Kind
		switch f.Kind {
		case calls.FUlong:
			v.Ulong = r.u64(f.Name)
		case calls.FByte:
			v.Byte = r.u8(f.Name)
		case calls.FVersion:
			v.Bytes = r.take(2, f.Name)
		case calls.FChars:
			v.Bytes = r.take(f.Size, f.Name)
		case calls.FBytes:
			v.Bytes, v.Null = r.bytes(f.Name)
		case calls.FStruct:
			if r.present(f.Name) {
				v.Fields = r.fields(structFields(calls.Params, f.Struct), depth+1)
			} else {
				v.Null = true
			}
		default:
			panic(fmt.Sprintf("wire: internal error: field %s has kind %d", f.Name, f.Kind))
		}
		if r.err != nil {
			break
		}
	}
	return fv
}

func appendFields(b []byte, spec []calls.Field, fv []FieldValue, depth int) ([]byte, error) {
	if depth > maxStructDepth {
		return b, fmt.Errorf("wire: structures nested deeper than %d", maxStructDepth)
	}
	if len(fv) != len(spec) {
		return b, fmt.Errorf("wire: %d field values for %d fields", len(fv), len(spec))
	}
	for i, f := range spec {
		v := &fv[i]
		if v.Name != f.Name || v.Kind != f.Kind {
			return b, fmt.Errorf("wire: field %d is %s (kind %d), not %s (kind %d)", i, f.Name, f.Kind, v.Name, v.Kind)
		}
		switch f.Kind {
		case calls.FUlong:
			b = appendU64(b, v.Ulong)
		case calls.FByte:
			b = appendU8(b, v.Byte)
		case calls.FVersion, calls.FChars:
			size := f.Size
			if f.Kind == calls.FVersion {
				size = 2
			}
			if len(v.Bytes) != size {
				return b, fmt.Errorf("wire: field %s: %d bytes, not %d", f.Name, len(v.Bytes), size)
			}
			b = append(b, v.Bytes...)
		case calls.FBytes:
			if err := checkBytes(v.Bytes, v.Null, f.Name); err != nil {
				return b, err
			}
			b = appendBytes(b, v.Bytes, v.Null)
		case calls.FStruct:
			b = appendBool(b, !v.Null)
			if !v.Null {
				var err error
				if b, err = appendFields(b, structFields(calls.Params, f.Struct), v.Fields, depth+1); err != nil {
					return b, err
				}
			}
		default:
			panic(fmt.Sprintf("wire: internal error: field %s has kind %d", f.Name, f.Kind))
		}
	}
	return b, nil
}

// Typed parameter structures. A NULL pointer member decodes to a nil slice
// and an empty array to a non-nil empty one (the generic Fields keep an
// explicit Null); on encoding, nil means NULL.

// GCMParams is CK_GCM_PARAMS.
type GCMParams struct {
	IV      []byte
	IVBits  uint64
	AAD     []byte
	TagBits uint64
}

// CTRParams is CK_AES_CTR_PARAMS.
type CTRParams struct {
	CounterBits uint64
	CB          [16]byte
}

// OAEPParams is CK_RSA_PKCS_OAEP_PARAMS.
type OAEPParams struct {
	HashAlg    uint64
	MGF        uint64
	Source     uint64
	SourceData []byte
}

// PSSParams is CK_RSA_PKCS_PSS_PARAMS.
type PSSParams struct {
	HashAlg uint64
	MGF     uint64
	SaltLen uint64
}

// ECDH1DeriveParams is CK_ECDH1_DERIVE_PARAMS.
type ECDH1DeriveParams struct {
	KDF        uint64
	SharedData []byte
	PublicData []byte
}

// RSAAESKeyWrapParams is CK_RSA_AES_KEY_WRAP_PARAMS; OAEP is nil for a
// NULL pOAEPParams.
type RSAAESKeyWrapParams struct {
	AESKeyBits uint64
	OAEP       *OAEPParams
}

// EdDSAParams is CK_EDDSA_PARAMS.
type EdDSAParams struct {
	PHFlag      bool
	ContextData []byte
}

// SignContext is CK_SIGN_ADDITIONAL_CONTEXT (PKCS#11 3.2, "ML-DSA",
// Definitions): the hedging asked for and the context string.
type SignContext struct {
	HedgeVariant uint64
	Context      []byte
}

// HashSignContext is CK_HASH_SIGN_ADDITIONAL_CONTEXT: a SignContext and
// the pre-hash's hash.
type HashSignContext struct {
	SignContext
	Hash uint64
}

// ChaCha20Params is CK_CHACHA20_PARAMS. The module carries the block
// counter and the nonce as whole bytes: their lengths are
// 8*len(BlockCounter) and 8*len(Nonce) bits.
type ChaCha20Params struct {
	BlockCounter []byte
	Nonce        []byte
}

// ChaCha20Poly1305Params is CK_SALSA20_CHACHA20_POLY1305_PARAMS.
type ChaCha20Poly1305Params struct {
	Nonce []byte
	AAD   []byte
}

// HKDFParams is CK_HKDF_PARAMS.
type HKDFParams struct {
	Extract          bool
	Expand           bool
	PRFHashMechanism uint64
	SaltType         uint64
	Salt             []byte
	SaltKey          uint64
	Info             []byte
}

// members reads the named members of a decoded structure. The names are the
// C members of calls.Params; a missing one is a broken invariant.
type members []FieldValue

func (p *Param) structure(ctype string) (members, error) {
	if p.Kind != calls.PStruct || p.Struct != ctype {
		return nil, fmt.Errorf("%w: want %s", ErrParam, ctype)
	}
	return p.Fields, nil
}

func (fs members) get(name string, kind calls.FieldKind) *FieldValue {
	for i := range fs {
		if fs[i].Name == name && fs[i].Kind == kind {
			return &fs[i]
		}
	}
	panic("wire: internal error: no field " + name + " of that kind")
}

func (fs members) ulong(name string) uint64 { return fs.get(name, calls.FUlong).Ulong }
func (fs members) bool(name string) bool    { return fs.get(name, calls.FByte).Byte != 0 }
func (fs members) bytes(name string) []byte {
	if v := fs.get(name, calls.FBytes); !v.Null {
		return v.Bytes
	}
	return nil
}

func (fs members) oaep(name string) *OAEPParams {
	v := fs.get(name, calls.FStruct)
	if v.Null {
		return nil
	}
	o := oaepFrom(v.Fields)
	return &o
}

func oaepFrom(fs members) OAEPParams {
	return OAEPParams{HashAlg: fs.ulong("hashAlg"), MGF: fs.ulong("mgf"), Source: fs.ulong("source"), SourceData: fs.bytes("pSourceData")}
}

// GCMParams returns the parameter as CK_GCM_PARAMS.
func (p *Param) GCMParams() (GCMParams, error) {
	fs, err := p.structure("CK_GCM_PARAMS")
	if err != nil {
		return GCMParams{}, err
	}
	return GCMParams{IV: fs.bytes("pIv"), IVBits: fs.ulong("ulIvBits"), AAD: fs.bytes("pAAD"), TagBits: fs.ulong("ulTagBits")}, nil
}

// CTRParams returns the parameter as CK_AES_CTR_PARAMS.
func (p *Param) CTRParams() (CTRParams, error) {
	fs, err := p.structure("CK_AES_CTR_PARAMS")
	if err != nil {
		return CTRParams{}, err
	}
	c := CTRParams{CounterBits: fs.ulong("ulCounterBits")}
	copy(c.CB[:], fs.get("cb", calls.FChars).Bytes)
	return c, nil
}

// OAEPParams returns the parameter as CK_RSA_PKCS_OAEP_PARAMS.
func (p *Param) OAEPParams() (OAEPParams, error) {
	fs, err := p.structure("CK_RSA_PKCS_OAEP_PARAMS")
	if err != nil {
		return OAEPParams{}, err
	}
	return oaepFrom(fs), nil
}

// PSSParams returns the parameter as CK_RSA_PKCS_PSS_PARAMS.
func (p *Param) PSSParams() (PSSParams, error) {
	fs, err := p.structure("CK_RSA_PKCS_PSS_PARAMS")
	if err != nil {
		return PSSParams{}, err
	}
	return PSSParams{HashAlg: fs.ulong("hashAlg"), MGF: fs.ulong("mgf"), SaltLen: fs.ulong("sLen")}, nil
}

// ECDH1DeriveParams returns the parameter as CK_ECDH1_DERIVE_PARAMS.
func (p *Param) ECDH1DeriveParams() (ECDH1DeriveParams, error) {
	fs, err := p.structure("CK_ECDH1_DERIVE_PARAMS")
	if err != nil {
		return ECDH1DeriveParams{}, err
	}
	return ECDH1DeriveParams{KDF: fs.ulong("kdf"), SharedData: fs.bytes("pSharedData"), PublicData: fs.bytes("pPublicData")}, nil
}

// RSAAESKeyWrapParams returns the parameter as CK_RSA_AES_KEY_WRAP_PARAMS.
func (p *Param) RSAAESKeyWrapParams() (RSAAESKeyWrapParams, error) {
	fs, err := p.structure("CK_RSA_AES_KEY_WRAP_PARAMS")
	if err != nil {
		return RSAAESKeyWrapParams{}, err
	}
	return RSAAESKeyWrapParams{AESKeyBits: fs.ulong("ulAESKeyBits"), OAEP: fs.oaep("pOAEPParams")}, nil
}

// EdDSAParams returns the parameter as CK_EDDSA_PARAMS.
func (p *Param) EdDSAParams() (EdDSAParams, error) {
	fs, err := p.structure("CK_EDDSA_PARAMS")
	if err != nil {
		return EdDSAParams{}, err
	}
	return EdDSAParams{PHFlag: fs.bool("phFlag"), ContextData: fs.bytes("pContextData")}, nil
}

// SignContext returns the parameter as CK_SIGN_ADDITIONAL_CONTEXT.
func (p *Param) SignContext() (SignContext, error) {
	fs, err := p.structure("CK_SIGN_ADDITIONAL_CONTEXT")
	if err != nil {
		return SignContext{}, err
	}
	return SignContext{HedgeVariant: fs.ulong("hedgeVariant"), Context: fs.bytes("pContext")}, nil
}

// HashSignContext returns the parameter as CK_HASH_SIGN_ADDITIONAL_CONTEXT.
func (p *Param) HashSignContext() (HashSignContext, error) {
	fs, err := p.structure("CK_HASH_SIGN_ADDITIONAL_CONTEXT")
	if err != nil {
		return HashSignContext{}, err
	}
	return HashSignContext{SignContext{HedgeVariant: fs.ulong("hedgeVariant"), Context: fs.bytes("pContext")}, fs.ulong("hash")}, nil
}

// ChaCha20Params returns the parameter as CK_CHACHA20_PARAMS.
func (p *Param) ChaCha20Params() (ChaCha20Params, error) {
	fs, err := p.structure("CK_CHACHA20_PARAMS")
	if err != nil {
		return ChaCha20Params{}, err
	}
	return ChaCha20Params{BlockCounter: fs.bytes("pBlockCounter"), Nonce: fs.bytes("pNonce")}, nil
}

// ChaCha20Poly1305Params returns the parameter as
// CK_SALSA20_CHACHA20_POLY1305_PARAMS.
func (p *Param) ChaCha20Poly1305Params() (ChaCha20Poly1305Params, error) {
	fs, err := p.structure("CK_SALSA20_CHACHA20_POLY1305_PARAMS")
	if err != nil {
		return ChaCha20Poly1305Params{}, err
	}
	return ChaCha20Poly1305Params{Nonce: fs.bytes("pNonce"), AAD: fs.bytes("pAAD")}, nil
}

// HKDFParams returns the parameter as CK_HKDF_PARAMS.
func (p *Param) HKDFParams() (HKDFParams, error) {
	fs, err := p.structure("CK_HKDF_PARAMS")
	if err != nil {
		return HKDFParams{}, err
	}
	return HKDFParams{
		Extract: fs.bool("bExtract"), Expand: fs.bool("bExpand"),
		PRFHashMechanism: fs.ulong("prfHashMechanism"), SaltType: fs.ulong("ulSaltType"),
		Salt: fs.bytes("pSalt"), SaltKey: fs.ulong("hSaltKey"), Info: fs.bytes("pInfo"),
	}, nil
}

// Constructors of the generic form, for clients. Each returns a Param of
// Kind PStruct whose fields follow calls.Params.

func fu(name string, v uint64) FieldValue {
	return FieldValue{Name: name, Kind: calls.FUlong, Ulong: v}
}
func fb(name string, v []byte) FieldValue {
	return FieldValue{Name: name, Kind: calls.FBytes, Bytes: v, Null: v == nil}
}
func fbool(name string, v bool) FieldValue {
	f := FieldValue{Name: name, Kind: calls.FByte}
	if v {
		f.Byte = 1
	}
	return f
}
func structParam(ctype string, fv ...FieldValue) Param {
	return Param{Kind: calls.PStruct, Struct: ctype, Fields: fv}
}

// Param returns p in generic form.
func (p GCMParams) Param() Param {
	return structParam("CK_GCM_PARAMS", fb("pIv", p.IV), fu("ulIvBits", p.IVBits), fb("pAAD", p.AAD), fu("ulTagBits", p.TagBits))
}

// Param returns p in generic form.
func (p CTRParams) Param() Param {
	cb := p.CB
	return structParam("CK_AES_CTR_PARAMS", fu("ulCounterBits", p.CounterBits), FieldValue{Name: "cb", Kind: calls.FChars, Bytes: cb[:]})
}

func (p OAEPParams) fields() []FieldValue {
	return []FieldValue{fu("hashAlg", p.HashAlg), fu("mgf", p.MGF), fu("source", p.Source), fb("pSourceData", p.SourceData)}
}

// Param returns p in generic form.
func (p OAEPParams) Param() Param { return structParam("CK_RSA_PKCS_OAEP_PARAMS", p.fields()...) }

// Param returns p in generic form.
func (p PSSParams) Param() Param {
	return structParam("CK_RSA_PKCS_PSS_PARAMS", fu("hashAlg", p.HashAlg), fu("mgf", p.MGF), fu("sLen", p.SaltLen))
}

// Param returns p in generic form.
func (p ECDH1DeriveParams) Param() Param {
	return structParam("CK_ECDH1_DERIVE_PARAMS", fu("kdf", p.KDF), fb("pSharedData", p.SharedData), fb("pPublicData", p.PublicData))
}

// Param returns p in generic form.
func (p RSAAESKeyWrapParams) Param() Param {
	oaep := FieldValue{Name: "pOAEPParams", Kind: calls.FStruct, Null: true}
	if p.OAEP != nil {
		oaep.Null, oaep.Fields = false, p.OAEP.fields()
	}
	return structParam("CK_RSA_AES_KEY_WRAP_PARAMS", fu("ulAESKeyBits", p.AESKeyBits), oaep)
}

// Param returns p in generic form.
func (p EdDSAParams) Param() Param {
	return structParam("CK_EDDSA_PARAMS", fbool("phFlag", p.PHFlag), fb("pContextData", p.ContextData))
}

// Param returns p in generic form.
func (p SignContext) Param() Param {
	return structParam("CK_SIGN_ADDITIONAL_CONTEXT", fu("hedgeVariant", p.HedgeVariant), fb("pContext", p.Context))
}

// Param returns p in generic form.
func (p HashSignContext) Param() Param {
	return structParam("CK_HASH_SIGN_ADDITIONAL_CONTEXT", fu("hedgeVariant", p.HedgeVariant), fb("pContext", p.Context), fu("hash", p.Hash))
}

// Param returns p in generic form.
func (p ChaCha20Params) Param() Param {
	return structParam("CK_CHACHA20_PARAMS", fb("pBlockCounter", p.BlockCounter), fb("pNonce", p.Nonce))
}

// Param returns p in generic form.
func (p ChaCha20Poly1305Params) Param() Param {
	return structParam("CK_SALSA20_CHACHA20_POLY1305_PARAMS", fb("pNonce", p.Nonce), fb("pAAD", p.AAD))
}

// Param returns p in generic form.
func (p HKDFParams) Param() Param {
	return structParam("CK_HKDF_PARAMS", fbool("bExtract", p.Extract), fbool("bExpand", p.Expand),
		fu("prfHashMechanism", p.PRFHashMechanism), fu("ulSaltType", p.SaltType),
		fb("pSalt", p.Salt), fu("hSaltKey", p.SaltKey), fb("pInfo", p.Info))
}
