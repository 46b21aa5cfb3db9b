package ck

// More mechanism types (CKM_*), by their C names; ck_test.go checks
// them against the system's pkcs11.h where it defines them.
const (
	CKM_SHA224              = 0x255
	CKM_SHA1_RSA_PKCS       = 0x6
	CKM_SHA224_RSA_PKCS     = 0x46
	CKM_SHA384_RSA_PKCS     = 0x41
	CKM_SHA512_RSA_PKCS     = 0x42
	CKM_ECDSA_SHA1          = 0x1042
	CKM_ECDSA_SHA224        = 0x1043
	CKM_ECDSA_SHA384        = 0x1045
	CKM_ECDSA_SHA512        = 0x1046
	CKM_SHA_1_HMAC          = 0x221
	CKM_SHA224_HMAC         = 0x256
	CKM_SHA384_HMAC         = 0x261
	CKM_SHA512_HMAC         = 0x271
	CKM_AES_CMAC            = 0x108A
	CKM_AES_CMAC_GENERAL    = 0x108B
	CKM_SHA256_HMAC_GENERAL = 0x252
	CKM_SHA_1_HMAC_GENERAL  = 0x222
	CKM_RSA_X_509           = 0x3
	CKM_MD5                 = 0x210
)

// PKCS#11 3.0 mechanisms the system header does not define.
const (
	CKM_SHA3_256 = 0x2B0
	CKM_SHA3_384 = 0x2C0
	CKM_SHA3_512 = 0x2D0
)

// HKDF salt types (CK_HKDF_PARAMS.ulSaltType), PKCS#11 3.0; the system
// header does not define them.
const (
	CKF_HKDF_SALT_NULL = 0x1
	CKF_HKDF_SALT_DATA = 0x2
	CKF_HKDF_SALT_KEY  = 0x4
)
