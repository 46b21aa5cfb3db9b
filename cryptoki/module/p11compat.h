/*
 * p11compat.h: the PKCS#11 3.0 declarations hsmemu needs that Debian 12's
 * <p11-kit/pkcs11.h> (p11-kit 0.24.1, PKCS#11 2.40) lacks.
 *
 * Each block is guarded so that a newer system header wins: p11-kit's
 * header says which version of the specification it carries in
 * CRYPTOKI_VERSION_MAJOR/MINOR. From 3.0 on it has the interface and the
 * 3.0 function list; from 3.2 on it also has the 3.0 mechanism parameter
 * structures. Macros are guarded one by one.
 */
#ifndef HSMEMU_P11COMPAT_H
#define HSMEMU_P11COMPAT_H

#include <p11-kit/pkcs11.h>

#define HSMEMU_P11_VERSION (CRYPTOKI_VERSION_MAJOR * 100 + CRYPTOKI_VERSION_MINOR)

#ifndef CKF_INTERFACE_FORK_SAFE
#define CKF_INTERFACE_FORK_SAFE 0x00000001UL
#endif
#ifndef CKF_END_OF_MESSAGE
#define CKF_END_OF_MESSAGE 0x00000001UL
#endif
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210bUL
#endif
#ifndef CKM_HKDF_DERIVE
#define CKM_HKDF_DERIVE 0x0000402aUL
#endif
#ifndef CKM_HKDF_DATA
#define CKM_HKDF_DATA 0x0000402bUL
#endif
#ifndef CKA_PROFILE_ID
#define CKA_PROFILE_ID 0x00000601UL
#endif
#ifndef CKR_OPERATION_CANCEL_FAILED
#define CKR_OPERATION_CANCEL_FAILED 0x00000202UL
#endif
#ifndef CKR_AEAD_DECRYPT_FAILED
#define CKR_AEAD_DECRYPT_FAILED 0x00000042UL
#endif
#ifndef CKR_KEY_EXHAUSTED
#define CKR_KEY_EXHAUSTED 0x00000203UL /* 3.1 */
#endif
#ifndef CKF_MESSAGE_ENCRYPT
#define CKF_MESSAGE_ENCRYPT 0x00000002UL
#endif
#ifndef CKF_MESSAGE_DECRYPT
#define CKF_MESSAGE_DECRYPT 0x00000004UL
#endif
#ifndef CKF_MESSAGE_SIGN
#define CKF_MESSAGE_SIGN 0x00000008UL
#endif
#ifndef CKF_MESSAGE_VERIFY
#define CKF_MESSAGE_VERIFY 0x00000010UL
#endif
#ifndef CKF_MULTI_MESSAGE
#define CKF_MULTI_MESSAGE 0x00000020UL
#endif
#ifndef CKG_NO_GENERATE
#define CKG_NO_GENERATE 0x00000000UL
#endif
#ifndef CKG_GENERATE
#define CKG_GENERATE 0x00000001UL
#endif
#ifndef CKG_GENERATE_COUNTER
#define CKG_GENERATE_COUNTER 0x00000002UL
#endif
#ifndef CKG_GENERATE_RANDOM
#define CKG_GENERATE_RANDOM 0x00000003UL
#endif

#if HSMEMU_P11_VERSION < 300

typedef struct CK_INTERFACE {
	CK_CHAR *pInterfaceName;
	CK_VOID_PTR pFunctionList;
	CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE **CK_INTERFACE_PTR_PTR;

/* The 3.0 functions, declared and typed as p11-kit's _CK_DECLARE_FUNCTION
 * does for the 2.40 ones. */
#define HSMEMU_DECLARE(name, args)             \
	typedef CK_RV (*CK_##name) args;       \
	CK_RV name args

HSMEMU_DECLARE(C_GetInterfaceList, (CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount));
HSMEMU_DECLARE(C_GetInterface, (CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
				CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags));
HSMEMU_DECLARE(C_LoginUser, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
			     CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
			     CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen));
HSMEMU_DECLARE(C_SessionCancel, (CK_SESSION_HANDLE hSession, CK_FLAGS flags));
HSMEMU_DECLARE(C_MessageEncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				      CK_OBJECT_HANDLE hKey));
HSMEMU_DECLARE(C_EncryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				  CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
				  CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
				  CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext,
				  CK_ULONG_PTR pulCiphertextLen));
HSMEMU_DECLARE(C_EncryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
				       CK_ULONG ulAssociatedDataLen));
HSMEMU_DECLARE(C_EncryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				      CK_ULONG ulParameterLen, CK_BYTE_PTR pPlaintextPart,
				      CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
				      CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags));
