/*
 * p11compat32.h: the PKCS#11 3.2 declarations hsmemu needs that the
 * system's <p11-kit/pkcs11.h> lacks: the post-quantum key types,
 * mechanisms, attributes and parameters, the 3.2 functions and
 * CK_FUNCTION_LIST_3_2. Every value is the OASIS 3.2 header's
 * (pkcs11t.h, pkcs11f.h, pkcs11.h); the comments name the section of the
 * 3.2 specification that defines it. Included by p11compat.h, after the
 * 3.0 declarations; guarded like them, so a 3.2 system header wins.
 */
#ifndef HSMEMU_P11COMPAT32_H
#define HSMEMU_P11COMPAT32_H


/* 3.2 "ML-KEM", "ML-DSA", "SLH-DSA": key types */
#ifndef CKK_ML_KEM
#define CKK_ML_KEM 0x00000049UL
#endif
#ifndef CKK_ML_DSA
#define CKK_ML_DSA 0x0000004aUL
#endif
#ifndef CKK_SLH_DSA
#define CKK_SLH_DSA 0x0000004bUL
#endif

/* 3.2 ML-KEM/ML-DSA/SLH-DSA key objects; "Public key objects", "Private key objects" */
#ifndef CKA_PARAMETER_SET
#define CKA_PARAMETER_SET 0x0000061dUL
#endif
#ifndef CKA_ENCAPSULATE_TEMPLATE
#define CKA_ENCAPSULATE_TEMPLATE 0x0000062aUL
#endif
#ifndef CKA_DECAPSULATE_TEMPLATE
#define CKA_DECAPSULATE_TEMPLATE 0x0000062bUL
#endif
#ifndef CKA_ENCAPSULATE
#define CKA_ENCAPSULATE 0x00000633UL
#endif
#ifndef CKA_DECAPSULATE
#define CKA_DECAPSULATE 0x00000634UL
#endif
#ifndef CKA_SEED
#define CKA_SEED 0x00000637UL
#endif

/* 3.2 "ML-KEM", "ML-DSA", "SLH-DSA": mechanisms */
#ifndef CKM_ML_KEM_KEY_PAIR_GEN
#define CKM_ML_KEM_KEY_PAIR_GEN 0x0000000fUL
#endif
#ifndef CKM_ML_KEM
#define CKM_ML_KEM 0x00000017UL
#endif
#ifndef CKM_ML_DSA_KEY_PAIR_GEN
#define CKM_ML_DSA_KEY_PAIR_GEN 0x0000001cUL
#endif
#ifndef CKM_ML_DSA
#define CKM_ML_DSA 0x0000001dUL
#endif
#ifndef CKM_HASH_ML_DSA
#define CKM_HASH_ML_DSA 0x0000001fUL
#endif
#ifndef CKM_HASH_ML_DSA_SHA224
#define CKM_HASH_ML_DSA_SHA224 0x00000023UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA256
#define CKM_HASH_ML_DSA_SHA256 0x00000024UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA384
#define CKM_HASH_ML_DSA_SHA384 0x00000025UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA512
#define CKM_HASH_ML_DSA_SHA512 0x00000026UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA3_224
#define CKM_HASH_ML_DSA_SHA3_224 0x00000027UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA3_256
#define CKM_HASH_ML_DSA_SHA3_256 0x00000028UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA3_384
#define CKM_HASH_ML_DSA_SHA3_384 0x00000029UL
#endif
#ifndef CKM_HASH_ML_DSA_SHA3_512
#define CKM_HASH_ML_DSA_SHA3_512 0x0000002aUL
#endif
#ifndef CKM_HASH_ML_DSA_SHAKE128
#define CKM_HASH_ML_DSA_SHAKE128 0x0000002bUL
#endif
#ifndef CKM_HASH_ML_DSA_SHAKE256
#define CKM_HASH_ML_DSA_SHAKE256 0x0000002cUL
#endif
#ifndef CKM_SLH_DSA_KEY_PAIR_GEN
#define CKM_SLH_DSA_KEY_PAIR_GEN 0x0000002dUL
#endif
#ifndef CKM_SLH_DSA
#define CKM_SLH_DSA 0x0000002eUL
#endif
#ifndef CKM_HASH_SLH_DSA
#define CKM_HASH_SLH_DSA 0x00000034UL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA224
#define CKM_HASH_SLH_DSA_SHA224 0x00000036UL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA256
#define CKM_HASH_SLH_DSA_SHA256 0x00000037UL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA384
#define CKM_HASH_SLH_DSA_SHA384 0x00000038UL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA512
#define CKM_HASH_SLH_DSA_SHA512 0x00000039UL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA3_224
#define CKM_HASH_SLH_DSA_SHA3_224 0x0000003aUL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA3_256
#define CKM_HASH_SLH_DSA_SHA3_256 0x0000003bUL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA3_384
#define CKM_HASH_SLH_DSA_SHA3_384 0x0000003cUL
#endif
#ifndef CKM_HASH_SLH_DSA_SHA3_512
#define CKM_HASH_SLH_DSA_SHA3_512 0x0000003dUL
#endif
#ifndef CKM_HASH_SLH_DSA_SHAKE128
#define CKM_HASH_SLH_DSA_SHAKE128 0x0000003eUL
#endif
#ifndef CKM_HASH_SLH_DSA_SHAKE256
#define CKM_HASH_SLH_DSA_SHAKE256 0x0000003fUL
#endif

