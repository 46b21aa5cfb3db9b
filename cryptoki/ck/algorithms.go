package ck

// The constants of the algorithms beyond AES, RSA and the NIST curves:
// DES and triple DES, DSA, SHA-3 and SHA-512/t, the HMAC key types and
// their key generation, ChaCha20, the Montgomery curves. Values are those
// of the OASIS PKCS#11 3.0 (errata 01) pkcs11t.h; ck_test.go checks those
// the system's 2.40 header also defines.

// DES and triple DES.
const (
	CKM_DES_KEY_GEN  = 0x120
	CKM_DES_ECB      = 0x121
	CKM_DES_CBC      = 0x122
	CKM_DES_CBC_PAD  = 0x125
	CKM_DES2_KEY_GEN = 0x130
	CKM_DES3_KEY_GEN = 0x131
	CKM_DES3_ECB     = 0x132
	CKM_DES3_CBC     = 0x133
	CKM_DES3_CBC_PAD = 0x136
	CKM_DES3_CMAC    = 0x138
)

// DSA.
const (
	CKM_DSA_KEY_PAIR_GEN  = 0x10
	CKM_DSA               = 0x11
	CKM_DSA_SHA1          = 0x12
	CKM_DSA_SHA224        = 0x13
	CKM_DSA_SHA256        = 0x14
	CKM_DSA_SHA384        = 0x15
	CKM_DSA_SHA512        = 0x16
	CKM_DSA_SHA3_224      = 0x18 // 3.0
	CKM_DSA_SHA3_256      = 0x19 // 3.0
	CKM_DSA_SHA3_384      = 0x1A // 3.0
	CKM_DSA_SHA3_512      = 0x1B // 3.0
	CKM_DSA_PARAMETER_GEN = 0x2000

	CKA_PRIME         = 0x130
	CKA_SUBPRIME      = 0x131
	CKA_BASE          = 0x132
	CKA_PRIME_BITS    = 0x133
	CKA_SUBPRIME_BITS = 0x134
)

// SHA-512/224, SHA-512/256 and SHA-3: digests, HMACs, and the signatures
// over them.
const (
	CKM_SHA512_224      = 0x48
	CKM_SHA512_224_HMAC = 0x49
	CKM_SHA512_256      = 0x4C
	CKM_SHA512_256_HMAC = 0x4D

	CKM_SHA3_224      = 0x2B5 // 3.0
	CKM_SHA3_256_HMAC = 0x2B1 // 3.0
	CKM_SHA3_224_HMAC = 0x2B6 // 3.0
	CKM_SHA3_384_HMAC = 0x2C1 // 3.0
	CKM_SHA3_512_HMAC = 0x2D1 // 3.0

	CKM_SHA3_256_RSA_PKCS     = 0x60 // 3.0
	CKM_SHA3_384_RSA_PKCS     = 0x61 // 3.0
	CKM_SHA3_512_RSA_PKCS     = 0x62 // 3.0
	CKM_SHA3_256_RSA_PKCS_PSS = 0x63 // 3.0
	CKM_SHA3_384_RSA_PKCS_PSS = 0x64 // 3.0
	CKM_SHA3_512_RSA_PKCS_PSS = 0x65 // 3.0
	CKM_SHA3_224_RSA_PKCS     = 0x66 // 3.0
	CKM_SHA3_224_RSA_PKCS_PSS = 0x67 // 3.0

	CKM_ECDSA_SHA3_224 = 0x1047 // 3.0
	CKM_ECDSA_SHA3_256 = 0x1048 // 3.0
	CKM_ECDSA_SHA3_384 = 0x1049 // 3.0
	CKM_ECDSA_SHA3_512 = 0x104A // 3.0

	CKG_MGF1_SHA3_224 = 0x6 // 3.0
	CKG_MGF1_SHA3_256 = 0x7 // 3.0
	CKG_MGF1_SHA3_384 = 0x8 // 3.0
	CKG_MGF1_SHA3_512 = 0x9 // 3.0
)

// The HMAC key types (CKK_SHA*_HMAC of 2.40 are in more.go) and their
// key generation mechanisms, PKCS#11 3.0.
const (
	CKK_SHA3_224_HMAC   = 0x36
	CKK_SHA3_256_HMAC   = 0x37
	CKK_SHA3_384_HMAC   = 0x38
	CKK_SHA3_512_HMAC   = 0x39
	CKK_SHA512_224_HMAC = 0x43
	CKK_SHA512_256_HMAC = 0x44

	CKM_SHA_1_KEY_GEN      = 0x4003
	CKM_SHA224_KEY_GEN     = 0x4004
	CKM_SHA256_KEY_GEN     = 0x4005
	CKM_SHA384_KEY_GEN     = 0x4006
	CKM_SHA512_KEY_GEN     = 0x4007
	CKM_SHA512_224_KEY_GEN = 0x4008
	CKM_SHA512_256_KEY_GEN = 0x4009
	CKM_SHA3_256_KEY_GEN   = 0x2B3
	CKM_SHA3_224_KEY_GEN   = 0x2B8
	CKM_SHA3_384_KEY_GEN   = 0x2C3
	CKM_SHA3_512_KEY_GEN   = 0x2D3
)

// ChaCha20, PKCS#11 3.0.
const (
	CKK_CHACHA20          = 0x33
	CKM_CHACHA20_KEY_GEN  = 0x1225
	CKM_CHACHA20          = 0x1226
	CKM_CHACHA20_POLY1305 = 0x4021
)

// Montgomery curves (X25519, X448), PKCS#11 3.0.
const (
	CKK_EC_MONTGOMERY              = 0x41
	CKM_EC_MONTGOMERY_KEY_PAIR_GEN = 0x1056
)
