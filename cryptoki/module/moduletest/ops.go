//go:build cgo

package moduletest

/*
#cgo CFLAGS: -I${SRCDIR}/..
#cgo pkg-config: p11-kit-1
#include <stdlib.h>
#include "p11compat.h"

// The five operation families, called as an application calls them: every
// pointer may be NULL, so a test can pass what a careless client passes.
enum { MT_ENCRYPT, MT_DECRYPT, MT_DIGEST, MT_SIGN, MT_VERIFY };

static CK_RV mt_op_init(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
	switch (k) {
	case MT_ENCRYPT: return f->C_EncryptInit(s, m, key);
	case MT_DECRYPT: return f->C_DecryptInit(s, m, key);
	case MT_DIGEST: return f->C_DigestInit(s, m);
	case MT_SIGN: return f->C_SignInit(s, m, key);
	default: return f->C_VerifyInit(s, m, key);
	}
}

static CK_RV mt_op_one(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
		       CK_BYTE *out, CK_ULONG *outlen)
{
	switch (k) {
	case MT_ENCRYPT: return f->C_Encrypt(s, in, n, out, outlen);
	case MT_DECRYPT: return f->C_Decrypt(s, in, n, out, outlen);
	case MT_DIGEST: return f->C_Digest(s, in, n, out, outlen);
	case MT_SIGN: return f->C_Sign(s, in, n, out, outlen);
	default: return f->C_Verify(s, in, n, out, outlen ? *outlen : 0);
	}
}

static CK_RV mt_op_update(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
			  CK_BYTE *out, CK_ULONG *outlen)
{
	switch (k) {
	case MT_ENCRYPT: return f->C_EncryptUpdate(s, in, n, out, outlen);
	case MT_DECRYPT: return f->C_DecryptUpdate(s, in, n, out, outlen);
	case MT_DIGEST: return f->C_DigestUpdate(s, in, n);
	case MT_SIGN: return f->C_SignUpdate(s, in, n);
	default: return f->C_VerifyUpdate(s, in, n);
	}
}

static CK_RV mt_op_final(CK_FUNCTION_LIST_3_0 *f, int k, CK_SESSION_HANDLE s, CK_BYTE *out, CK_ULONG *outlen)
{
	switch (k) {
	case MT_ENCRYPT: return f->C_EncryptFinal(s, out, outlen);
	case MT_DECRYPT: return f->C_DecryptFinal(s, out, outlen);
	case MT_DIGEST: return f->C_DigestFinal(s, out, outlen);
	case MT_SIGN: return f->C_SignFinal(s, out, outlen);
	default: return f->C_VerifyFinal(s, out, outlen ? *outlen : 0);
	}
}

static CK_RV mt_session_cancel(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_FLAGS flags)
{
	return f->C_SessionCancel(s, flags);
}

static CK_RV mt_destroy_object(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	return f->C_DestroyObject(s, o);
}
*/
import "C"

import "unsafe"

// Kind is an operation family.
type Kind int

const (
	KindEncrypt Kind = C.MT_ENCRYPT
	KindDecrypt Kind = C.MT_DECRYPT
	KindDigest  Kind = C.MT_DIGEST
	KindSign    Kind = C.MT_SIGN
	KindVerify  Kind = C.MT_VERIFY
)

// In is an input byte string as a caller passes it: Null passes a NULL
// pointer with len(Data) as its length.
type In struct {
	Data []byte
	Null bool
}

// Buf is an output buffer as a caller passes it. For C_Verify and
// C_VerifyFinal, In is the signature instead.
type Buf struct {
	Cap     int  // its capacity, *pulLen on entry
	Null    bool // a NULL buffer: the call asks for the length
	NullLen bool // a NULL length pointer
	In      In   // C_Verify's, C_VerifyFinal's signature
}

// Out is what an output call returned.
type Out struct {
	RV   RV
	Len  uint64 // *pulLen on return
	Data []byte // the buffer's first Len bytes (when they fit)
}

