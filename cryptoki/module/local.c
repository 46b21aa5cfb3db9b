/*
 * local.c: the calls the module answers itself (docs/protocol.md, "Calls
 * the module answers itself"): information about the library, its function
 * lists and interfaces, the legacy parallel-function calls, and the
 * functions the token does not support (calls.Unsupported).
 *
 * The exported symbols are exactly C_GetFunctionList, C_GetInterfaceList
 * and C_GetInterface; everything else is reached through the lists they
 * return. Each works before C_Initialize.
 */
#include <string.h>

#include "hsm.h"

#define LIBRARY_MAJOR 0
#define LIBRARY_MINOR 1

static void pad(CK_UTF8CHAR *dst, size_t n, const char *s)
{
	size_t k = strlen(s);
	memset(dst, ' ', n);
	memcpy(dst, s, k < n ? k : n);
}

static CK_RV get_info(CK_INFO_PTR info, CK_BYTE major, CK_BYTE minor)
{
	CK_RV rv = hsm_entry();
	if (rv != CKR_OK)
		return rv;
	if (info == NULL)
		return CKR_ARGUMENTS_BAD;
	memset(info, 0, sizeof *info);
	info->cryptokiVersion.major = major;
	info->cryptokiVersion.minor = minor;
	pad(info->manufacturerID, sizeof info->manufacturerID, "hsmemu");
	info->flags = 0;
	pad(info->libraryDescription, sizeof info->libraryDescription, "hsmemu PKCS#11 module");
	info->libraryVersion.major = LIBRARY_MAJOR;
	info->libraryVersion.minor = LIBRARY_MINOR;
	return CKR_OK;
}

/* C_GetInfo of the 2.40 function list. */
CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
	return get_info(pInfo, 2, 40);
}

/* C_GetInfo of the 3.0 function list. */
CK_RV hsm_GetInfo30(CK_INFO_PTR pInfo)
{
	return get_info(pInfo, 3, 0);
}

HSM_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	if (ppFunctionList == NULL)
		return CKR_ARGUMENTS_BAD;
	*ppFunctionList = &hsm_function_list;
	return CKR_OK;
}

/* Every interface is fork-safe: after fork() the child gets
 * CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize (state.c). The
 * first is the default: 3.0, which every 3.x client knows; a client that
 * wants the 3.2 functions asks for version 3.2 (local32.c). */
static CK_INTERFACE interfaces[] = {
	{(void *)"PKCS 11", &hsm_function_list_3_0, CKF_INTERFACE_FORK_SAFE},
	{(void *)"PKCS 11", &hsm_function_list_3_2, CKF_INTERFACE_FORK_SAFE},
	{(void *)"PKCS 11", &hsm_function_list, CKF_INTERFACE_FORK_SAFE},
};
#define N_INTERFACES (sizeof interfaces / sizeof interfaces[0])

HSM_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
	if (pulCount == NULL)
		return CKR_ARGUMENTS_BAD;
	if (pInterfacesList == NULL) {
		*pulCount = N_INTERFACES;
		return CKR_OK;
	}
	if (*pulCount < N_INTERFACES) {
		*pulCount = N_INTERFACES;
		return CKR_BUFFER_TOO_SMALL;
	}
	memcpy(pInterfacesList, interfaces, sizeof interfaces);
	*pulCount = N_INTERFACES;
	return CKR_OK;
}

/* C_GetInterface (PKCS#11 3.0 §5.4): a NULL name means the default, "PKCS 11";
 * a NULL version the default one (3.0, the first); the interface found must
 * carry every flag asked for. No match is CKR_ARGUMENTS_BAD. */
HSM_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
				CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
	if (ppInterface == NULL)
		return CKR_ARGUMENTS_BAD;
	if (pInterfaceName != NULL && strcmp((const char *)pInterfaceName, "PKCS 11") != 0)
		return CKR_ARGUMENTS_BAD;
	for (size_t i = 0; i < N_INTERFACES; i++) {
		const CK_VERSION *v = interfaces[i].pFunctionList; /* each list starts with its version */
		if (pVersion != NULL && (v->major != pVersion->major || v->minor != pVersion->minor))
			continue;
		if ((interfaces[i].flags & flags) != flags)
			continue;
		*ppInterface = &interfaces[i];
		return CKR_OK;
	}
	return CKR_ARGUMENTS_BAD;
}

CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
	(void)hSession;
	CK_RV rv = hsm_entry();
	return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_PARALLEL;
}

CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
	(void)hSession;
	CK_RV rv = hsm_entry();
	return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_PARALLEL;
}

/* The functions the token does not support (calls.Unsupported): "this
 * stub should simply return the value CKR_FUNCTION_NOT_SUPPORTED"
 * (PKCS#11 v3.0, "Function return values", CKR_FUNCTION_NOT_SUPPORTED),
 * whatever the arguments, and leave the session's operations alone. */
static CK_RV unsupported(void)
{
	CK_RV rv = hsm_entry();
	return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState,
			  CK_ULONG_PTR pulOperationStateLen)
{
	(void)hSession;
	(void)pOperationState;
	(void)pulOperationStateLen;
	return unsupported();
}

CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen,
			  CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey)
{
	(void)hSession;
	(void)pOperationState;
	(void)ulOperationStateLen;
	(void)hEncryptionKey;
	(void)hAuthenticationKey;
	return unsupported();
}

/* DUAL is the dual-function calls' shape: a part in, a part out. */
#define DUAL(name)                                                                                                   \
	CK_RV name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulInLen, CK_BYTE_PTR pOut,                    \
		   CK_ULONG_PTR pulOutLen)                                                                             \
	{                                                                                                              \
		(void)hSession;                                                                                        \
		(void)pIn;                                                                                             \
		(void)ulInLen;                                                                                         \
		(void)pOut;                                                                                            \
		(void)pulOutLen;                                                                                       \
		return unsupported();                                                                                  \
	}

DUAL(C_DigestEncryptUpdate)
DUAL(C_DecryptDigestUpdate)
DUAL(C_SignEncryptUpdate)
DUAL(C_DecryptVerifyUpdate)
