//go:build cgo

package moduletest

/*
#cgo CFLAGS: -I${SRCDIR}/..
#cgo pkg-config: p11-kit-1
#include <stdlib.h>
#include "p11compat.h"

// The message-based functions of PKCS#11 3.0 with their parameter
// structures built here, as an application builds them.

static CK_RV mt_msg_init(CK_FUNCTION_LIST_3_0 *f, int sign, CK_SESSION_HANDLE s, CK_MECHANISM *m, CK_OBJECT_HANDLE key)
{
	return sign ? f->C_MessageSignInit(s, m, key) : f->C_MessageEncryptInit(s, m, key);
}

static CK_RV mt_encrypt_message(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, void *param, CK_ULONG plen,
				CK_BYTE *aad, CK_ULONG aadlen, CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *outlen)
{
	return f->C_EncryptMessage(s, param, plen, aad, aadlen, in, n, out, outlen);
}

static CK_RV mt_decrypt_message(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, void *param, CK_ULONG plen,
				CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *outlen)
{
	return f->C_DecryptMessage(s, param, plen, NULL, 0, in, n, out, outlen);
}

static CK_RV mt_encrypt_message_next(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, void *param, CK_ULONG plen,
				     CK_BYTE *in, CK_ULONG n, CK_BYTE *out, CK_ULONG *outlen, CK_FLAGS flags)
{
	return f->C_EncryptMessageNext(s, param, plen, in, n, out, outlen, flags);
}

static CK_RV mt_sign_message_next(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
				  CK_BYTE *out, CK_ULONG *outlen)
{
	return f->C_SignMessageNext(s, NULL, 0, in, n, out, outlen);
}

static CK_RV mt_verify_message_next(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
				    CK_BYTE *sig, CK_ULONG siglen)
{
	return f->C_VerifyMessageNext(s, NULL, 0, in, n, sig, siglen);
}

static CK_RV mt_message_final(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s)
{
	return f->C_MessageEncryptFinal(s);
}

static CK_ULONG mt_sizeof_gcm_msg(void) { return sizeof(CK_GCM_MESSAGE_PARAMS); }
static CK_ULONG mt_sizeof_chacha_msg(void) { return sizeof(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS); }

static void mt_gcm_msg(CK_GCM_MESSAGE_PARAMS *p, CK_BYTE *iv, CK_ULONG ivlen, CK_ULONG fixed, CK_ULONG gen,
		       CK_BYTE *tag, CK_ULONG tagbits)
{
	p->pIv = iv;
	p->ulIvLen = ivlen;
	p->ulIvFixedBits = fixed;
	p->ivGenerator = gen;
	p->pTag = tag;
	p->ulTagBits = tagbits;
}

static void mt_chacha_msg(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS *p, CK_BYTE *nonce, CK_ULONG n, CK_BYTE *tag)
{
	p->pNonce = nonce;
	p->ulNonceLen = n;
	p->pTag = tag;
}
*/
import "C"

import "unsafe"

// MsgParam is a message parameter as an application fills it: GCM's
// CK_GCM_MESSAGE_PARAMS, ChaCha20-Poly1305's
// CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS, or (Raw) bytes of any length.
// IV and Tag are the buffers the structure points to; a nil one is a
// NULL pointer with Len's length. After a call they hold what the
// module wrote into them.
type MsgParam struct {
	GCM, ChaCha bool
	Raw         []byte
	IV          []byte
	IVLen       uint64 // for a nil IV
	FixedBits   uint64
	Generator   uint64
	Tag         []byte
	TagBits     uint64 // GCM
}

// cMsgParam builds the C structure; done copies the buffers back into
// p and frees everything.
func (p *MsgParam) c() (unsafe.Pointer, C.CK_ULONG, func()) {
	if p == nil {
		return nil, 0, func() {}
	}
	var frees []unsafe.Pointer
	buf := func(b []byte) *C.CK_BYTE {
		if b == nil {
			return nil
		}
		q := C.CBytes(append(append([]byte(nil), b...), 0))
		frees = append(frees, q)
		return (*C.CK_BYTE)(q)
	}
	iv, tag := buf(p.IV), buf(p.Tag)
	ivLen := C.CK_ULONG(len(p.IV))
	if p.IV == nil {
		ivLen = C.CK_ULONG(p.IVLen)
	}
	var s unsafe.Pointer
	var n C.CK_ULONG
	switch {
	case p.GCM:
		s, n = C.calloc(1, C.size_t(C.mt_sizeof_gcm_msg())), C.mt_sizeof_gcm_msg()
		C.mt_gcm_msg((*C.CK_GCM_MESSAGE_PARAMS)(s), iv, ivLen, C.CK_ULONG(p.FixedBits), C.CK_ULONG(p.Generator), tag, C.CK_ULONG(p.TagBits))
	case p.ChaCha:
		s, n = C.calloc(1, C.size_t(C.mt_sizeof_chacha_msg())), C.mt_sizeof_chacha_msg()
		C.mt_chacha_msg((*C.CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS)(s), iv, ivLen, tag)
	default:
		s, n = C.CBytes(append(append([]byte(nil), p.Raw...), 0)), C.CK_ULONG(len(p.Raw))
	}
	frees = append(frees, s)
	return s, n, func() {
		if p.IV != nil {
			copy(p.IV, C.GoBytes(unsafe.Pointer(iv), C.int(len(p.IV))))
		}
		if p.Tag != nil {
			copy(p.Tag, C.GoBytes(unsafe.Pointer(tag), C.int(len(p.Tag))))
		}
		if p.Raw != nil && !p.GCM && !p.ChaCha {
			copy(p.Raw, C.GoBytes(s, C.int(len(p.Raw))))
		}
		for _, f := range frees {
			C.free(f)
		}
	}
}

