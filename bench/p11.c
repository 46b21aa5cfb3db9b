/*
 * p11.c: see p11.h. Nothing here keeps state beyond the module handle.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11.h"

int bm_load(const char *path, bm_module *m, char *err, size_t errlen)
{
	m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!m->dl) {
		snprintf(err, errlen, "%s", dlerror());
		return -1;
	}
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList");
	if (!get) {
		snprintf(err, errlen, "no C_GetFunctionList in %s", path);
		dlclose(m->dl);
		return -1;
	}
	CK_RV rv = get(&m->f);
	if (rv != CKR_OK || !m->f) {
		snprintf(err, errlen, "C_GetFunctionList: 0x%lx", (unsigned long)rv);
		dlclose(m->dl);
		return -1;
	}
	m->f32 = NULL;
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(m->dl, "C_GetInterface");
	CK_VERSION v32 = {3, 2};
	CK_INTERFACE_PTR itf = NULL;
	if (gi && gi((CK_UTF8CHAR_PTR) "PKCS 11", &v32, &itf, 0) == CKR_OK && itf)
		m->f32 = itf->pFunctionList;
	return 0;
}

void bm_unload(bm_module *m)
{
	if (m->dl)
		dlclose(m->dl);
	m->dl = NULL;
	m->f = NULL;
	m->f32 = NULL;
}

CK_RV bm_encapsulate(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE pub, CK_ATTRIBUTE *t,
		     CK_ULONG n, unsigned char *ct, CK_ULONG *ctlen, CK_OBJECT_HANDLE *key)
{
	if (!m->f32)
		return CKR_FUNCTION_NOT_SUPPORTED;
	return m->f32->C_EncapsulateKey(h, mech, pub, t, n, ct, ctlen, key);
}

CK_RV bm_decapsulate(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE priv, CK_ATTRIBUTE *t,
		     CK_ULONG n, unsigned char *ct, CK_ULONG ctlen, CK_OBJECT_HANDLE *key)
{
	if (!m->f32)
		return CKR_FUNCTION_NOT_SUPPORTED;
	return m->f32->C_DecapsulateKey(h, mech, priv, t, n, ct, ctlen, key);
}

CK_RV bm_initialize(bm_module *m)
{
	CK_C_INITIALIZE_ARGS args;
	memset(&args, 0, sizeof args);
	args.flags = CKF_OS_LOCKING_OK;
	return m->f->C_Initialize(&args);
}

CK_RV bm_finalize(bm_module *m) { return m->f->C_Finalize(NULL); }

CK_RV bm_slots(bm_module *m, CK_SLOT_ID *slots, CK_ULONG *n)
{
	return m->f->C_GetSlotList(CK_FALSE, slots, n);
}

CK_RV bm_token_info(bm_module *m, CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
	return m->f->C_GetTokenInfo(slot, info);
}

CK_RV bm_mech_info(bm_module *m, CK_SLOT_ID slot, CK_MECHANISM_TYPE mech, CK_MECHANISM_INFO *info)
{
	return m->f->C_GetMechanismInfo(slot, mech, info);
}

CK_RV bm_init_token(bm_module *m, CK_SLOT_ID slot, const CK_UTF8CHAR *pin, CK_ULONG pinlen, const CK_UTF8CHAR *label32)
{
	return m->f->C_InitToken(slot, (CK_UTF8CHAR_PTR)pin, pinlen, (CK_UTF8CHAR_PTR)label32);
}

CK_RV bm_open(bm_module *m, CK_SLOT_ID slot, CK_SESSION_HANDLE *h)
{
	return m->f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, h);
}

CK_RV bm_close(bm_module *m, CK_SESSION_HANDLE h) { return m->f->C_CloseSession(h); }

CK_RV bm_login(bm_module *m, CK_SESSION_HANDLE h, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG pinlen)
{
	return m->f->C_Login(h, who, (CK_UTF8CHAR_PTR)pin, pinlen);
}

CK_RV bm_logout(bm_module *m, CK_SESSION_HANDLE h) { return m->f->C_Logout(h); }

CK_RV bm_init_pin(bm_module *m, CK_SESSION_HANDLE h, const CK_UTF8CHAR *pin, CK_ULONG pinlen)
{
	return m->f->C_InitPIN(h, (CK_UTF8CHAR_PTR)pin, pinlen);
}

CK_RV bm_generate_key(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *key)
{
	return m->f->C_GenerateKey(h, mech, t, n, key);
}

CK_RV bm_generate_key_pair(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *pub, CK_ULONG npub,
			   CK_ATTRIBUTE *priv, CK_ULONG npriv, CK_OBJECT_HANDLE *pubkey, CK_OBJECT_HANDLE *privkey)
{
	return m->f->C_GenerateKeyPair(h, mech, pub, npub, priv, npriv, pubkey, privkey);
}

CK_RV bm_create(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *obj)
{
	return m->f->C_CreateObject(h, t, n, obj);
}

CK_RV bm_destroy(bm_module *m, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj)
{
	return m->f->C_DestroyObject(h, obj);
}

CK_RV bm_find_init(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n)
{
	return m->f->C_FindObjectsInit(h, t, n);
}

CK_RV bm_find_next(bm_module *m, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *count)
{
	return m->f->C_FindObjects(h, objs, max, count);
}

CK_RV bm_find_final(bm_module *m, CK_SESSION_HANDLE h) { return m->f->C_FindObjectsFinal(h); }

CK_RV bm_find(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *count)
{
	CK_RV rv = m->f->C_FindObjectsInit(h, t, n);
	if (rv != CKR_OK)
		return rv;
	rv = m->f->C_FindObjects(h, objs, max, count);
	CK_RV rv2 = m->f->C_FindObjectsFinal(h);
	return rv != CKR_OK ? rv : rv2;
}

/* TWO_CALL makes an output call the way most applications do when twocall
 * is set: first with a NULL buffer for the length, then with a buffer of
 * that length (the caller's, which must hold it). */
