package ck

// PKCS#11 constants the codec and the daemon use, by their C names so that
// they read like the specification. Only constants live here: no cgo, and no
// dependency on a PKCS#11 binding. They are untyped so that a daemon's own
// CK_RV or attribute type accepts them. ck_test.go checks every name the
// system's pkcs11.h also defines against its value there.

// CK_UNAVAILABLE_INFORMATION is a length that says "no value": an
// attribute that is sensitive, unknown, or did not fit.
const CK_UNAVAILABLE_INFORMATION = 0xFFFFFFFFFFFFFFFF

// Return values (CK_RV).
const (
	CKR_OK                               = 0x0
	CKR_CANCEL                           = 0x1
	CKR_HOST_MEMORY                      = 0x2
	CKR_SLOT_ID_INVALID                  = 0x3
	CKR_GENERAL_ERROR                    = 0x5
	CKR_FUNCTION_FAILED                  = 0x6
	CKR_ARGUMENTS_BAD                    = 0x7
	CKR_NO_EVENT                         = 0x8
	CKR_NEED_TO_CREATE_THREADS           = 0x9
	CKR_CANT_LOCK                        = 0xA
	CKR_ATTRIBUTE_READ_ONLY              = 0x10
	CKR_ATTRIBUTE_SENSITIVE              = 0x11
	CKR_ATTRIBUTE_TYPE_INVALID           = 0x12
	CKR_ATTRIBUTE_VALUE_INVALID          = 0x13
	CKR_ACTION_PROHIBITED                = 0x1B
	CKR_DATA_INVALID                     = 0x20
	CKR_DATA_LEN_RANGE                   = 0x21
	CKR_DEVICE_ERROR                     = 0x30
	CKR_DEVICE_MEMORY                    = 0x31
	CKR_DEVICE_REMOVED                   = 0x32
	CKR_ENCRYPTED_DATA_INVALID           = 0x40
	CKR_ENCRYPTED_DATA_LEN_RANGE         = 0x41
	CKR_AEAD_DECRYPT_FAILED              = 0x42 // 3.0
	CKR_FUNCTION_CANCELED                = 0x50
	CKR_FUNCTION_NOT_PARALLEL            = 0x51
	CKR_FUNCTION_NOT_SUPPORTED           = 0x54
	CKR_KEY_HANDLE_INVALID               = 0x60
	CKR_KEY_SIZE_RANGE                   = 0x62
	CKR_KEY_TYPE_INCONSISTENT            = 0x63
	CKR_KEY_NOT_NEEDED                   = 0x64
	CKR_KEY_CHANGED                      = 0x65
	CKR_KEY_NEEDED                       = 0x66
	CKR_KEY_INDIGESTIBLE                 = 0x67
	CKR_KEY_FUNCTION_NOT_PERMITTED       = 0x68
	CKR_KEY_NOT_WRAPPABLE                = 0x69
	CKR_KEY_UNEXTRACTABLE                = 0x6A
	CKR_MECHANISM_INVALID                = 0x70
	CKR_MECHANISM_PARAM_INVALID          = 0x71
	CKR_OBJECT_HANDLE_INVALID            = 0x82
	CKR_OPERATION_ACTIVE                 = 0x90
	CKR_OPERATION_NOT_INITIALIZED        = 0x91
	CKR_PIN_INCORRECT                    = 0xA0
	CKR_PIN_INVALID                      = 0xA1
	CKR_PIN_LEN_RANGE                    = 0xA2
	CKR_PIN_EXPIRED                      = 0xA3
	CKR_PIN_LOCKED                       = 0xA4
	CKR_SESSION_CLOSED                   = 0xB0
	CKR_SESSION_COUNT                    = 0xB1
	CKR_SESSION_HANDLE_INVALID           = 0xB3
	CKR_SESSION_PARALLEL_NOT_SUPPORTED   = 0xB4
	CKR_SESSION_READ_ONLY                = 0xB5
	CKR_SESSION_EXISTS                   = 0xB6
	CKR_SESSION_READ_ONLY_EXISTS         = 0xB7
	CKR_SESSION_READ_WRITE_SO_EXISTS     = 0xB8
	CKR_SIGNATURE_INVALID                = 0xC0
	CKR_SIGNATURE_LEN_RANGE              = 0xC1
	CKR_TEMPLATE_INCOMPLETE              = 0xD0
	CKR_TEMPLATE_INCONSISTENT            = 0xD1
	CKR_TOKEN_NOT_PRESENT                = 0xE0
	CKR_TOKEN_NOT_RECOGNIZED             = 0xE1
	CKR_TOKEN_WRITE_PROTECTED            = 0xE2
	CKR_UNWRAPPING_KEY_HANDLE_INVALID    = 0xF0
	CKR_UNWRAPPING_KEY_SIZE_RANGE        = 0xF1
	CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT = 0xF2
	CKR_USER_ALREADY_LOGGED_IN           = 0x100
	CKR_USER_NOT_LOGGED_IN               = 0x101
	CKR_USER_PIN_NOT_INITIALIZED         = 0x102
	CKR_USER_TYPE_INVALID                = 0x103
	CKR_USER_ANOTHER_ALREADY_LOGGED_IN   = 0x104
	CKR_USER_TOO_MANY_TYPES              = 0x105
	CKR_WRAPPED_KEY_INVALID              = 0x110
	CKR_WRAPPED_KEY_LEN_RANGE            = 0x112
	CKR_WRAPPING_KEY_HANDLE_INVALID      = 0x113
	CKR_WRAPPING_KEY_SIZE_RANGE          = 0x114
	CKR_WRAPPING_KEY_TYPE_INCONSISTENT   = 0x115
	CKR_RANDOM_SEED_NOT_SUPPORTED        = 0x120
	CKR_RANDOM_NO_RNG                    = 0x121
	CKR_DOMAIN_PARAMS_INVALID            = 0x130
	CKR_CURVE_NOT_SUPPORTED              = 0x140
	CKR_BUFFER_TOO_SMALL                 = 0x150
	CKR_SAVED_STATE_INVALID              = 0x160
	CKR_INFORMATION_SENSITIVE            = 0x170
	CKR_STATE_UNSAVEABLE                 = 0x180
	CKR_CRYPTOKI_NOT_INITIALIZED         = 0x190
	CKR_CRYPTOKI_ALREADY_INITIALIZED     = 0x191
	CKR_MUTEX_BAD                        = 0x1A0
	CKR_MUTEX_NOT_LOCKED                 = 0x1A1
	CKR_NEW_PIN_MODE                     = 0x1B0
	CKR_NEXT_OTP                         = 0x1B1
	CKR_EXCEEDED_MAX_ITERATIONS          = 0x1C0
	CKR_FIPS_SELF_TEST_FAILED            = 0x1C1
	CKR_LIBRARY_LOAD_FAILED              = 0x1C2
	CKR_PIN_TOO_WEAK                     = 0x1C3
	CKR_PUBLIC_KEY_INVALID               = 0x1C4
	CKR_FUNCTION_REJECTED                = 0x200
	CKR_TOKEN_RESOURCE_EXCEEDED          = 0x201
	CKR_OPERATION_CANCEL_FAILED          = 0x202
	CKR_KEY_EXHAUSTED                    = 0x203 // 3.1: a key's usage count reached its end
	CKR_VENDOR_DEFINED                   = 0x80000000
)

