package e2e

/*
#cgo CFLAGS: -I${SRCDIR}/../module
#cgo pkg-config: p11-kit-1
#include <stdlib.h>
#include <string.h>
#include "p11compat.h"

// e2e_kem_pair makes a session ML-KEM-768 pair whose public key's
// CKA_ENCAPSULATE_TEMPLATE is {CKA_KEY_TYPE = CKK_AES, CKA_EXTRACTABLE =
// TRUE} and whose private key's CKA_DECAPSULATE_TEMPLATE is
// {CKA_SENSITIVE = TRUE}.
static CK_RV e2e_kem_pair(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	static CK_ULONG set = CKP_ML_KEM_768;
	static CK_KEY_TYPE aes = CKK_AES;
	static CK_BBOOL yes = CK_TRUE;
	static CK_ATTRIBUTE enc[] = {{CKA_KEY_TYPE, &aes, sizeof aes}, {CKA_EXTRACTABLE, &yes, sizeof yes}};
	static CK_ATTRIBUTE dec[] = {{CKA_SENSITIVE, &yes, sizeof yes}};
	CK_ATTRIBUTE pt[] = {{CKA_PARAMETER_SET, &set, sizeof set}, {CKA_ENCAPSULATE_TEMPLATE, enc, sizeof enc}};
	CK_ATTRIBUTE vt[] = {{CKA_DECAPSULATE_TEMPLATE, dec, sizeof dec}};
	CK_MECHANISM m = {CKM_ML_KEM_KEY_PAIR_GEN, NULL, 0};
	return f->C_GenerateKeyPair(s, &m, pt, 2, vt, 1, pub, priv);
}

// e2e_kem_plain encapsulates (dec 0) or decapsulates (dec 1) with an
// empty template: a generic secret.
static CK_RV e2e_kem_plain(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, int dec, CK_OBJECT_HANDLE key, CK_BYTE *ct,
			   CK_ULONG *ctlen, CK_OBJECT_HANDLE *out)
{
	CK_MECHANISM m = {CKM_ML_KEM, NULL, 0};
	if (dec)
		return f->C_DecapsulateKey(s, &m, key, NULL, 0, ct, *ctlen, out);
	return f->C_EncapsulateKey(s, &m, key, NULL, 0, ct, ctlen, out);
}

// e2e_enc_template reads a public key's CKA_ENCAPSULATE_TEMPLATE as
// PKCS#11 reads a template attribute: its size first, then the array
// with room for each value. It returns the number of attributes and the
// first two attributes' types and CK_ULONG or CK_BBOOL values.
static CK_RV e2e_enc_template(CK_FUNCTION_LIST_3_2 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, CK_ULONG *count,
			      CK_ULONG types[2], CK_ULONG values[2])
{
	CK_ATTRIBUTE q = {CKA_ENCAPSULATE_TEMPLATE, NULL, 0};
	CK_RV rv = f->C_GetAttributeValue(s, pub, &q, 1);
	if (rv != CKR_OK)
		return rv;
	*count = q.ulValueLen / sizeof(CK_ATTRIBUTE);
	if (*count != 2)
		return CKR_OK;
	CK_ULONG v0 = 0;
	CK_BBOOL v1 = 0;
	CK_ATTRIBUTE inner[2] = {{0, &v0, sizeof v0}, {0, &v1, sizeof v1}};
	q.pValue = inner;
	q.ulValueLen = sizeof inner;
	if ((rv = f->C_GetAttributeValue(s, pub, &q, 1)) != CKR_OK)
		return rv;
	types[0] = inner[0].type;
	types[1] = inner[1].type;
	values[0] = v0;
	values[1] = v1;
	return CKR_OK;
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// kemPair makes an ML-KEM-768 pair with an encapsulation and a
// decapsulation template (e2e_kem_pair).
func (l *funcs32) kemPair(h pkcs11.SessionHandle) (pub, priv pkcs11.ObjectHandle, err error) {
	var p, v C.CK_OBJECT_HANDLE
	err = rvErr(C.e2e_kem_pair(l.f, C.CK_SESSION_HANDLE(h), &p, &v))
	return pkcs11.ObjectHandle(p), pkcs11.ObjectHandle(v), err
}

// encapsulatePlain and decapsulatePlain make a generic secret (an empty
// template).
func (l *funcs32) encapsulatePlain(h pkcs11.SessionHandle, pub pkcs11.ObjectHandle) ([]byte, pkcs11.ObjectHandle, error) {
	buf := C.calloc(4096, 1)
	defer C.free(buf)
	n := C.CK_ULONG(4096)
	var key C.CK_OBJECT_HANDLE
	if err := rvErr(C.e2e_kem_plain(l.f, C.CK_SESSION_HANDLE(h), 0, C.CK_OBJECT_HANDLE(pub), (*C.CK_BYTE)(buf), &n, &key)); err != nil {
		return nil, 0, err
	}
	return C.GoBytes(buf, C.int(n)), pkcs11.ObjectHandle(key), nil
}

func (l *funcs32) decapsulatePlain(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, ct []byte) (pkcs11.ObjectHandle, error) {
	var m cmem
	defer m.free()
	n := C.CK_ULONG(len(ct))
	var key C.CK_OBJECT_HANDLE
	err := rvErr(C.e2e_kem_plain(l.f, C.CK_SESSION_HANDLE(h), 1, C.CK_OBJECT_HANDLE(priv), m.bytes(nonNil(ct)), &n, &key))
	return pkcs11.ObjectHandle(key), err
}

// encTemplate reads CKA_ENCAPSULATE_TEMPLATE back: its number of
// attributes and, when two, their types and values.
func (l *funcs32) encTemplate(h pkcs11.SessionHandle, pub pkcs11.ObjectHandle) (count uint64, types, values [2]uint64, err error) {
	var n C.CK_ULONG
	var t, v [2]C.CK_ULONG
	err = rvErr(C.e2e_enc_template(l.f, C.CK_SESSION_HANDLE(h), C.CK_OBJECT_HANDLE(pub), &n,
		(*C.CK_ULONG)(unsafe.Pointer(&t[0])), (*C.CK_ULONG)(unsafe.Pointer(&v[0]))))
	return uint64(n), [2]uint64{uint64(t[0]), uint64(t[1])}, [2]uint64{uint64(v[0]), uint64(v[1])}, err
}
