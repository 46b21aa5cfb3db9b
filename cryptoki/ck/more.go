package ck

// Constants beside the return values, attributes and mechanisms of ck.go:
// object classes, key types, flags, users and session states, by their C
// names. ck_test.go checks them against the system's pkcs11.h.

// Object classes (CK_OBJECT_CLASS).
const (
	CKO_DATA              = 0x0
	CKO_CERTIFICATE       = 0x1
	CKO_PUBLIC_KEY        = 0x2
	CKO_PRIVATE_KEY       = 0x3
	CKO_SECRET_KEY        = 0x4
	CKO_HW_FEATURE        = 0x5
	CKO_DOMAIN_PARAMETERS = 0x6
	CKO_MECHANISM         = 0x7
	CKO_OTP_KEY           = 0x8
	CKO_VENDOR_DEFINED    = 0x80000000
)

// Key types (CK_KEY_TYPE).
const (
	CKK_RSA            = 0x0
	CKK_DSA            = 0x1
	CKK_DH             = 0x2
	CKK_ECDSA          = 0x3
	CKK_EC             = 0x3
	CKK_X9_42_DH       = 0x4
	CKK_KEA            = 0x5
	CKK_GENERIC_SECRET = 0x10
	CKK_RC2            = 0x11
	CKK_RC4            = 0x12
	CKK_DES            = 0x13
	CKK_DES2           = 0x14
	CKK_DES3           = 0x15
	CKK_CAST           = 0x16
	CKK_CAST3          = 0x17
	CKK_CAST128        = 0x18
	CKK_RC5            = 0x19
	CKK_IDEA           = 0x1A
	CKK_SKIPJACK       = 0x1B
	CKK_BATON          = 0x1C
	CKK_JUNIPER        = 0x1D
	CKK_CDMF           = 0x1E
	CKK_AES            = 0x1F
	CKK_BLOWFISH       = 0x20
	CKK_TWOFISH        = 0x21
	CKK_SECURID        = 0x22
	CKK_HOTP           = 0x23
	CKK_ACTI           = 0x24
	CKK_CAMELLIA       = 0x25
	CKK_ARIA           = 0x26
	CKK_MD5_HMAC       = 0x27
	CKK_SHA_1_HMAC     = 0x28
	CKK_RIPEMD128_HMAC = 0x29
	CKK_RIPEMD160_HMAC = 0x2A
	CKK_SHA256_HMAC    = 0x2B
	CKK_SHA384_HMAC    = 0x2C
	CKK_SHA512_HMAC    = 0x2D
	CKK_SHA224_HMAC    = 0x2E
	CKK_SEED           = 0x2F
	CKK_GOSTR3410      = 0x30
	CKK_GOSTR3411      = 0x31
	CKK_GOST28147      = 0x32
	CKK_EC_EDWARDS     = 0x40
	CKK_VENDOR_DEFINED = 0x80000000
)

// Certificate types.
const (
	CKC_X_509           = 0x0
	CKC_X_509_ATTR_CERT = 0x1
	CKC_WTLS            = 0x2
	CKC_VENDOR_DEFINED  = 0x80000000
	CKC_OPENPGP         = 0x80504750
)

// User types.
const (
	CKU_SO               = 0x0
	CKU_USER             = 0x1
	CKU_CONTEXT_SPECIFIC = 0x2
)

// Session states.
const (
	CKS_RO_PUBLIC_SESSION = 0x0
	CKS_RO_USER_FUNCTIONS = 0x1
	CKS_RW_PUBLIC_SESSION = 0x2
	CKS_RW_USER_FUNCTIONS = 0x3
	CKS_RW_SO_FUNCTIONS   = 0x4
)

// Hardware feature types.
const (
	CKH_MONOTONIC_COUNTER = 0x1
	CKH_CLOCK             = 0x2
	CKH_USER_INTERFACE    = 0x3
	CKH_VENDOR_DEFINED    = 0x80000000
)

// Key derivation functions.
const (
	CKD_NULL                 = 0x1
	CKD_SHA1_KDF             = 0x2
	CKD_SHA1_KDF_ASN1        = 0x3
	CKD_SHA1_KDF_CONCATENATE = 0x4
	CKD_SHA224_KDF           = 0x5
	CKD_SHA256_KDF           = 0x6
	CKD_SHA384_KDF           = 0x7
	CKD_SHA512_KDF           = 0x8
	CKD_CPDIVERSIFY_KDF      = 0x9
)

// Mask generation functions.
const (
	CKG_MGF1_SHA1   = 0x1
	CKG_MGF1_SHA224 = 0x5
	CKG_MGF1_SHA256 = 0x2
	CKG_MGF1_SHA384 = 0x3
	CKG_MGF1_SHA512 = 0x4
)

// OAEP sources.
const (
	CKZ_DATA_SPECIFIED = 0x1
)

