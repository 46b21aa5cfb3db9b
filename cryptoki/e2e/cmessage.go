package e2e

/*
#cgo CFLAGS: -I${SRCDIR}/../module
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include "p11compat.h"

// e2e_list30 is the 3.0 function list of the module at path, which
// miekg/pkcs11 loaded already (RTLD_NOLOAD: the same library, initialised
// by it). The reference dlopen took is given back at once: miekg's keeps
// the library loaded.
static CK_FUNCTION_LIST_3_0 *e2e_list30(const char *path)
{
	void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (lib == NULL)
		return NULL;
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_INTERFACE_PTR itf = NULL;
	CK_FUNCTION_LIST_3_0 *f = NULL;
	if (gi != NULL && gi(NULL, NULL, &itf, 0) == CKR_OK)
		f = itf->pFunctionList;
	dlclose(lib);
	return f;
}

static CK_ULONG e2e_sizeof_gcm(void) { return sizeof(CK_GCM_MESSAGE_PARAMS); }
static CK_ULONG e2e_sizeof_chacha(void) { return sizeof(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS); }

static void e2e_gcm(CK_GCM_MESSAGE_PARAMS *p, CK_BYTE *iv, CK_ULONG ivlen, CK_ULONG fixed, CK_ULONG gen,
		    CK_BYTE *tag, CK_ULONG tagbits)
{
	p->pIv = iv;
	p->ulIvLen = ivlen;
	p->ulIvFixedBits = fixed;
	p->ivGenerator = gen;
	p->pTag = tag;
	p->ulTagBits = tagbits;
}

static void e2e_chacha(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS *p, CK_BYTE *nonce, CK_ULONG n, CK_BYTE *tag)
{
	p->pNonce = nonce;
	p->ulNonceLen = n;
	p->pTag = tag;
}

// The calls, by kind: 0 encryption, 1 decryption, 2 signature, 3 verification.
static CK_RV e2e_init(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
	switch (k) {
	case 0: return f->C_MessageEncryptInit(s, m, key);
	case 1: return f->C_MessageDecryptInit(s, m, key);
	case 2: return f->C_MessageSignInit(s, m, key);
	default: return f->C_MessageVerifyInit(s, m, key);
	}
}

static CK_RV e2e_final(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s)
{
	switch (k) {
	case 0: return f->C_MessageEncryptFinal(s);
	case 1: return f->C_MessageDecryptFinal(s);
	case 2: return f->C_MessageSignFinal(s);
	default: return f->C_MessageVerifyFinal(s);
	}
}

static CK_RV e2e_one(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, void *p, CK_ULONG plen, CK_BYTE *aad,
		     CK_ULONG aadlen, CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *outlen)
{
	switch (k) {
	case 0: return f->C_EncryptMessage(s, p, plen, aad, aadlen, in, n, out, outlen);
	case 1: return f->C_DecryptMessage(s, p, plen, aad, aadlen, in, n, out, outlen);
	case 2: return f->C_SignMessage(s, p, plen, in, n, out, outlen);
	default: return f->C_VerifyMessage(s, p, plen, in, n, out, outlen ? *outlen : 0);
	}
}

static CK_RV e2e_begin(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, void *p, CK_ULONG plen, CK_BYTE *aad,
		       CK_ULONG aadlen)
{
	switch (k) {
	case 0: return f->C_EncryptMessageBegin(s, p, plen, aad, aadlen);
	case 1: return f->C_DecryptMessageBegin(s, p, plen, aad, aadlen);
	case 2: return f->C_SignMessageBegin(s, p, plen);
	default: return f->C_VerifyMessageBegin(s, p, plen);
	}
}

static CK_RV e2e_next(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, void *p, CK_ULONG plen, CK_BYTE *in,
		      CK_ULONG n, CK_BYTE *out, CK_ULONG *outlen, CK_FLAGS flags)
{
	switch (k) {
	case 0: return f->C_EncryptMessageNext(s, p, plen, in, n, out, outlen, flags);
	case 1: return f->C_DecryptMessageNext(s, p, plen, in, n, out, outlen, flags);
	case 2: return f->C_SignMessageNext(s, p, plen, in, n, out, outlen);
	default: return f->C_VerifyMessageNext(s, p, plen, in, n, out, outlen ? *outlen : 0);
	}
}
*/
import "C"