#define TWO_CALL(twocall, out, outlen, call)                    \
	do {                                                    \
		if (twocall) {                                  \
			CK_ULONG cap_ = *(outlen);              \
			unsigned char *buf_ = (out);            \
			(out) = NULL;                           \
			*(outlen) = 0;                          \
			CK_RV rv_ = (call);                     \
			(out) = buf_;                           \
			if (rv_ != CKR_OK)                      \
				return rv_;                     \
			if (*(outlen) > cap_)                   \
				return CKR_BUFFER_TOO_SMALL;    \
		}                                               \
		return (call);                                  \
	} while (0)

CK_RV bm_wrap(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
	      unsigned char *out, CK_ULONG *outlen, int twocall)
{
	TWO_CALL(twocall, out, outlen, m->f->C_WrapKey(h, mech, wrapping, key, out, outlen));
}

CK_RV bm_unwrap(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE unwrapping,
		unsigned char *in, CK_ULONG inlen, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *key)
{
	return m->f->C_UnwrapKey(h, mech, unwrapping, in, inlen, t, n, key);
}

CK_RV bm_sign(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
	      unsigned char *data, CK_ULONG len, unsigned char *sig, CK_ULONG *siglen, int twocall)
{
	CK_RV rv = m->f->C_SignInit(h, mech, key);
	if (rv != CKR_OK)
		return rv;
	TWO_CALL(twocall, sig, siglen, m->f->C_Sign(h, data, len, sig, siglen));
}

CK_RV bm_verify(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
		unsigned char *data, CK_ULONG len, unsigned char *sig, CK_ULONG siglen)
{
	CK_RV rv = m->f->C_VerifyInit(h, mech, key);
	if (rv != CKR_OK)
		return rv;
	return m->f->C_Verify(h, data, len, sig, siglen);
}

CK_RV bm_encrypt(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
		 unsigned char *data, CK_ULONG len, unsigned char *out, CK_ULONG *outlen, int twocall)
{
	CK_RV rv = m->f->C_EncryptInit(h, mech, key);
	if (rv != CKR_OK)
		return rv;
	TWO_CALL(twocall, out, outlen, m->f->C_Encrypt(h, data, len, out, outlen));
}

CK_RV bm_digest(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech,
		unsigned char *data, CK_ULONG len, unsigned char *out, CK_ULONG *outlen, int twocall)
{
	CK_RV rv = m->f->C_DigestInit(h, mech);
	if (rv != CKR_OK)
		return rv;
	TWO_CALL(twocall, out, outlen, m->f->C_Digest(h, data, len, out, outlen));
}

CK_RV bm_random(bm_module *m, CK_SESSION_HANDLE h, unsigned char *out, CK_ULONG len)
{
	return m->f->C_GenerateRandom(h, out, len);
}

CK_RV bm_login_logout(bm_module *m, CK_SESSION_HANDLE h, const CK_UTF8CHAR *pin, CK_ULONG pinlen)
{
	CK_RV rv = m->f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, pinlen);
	if (rv != CKR_OK)
		return rv;
	return m->f->C_Logout(h);
}

CK_RV bm_generate_destroy(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *t, CK_ULONG n)
{
	CK_OBJECT_HANDLE key;
	CK_RV rv = m->f->C_GenerateKey(h, mech, t, n, &key);
	if (rv != CKR_OK)
		return rv;
	return m->f->C_DestroyObject(h, key);
}

CK_MECHANISM *bm_mech_new(CK_MECHANISM_TYPE type, const void *param, CK_ULONG len)
{
	CK_MECHANISM *m = calloc(1, sizeof *m + len);
	if (!m)
		return NULL;
	m->mechanism = type;
	if (len) {
		m->pParameter = (unsigned char *)(m + 1);
		memcpy(m->pParameter, param, len);
		m->ulParameterLen = len;
	}
	return m;
}

/* The GCM parameters and their IV live in the same allocation. */
CK_MECHANISM *bm_mech_gcm(CK_ULONG ivlen, CK_ULONG tagbits)
{
	CK_MECHANISM *m = calloc(1, sizeof *m + sizeof(CK_GCM_PARAMS) + ivlen);
	if (!m)
		return NULL;
	CK_GCM_PARAMS *p = (CK_GCM_PARAMS *)(m + 1);
	p->pIv = (CK_BYTE_PTR)(p + 1);
	p->ulIvLen = ivlen;
	p->ulIvBits = ivlen * 8;
	p->ulTagBits = tagbits;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = p;
	m->ulParameterLen = sizeof *p;
	return m;
}

void bm_gcm_set_iv(CK_MECHANISM *mech, const unsigned char *iv, CK_ULONG len)
{
	CK_GCM_PARAMS *p = mech->pParameter;
	memcpy(p->pIv, iv, len < p->ulIvLen ? len : p->ulIvLen);
}

/* A fresh IV for each encryption under the same key: a counter, from a
 * random start per worker (bm_gcm_set_iv), so that no two workers, cells
 * or runs use one IV twice under the bench's key. */
void bm_gcm_next_iv(CK_MECHANISM *mech)
{
	CK_GCM_PARAMS *p = mech->pParameter;
	for (CK_ULONG i = p->ulIvLen; i > 0; i--)
		if (++p->pIv[i - 1] != 0)
			break;
}

void bm_mech_free(CK_MECHANISM *mech) { free(mech); }