// Flags (slot, token, session, mechanism, interface; the contexts overlap).
const (
	CKF_TOKEN_PRESENT                  = 0x1
	CKF_REMOVABLE_DEVICE               = 0x2
	CKF_HW_SLOT                        = 0x4
	CKF_RNG                            = 0x1
	CKF_WRITE_PROTECTED                = 0x2
	CKF_LOGIN_REQUIRED                 = 0x4
	CKF_USER_PIN_INITIALIZED           = 0x8
	CKF_RESTORE_KEY_NOT_NEEDED         = 0x20
	CKF_CLOCK_ON_TOKEN                 = 0x40
	CKF_PROTECTED_AUTHENTICATION_PATH  = 0x100
	CKF_DUAL_CRYPTO_OPERATIONS         = 0x200
	CKF_TOKEN_INITIALIZED              = 0x400
	CKF_SECONDARY_AUTHENTICATION       = 0x800
	CKF_USER_PIN_COUNT_LOW             = 0x10000
	CKF_USER_PIN_FINAL_TRY             = 0x20000
	CKF_USER_PIN_LOCKED                = 0x40000
	CKF_USER_PIN_TO_BE_CHANGED         = 0x80000
	CKF_SO_PIN_COUNT_LOW               = 0x100000
	CKF_SO_PIN_FINAL_TRY               = 0x200000
	CKF_SO_PIN_LOCKED                  = 0x400000
	CKF_SO_PIN_TO_BE_CHANGED           = 0x800000
	CKF_RW_SESSION                     = 0x2
	CKF_SERIAL_SESSION                 = 0x4
	CKF_NEXT_OTP                       = 0x1
	CKF_EXCLUDE_TIME                   = 0x2
	CKF_EXCLUDE_COUNTER                = 0x4
	CKF_EXCLUDE_CHALLENGE              = 0x8
	CKF_EXCLUDE_PIN                    = 0x10
	CKF_USER_FRIENDLY_OTP              = 0x20
	CKF_HW                             = 0x1
	CKF_MESSAGE_ENCRYPT                = 0x2  // 3.0: mechanism information and C_SessionCancel
	CKF_MESSAGE_DECRYPT                = 0x4  // 3.0
	CKF_MESSAGE_SIGN                   = 0x8  // 3.0
	CKF_MESSAGE_VERIFY                 = 0x10 // 3.0
	CKF_MULTI_MESSAGE                  = 0x20 // 3.0: C_*MessageBegin and C_*MessageNext
	CKF_FIND_OBJECTS                   = 0x40 // 3.0: C_SessionCancel only
	CKF_ENCRYPT                        = 0x100
	CKF_DECRYPT                        = 0x200
	CKF_DIGEST                         = 0x400
	CKF_SIGN                           = 0x800
	CKF_SIGN_RECOVER                   = 0x1000
	CKF_VERIFY                         = 0x2000
	CKF_VERIFY_RECOVER                 = 0x4000
	CKF_GENERATE                       = 0x8000
	CKF_GENERATE_KEY_PAIR              = 0x10000
	CKF_WRAP                           = 0x20000
	CKF_UNWRAP                         = 0x40000
	CKF_DERIVE                         = 0x80000
	CKF_EXTENSION                      = 0x80000000
	CKF_EC_F_P                         = 0x100000
	CKF_EC_NAMEDCURVE                  = 0x800000
	CKF_EC_UNCOMPRESS                  = 0x1000000
	CKF_EC_COMPRESS                    = 0x2000000
	CKF_DONT_BLOCK                     = 0x1
	CKF_LIBRARY_CANT_CREATE_OS_THREADS = 0x1
	CKF_OS_LOCKING_OK                  = 0x2
	CKF_INTERFACE_FORK_SAFE            = 0x1 // PKCS#11 3.0, not in this pkcs11.h
	CKF_END_OF_MESSAGE                 = 0x1 // 3.0: C_EncryptMessageNext, C_DecryptMessageNext
)

// IV generators of the message-based encryption functions (PKCS#11 3.0,
// CK_GENERATOR_FUNCTION): CK_GCM_MESSAGE_PARAMS.ivGenerator.
const (
	CKG_NO_GENERATE      = 0x0
	CKG_GENERATE         = 0x1
	CKG_GENERATE_COUNTER = 0x2
	CKG_GENERATE_RANDOM  = 0x3
)

// Certificate attributes not in ck.go.
const (
	CKA_JAVA_MIDP_SECURITY_DOMAIN  = 0x88
	CKA_URL                        = 0x89
	CKA_HASH_OF_SUBJECT_PUBLIC_KEY = 0x8A
	CKA_HASH_OF_ISSUER_PUBLIC_KEY  = 0x8B
	CKA_NAME_HASH_ALGORITHM        = 0x8C
)

// CK_EFFECTIVELY_INFINITE is a session count without a limit.
const CK_EFFECTIVELY_INFINITE = 0
