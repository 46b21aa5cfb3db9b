package ck

// The post-quantum algorithms and the 3.2 interface's values (PKCS#11
// 3.2). Each value is the OASIS 3.2 header's (pkcs11t.h); the comment
// names the section of the 3.2 specification that defines it. p11-kit's
// header has none of them, so ck_test.go cannot check these.

// Key types: "ML-KEM", "ML-DSA", "SLH-DSA" (each section's Definitions).
const (
	CKK_ML_KEM  = 0x49
	CKK_ML_DSA  = 0x4a
	CKK_SLH_DSA = 0x4b
)

// Attributes: CKA_PARAMETER_SET and CKA_SEED (the ML-KEM, ML-DSA and
// SLH-DSA key object tables); CKA_ENCAPSULATE, CKA_DECAPSULATE and their
// templates ("Public key objects", "Private key objects").
const (
	CKA_PARAMETER_SET        = 0x61d
	CKA_ENCAPSULATE_TEMPLATE = 0x62a
	CKA_DECAPSULATE_TEMPLATE = 0x62b
	CKA_ENCAPSULATE          = 0x633
	CKA_DECAPSULATE          = 0x634
	CKA_SEED                 = 0x637
)

// Mechanisms: "ML-KEM", "ML-DSA", "SLH-DSA".
const (
	CKM_ML_KEM_KEY_PAIR_GEN   = 0xf
	CKM_ML_KEM                = 0x17
	CKM_ML_DSA_KEY_PAIR_GEN   = 0x1c
	CKM_ML_DSA                = 0x1d
	CKM_HASH_ML_DSA           = 0x1f
	CKM_HASH_ML_DSA_SHA224    = 0x23
	CKM_HASH_ML_DSA_SHA256    = 0x24
	CKM_HASH_ML_DSA_SHA384    = 0x25
	CKM_HASH_ML_DSA_SHA512    = 0x26
	CKM_HASH_ML_DSA_SHA3_224  = 0x27
	CKM_HASH_ML_DSA_SHA3_256  = 0x28
	CKM_HASH_ML_DSA_SHA3_384  = 0x29
	CKM_HASH_ML_DSA_SHA3_512  = 0x2a
	CKM_HASH_ML_DSA_SHAKE128  = 0x2b
	CKM_HASH_ML_DSA_SHAKE256  = 0x2c
	CKM_SLH_DSA_KEY_PAIR_GEN  = 0x2d
	CKM_SLH_DSA               = 0x2e
	CKM_HASH_SLH_DSA          = 0x34
	CKM_HASH_SLH_DSA_SHA224   = 0x36
	CKM_HASH_SLH_DSA_SHA256   = 0x37
	CKM_HASH_SLH_DSA_SHA384   = 0x38
	CKM_HASH_SLH_DSA_SHA512   = 0x39
	CKM_HASH_SLH_DSA_SHA3_224 = 0x3a
	CKM_HASH_SLH_DSA_SHA3_256 = 0x3b
	CKM_HASH_SLH_DSA_SHA3_384 = 0x3c
	CKM_HASH_SLH_DSA_SHA3_512 = 0x3d
	CKM_HASH_SLH_DSA_SHAKE128 = 0x3e
	CKM_HASH_SLH_DSA_SHAKE256 = 0x3f
)

// Mechanism flags: "CK_MECHANISM_INFO" (3.2 adds encapsulation).
const (
	CKF_ENCAPSULATE = 0x10000000
	CKF_DECAPSULATE = 0x20000000
)

// Return value: "Function return values" (3.2).
const CKR_PARAMETER_SET_NOT_SUPPORTED = 0x209

// Hedging of a signature: CK_HEDGE_TYPE ("ML-DSA", Definitions).
const (
	CKH_HEDGE_PREFERRED        = 0x0
	CKH_HEDGE_REQUIRED         = 0x1
	CKH_DETERMINISTIC_REQUIRED = 0x2
)

// Parameter sets (CKA_PARAMETER_SET): CK_ML_DSA_PARAMETER_SET_TYPE,
// CK_SLH_DSA_PARAMETER_SET_TYPE, CK_ML_KEM_PARAMETER_SET_TYPE (each
// section's Definitions).
const (
	CKP_ML_DSA_44 = 0x1
	CKP_ML_DSA_65 = 0x2
	CKP_ML_DSA_87 = 0x3

	CKP_SLH_DSA_SHA2_128S  = 0x1
	CKP_SLH_DSA_SHAKE_128S = 0x2
	CKP_SLH_DSA_SHA2_128F  = 0x3
	CKP_SLH_DSA_SHAKE_128F = 0x4
	CKP_SLH_DSA_SHA2_192S  = 0x5
	CKP_SLH_DSA_SHAKE_192S = 0x6
	CKP_SLH_DSA_SHA2_192F  = 0x7
	CKP_SLH_DSA_SHAKE_192F = 0x8
	CKP_SLH_DSA_SHA2_256S  = 0x9
	CKP_SLH_DSA_SHAKE_256S = 0xa
	CKP_SLH_DSA_SHA2_256F  = 0xb
	CKP_SLH_DSA_SHAKE_256F = 0xc

	CKP_ML_KEM_512  = 0x1
	CKP_ML_KEM_768  = 0x2
	CKP_ML_KEM_1024 = 0x3
)

// C_GetSessionValidationFlags' type: CK_SESSION_VALIDATION_FLAGS_TYPE
// ("Session management functions", C_GetSessionValidationFlags).
const CKS_LAST_VALIDATION_OK = 0x1