/* 3.2 "CK_MECHANISM_INFO": flags */
#ifndef CKF_ENCAPSULATE
#define CKF_ENCAPSULATE 0x10000000UL
#endif
#ifndef CKF_DECAPSULATE
#define CKF_DECAPSULATE 0x20000000UL
#endif

/* 3.2 "ML-DSA", Definitions: CK_HEDGE_TYPE */
#ifndef CKH_HEDGE_PREFERRED
#define CKH_HEDGE_PREFERRED 0x00000000UL
#endif
#ifndef CKH_HEDGE_REQUIRED
#define CKH_HEDGE_REQUIRED 0x00000001UL
#endif
#ifndef CKH_DETERMINISTIC_REQUIRED
#define CKH_DETERMINISTIC_REQUIRED 0x00000002UL
#endif

/* 3.2 "ML-DSA", "SLH-DSA", "ML-KEM", Definitions: parameter sets */
#ifndef CKP_ML_DSA_44
#define CKP_ML_DSA_44 0x00000001UL
#endif
#ifndef CKP_ML_DSA_65
#define CKP_ML_DSA_65 0x00000002UL
#endif
#ifndef CKP_ML_DSA_87
#define CKP_ML_DSA_87 0x00000003UL
#endif
#ifndef CKP_SLH_DSA_SHA2_128S
#define CKP_SLH_DSA_SHA2_128S 0x00000001UL
#endif
#ifndef CKP_SLH_DSA_SHAKE_128S
#define CKP_SLH_DSA_SHAKE_128S 0x00000002UL
#endif
#ifndef CKP_SLH_DSA_SHA2_128F
#define CKP_SLH_DSA_SHA2_128F 0x00000003UL
#endif
#ifndef CKP_SLH_DSA_SHAKE_128F
#define CKP_SLH_DSA_SHAKE_128F 0x00000004UL
#endif
#ifndef CKP_SLH_DSA_SHA2_192S
#define CKP_SLH_DSA_SHA2_192S 0x00000005UL
#endif
#ifndef CKP_SLH_DSA_SHAKE_192S
#define CKP_SLH_DSA_SHAKE_192S 0x00000006UL
#endif
#ifndef CKP_SLH_DSA_SHA2_192F
#define CKP_SLH_DSA_SHA2_192F 0x00000007UL
#endif
#ifndef CKP_SLH_DSA_SHAKE_192F
#define CKP_SLH_DSA_SHAKE_192F 0x00000008UL
#endif
#ifndef CKP_SLH_DSA_SHA2_256S
#define CKP_SLH_DSA_SHA2_256S 0x00000009UL
#endif
#ifndef CKP_SLH_DSA_SHAKE_256S
#define CKP_SLH_DSA_SHAKE_256S 0x0000000aUL
#endif
#ifndef CKP_SLH_DSA_SHA2_256F
#define CKP_SLH_DSA_SHA2_256F 0x0000000bUL
#endif
#ifndef CKP_SLH_DSA_SHAKE_256F
#define CKP_SLH_DSA_SHAKE_256F 0x0000000cUL
#endif
#ifndef CKP_ML_KEM_512
#define CKP_ML_KEM_512 0x00000001UL
#endif
#ifndef CKP_ML_KEM_768
#define CKP_ML_KEM_768 0x00000002UL
#endif
#ifndef CKP_ML_KEM_1024
#define CKP_ML_KEM_1024 0x00000003UL
#endif

