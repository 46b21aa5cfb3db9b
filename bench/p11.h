/*
 * p11.h: the harness's thin layer over a module's function list. Each
 * measured operation is one C function (Init and the call together), so a
 * measured call costs one crossing from Go, whatever the module.
 */
#ifndef HSMEMU_BENCH_P11_H
#define HSMEMU_BENCH_P11_H

#include <stddef.h>
/* p11-kit's header and the 3.0 and 3.2 declarations it lacks. */
#include "p11compat.h"

/* f32 is the module's 3.2 list (C_GetInterface, version 3.2), NULL when it
 * has none: the key encapsulation ops need it. */
typedef struct {
	void *dl;
	CK_FUNCTION_LIST_PTR f;
	CK_FUNCTION_LIST_3_2 *f32;
} bm_module;

int bm_load(const char *path, bm_module *m, char *err, size_t errlen);
void bm_unload(bm_module *m);

CK_RV bm_initialize(bm_module *m);
CK_RV bm_finalize(bm_module *m);
CK_RV bm_slots(bm_module *m, CK_SLOT_ID *slots, CK_ULONG *n);
CK_RV bm_token_info(bm_module *m, CK_SLOT_ID slot, CK_TOKEN_INFO *info);
CK_RV bm_mech_info(bm_module *m, CK_SLOT_ID slot, CK_MECHANISM_TYPE mech, CK_MECHANISM_INFO *info);
CK_RV bm_init_token(bm_module *m, CK_SLOT_ID slot, const CK_UTF8CHAR *pin, CK_ULONG pinlen, const CK_UTF8CHAR *label32);
CK_RV bm_open(bm_module *m, CK_SLOT_ID slot, CK_SESSION_HANDLE *h);
CK_RV bm_close(bm_module *m, CK_SESSION_HANDLE h);
CK_RV bm_login(bm_module *m, CK_SESSION_HANDLE h, CK_USER_TYPE who, const CK_UTF8CHAR *pin, CK_ULONG pinlen);
CK_RV bm_logout(bm_module *m, CK_SESSION_HANDLE h);
CK_RV bm_init_pin(bm_module *m, CK_SESSION_HANDLE h, const CK_UTF8CHAR *pin, CK_ULONG pinlen);
CK_RV bm_generate_key(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *key);
CK_RV bm_generate_key_pair(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *pub, CK_ULONG npub,
			   CK_ATTRIBUTE *priv, CK_ULONG npriv, CK_OBJECT_HANDLE *pubkey, CK_OBJECT_HANDLE *privkey);
CK_RV bm_create(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *obj);
CK_RV bm_destroy(bm_module *m, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj);
CK_RV bm_find_init(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n);
CK_RV bm_find_next(bm_module *m, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *count);
CK_RV bm_find_final(bm_module *m, CK_SESSION_HANDLE h);
CK_RV bm_find(bm_module *m, CK_SESSION_HANDLE h, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *count);

/* The measured operations. twocall: the output call is made the way most
 * applications make it, a NULL buffer for the length first. */
CK_RV bm_wrap(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key,
	      unsigned char *out, CK_ULONG *outlen, int twocall);
CK_RV bm_unwrap(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE unwrapping,
		unsigned char *in, CK_ULONG inlen, CK_ATTRIBUTE *t, CK_ULONG n, CK_OBJECT_HANDLE *key);
CK_RV bm_sign(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
	      unsigned char *data, CK_ULONG len, unsigned char *sig, CK_ULONG *siglen, int twocall);
CK_RV bm_verify(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
		unsigned char *data, CK_ULONG len, unsigned char *sig, CK_ULONG siglen);
CK_RV bm_encrypt(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE key,
		 unsigned char *data, CK_ULONG len, unsigned char *out, CK_ULONG *outlen, int twocall);
CK_RV bm_digest(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech,
		unsigned char *data, CK_ULONG len, unsigned char *out, CK_ULONG *outlen, int twocall);
CK_RV bm_random(bm_module *m, CK_SESSION_HANDLE h, unsigned char *out, CK_ULONG len);
CK_RV bm_login_logout(bm_module *m, CK_SESSION_HANDLE h, const CK_UTF8CHAR *pin, CK_ULONG pinlen);
/* PKCS#11 3.2: CKR_FUNCTION_NOT_SUPPORTED without a 3.2 list. */
CK_RV bm_encapsulate(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE pub, CK_ATTRIBUTE *t,
		     CK_ULONG n, unsigned char *ct, CK_ULONG *ctlen, CK_OBJECT_HANDLE *key);
CK_RV bm_decapsulate(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_OBJECT_HANDLE priv, CK_ATTRIBUTE *t,
		     CK_ULONG n, unsigned char *ct, CK_ULONG ctlen, CK_OBJECT_HANDLE *key);
CK_RV bm_generate_destroy(bm_module *m, CK_SESSION_HANDLE h, CK_MECHANISM *mech, CK_ATTRIBUTE *t, CK_ULONG n);

/* A mechanism in C memory, its parameter copied; bm_mech_gcm makes
 * CK_GCM_PARAMS whose IV bm_gcm_set_iv sets and bm_gcm_next_iv counts up. */
CK_MECHANISM *bm_mech_new(CK_MECHANISM_TYPE type, const void *param, CK_ULONG len);
CK_MECHANISM *bm_mech_gcm(CK_ULONG ivlen, CK_ULONG tagbits);
void bm_gcm_set_iv(CK_MECHANISM *mech, const unsigned char *iv, CK_ULONG len);
void bm_gcm_next_iv(CK_MECHANISM *mech);
void bm_mech_free(CK_MECHANISM *mech);

#endif
