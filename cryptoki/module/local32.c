/*
 * local32.c: the PKCS#11 3.2 calls the module answers itself: C_GetInfo
 * of the 3.2 list, and the asynchronous functions (3.2, "Asynchronous
 * function management functions"). hsmemu completes every call before
 * it returns, so no operation is ever left to complete, identify or
 * join: they are CKR_FUNCTION_NOT_SUPPORTED once the library is
 * initialised.
 */
#include "hsm.h"

/* C_GetInfo of the 3.2 function list. */
CK_RV hsm_GetInfo32(CK_INFO_PTR pInfo)
{
	CK_RV rv = hsm_GetInfo30(pInfo);
	if (rv == CKR_OK)
		pInfo->cryptokiVersion.minor = 2;
	return rv;
}

static CK_RV no_async(void)
{
	CK_RV rv = hsm_entry();
	return rv != CKR_OK ? rv : CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_AsyncComplete(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ASYNC_DATA_PTR pResult)
{
	(void)hSession;
	(void)pFunctionName;
	(void)pResult;
	return no_async();
}

CK_RV C_AsyncGetID(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ULONG_PTR pulID)
{
	(void)hSession;
	(void)pFunctionName;
	(void)pulID;
	return no_async();
}

CK_RV C_AsyncJoin(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ULONG ulID, CK_BYTE_PTR pData,
		  CK_ULONG ulData)
{
	(void)hSession;
	(void)pFunctionName;
	(void)ulID;
	(void)pData;
	(void)ulData;
	return no_async();
}