import (
	"errors"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The message-based functions of PKCS#11 3.0, which miekg/pkcs11 v1.1.2
// does not have, called through the module's 3.0 function list (the same
// library miekg/pkcs11 loaded and initialised).

// msgKind is a message-based process's kind.
type msgKind int

const (
	msgEncrypt msgKind = iota
	msgDecrypt
	msgSign
	msgVerify
)

// msgFuncs is the module's 3.0 list.
type msgFuncs struct{ f *C.CK_FUNCTION_LIST_3_0 }

func messageFuncs(module string) (*msgFuncs, error) {
	p := C.CString(module)
	defer C.free(unsafe.Pointer(p))
	f := C.e2e_list30(p)
	if f == nil {
		return nil, errors.New("no 3.0 function list (is the module loaded?)")
	}
	return &msgFuncs{f: f}, nil
}

func rvErr(rv C.CK_RV) error {
	if rv == C.CKR_OK {
		return nil
	}
	return pkcs11.Error(rv)
}

// msgParam is a message parameter as an application fills it: GCM's or
// ChaCha20-Poly1305's structure, or Raw bytes of any length, or none (a
// nil *msgParam). IV and Tag are the buffers it points to (nil: NULL);
// after a call they hold what the module wrote into them.
type msgParam struct {
	GCM, ChaCha bool
	Raw         []byte
	IV          []byte
	FixedBits   uint64
	Generator   uint64
	Tag         []byte
	TagBits     uint64
}

// gcmParam is a GCM message parameter with a 16-byte tag buffer.
func gcmParam(iv []byte, fixedBits, gen uint64) *msgParam {
	return &msgParam{GCM: true, IV: iv, FixedBits: fixedBits, Generator: gen, Tag: make([]byte, 16), TagBits: 128}
}

// cmem holds C memory for one call.
type cmem struct{ ptrs []unsafe.Pointer }

func (m *cmem) bytes(b []byte) *C.CK_BYTE {
	if b == nil {
		return nil
	}
	p := C.CBytes(append(append([]byte(nil), b...), 0))
	m.ptrs = append(m.ptrs, p)
	return (*C.CK_BYTE)(p)
}

func (m *cmem) free() {
	for _, p := range m.ptrs {
		C.free(p)
	}
}

// param builds p's structure; back copies what the module wrote into it.
func (m *cmem) param(p *msgParam) (unsafe.Pointer, C.CK_ULONG, func()) {
	if p == nil {
		return nil, 0, func() {}
	}
	iv, tag := m.bytes(p.IV), m.bytes(p.Tag)
	var s unsafe.Pointer
	var n C.CK_ULONG
	switch {
	case p.GCM:
		n = C.e2e_sizeof_gcm()
		s = C.calloc(1, C.size_t(n))
		C.e2e_gcm((*C.CK_GCM_MESSAGE_PARAMS)(s), iv, C.CK_ULONG(len(p.IV)), C.CK_ULONG(p.FixedBits), C.CK_ULONG(p.Generator), tag, C.CK_ULONG(p.TagBits))
	case p.ChaCha:
		n = C.e2e_sizeof_chacha()
		s = C.calloc(1, C.size_t(n))
		C.e2e_chacha((*C.CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS)(s), iv, C.CK_ULONG(len(p.IV)), tag)
	default:
		s, n = C.CBytes(append(append([]byte(nil), p.Raw...), 0)), C.CK_ULONG(len(p.Raw))
	}
	m.ptrs = append(m.ptrs, s)
	return s, n, func() {
		if iv != nil {
			copy(p.IV, unsafe.Slice((*byte)(unsafe.Pointer(iv)), len(p.IV)))
		}
		if tag != nil {
			copy(p.Tag, unsafe.Slice((*byte)(unsafe.Pointer(tag)), len(p.Tag)))
		}
	}
}

// output is a call's output buffer: capacity bytes, or (null) a NULL
// buffer, or (noLen) no length pointer at all.
type output struct {
	capacity    int
	null, noLen bool
}

// want is an output buffer of n bytes.
func want(n int) output { return output{capacity: n} }

// run makes an output call and returns the length it reported and, when
// the buffer was there and held it, the output.
func (m *cmem) run(o output, f func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV) ([]byte, uint64, error) {
	buf := C.calloc(C.size_t(o.capacity+1), 1)
	m.ptrs = append(m.ptrs, buf)
	n := C.CK_ULONG(o.capacity)
	out, np := (*C.CK_BYTE)(buf), &n
	if o.null {
		out = nil
	}
	if o.noLen {
		np = nil
	}
	err := rvErr(f(out, np))
	if err != nil || o.null || o.noLen || int(n) > o.capacity {
		return nil, uint64(n), err
	}
	return C.GoBytes(buf, C.int(n)), uint64(n), nil
}

// Init is C_MessageEncryptInit and kin; param is the mechanism's parameter
// (nil: none); a nil mech passes a NULL mechanism.
func (l *msgFuncs) Init(k msgKind, h pkcs11.SessionHandle, mech *uint, param *msgParam, key pkcs11.ObjectHandle) error {
	var m cmem
	defer m.free()
	if mech == nil {
		return rvErr(C.e2e_init(l.f, C.int(k), C.CK_SESSION_HANDLE(h), nil, C.CK_OBJECT_HANDLE(key)))
	}
	cm := (*C.CK_MECHANISM)(C.calloc(1, C.size_t(unsafe.Sizeof(C.CK_MECHANISM{}))))
	m.ptrs = append(m.ptrs, unsafe.Pointer(cm))
	cm.mechanism = C.CK_MECHANISM_TYPE(*mech)
	cm.pParameter, cm.ulParameterLen, _ = m.param(param)
	return rvErr(C.e2e_init(l.f, C.int(k), C.CK_SESSION_HANDLE(h), cm, C.CK_OBJECT_HANDLE(key)))
}

// Final is C_MessageEncryptFinal and kin.
func (l *msgFuncs) Final(k msgKind, h pkcs11.SessionHandle) error {
	return rvErr(C.e2e_final(l.f, C.int(k), C.CK_SESSION_HANDLE(h)))
}

// One is C_EncryptMessage, C_DecryptMessage, C_SignMessage (aad unused),
// or C_VerifyMessage with sig as its signature.
func (l *msgFuncs) One(k msgKind, h pkcs11.SessionHandle, p *msgParam, aad, in []byte, o output, sig []byte) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	param, plen, back := m.param(p)
	defer back()
	a, d := m.bytes(aad), m.bytes(in)
	if k == msgVerify {
		n := C.CK_ULONG(len(sig))
		return nil, 0, rvErr(C.e2e_one(l.f, C.int(k), C.CK_SESSION_HANDLE(h), param, plen, nil, 0, d, C.CK_ULONG(len(in)), m.bytes(sig), &n))
	}
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_one(l.f, C.int(k), C.CK_SESSION_HANDLE(h), param, plen, a, C.CK_ULONG(len(aad)), d, C.CK_ULONG(len(in)), out, outlen)
	})
}