// CKF_ARRAY_ATTRIBUTE marks an attribute whose value is an array.
const CKF_ARRAY_ATTRIBUTE = 0x40000000

// Attribute types (CK_ATTRIBUTE_TYPE).
const (
	CKA_CLASS                = 0x000
	CKA_TOKEN                = 0x001
	CKA_PRIVATE              = 0x002
	CKA_LABEL                = 0x003
	CKA_UNIQUE_ID            = 0x004
	CKA_APPLICATION          = 0x010
	CKA_VALUE                = 0x011
	CKA_OBJECT_ID            = 0x012
	CKA_CERTIFICATE_TYPE     = 0x080
	CKA_ISSUER               = 0x081
	CKA_SERIAL_NUMBER        = 0x082
	CKA_TRUSTED              = 0x086
	CKA_CERTIFICATE_CATEGORY = 0x087
	CKA_CHECK_VALUE          = 0x090
	CKA_KEY_TYPE             = 0x100
	CKA_SUBJECT              = 0x101
	CKA_ID                   = 0x102
	CKA_SENSITIVE            = 0x103
	CKA_ENCRYPT              = 0x104
	CKA_DECRYPT              = 0x105
	CKA_WRAP                 = 0x106
	CKA_UNWRAP               = 0x107
	CKA_SIGN                 = 0x108
	CKA_SIGN_RECOVER         = 0x109
	CKA_VERIFY               = 0x10A
	CKA_VERIFY_RECOVER       = 0x10B
	CKA_DERIVE               = 0x10C
	CKA_START_DATE           = 0x110
	CKA_END_DATE             = 0x111
	CKA_MODULUS              = 0x120
	CKA_MODULUS_BITS         = 0x121
	CKA_PUBLIC_EXPONENT      = 0x122
	CKA_PRIVATE_EXPONENT     = 0x123
	CKA_PRIME_1              = 0x124
	CKA_PRIME_2              = 0x125
	CKA_EXPONENT_1           = 0x126
	CKA_EXPONENT_2           = 0x127
	CKA_COEFFICIENT          = 0x128
	CKA_PUBLIC_KEY_INFO      = 0x129
	CKA_VALUE_BITS           = 0x160
	CKA_VALUE_LEN            = 0x161
	CKA_EXTRACTABLE          = 0x162
	CKA_LOCAL                = 0x163
	CKA_NEVER_EXTRACTABLE    = 0x164
	CKA_ALWAYS_SENSITIVE     = 0x165
	CKA_KEY_GEN_MECHANISM    = 0x166
	CKA_MODIFIABLE           = 0x170
	CKA_COPYABLE             = 0x171
	CKA_DESTROYABLE          = 0x172
	CKA_EC_PARAMS            = 0x180
	CKA_EC_POINT             = 0x181
	CKA_ALWAYS_AUTHENTICATE  = 0x202
	CKA_WRAP_WITH_TRUSTED    = 0x210
	CKA_WRAP_TEMPLATE        = CKF_ARRAY_ATTRIBUTE | 0x211
	CKA_UNWRAP_TEMPLATE      = CKF_ARRAY_ATTRIBUTE | 0x212
	CKA_DERIVE_TEMPLATE      = CKF_ARRAY_ATTRIBUTE | 0x213
	CKA_ALLOWED_MECHANISMS   = CKF_ARRAY_ATTRIBUTE | 0x600
	CKA_VENDOR_DEFINED       = 0x80000000
)