/* 3.2 "Function return values" */
#ifndef CKR_PARAMETER_SET_NOT_SUPPORTED
#define CKR_PARAMETER_SET_NOT_SUPPORTED 0x00000209UL
#endif

/* 3.2 "C_GetSessionValidationFlags" */
#ifndef CKS_LAST_VALIDATION_OK
#define CKS_LAST_VALIDATION_OK 0x00000001UL
#endif

#if HSMEMU_P11_VERSION < 302

/* "ML-DSA", Definitions. */
typedef CK_ULONG CK_HEDGE_TYPE;
typedef CK_ULONG CK_ML_DSA_PARAMETER_SET_TYPE;
typedef CK_ULONG CK_SLH_DSA_PARAMETER_SET_TYPE;
typedef CK_ULONG CK_ML_KEM_PARAMETER_SET_TYPE;

typedef struct CK_SIGN_ADDITIONAL_CONTEXT {
	CK_HEDGE_TYPE hedgeVariant;
	CK_BYTE_PTR pContext;
	CK_ULONG ulContextLen;
} CK_SIGN_ADDITIONAL_CONTEXT;

typedef struct CK_HASH_SIGN_ADDITIONAL_CONTEXT {
	CK_HEDGE_TYPE hedgeVariant;
	CK_BYTE_PTR pContext;
	CK_ULONG ulContextLen;
	CK_MECHANISM_TYPE hash;
} CK_HASH_SIGN_ADDITIONAL_CONTEXT;

/* "C_GetSessionValidationFlags" and the asynchronous functions. */
typedef CK_ULONG CK_SESSION_VALIDATION_FLAGS_TYPE;
typedef CK_FLAGS *CK_FLAGS_PTR;

typedef struct CK_ASYNC_DATA {
	CK_ULONG ulVersion;
	CK_BYTE_PTR pValue;
	CK_ULONG ulValue;
	CK_OBJECT_HANDLE hObject;
	CK_OBJECT_HANDLE hAdditionalObject;
} CK_ASYNC_DATA;
typedef CK_ASYNC_DATA *CK_ASYNC_DATA_PTR;

/* The 3.2 functions (pkcs11f.h), declared and typed as p11-kit's
 * _CK_DECLARE_FUNCTION does. */
#define HSMEMU_DECLARE32(name, args)           \
	typedef CK_RV (*CK_##name) args;       \
	CK_RV name args

HSMEMU_DECLARE32(C_EncapsulateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				    CK_OBJECT_HANDLE hPublicKey, CK_ATTRIBUTE_PTR pTemplate,
				    CK_ULONG ulAttributeCount, CK_BYTE_PTR pCiphertext,
				    CK_ULONG_PTR pulCiphertextLen, CK_OBJECT_HANDLE_PTR phKey));
HSMEMU_DECLARE32(C_DecapsulateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				    CK_OBJECT_HANDLE hPrivateKey, CK_ATTRIBUTE_PTR pTemplate,
				    CK_ULONG ulAttributeCount, CK_BYTE_PTR pCiphertext,
				    CK_ULONG ulCiphertextLen, CK_OBJECT_HANDLE_PTR phKey));
HSMEMU_DECLARE32(C_VerifySignatureInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
					 CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pSignature,
					 CK_ULONG ulSignatureLen));