// MessageInit is C_MessageEncryptInit (or, sign, C_MessageSignInit) with
// mechanism mech and a parameter: p's structure (its size is what the
// module checks), or raw bytes; nil mech passes a NULL mechanism.
func (m *Module) MessageInit(sign bool, session uint64, mech *uint64, p *MsgParam, key uint64) RV {
	s := C.int(0)
	if sign {
		s = 1
	}
	if mech == nil {
		return RV(C.mt_msg_init(m.f, s, C.CK_SESSION_HANDLE(session), nil, C.CK_OBJECT_HANDLE(key)))
	}
	cm := (*C.CK_MECHANISM)(C.calloc(1, C.size_t(unsafe.Sizeof(C.CK_MECHANISM{}))))
	defer C.free(unsafe.Pointer(cm))
	cm.mechanism = C.CK_MECHANISM_TYPE(*mech)
	param, n, done := p.c()
	defer done()
	cm.pParameter, cm.ulParameterLen = param, n
	return RV(C.mt_msg_init(m.f, s, C.CK_SESSION_HANDLE(session), cm, C.CK_OBJECT_HANDLE(key)))
}

// EncryptMessage is C_EncryptMessage; p gets what the module wrote back.
func (m *Module) EncryptMessage(session uint64, p *MsgParam, aad, in []byte, b Buf) Out {
	param, n, done := p.c()
	defer done()
	ap, an, afree := cbytes(In{Data: aad, Null: aad == nil})
	defer afree()
	ip, inn, ifree := cbytes(In{Data: in})
	defer ifree()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_encrypt_message(m.f, C.CK_SESSION_HANDLE(session), param, n, ap, an, ip, inn, out, outlen)
	})
}

// DecryptMessage is C_DecryptMessage with no associated data.
func (m *Module) DecryptMessage(session uint64, p *MsgParam, in []byte, b Buf) Out {
	param, n, done := p.c()
	defer done()
	ip, inn, ifree := cbytes(In{Data: in})
	defer ifree()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_decrypt_message(m.f, C.CK_SESSION_HANDLE(session), param, n, ip, inn, out, outlen)
	})
}

// EncryptMessageNext is C_EncryptMessageNext; p gets what the module
// wrote back.
func (m *Module) EncryptMessageNext(session uint64, p *MsgParam, in []byte, b Buf, flags uint64) Out {
	param, n, done := p.c()
	defer done()
	ip, inn, ifree := cbytes(In{Data: in})
	defer ifree()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_encrypt_message_next(m.f, C.CK_SESSION_HANDLE(session), param, n, ip, inn, out, outlen, C.CK_FLAGS(flags))
	})
}

// SignMessageNext is C_SignMessageNext with no parameter; b.NullLen
// passes no length pointer (a part, not the last).
func (m *Module) SignMessageNext(session uint64, in []byte, b Buf) Out {
	ip, inn, ifree := cbytes(In{Data: in})
	defer ifree()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_sign_message_next(m.f, C.CK_SESSION_HANDLE(session), ip, inn, out, outlen)
	})
}

// VerifyMessageNext is C_VerifyMessageNext with no parameter; a NULL
// signature says more parts follow.
func (m *Module) VerifyMessageNext(session uint64, in []byte, sig In) RV {
	ip, inn, ifree := cbytes(In{Data: in})
	defer ifree()
	sp, sn, sfree := cbytes(sig)
	defer sfree()
	return RV(C.mt_verify_message_next(m.f, C.CK_SESSION_HANDLE(session), ip, inn, sp, sn))
}

// MessageEncryptFinal is C_MessageEncryptFinal.
func (m *Module) MessageEncryptFinal(session uint64) RV {
	return RV(C.mt_message_final(m.f, C.CK_SESSION_HANDLE(session)))
}