// cbytes copies in for C; the pointer is NULL for Null input.
func cbytes(in In) (*C.CK_BYTE, C.CK_ULONG, func()) {
	if in.Null {
		return nil, C.CK_ULONG(len(in.Data)), func() {}
	}
	p := C.CBytes(append(append([]byte(nil), in.Data...), 0))
	return (*C.CK_BYTE)(p), C.CK_ULONG(len(in.Data)), func() { C.free(p) }
}

// call runs an output call with the buffer b describes.
func call(b Buf, f func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV) Out {
	buf := C.calloc(C.size_t(b.Cap+1), 1)
	defer C.free(buf)
	out := (*C.CK_BYTE)(buf)
	if b.Null {
		out = nil
	}
	n := C.CK_ULONG(b.Cap)
	np := &n
	if b.NullLen {
		np = nil
	}
	rv := f(out, np)
	o := Out{RV: RV(rv), Len: uint64(n)}
	if !b.Null && !b.NullLen && o.Len <= uint64(b.Cap) {
		o.Data = C.GoBytes(buf, C.int(n))
	}
	return o
}

// OpInit is C_EncryptInit, ..., C_VerifyInit (C_DigestInit takes no key).
// A nil mechanism passes NULL, which ends an operation of the kind (3.0).
func (m *Module) OpInit(k Kind, session uint64, mech *uint64, param []byte, key uint64) RV {
	if mech == nil {
		return RV(C.mt_op_init(m.f, C.int(k), C.CK_SESSION_HANDLE(session), nil, C.CK_OBJECT_HANDLE(key)))
	}
	cm := (*C.CK_MECHANISM)(C.calloc(1, C.size_t(unsafe.Sizeof(C.CK_MECHANISM{}))))
	defer C.free(unsafe.Pointer(cm))
	cm.mechanism = C.CK_MECHANISM_TYPE(*mech)
	if param != nil {
		p := C.CBytes(param)
		defer C.free(p)
		cm.pParameter = p
		cm.ulParameterLen = C.CK_ULONG(len(param))
	}
	return RV(C.mt_op_init(m.f, C.int(k), C.CK_SESSION_HANDLE(session), cm, C.CK_OBJECT_HANDLE(key)))
}

// OpOne is the single-part call: C_Encrypt, C_Decrypt, C_Digest, C_Sign,
// or C_Verify with b.In as the signature.
func (m *Module) OpOne(k Kind, session uint64, in In, b Buf) Out {
	p, n, free := cbytes(in)
	defer free()
	if k == KindVerify {
		sp, sn, sfree := cbytes(b.In)
		defer sfree()
		return Out{RV: RV(C.mt_op_one(m.f, C.int(k), C.CK_SESSION_HANDLE(session), p, n, sp, &sn))}
	}
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_op_one(m.f, C.int(k), C.CK_SESSION_HANDLE(session), p, n, out, outlen)
	})
}

// OpUpdate is C_EncryptUpdate, C_DecryptUpdate (with an output), or
// C_DigestUpdate, C_SignUpdate, C_VerifyUpdate (b unused).
func (m *Module) OpUpdate(k Kind, session uint64, in In, b Buf) Out {
	p, n, free := cbytes(in)
	defer free()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_op_update(m.f, C.int(k), C.CK_SESSION_HANDLE(session), p, n, out, outlen)
	})
}

// OpFinal is the Final call; C_VerifyFinal takes b.In as the signature.
func (m *Module) OpFinal(k Kind, session uint64, b Buf) Out {
	if k == KindVerify {
		sp, sn, sfree := cbytes(b.In)
		defer sfree()
		return Out{RV: RV(C.mt_op_final(m.f, C.int(k), C.CK_SESSION_HANDLE(session), sp, &sn))}
	}
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_op_final(m.f, C.int(k), C.CK_SESSION_HANDLE(session), out, outlen)
	})
}

// SessionCancel is C_SessionCancel.
func (m *Module) SessionCancel(session, flags uint64) RV {
	return RV(C.mt_session_cancel(m.f, C.CK_SESSION_HANDLE(session), C.CK_FLAGS(flags)))
}

// DestroyObject is C_DestroyObject.
func (m *Module) DestroyObject(session, object uint64) RV {
	return RV(C.mt_destroy_object(m.f, C.CK_SESSION_HANDLE(session), C.CK_OBJECT_HANDLE(object)))
}