// Mechanism types (CK_MECHANISM_TYPE): those whose parameters the codec
// knows (calls.Mechanisms) and a few common ones.
const (
	CKM_RSA_PKCS_KEY_PAIR_GEN   = 0x0000
	CKM_RSA_PKCS                = 0x0001
	CKM_RSA_PKCS_OAEP           = 0x0009
	CKM_RSA_PKCS_PSS            = 0x000D
	CKM_SHA1_RSA_PKCS_PSS       = 0x000E
	CKM_SHA256_RSA_PKCS         = 0x0040
	CKM_SHA256_RSA_PKCS_PSS     = 0x0043
	CKM_SHA384_RSA_PKCS_PSS     = 0x0044
	CKM_SHA512_RSA_PKCS_PSS     = 0x0045
	CKM_SHA224_RSA_PKCS_PSS     = 0x0047
	CKM_SHA_1                   = 0x0220
	CKM_SHA256                  = 0x0250
	CKM_SHA384                  = 0x0260
	CKM_SHA512                  = 0x0270
	CKM_SHA256_HMAC             = 0x0251
	CKM_GENERIC_SECRET_KEY_GEN  = 0x0350
	CKM_EC_KEY_PAIR_GEN         = 0x1040
	CKM_ECDSA                   = 0x1041
	CKM_ECDSA_SHA256            = 0x1044
	CKM_ECDH1_DERIVE            = 0x1050
	CKM_RSA_AES_KEY_WRAP        = 0x1054
	CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055
	CKM_EDDSA                   = 0x1057
	CKM_AES_KEY_GEN             = 0x1080
	CKM_AES_ECB                 = 0x1081
	CKM_AES_CBC                 = 0x1082
	CKM_AES_CBC_PAD             = 0x1085
	CKM_AES_CTR                 = 0x1086
	CKM_AES_GCM                 = 0x1087
	CKM_AES_KEY_WRAP            = 0x2109
	CKM_AES_KEY_WRAP_PAD        = 0x210A
	CKM_AES_KEY_WRAP_KWP        = 0x210B
	CKM_HKDF_DERIVE             = 0x402A
	CKM_HKDF_DATA               = 0x402B
	CKM_VENDOR_DEFINED          = 0x80000000
)
