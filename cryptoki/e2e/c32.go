package e2e

/*
#cgo CFLAGS: -I${SRCDIR}/../module
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include "p11compat.h"

// e2e_list32 is the 3.2 function list of the module at path, which
// miekg/pkcs11 loaded already, asked for by version.
static CK_FUNCTION_LIST_3_2 *e2e_list32(const char *path)
{
	void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (lib == NULL)
		return NULL;
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_INTERFACE_PTR itf = NULL;
	CK_VERSION v = {3, 2};
	CK_FUNCTION_LIST_3_2 *f = NULL;
	if (gi != NULL && gi((CK_UTF8CHAR_PTR) "PKCS 11", &v, &itf, 0) == CKR_OK)
		f = itf->pFunctionList;
	dlclose(lib);
	return f;
}

// e2e_mech fills a mechanism whose parameter, when ctx is set (hasctx),
// is the CK_SIGN_ADDITIONAL_CONTEXT p.
static void e2e_mech(CK_MECHANISM *m, CK_SIGN_ADDITIONAL_CONTEXT *p, CK_ULONG type, int hasctx, CK_ULONG hedge,
		     CK_BYTE *ctx, CK_ULONG ctxlen)
{
	m->mechanism = type;
	m->pParameter = NULL;
	m->ulParameterLen = 0;
	if (hasctx) {
		p->hedgeVariant = hedge;
		p->pContext = ctx;
		p->ulContextLen = ctxlen;
		m->pParameter = p;
		m->ulParameterLen = sizeof *p;
	}
}

// The calls, by kind: 0 C_Sign (size query, then the signature), 1
// C_Verify, 2 C_VerifySignature (3.2).
static CK_RV e2e_sig(CK_FUNCTION_LIST_3_2 *f, int k, CK_SESSION_HANDLE s, CK_ULONG type, int hasctx, CK_ULONG hedge,
		     CK_BYTE *ctx, CK_ULONG ctxlen, CK_OBJECT_HANDLE key, CK_BYTE *data, CK_ULONG n, CK_BYTE *sig,
		     CK_ULONG *siglen)
{
	CK_MECHANISM m;
	CK_SIGN_ADDITIONAL_CONTEXT p;
	e2e_mech(&m, &p, type, hasctx, hedge, ctx, ctxlen);
	CK_RV rv;
	switch (k) {
	case 0:
		if ((rv = f->C_SignInit(s, &m, key)) != CKR_OK)
			return rv;
		CK_ULONG want = 0;
		if ((rv = f->C_Sign(s, data, n, NULL, &want)) != CKR_OK)
			return rv;
		if (want > *siglen)
			return CKR_BUFFER_TOO_SMALL;
		return f->C_Sign(s, data, n, sig, siglen);
	case 1:
		if ((rv = f->C_VerifyInit(s, &m, key)) != CKR_OK)
			return rv;
		return f->C_Verify(s, data, n, sig, *siglen);
	default:
		if ((rv = f->C_VerifySignatureInit(s, &m, key, sig, *siglen)) != CKR_OK)
			return rv;
		return f->C_VerifySignature(s, data, n);
	}
}

// e2e_verify_sig_end begins a C_VerifySignatureInit verification of sig
// with CKM_ML_DSA beside a C_VerifyInit one and ends one of them (how: 0
// C_VerifySignatureInit with a NULL mechanism, 1 C_VerifySignatureUpdate
// with a NULL part of 4 bytes, 2 C_VerifySignature with NULL data of 4
// bytes; 3 C_VerifyInit with a NULL mechanism, 4 C_VerifyUpdate with a
// NULL part of 4 bytes). It returns that call's answer in rv[0]; then
// for the first three C_VerifySignatureFinal's in rv[1], for the others
// C_VerifySignature's of data; and the C_VerifyInit verification's
// C_Verify in rv[2].
static CK_RV e2e_verify_sig_end(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, int how, CK_OBJECT_HANDLE key,
				CK_BYTE *data, CK_ULONG n, CK_BYTE *sig, CK_ULONG siglen, CK_RV rv[3])
{
	CK_MECHANISM m = {CKM_ML_DSA, NULL, 0};
	CK_RV r;
	if ((r = f->C_VerifyInit(s, &m, key)) != CKR_OK)
		return r;
	if ((r = f->C_VerifySignatureInit(s, &m, key, sig, siglen)) != CKR_OK)
		return r;
	switch (how) {
	case 0:
		rv[0] = f->C_VerifySignatureInit(s, NULL, key, sig, siglen);
		break;
	case 1:
		rv[0] = f->C_VerifySignatureUpdate(s, NULL, 4);
		break;
	case 2:
		rv[0] = f->C_VerifySignature(s, NULL, 4);
		break;
	case 3:
		rv[0] = f->C_VerifyInit(s, NULL, key);
		break;
	default:
		rv[0] = f->C_VerifyUpdate(s, NULL, 4);
	}
	rv[1] = how < 3 ? f->C_VerifySignatureFinal(s) : f->C_VerifySignature(s, data, n);
	rv[2] = f->C_Verify(s, data, n, sig, siglen);
	return CKR_OK;
}

// e2e_secret_template is a template for a session AES key, readable.
static CK_ULONG e2e_aes_template(CK_ATTRIBUTE *t)
{
	static CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	static CK_KEY_TYPE kt = CKK_AES;
	static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE a[] = {
		{CKA_CLASS, &cls, sizeof cls},   {CKA_KEY_TYPE, &kt, sizeof kt},  {CKA_ENCRYPT, &yes, sizeof yes},
		{CKA_DECRYPT, &yes, sizeof yes}, {CKA_SENSITIVE, &no, sizeof no}, {CKA_EXTRACTABLE, &yes, sizeof yes},
	};
	memcpy(t, a, sizeof a);
	return sizeof a / sizeof a[0];
}

static CK_RV e2e_encapsulate(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_BYTE *ct,
			     CK_ULONG *ctlen, CK_OBJECT_HANDLE *key)
{
	CK_MECHANISM m = {CKM_ML_KEM, NULL, 0};
	CK_ATTRIBUTE t[8];
	CK_ULONG n = e2e_aes_template(t);
	return f->C_EncapsulateKey(s, &m, pub, t, n, ct, ctlen, key);
}

static CK_RV e2e_decapsulate(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv, CK_BYTE *ct,
			     CK_ULONG ctlen, CK_OBJECT_HANDLE *key)
{
	CK_MECHANISM m = {CKM_ML_KEM, NULL, 0};
	CK_ATTRIBUTE t[8];
	CK_ULONG n = e2e_aes_template(t);
	return f->C_DecapsulateKey(s, &m, priv, t, n, ct, ctlen, key);
}

static CK_RV e2e_validation(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_FLAGS *flags)
{
	return f->C_GetSessionValidationFlags(s, CKS_LAST_VALIDATION_OK, flags);
}

static CK_RV e2e_async(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s)
{
	CK_ULONG id;
	return f->C_AsyncGetID(s, (CK_UTF8CHAR_PTR) "C_Sign", &id);
}

// e2e_gcm_mech fills CKM_AES_GCM with a CK_GCM_MESSAGE_PARAMS of a 12-byte
// IV and a 16-byte tag; nomech passes no mechanism at all.
static CK_MECHANISM *e2e_gcm_mech(CK_MECHANISM *m, CK_GCM_MESSAGE_PARAMS *p, CK_ULONG gen, CK_BYTE *iv, CK_BYTE *tag,
				  int nomech)
{
	p->pIv = iv;
	p->ulIvLen = 12;
	p->ulIvFixedBits = 0;
	p->ivGenerator = gen;
	p->pTag = tag;
	p->ulTagBits = 128;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = p;
	m->ulParameterLen = sizeof *p;
	return nomech ? NULL : m;
}

static CK_RV e2e_wrap_auth(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, int nomech, CK_ULONG gen, CK_BYTE *iv,
			   CK_BYTE *tag, CK_OBJECT_HANDLE kek, CK_OBJECT_HANDLE key, CK_BYTE *aad, CK_ULONG aadlen,
			   CK_BYTE *out, CK_ULONG *outlen)
{
	CK_MECHANISM m;
	CK_GCM_MESSAGE_PARAMS p;
	return f->C_WrapKeyAuthenticated(s, e2e_gcm_mech(&m, &p, gen, iv, tag, nomech), kek, key, aad, aadlen, out,
					 outlen);
}

static CK_RV e2e_unwrap_auth(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_BYTE *iv, CK_BYTE *tag,
			     CK_OBJECT_HANDLE kek, CK_BYTE *wrapped, CK_ULONG n, CK_BYTE *aad, CK_ULONG aadlen,
			     CK_OBJECT_HANDLE *key)
{
	CK_MECHANISM m;
	CK_GCM_MESSAGE_PARAMS p;
	CK_ATTRIBUTE t[8];
	CK_ULONG tn = e2e_aes_template(t);
	return f->C_UnwrapKeyAuthenticated(s, e2e_gcm_mech(&m, &p, CKG_NO_GENERATE, iv, tag, 0), kek, wrapped, n, t, tn,
					   aad, aadlen, key);
}

// e2e_sigctx_raw writes a CK_SIGN_ADDITIONAL_CONTEXT into out (of its
// size), for a message-based Init that takes it as raw bytes.
static void e2e_sigctx_raw(CK_ULONG hedge, CK_BYTE *ctx, CK_ULONG n, void *out)
{
	CK_SIGN_ADDITIONAL_CONTEXT p = {hedge, ctx, n};
	memcpy(out, &p, sizeof p);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The PKCS#11 3.2 functions, which miekg/pkcs11 does not have, through
// the module's 3.2 function list (the library miekg/pkcs11 loaded and
// initialised).

type funcs32 struct{ f *C.CK_FUNCTION_LIST_3_2 }

func list32(module string) (*funcs32, error) {
	p := C.CString(module)
	defer C.free(unsafe.Pointer(p))
	f := C.e2e_list32(p)
	if f == nil {
		return nil, errors.New("no 3.2 function list")
	}
	return &funcs32{f: f}, nil
}

// sigCtx is a CK_SIGN_ADDITIONAL_CONTEXT; nil passes no parameter.
type sigCtx struct {
	hedge uint
	ctx   []byte
}

type sigCall int

const (
	callSign sigCall = iota
	callVerify
	callVerifySignature
)

// sig runs one signature call. For callSign it returns the signature.
func (l *funcs32) sig(k sigCall, h pkcs11.SessionHandle, mech uint, p *sigCtx, key pkcs11.ObjectHandle, data, sig []byte) ([]byte, error) {
	var m cmem
	defer m.free()
	var hasctx C.int
	var hedge C.CK_ULONG
	var ctx *C.CK_BYTE
	var ctxlen C.CK_ULONG
	if p != nil {
		hasctx, hedge, ctx, ctxlen = 1, C.CK_ULONG(p.hedge), m.bytes(p.ctx), C.CK_ULONG(len(p.ctx))
		if p.ctx == nil {
			ctx = nil
		}
	}
	buf, n := m.bytes(nonNil(sig)), C.CK_ULONG(len(sig))
	if k == callSign {
		n = 1 << 16
		buf = (*C.CK_BYTE)(C.calloc(C.size_t(n), 1))
		m.ptrs = append(m.ptrs, unsafe.Pointer(buf))
	}
	err := rvErr(C.e2e_sig(l.f, C.int(k), C.CK_SESSION_HANDLE(h), C.CK_ULONG(mech), hasctx, hedge, ctx, ctxlen,
		C.CK_OBJECT_HANDLE(key), m.bytes(nonNil(data)), C.CK_ULONG(len(data)), buf, &n))
	if err != nil || k != callSign {
		return nil, err
	}
	return C.GoBytes(unsafe.Pointer(buf), C.int(n)), nil
}

// verifySignatureEnd runs e2e_verify_sig_end: the ending call's CK_RV,
// C_VerifySignatureFinal's (or C_VerifySignature's) after it, and the
// C_Verify beside it.
func (l *funcs32) verifySignatureEnd(h pkcs11.SessionHandle, how int, key pkcs11.ObjectHandle, data, sig []byte) ([3]uint, error) {
	var m cmem
	defer m.free()
	var rv [3]C.CK_RV
	err := rvErr(C.e2e_verify_sig_end(l.f, C.CK_SESSION_HANDLE(h), C.int(how), C.CK_OBJECT_HANDLE(key),
		m.bytes(nonNil(data)), C.CK_ULONG(len(data)), m.bytes(nonNil(sig)), C.CK_ULONG(len(sig)), &rv[0]))
	return [3]uint{uint(rv[0]), uint(rv[1]), uint(rv[2])}, err
}

// encapsulate returns the ciphertext and the handle of a new session AES
// key, readable; with capacity 0 it asks for the length only.
func (l *funcs32) encapsulate(h pkcs11.SessionHandle, pub pkcs11.ObjectHandle, capacity int) ([]byte, uint64, pkcs11.ObjectHandle, error) {
	buf := C.calloc(C.size_t(capacity+1), 1)
	defer C.free(buf)
	out := (*C.CK_BYTE)(buf)
	if capacity == 0 {
		out = nil
	}
	n := C.CK_ULONG(capacity)
	var key C.CK_OBJECT_HANDLE
	err := rvErr(C.e2e_encapsulate(l.f, C.CK_SESSION_HANDLE(h), C.CK_OBJECT_HANDLE(pub), out, &n, &key))
	if err != nil || out == nil {
		return nil, uint64(n), pkcs11.ObjectHandle(key), err
	}
	return C.GoBytes(buf, C.int(n)), uint64(n), pkcs11.ObjectHandle(key), nil
}

func (l *funcs32) decapsulate(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, ct []byte) (pkcs11.ObjectHandle, error) {
	var m cmem
	defer m.free()
	var key C.CK_OBJECT_HANDLE
	err := rvErr(C.e2e_decapsulate(l.f, C.CK_SESSION_HANDLE(h), C.CK_OBJECT_HANDLE(priv), m.bytes(nonNil(ct)), C.CK_ULONG(len(ct)), &key))
	return pkcs11.ObjectHandle(key), err
}

// nonNil makes a nil slice empty, which cmem passes as a pointer.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func (l *funcs32) validationFlags(h pkcs11.SessionHandle) (uint64, error) {
	var fl C.CK_FLAGS
	err := rvErr(C.e2e_validation(l.f, C.CK_SESSION_HANDLE(h), &fl))
	return uint64(fl), err
}

func (l *funcs32) asyncGetID(h pkcs11.SessionHandle) error {
	return rvErr(C.e2e_async(l.f, C.CK_SESSION_HANDLE(h)))
}

// authWrap is one C_WrapKeyAuthenticated call with CKM_AES_GCM.
type authWrap struct {
	noMech   bool   // pass a NULL mechanism
	gen      uint   // the IV generator
	aad      []byte // nil passes NULL
	out      bool   // pass a buffer (else NULL, a size query)
	capacity int    // *pulWrappedKeyLen on entry
}

// wrapAuth runs w and returns what the call wrote: the wrapped key (when
// a buffer was passed), the length, and the parameter's IV and tag
// buffers as they are after the call (zero when nothing was written).
func (l *funcs32) wrapAuth(h pkcs11.SessionHandle, kek, key pkcs11.ObjectHandle, w authWrap) (wrapped []byte, n uint64, iv, tag []byte, err error) {
	var m cmem
	defer m.free()
	ivb, tagb := m.bytes(make([]byte, 12)), m.bytes(make([]byte, 16))
	buf := C.calloc(C.size_t(w.capacity+1), 1)
	defer C.free(buf)
	out := (*C.CK_BYTE)(buf)
	if !w.out {
		out = nil
	}
	noMech := C.int(0)
	if w.noMech {
		noMech = 1
	}
	cn := C.CK_ULONG(w.capacity)
	err = rvErr(C.e2e_wrap_auth(l.f, C.CK_SESSION_HANDLE(h), noMech, C.CK_ULONG(w.gen), ivb, tagb,
		C.CK_OBJECT_HANDLE(kek), C.CK_OBJECT_HANDLE(key), m.bytes(w.aad), C.CK_ULONG(len(w.aad)), out, &cn))
	iv, tag = C.GoBytes(unsafe.Pointer(ivb), 12), C.GoBytes(unsafe.Pointer(tagb), 16)
	if err == nil && out != nil {
		wrapped = C.GoBytes(buf, C.int(cn))
	}
	return wrapped, uint64(cn), iv, tag, err
}

// unwrapAuth unwraps into a new session AES key, readable.
func (l *funcs32) unwrapAuth(h pkcs11.SessionHandle, kek pkcs11.ObjectHandle, iv, tag, wrapped, aad []byte) (pkcs11.ObjectHandle, error) {
	var m cmem
	defer m.free()
	var key C.CK_OBJECT_HANDLE
	err := rvErr(C.e2e_unwrap_auth(l.f, C.CK_SESSION_HANDLE(h), m.bytes(iv), m.bytes(tag), C.CK_OBJECT_HANDLE(kek),
		m.bytes(nonNil(wrapped)), C.CK_ULONG(len(wrapped)), m.bytes(aad), C.CK_ULONG(len(aad)), &key))
	return pkcs11.ObjectHandle(key), err
}

// sigCtxRaw is a CK_SIGN_ADDITIONAL_CONTEXT as bytes, whose context is
// in C memory until free.
func sigCtxRaw(hedge uint, ctx []byte) (raw []byte, free func()) {
	c := C.CBytes(append(bytes.Clone(ctx), 0))
	buf := C.malloc(C.sizeof_CK_SIGN_ADDITIONAL_CONTEXT)
	defer C.free(buf)
	C.e2e_sigctx_raw(C.CK_ULONG(hedge), (*C.CK_BYTE)(c), C.CK_ULONG(len(ctx)), buf)
	return C.GoBytes(buf, C.sizeof_CK_SIGN_ADDITIONAL_CONTEXT), func() { C.free(c) }
}
