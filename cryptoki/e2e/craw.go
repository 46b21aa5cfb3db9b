package e2e

/*
#cgo CFLAGS: -I${SRCDIR}/../module
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include "p11compat.h"

// e2e_raw_list is the 2.40 function list of the module at path, which
// miekg/pkcs11 loaded already (RTLD_NOLOAD): every module has it, also
// those without C_GetInterface (SoftHSMv2 2.6).
static CK_FUNCTION_LIST *e2e_raw_list(const char *path)
{
	void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (lib == NULL)
		return NULL;
	CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
	CK_FUNCTION_LIST *f = NULL;
	if (gfl == NULL || gfl(&f) != CKR_OK)
		f = NULL;
	dlclose(lib);
	return f;
}

// The single-part calls, by kind: 0 sign, 1 encrypt, 2 decrypt, 3 digest.
static CK_RV e2e_raw_out(CK_FUNCTION_LIST *f, int k, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n, CK_BYTE *out,
			 CK_ULONG *outlen)
{
	switch (k) {
	case 0: return f->C_Sign(s, in, n, out, outlen);
	case 1: return f->C_Encrypt(s, in, n, out, outlen);
	case 2: return f->C_Decrypt(s, in, n, out, outlen);
	default: return f->C_Digest(s, in, n, out, outlen);
	}
}

// The Finals, by kind: 0 sign, 1 encrypt, 2 decrypt, 3 digest.
static CK_RV e2e_raw_final(CK_FUNCTION_LIST *f, int k, CK_SESSION_HANDLE s, CK_BYTE *out, CK_ULONG *outlen)
{
	switch (k) {
	case 0: return f->C_SignFinal(s, out, outlen);
	case 1: return f->C_EncryptFinal(s, out, outlen);
	case 2: return f->C_DecryptFinal(s, out, outlen);
	default: return f->C_DigestFinal(s, out, outlen);
	}
}

static CK_RV e2e_raw_digest_encrypt(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n, CK_BYTE *out,
				     CK_ULONG *outlen)
{
	return f->C_DigestEncryptUpdate(s, in, n, out, outlen);
}

static CK_RV e2e_raw_wrap(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE wrapping,
			  CK_OBJECT_HANDLE key, CK_BYTE *out, CK_ULONG *outlen)
{
	CK_MECHANISM m = { mech, NULL, 0 };
	return f->C_WrapKey(s, &m, wrapping, key, out, outlen);
}

static CK_RV e2e_raw_getattrs(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t, CK_ULONG n)
{
	return f->C_GetAttributeValue(s, o, t, n);
}

static CK_RV e2e_raw_size(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG *n)
{
	return f->C_GetObjectSize(s, o, n);
}
*/
import "C"

import (
	"errors"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// The calls whose output buffer an application sizes itself (a NULL
// buffer, one too short, one exact), made through the module's 2.40
// list: miekg/pkcs11 always asks for the length first and sizes the
// buffer to the answer, so it never shows a short buffer's answer.

// rawFuncs is a loaded module's 2.40 list.
type rawFuncs struct{ f *C.CK_FUNCTION_LIST }

func rawList(module string) (*rawFuncs, error) {
	p := C.CString(module)
	defer C.free(unsafe.Pointer(p))
	f := C.e2e_raw_list(p)
	if f == nil {
		return nil, errors.New("no function list (is the module loaded?)")
	}
	return &rawFuncs{f: f}, nil
}

// rawOp is a single-part call's kind.
type rawOp int

const (
	rawSign rawOp = iota
	rawEncrypt
	rawDecrypt
	rawDigest
)

// Out is C_Sign, C_Encrypt, C_Decrypt or C_Digest with the output buffer o.
func (r *rawFuncs) Out(k rawOp, h pkcs11.SessionHandle, in []byte, o output) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	d := m.bytes(append([]byte{}, in...))
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_raw_out(r.f, C.int(k), C.CK_SESSION_HANDLE(h), d, C.CK_ULONG(len(in)), out, outlen)
	})
}

// Final is C_SignFinal, C_EncryptFinal, C_DecryptFinal or C_DigestFinal
// with the output buffer o.
func (r *rawFuncs) Final(k rawOp, h pkcs11.SessionHandle, o output) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_raw_final(r.f, C.int(k), C.CK_SESSION_HANDLE(h), out, outlen)
	})
}

// DigestEncrypt is C_DigestEncryptUpdate with the output buffer o (noLen:
// a NULL length pointer).
func (r *rawFuncs) DigestEncrypt(h pkcs11.SessionHandle, in []byte, o output) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	d := m.bytes(append([]byte{}, in...))
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_raw_digest_encrypt(r.f, C.CK_SESSION_HANDLE(h), d, C.CK_ULONG(len(in)), out, outlen)
	})
}

// Wrap is C_WrapKey with a mechanism that takes no parameter.
func (r *rawFuncs) Wrap(h pkcs11.SessionHandle, mech uint, wrapping, key pkcs11.ObjectHandle, o output) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_raw_wrap(r.f, C.CK_SESSION_HANDLE(h), C.CK_MECHANISM_TYPE(mech), C.CK_OBJECT_HANDLE(wrapping),
			C.CK_OBJECT_HANDLE(key), out, outlen)
	})
}

// rawAttr is one template entry of C_GetAttributeValue: a buffer of Cap
// bytes, or (Null) none; after the call Len is the ulValueLen the module
// left and Value what it wrote (when it fit).
type rawAttr struct {
	Type  uint
	Cap   int
	Null  bool
	Len   uint64
	Value []byte
}

// GetAttrs is C_GetAttributeValue with the template t as given.
func (r *rawFuncs) GetAttrs(h pkcs11.SessionHandle, o pkcs11.ObjectHandle, t []rawAttr) error {
	var m cmem
	defer m.free()
	ct := (*C.CK_ATTRIBUTE)(C.calloc(C.size_t(len(t)+1), C.size_t(unsafe.Sizeof(C.CK_ATTRIBUTE{}))))
	m.ptrs = append(m.ptrs, unsafe.Pointer(ct))
	cs := unsafe.Slice(ct, len(t))
	for i, a := range t {
		cs[i]._type = C.CK_ATTRIBUTE_TYPE(a.Type)
		cs[i].ulValueLen = C.CK_ULONG(a.Cap)
		if !a.Null {
			buf := C.calloc(C.size_t(a.Cap+1), 1)
			m.ptrs = append(m.ptrs, buf)
			cs[i].pValue = buf
		}
	}
	err := rvErr(C.e2e_raw_getattrs(r.f, C.CK_SESSION_HANDLE(h), C.CK_OBJECT_HANDLE(o), ct, C.CK_ULONG(len(t))))
	for i := range t {
		t[i].Len = uint64(cs[i].ulValueLen)
		t[i].Value = nil
		if !t[i].Null && t[i].Len <= uint64(t[i].Cap) {
			t[i].Value = C.GoBytes(cs[i].pValue, C.int(t[i].Len))
		}
	}
	return err
}

// ObjectSize is C_GetObjectSize.
func (r *rawFuncs) ObjectSize(h pkcs11.SessionHandle, o pkcs11.ObjectHandle) (uint64, error) {
	var n C.CK_ULONG
	err := rvErr(C.e2e_raw_size(r.f, C.CK_SESSION_HANDLE(h), C.CK_OBJECT_HANDLE(o), &n))
	return uint64(n), err
}