HSMEMU_DECLARE(C_MessageEncryptFinal, (CK_SESSION_HANDLE hSession));
HSMEMU_DECLARE(C_MessageDecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				      CK_OBJECT_HANDLE hKey));
HSMEMU_DECLARE(C_DecryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				  CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
				  CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
				  CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext,
				  CK_ULONG_PTR pulPlaintextLen));
HSMEMU_DECLARE(C_DecryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
				       CK_ULONG ulAssociatedDataLen));
HSMEMU_DECLARE(C_DecryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				      CK_ULONG ulParameterLen, CK_BYTE_PTR pCiphertextPart,
				      CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
				      CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags));
HSMEMU_DECLARE(C_MessageDecryptFinal, (CK_SESSION_HANDLE hSession));
HSMEMU_DECLARE(C_MessageSignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				   CK_OBJECT_HANDLE hKey));
HSMEMU_DECLARE(C_SignMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
			       CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
			       CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen));
HSMEMU_DECLARE(C_SignMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				    CK_ULONG ulParameterLen));
HSMEMU_DECLARE(C_SignMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				   CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
				   CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen));
HSMEMU_DECLARE(C_MessageSignFinal, (CK_SESSION_HANDLE hSession));
HSMEMU_DECLARE(C_MessageVerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
				     CK_OBJECT_HANDLE hKey));
HSMEMU_DECLARE(C_VerifyMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				 CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
				 CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen));
HSMEMU_DECLARE(C_VerifyMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				      CK_ULONG ulParameterLen));
HSMEMU_DECLARE(C_VerifyMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
				     CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
				     CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen));
HSMEMU_DECLARE(C_MessageVerifyFinal, (CK_SESSION_HANDLE hSession));

#undef HSMEMU_DECLARE

typedef struct CK_FUNCTION_LIST_3_0 {
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
} CK_FUNCTION_LIST_3_0;
typedef CK_FUNCTION_LIST_3_0 *CK_FUNCTION_LIST_3_0_PTR;
typedef CK_FUNCTION_LIST_3_0 **CK_FUNCTION_LIST_3_0_PTR_PTR;

#endif /* HSMEMU_P11_VERSION < 300 */

#if HSMEMU_P11_VERSION < 302

typedef struct CK_HKDF_PARAMS {
	CK_BBOOL bExtract;
	CK_BBOOL bExpand;
	CK_MECHANISM_TYPE prfHashMechanism;
	CK_ULONG ulSaltType;
	CK_BYTE_PTR pSalt;
	CK_ULONG ulSaltLen;
	CK_OBJECT_HANDLE hSaltKey;
	CK_BYTE_PTR pInfo;
	CK_ULONG ulInfoLen;
} CK_HKDF_PARAMS;

typedef struct CK_EDDSA_PARAMS {
	CK_BBOOL phFlag;
	CK_ULONG ulContextDataLen;
	CK_BYTE_PTR pContextData;
} CK_EDDSA_PARAMS;

typedef struct CK_RSA_AES_KEY_WRAP_PARAMS {
	CK_ULONG ulAESKeyBits;
	CK_RSA_PKCS_OAEP_PARAMS *pOAEPParams;
} CK_RSA_AES_KEY_WRAP_PARAMS;

typedef struct CK_CHACHA20_PARAMS {
	CK_BYTE_PTR pBlockCounter;
	CK_ULONG blockCounterBits;
	CK_BYTE_PTR pNonce;
	CK_ULONG ulNonceBits;
} CK_CHACHA20_PARAMS;

typedef struct CK_SALSA20_CHACHA20_POLY1305_PARAMS {
	CK_BYTE_PTR pNonce;
	CK_ULONG ulNonceLen;
	CK_BYTE_PTR pAAD;
	CK_ULONG ulAADLen;
} CK_SALSA20_CHACHA20_POLY1305_PARAMS;

/* The message-based encryption parameters (3.0). */
typedef CK_ULONG CK_GENERATOR_FUNCTION;

typedef struct CK_GCM_MESSAGE_PARAMS {
	CK_BYTE_PTR pIv;
	CK_ULONG ulIvLen;
	CK_ULONG ulIvFixedBits;
	CK_GENERATOR_FUNCTION ivGenerator;
	CK_BYTE_PTR pTag;
	CK_ULONG ulTagBits;
} CK_GCM_MESSAGE_PARAMS;

typedef struct CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS {
	CK_BYTE_PTR pNonce;
	CK_ULONG ulNonceLen;
	CK_BYTE_PTR pTag;
} CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS;

#endif /* HSMEMU_P11_VERSION < 302 */

/* The 3.2 declarations. */
#include "p11compat32.h"

#endif /* HSMEMU_P11COMPAT_H */