// Begin is C_EncryptMessageBegin and kin.
func (l *msgFuncs) Begin(k msgKind, h pkcs11.SessionHandle, p *msgParam, aad []byte) error {
	var m cmem
	defer m.free()
	param, plen, back := m.param(p)
	defer back()
	return rvErr(C.e2e_begin(l.f, C.int(k), C.CK_SESSION_HANDLE(h), param, plen, m.bytes(aad), C.CK_ULONG(len(aad))))
}

// Next is C_EncryptMessageNext and kin. For C_VerifyMessageNext, sig is
// the signature (nil: a part, not the last).
func (l *msgFuncs) Next(k msgKind, h pkcs11.SessionHandle, p *msgParam, in []byte, o output, flags uint, sig []byte) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	param, plen, back := m.param(p)
	defer back()
	d := m.bytes(in)
	if k == msgVerify {
		n := C.CK_ULONG(len(sig))
		return nil, 0, rvErr(C.e2e_next(l.f, C.int(k), C.CK_SESSION_HANDLE(h), param, plen, d, C.CK_ULONG(len(in)), m.bytes(sig), &n, 0))
	}
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_next(l.f, C.int(k), C.CK_SESSION_HANDLE(h), param, plen, d, C.CK_ULONG(len(in)), out, outlen, C.CK_FLAGS(flags))
	})
}