HSMEMU_DECLARE32(C_VerifySignature, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen));
HSMEMU_DECLARE32(C_VerifySignatureUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen));
HSMEMU_DECLARE32(C_VerifySignatureFinal, (CK_SESSION_HANDLE hSession));
HSMEMU_DECLARE32(C_GetSessionValidationFlags, (CK_SESSION_HANDLE hSession,
					       CK_SESSION_VALIDATION_FLAGS_TYPE type, CK_FLAGS_PTR pFlags));
HSMEMU_DECLARE32(C_AsyncComplete, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName,
				   CK_ASYNC_DATA_PTR pResult));
HSMEMU_DECLARE32(C_AsyncGetID, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName,
				CK_ULONG_PTR pulID));
HSMEMU_DECLARE32(C_AsyncJoin, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pFunctionName, CK_ULONG ulID,
			       CK_BYTE_PTR pData, CK_ULONG ulData));
HSMEMU_DECLARE32(C_WrapKeyAuthenticated, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
					  CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey,
					  CK_BYTE_PTR pAssociatedData, CK_ULONG ulAssociatedDataLen,
					  CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen));
HSMEMU_DECLARE32(C_UnwrapKeyAuthenticated, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
					    CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey,
					    CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate,
					    CK_ULONG ulAttributeCount, CK_BYTE_PTR pAssociatedData,
					    CK_ULONG ulAssociatedDataLen, CK_OBJECT_HANDLE_PTR phKey));

#undef HSMEMU_DECLARE32

