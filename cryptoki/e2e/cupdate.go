package e2e

/*
#cgo CFLAGS: -I${SRCDIR}/../module
#cgo pkg-config: p11-kit-1
#include "p11compat.h"

static CK_RV e2e_crypt_update(CK_FUNCTION_LIST_3_0 *f, int decrypt, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
			      CK_BYTE *out, CK_ULONG *outlen)
{
	return decrypt ? f->C_DecryptUpdate(s, in, n, out, outlen) : f->C_EncryptUpdate(s, in, n, out, outlen);
}

static CK_RV e2e_session_cancel(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_FLAGS flags)
{
	return f->C_SessionCancel(s, flags);
}
*/
import "C"

import "github.com/miekg/pkcs11"

// C_EncryptUpdate and C_DecryptUpdate with the output buffer under the
// test's control (miekg/pkcs11 always asks for the length with the same
// input first), and C_SessionCancel, through the module's 3.0 list.

// CryptUpdate is C_EncryptUpdate, or C_DecryptUpdate when decrypt.
func (l *msgFuncs) CryptUpdate(decrypt bool, h pkcs11.SessionHandle, in []byte, o output) ([]byte, uint64, error) {
	var m cmem
	defer m.free()
	d := C.int(0)
	if decrypt {
		d = 1
	}
	p := m.bytes(append([]byte{}, in...))
	return m.run(o, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.e2e_crypt_update(l.f, d, C.CK_SESSION_HANDLE(h), p, C.CK_ULONG(len(in)), out, outlen)
	})
}

// SessionCancel is C_SessionCancel.
func (l *msgFuncs) SessionCancel(h pkcs11.SessionHandle, flags uint) error {
	return rvErr(C.e2e_session_cancel(l.f, C.CK_SESSION_HANDLE(h), C.CK_FLAGS(flags)))
}
