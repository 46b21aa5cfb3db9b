//go:build cgo

package moduletest

/*
#cgo CFLAGS: -I${SRCDIR}/..
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include "p11compat.h"

// PKCS#11 3.2's C_WrapKeyAuthenticated, through the 3.2 function list a
// client asks C_GetInterface for by its version.
static CK_RV mt_wrap_key_authenticated(void *lib, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE type, void *param,
				       CK_ULONG plen, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key, CK_BYTE *aad,
				       CK_ULONG aadlen, CK_BYTE *out, CK_ULONG *outlen)
{
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_VERSION v = {3, 2};
	CK_INTERFACE_PTR itf = NULL;
	if (gi == NULL || gi(NULL, &v, &itf, 0) != CKR_OK)
		return CKR_FUNCTION_NOT_SUPPORTED;
	CK_FUNCTION_LIST_3_2 *f = itf->pFunctionList;
	CK_MECHANISM m = {type, param, plen};
	return f->C_WrapKeyAuthenticated(s, &m, wrapping, key, aad, aadlen, out, outlen);
}
*/
import "C"

// WrapKeyAuthenticated is C_WrapKeyAuthenticated with mechanism mech and
// the message parameter p, which gets what the module wrote back.
func (m *Module) WrapKeyAuthenticated(session, mech uint64, p *MsgParam, wrapping, key uint64, aad []byte, b Buf) Out {
	param, n, done := p.c()
	defer done()
	ap, an, afree := cbytes(In{Data: aad, Null: aad == nil})
	defer afree()
	return call(b, func(out *C.CK_BYTE, outlen *C.CK_ULONG) C.CK_RV {
		return C.mt_wrap_key_authenticated(m.lib, C.CK_SESSION_HANDLE(session), C.CK_MECHANISM_TYPE(mech), param, n,
			C.CK_OBJECT_HANDLE(wrapping), C.CK_OBJECT_HANDLE(key), ap, an, out, outlen)
	})
}