/* pkcs11.h: the 3.2 list is the 3.0 list and the 3.2 functions. */
typedef struct CK_FUNCTION_LIST_3_2 {
	CK_VERSION version;
	CK_C_Initialize C_Initialize;
	CK_C_Finalize C_Finalize;
	CK_C_GetInfo C_GetInfo;
	CK_C_GetFunctionList C_GetFunctionList;
	CK_C_GetSlotList C_GetSlotList;
	CK_C_GetSlotInfo C_GetSlotInfo;
	CK_C_GetTokenInfo C_GetTokenInfo;
	CK_C_GetMechanismList C_GetMechanismList;
	CK_C_GetMechanismInfo C_GetMechanismInfo;
	CK_C_InitToken C_InitToken;
	CK_C_InitPIN C_InitPIN;
	CK_C_SetPIN C_SetPIN;
	CK_C_OpenSession C_OpenSession;
	CK_C_CloseSession C_CloseSession;
	CK_C_CloseAllSessions C_CloseAllSessions;
	CK_C_GetSessionInfo C_GetSessionInfo;
	CK_C_GetOperationState C_GetOperationState;
	CK_C_SetOperationState C_SetOperationState;
	CK_C_Login C_Login;
	CK_C_Logout C_Logout;
	CK_C_CreateObject C_CreateObject;
	CK_C_CopyObject C_CopyObject;
	CK_C_DestroyObject C_DestroyObject;
	CK_C_GetObjectSize C_GetObjectSize;
	CK_C_GetAttributeValue C_GetAttributeValue;
	CK_C_SetAttributeValue C_SetAttributeValue;
	CK_C_FindObjectsInit C_FindObjectsInit;
	CK_C_FindObjects C_FindObjects;
	CK_C_FindObjectsFinal C_FindObjectsFinal;
	CK_C_EncryptInit C_EncryptInit;
	CK_C_Encrypt C_Encrypt;
	CK_C_EncryptUpdate C_EncryptUpdate;
	CK_C_EncryptFinal C_EncryptFinal;
	CK_C_DecryptInit C_DecryptInit;
	CK_C_Decrypt C_Decrypt;
	CK_C_DecryptUpdate C_DecryptUpdate;
	CK_C_DecryptFinal C_DecryptFinal;
	CK_C_DigestInit C_DigestInit;
	CK_C_Digest C_Digest;
	CK_C_DigestUpdate C_DigestUpdate;
	CK_C_DigestKey C_DigestKey;
	CK_C_DigestFinal C_DigestFinal;
	CK_C_SignInit C_SignInit;
	CK_C_Sign C_Sign;
	CK_C_SignUpdate C_SignUpdate;
	CK_C_SignFinal C_SignFinal;
	CK_C_SignRecoverInit C_SignRecoverInit;
	CK_C_SignRecover C_SignRecover;
	CK_C_VerifyInit C_VerifyInit;
	CK_C_Verify C_Verify;
	CK_C_VerifyUpdate C_VerifyUpdate;
	CK_C_VerifyFinal C_VerifyFinal;
	CK_C_VerifyRecoverInit C_VerifyRecoverInit;
	CK_C_VerifyRecover C_VerifyRecover;
	CK_C_DigestEncryptUpdate C_DigestEncryptUpdate;
	CK_C_DecryptDigestUpdate C_DecryptDigestUpdate;
	CK_C_SignEncryptUpdate C_SignEncryptUpdate;
	CK_C_DecryptVerifyUpdate C_DecryptVerifyUpdate;
	CK_C_GenerateKey C_GenerateKey;
	CK_C_GenerateKeyPair C_GenerateKeyPair;
	CK_C_WrapKey C_WrapKey;
	CK_C_UnwrapKey C_UnwrapKey;
	CK_C_DeriveKey C_DeriveKey;
	CK_C_SeedRandom C_SeedRandom;
	CK_C_GenerateRandom C_GenerateRandom;
	CK_C_GetFunctionStatus C_GetFunctionStatus;
	CK_C_CancelFunction C_CancelFunction;
	CK_C_WaitForSlotEvent C_WaitForSlotEvent;
	CK_C_GetInterfaceList C_GetInterfaceList;
	CK_C_GetInterface C_GetInterface;
	CK_C_LoginUser C_LoginUser;
	CK_C_SessionCancel C_SessionCancel;
	CK_C_MessageEncryptInit C_MessageEncryptInit;
	CK_C_EncryptMessage C_EncryptMessage;
	CK_C_EncryptMessageBegin C_EncryptMessageBegin;
	CK_C_EncryptMessageNext C_EncryptMessageNext;
	CK_C_MessageEncryptFinal C_MessageEncryptFinal;
	CK_C_MessageDecryptInit C_MessageDecryptInit;
	CK_C_DecryptMessage C_DecryptMessage;
	CK_C_DecryptMessageBegin C_DecryptMessageBegin;
	CK_C_DecryptMessageNext C_DecryptMessageNext;
	CK_C_MessageDecryptFinal C_MessageDecryptFinal;
	CK_C_MessageSignInit C_MessageSignInit;
	CK_C_SignMessage C_SignMessage;
	CK_C_SignMessageBegin C_SignMessageBegin;
	CK_C_SignMessageNext C_SignMessageNext;
	CK_C_MessageSignFinal C_MessageSignFinal;
	CK_C_MessageVerifyInit C_MessageVerifyInit;
	CK_C_VerifyMessage C_VerifyMessage;
	CK_C_VerifyMessageBegin C_VerifyMessageBegin;
	CK_C_VerifyMessageNext C_VerifyMessageNext;
	CK_C_MessageVerifyFinal C_MessageVerifyFinal;
	CK_C_EncapsulateKey C_EncapsulateKey;
	CK_C_DecapsulateKey C_DecapsulateKey;
	CK_C_VerifySignatureInit C_VerifySignatureInit;
	CK_C_VerifySignature C_VerifySignature;
	CK_C_VerifySignatureUpdate C_VerifySignatureUpdate;
	CK_C_VerifySignatureFinal C_VerifySignatureFinal;
	CK_C_GetSessionValidationFlags C_GetSessionValidationFlags;
	CK_C_AsyncComplete C_AsyncComplete;
	CK_C_AsyncGetID C_AsyncGetID;
	CK_C_AsyncJoin C_AsyncJoin;
	CK_C_WrapKeyAuthenticated C_WrapKeyAuthenticated;
	CK_C_UnwrapKeyAuthenticated C_UnwrapKeyAuthenticated;
} CK_FUNCTION_LIST_3_2;
typedef CK_FUNCTION_LIST_3_2 *CK_FUNCTION_LIST_3_2_PTR;
typedef CK_FUNCTION_LIST_3_2 **CK_FUNCTION_LIST_3_2_PTR_PTR;

#endif /* HSMEMU_P11_VERSION < 302 */

#endif /* HSMEMU_P11COMPAT32_H */
