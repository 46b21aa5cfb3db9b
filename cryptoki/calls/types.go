package calls

// FieldKind is the type of one field of a fixed structure, a mechanism
// parameter, or an attribute value.
type FieldKind int

const (
	FUlong   FieldKind = iota + 1 // CK_ULONG: u64 on the wire
	FByte                         // CK_BYTE / CK_BBOOL: u8
	FVersion                      // CK_VERSION: two bytes, major then minor
	FChars                        // fixed-width blank-padded char array: Size raw bytes
	FBytes                        // pointer + length pair: bytes (NULL-able)
	FStruct                       // pointer to a nested parameter structure: u8 present, then its fields
)

// Field is one member of a structure, in C declaration order.
type Field struct {
	Name  string // C member name; for FBytes the pointer member
	Kind  FieldKind
	Size  int    // FChars: width in bytes
	LenOf string // FBytes: the C member holding the length
	// LenBits says LenOf counts bits, not bytes (CK_CHACHA20_PARAMS): the
	// module sends the whole bytes it covers and refuses a count that is
	// not a multiple of 8 (CKR_MECHANISM_PARAM_INVALID). The wire carries
	// bytes either way.
	LenBits bool
	Struct  string // FStruct: the nested structure's name in Params
	// Out is what a message parameter written back (MsgParamOut) does
	// with an FBytes field; in every other parameter the field is an
	// input.
	Out FieldOut
}

// FieldOut is the direction of an FBytes field of a message parameter
// structure in a call that writes it back (MsgParamOut).
type FieldOut int

const (
	FIn      FieldOut = iota // travels to the daemon only
	FInOut                   // travels both ways (GCM's pIv: the fixed part in, the IV out)
	FOutOnly                 // comes back only: the request says whether the buffer is there and its size
)

// Structs are the fixed structures the daemon fills (OutStruct), encoded
// field by field in this order.
var Structs = map[string][]Field{
	"CK_INFO": {
		{Name: "cryptokiVersion", Kind: FVersion},
		{Name: "manufacturerID", Kind: FChars, Size: 32},
		{Name: "flags", Kind: FUlong},
		{Name: "libraryDescription", Kind: FChars, Size: 32},
		{Name: "libraryVersion", Kind: FVersion},
	},
	"CK_SLOT_INFO": {
		{Name: "slotDescription", Kind: FChars, Size: 64},
		{Name: "manufacturerID", Kind: FChars, Size: 32},
		{Name: "flags", Kind: FUlong},
		{Name: "hardwareVersion", Kind: FVersion},
		{Name: "firmwareVersion", Kind: FVersion},
	},
	"CK_TOKEN_INFO": {
		{Name: "label", Kind: FChars, Size: 32},
		{Name: "manufacturerID", Kind: FChars, Size: 32},
		{Name: "model", Kind: FChars, Size: 16},
		{Name: "serialNumber", Kind: FChars, Size: 16},
		{Name: "flags", Kind: FUlong},
		{Name: "ulMaxSessionCount", Kind: FUlong},
		{Name: "ulSessionCount", Kind: FUlong},
		{Name: "ulMaxRwSessionCount", Kind: FUlong},
		{Name: "ulRwSessionCount", Kind: FUlong},
		{Name: "ulMaxPinLen", Kind: FUlong},
		{Name: "ulMinPinLen", Kind: FUlong},
		{Name: "ulTotalPublicMemory", Kind: FUlong},
		{Name: "ulFreePublicMemory", Kind: FUlong},
		{Name: "ulTotalPrivateMemory", Kind: FUlong},
		{Name: "ulFreePrivateMemory", Kind: FUlong},
		{Name: "hardwareVersion", Kind: FVersion},
		{Name: "firmwareVersion", Kind: FVersion},
		{Name: "utcTime", Kind: FChars, Size: 16},
	},
	"CK_SESSION_INFO": {
		{Name: "slotID", Kind: FUlong},
		{Name: "state", Kind: FUlong},
		{Name: "flags", Kind: FUlong},
		{Name: "ulDeviceError", Kind: FUlong},
	},
	"CK_MECHANISM_INFO": {
		{Name: "ulMinKeySize", Kind: FUlong},
		{Name: "ulMaxKeySize", Kind: FUlong},
		{Name: "flags", Kind: FUlong},
	},
}

// AttrKind is how an attribute's value travels. The module converts the
// host's CK_ULONG values to 8-byte big-endian on the wire and back, so the
// daemon sees one encoding whatever the client's word size.
type AttrKind int

const (
	AttrBytes    AttrKind = iota // raw bytes, unchanged (the default)
	AttrUlong                    // one CK_ULONG
	AttrBool                     // one CK_BBOOL
	AttrUlongs                   // an array of CK_ULONG (CKA_ALLOWED_MECHANISMS)
	AttrTemplate                 // an array of CK_ATTRIBUTE (CKA_WRAP_TEMPLATE, ...)
)

// Attrs lists the attributes whose values are not plain bytes. Any type not
// listed travels as raw bytes.
var Attrs = map[uint64]AttrKind{
	0x000:      AttrUlong,    // CKA_CLASS
	0x001:      AttrBool,     // CKA_TOKEN
	0x002:      AttrBool,     // CKA_PRIVATE
	0x080:      AttrUlong,    // CKA_CERTIFICATE_TYPE
	0x086:      AttrBool,     // CKA_TRUSTED
	0x087:      AttrUlong,    // CKA_CERTIFICATE_CATEGORY
	0x088:      AttrUlong,    // CKA_JAVA_MIDP_SECURITY_DOMAIN
	0x08C:      AttrUlong,    // CKA_NAME_HASH_ALGORITHM
	0x100:      AttrUlong,    // CKA_KEY_TYPE
	0x103:      AttrBool,     // CKA_SENSITIVE
	0x104:      AttrBool,     // CKA_ENCRYPT
	0x105:      AttrBool,     // CKA_DECRYPT
	0x106:      AttrBool,     // CKA_WRAP
	0x107:      AttrBool,     // CKA_UNWRAP
	0x108:      AttrBool,     // CKA_SIGN
	0x109:      AttrBool,     // CKA_SIGN_RECOVER
	0x10A:      AttrBool,     // CKA_VERIFY
	0x10B:      AttrBool,     // CKA_VERIFY_RECOVER
	0x10C:      AttrBool,     // CKA_DERIVE
	0x121:      AttrUlong,    // CKA_MODULUS_BITS
	0x133:      AttrUlong,    // CKA_PRIME_BITS
	0x134:      AttrUlong,    // CKA_SUBPRIME_BITS
	0x160:      AttrUlong,    // CKA_VALUE_BITS
	0x161:      AttrUlong,    // CKA_VALUE_LEN
	0x162:      AttrBool,     // CKA_EXTRACTABLE
	0x163:      AttrBool,     // CKA_LOCAL
	0x164:      AttrBool,     // CKA_NEVER_EXTRACTABLE
	0x165:      AttrBool,     // CKA_ALWAYS_SENSITIVE
	0x166:      AttrUlong,    // CKA_KEY_GEN_MECHANISM
	0x170:      AttrBool,     // CKA_MODIFIABLE
	0x171:      AttrBool,     // CKA_COPYABLE
	0x172:      AttrBool,     // CKA_DESTROYABLE
	0x202:      AttrBool,     // CKA_ALWAYS_AUTHENTICATE
	0x210:      AttrBool,     // CKA_WRAP_WITH_TRUSTED
	0x300:      AttrUlong,    // CKA_HW_FEATURE_TYPE
	0x301:      AttrBool,     // CKA_RESET_ON_INIT
	0x302:      AttrBool,     // CKA_HAS_RESET
	0x500:      AttrUlong,    // CKA_MECHANISM_TYPE
	0x601:      AttrUlong,    // CKA_PROFILE_ID
	0x61D:      AttrUlong,    // CKA_PARAMETER_SET (3.2)
	0x62A:      AttrTemplate, // CKA_ENCAPSULATE_TEMPLATE (3.2)
	0x62B:      AttrTemplate, // CKA_DECAPSULATE_TEMPLATE (3.2)
	0x633:      AttrBool,     // CKA_ENCAPSULATE (3.2)
	0x634:      AttrBool,     // CKA_DECAPSULATE (3.2)
	0x40000211: AttrTemplate, // CKA_WRAP_TEMPLATE
	0x40000212: AttrTemplate, // CKA_UNWRAP_TEMPLATE
	0x40000213: AttrTemplate, // CKA_DERIVE_TEMPLATE
	0x40000600: AttrUlongs,   // CKA_ALLOWED_MECHANISMS
	0xC8530001: AttrUlong,    // CKA_HSMEMU_PROTECTION (vendor defined)
	0xC8530002: AttrUlong,    // CKA_HSMEMU_SECRET_VERSION
	0xC8530003: AttrBool,     // CKA_HSMEMU_SECRET_ENABLED
	0xC8530004: AttrUlong,    // CKA_HSMEMU_SECRET_EXPIRES
	0xC8530006: AttrUlong,    // CKA_HSMEMU_SECRET_CREATED
}

// Params are the mechanism parameter structures, by C type name.
var Params = map[string][]Field{
	"CK_GCM_PARAMS": {
		{Name: "pIv", Kind: FBytes, LenOf: "ulIvLen"},
		{Name: "ulIvBits", Kind: FUlong},
		{Name: "pAAD", Kind: FBytes, LenOf: "ulAADLen"},
		{Name: "ulTagBits", Kind: FUlong},
	},
	"CK_AES_CTR_PARAMS": {
		{Name: "ulCounterBits", Kind: FUlong},
		{Name: "cb", Kind: FChars, Size: 16},
	},
	"CK_RSA_PKCS_OAEP_PARAMS": {
		{Name: "hashAlg", Kind: FUlong},
		{Name: "mgf", Kind: FUlong},
		{Name: "source", Kind: FUlong},
		{Name: "pSourceData", Kind: FBytes, LenOf: "ulSourceDataLen"},
	},
	"CK_RSA_PKCS_PSS_PARAMS": {
		{Name: "hashAlg", Kind: FUlong},
		{Name: "mgf", Kind: FUlong},
		{Name: "sLen", Kind: FUlong},
	},
	"CK_ECDH1_DERIVE_PARAMS": {
		{Name: "kdf", Kind: FUlong},
		{Name: "pSharedData", Kind: FBytes, LenOf: "ulSharedDataLen"},
		{Name: "pPublicData", Kind: FBytes, LenOf: "ulPublicDataLen"},
	},
	"CK_RSA_AES_KEY_WRAP_PARAMS": {
		{Name: "ulAESKeyBits", Kind: FUlong},
		{Name: "pOAEPParams", Kind: FStruct, Struct: "CK_RSA_PKCS_OAEP_PARAMS"},
	},
	"CK_EDDSA_PARAMS": {
		{Name: "phFlag", Kind: FByte},
		{Name: "pContextData", Kind: FBytes, LenOf: "ulContextDataLen"},
	},
	"CK_CHACHA20_PARAMS": {
		{Name: "pBlockCounter", Kind: FBytes, LenOf: "blockCounterBits", LenBits: true},
		{Name: "pNonce", Kind: FBytes, LenOf: "ulNonceBits", LenBits: true},
	},
	// ulNonceLen counts bytes, as NSS, OpenJDK and kryoptic read it; the
	// specification's text says bits, its member's name and every
	// implementation bytes.
	"CK_SALSA20_CHACHA20_POLY1305_PARAMS": {
		{Name: "pNonce", Kind: FBytes, LenOf: "ulNonceLen"},
		{Name: "pAAD", Kind: FBytes, LenOf: "ulAADLen"},
	},
	// The message parameters of PKCS#11 3.0's message-based encryption
	// (MessageParams). A NULL pointer member travels as NULL whatever its
	// length says (a decryption's pTag before the last part).
	"CK_GCM_MESSAGE_PARAMS": {
		{Name: "pIv", Kind: FBytes, LenOf: "ulIvLen", Out: FInOut},
		{Name: "ulIvFixedBits", Kind: FUlong},
		{Name: "ivGenerator", Kind: FUlong},
		{Name: "pTag", Kind: FBytes, LenOf: "ulTagBits", LenBits: true, Out: FOutOnly},
	},
	// ulNonceLen counts bytes, as for CK_SALSA20_CHACHA20_POLY1305_PARAMS;
	// the tag is always 16 bytes.
	"CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS": {
		{Name: "pNonce", Kind: FBytes, LenOf: "ulNonceLen"},
		{Name: "pTag", Kind: FBytes, Size: 16, Out: FOutOnly},
	},
	// The post-quantum signatures' parameters (PKCS#11 3.2, "ML-DSA" and
	// "SLH-DSA", Definitions): the hedging asked for and the FIPS 204/205
	// context string; the pre-hash variant names its hash.
	"CK_SIGN_ADDITIONAL_CONTEXT": {
		{Name: "hedgeVariant", Kind: FUlong},
		{Name: "pContext", Kind: FBytes, LenOf: "ulContextLen"},
	},
	"CK_HASH_SIGN_ADDITIONAL_CONTEXT": {
		{Name: "hedgeVariant", Kind: FUlong},
		{Name: "pContext", Kind: FBytes, LenOf: "ulContextLen"},
		{Name: "hash", Kind: FUlong},
	},
	"CK_HKDF_PARAMS": {
		{Name: "bExtract", Kind: FByte},
		{Name: "bExpand", Kind: FByte},
		{Name: "prfHashMechanism", Kind: FUlong},
		{Name: "ulSaltType", Kind: FUlong},
		{Name: "pSalt", Kind: FBytes, LenOf: "ulSaltLen"},
		{Name: "hSaltKey", Kind: FUlong},
		{Name: "pInfo", Kind: FBytes, LenOf: "ulInfoLen"},
	},
}

// ParamKind is how one mechanism's parameter travels.
type ParamKind int

const (
	PNone   ParamKind = iota // no parameter: NULL, or a zero length
	PBytes                   // a byte string (an IV): raw bytes
	PUlong                   // one CK_ULONG (e.g. a MAC length)
	PStruct                  // a structure from Params, named by Mechanisms' value
)

// MechParam names a mechanism's parameter kind and, for PStruct, its C type.
type MechParam struct {
	Kind   ParamKind
	Struct string
}

// Mechanisms lists mechanisms whose parameter is not PNone. A mechanism not
// listed here whose caller passes a parameter anyway sends it as PBytes; the
// daemon decides whether that is valid for the mechanism.
var Mechanisms = map[uint64]MechParam{
	0x00000009: {PStruct, "CK_RSA_PKCS_OAEP_PARAMS"},             // CKM_RSA_PKCS_OAEP
	0x0000000D: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_RSA_PKCS_PSS
	0x0000000E: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA1_RSA_PKCS_PSS
	0x00000043: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA256_RSA_PKCS_PSS
	0x00000044: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA384_RSA_PKCS_PSS
	0x00000045: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA512_RSA_PKCS_PSS
	0x00000047: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA224_RSA_PKCS_PSS
	0x00000063: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA3_256_RSA_PKCS_PSS
	0x00000064: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA3_384_RSA_PKCS_PSS
	0x00000065: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA3_512_RSA_PKCS_PSS
	0x00000067: {PStruct, "CK_RSA_PKCS_PSS_PARAMS"},              // CKM_SHA3_224_RSA_PKCS_PSS
	0x0000001D: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_ML_DSA (3.2)
	0x0000001F: {PStruct, "CK_HASH_SIGN_ADDITIONAL_CONTEXT"},     // CKM_HASH_ML_DSA (3.2)
	0x00000023: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA224 (3.2)
	0x00000024: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA256 (3.2)
	0x00000025: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA384 (3.2)
	0x00000026: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA512 (3.2)
	0x00000027: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA3_224 (3.2)
	0x00000028: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA3_256 (3.2)
	0x00000029: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA3_384 (3.2)
	0x0000002A: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHA3_512 (3.2)
	0x0000002B: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHAKE128 (3.2)
	0x0000002C: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_ML_DSA_SHAKE256 (3.2)
	0x0000002E: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_SLH_DSA (3.2)
	0x00000034: {PStruct, "CK_HASH_SIGN_ADDITIONAL_CONTEXT"},     // CKM_HASH_SLH_DSA (3.2)
	0x00000036: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA224 (3.2)
	0x00000037: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA256 (3.2)
	0x00000038: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA384 (3.2)
	0x00000039: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA512 (3.2)
	0x0000003A: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA3_224 (3.2)
	0x0000003B: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA3_256 (3.2)
	0x0000003C: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA3_384 (3.2)
	0x0000003D: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHA3_512 (3.2)
	0x0000003E: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHAKE128 (3.2)
	0x0000003F: {PStruct, "CK_SIGN_ADDITIONAL_CONTEXT"},          // CKM_HASH_SLH_DSA_SHAKE256 (3.2)
	0x00000122: {PBytes, ""},                                     // CKM_DES_CBC (IV)
	0x00000125: {PBytes, ""},                                     // CKM_DES_CBC_PAD (IV)
	0x00000133: {PBytes, ""},                                     // CKM_DES3_CBC (IV)
	0x00000136: {PBytes, ""},                                     // CKM_DES3_CBC_PAD (IV)
	0x00001054: {PStruct, "CK_RSA_AES_KEY_WRAP_PARAMS"},          // CKM_RSA_AES_KEY_WRAP
	0x00001050: {PStruct, "CK_ECDH1_DERIVE_PARAMS"},              // CKM_ECDH1_DERIVE
	0x00001057: {PStruct, "CK_EDDSA_PARAMS"},                     // CKM_EDDSA
	0x00001082: {PBytes, ""},                                     // CKM_AES_CBC (IV)
	0x00001085: {PBytes, ""},                                     // CKM_AES_CBC_PAD (IV)
	0x00001086: {PStruct, "CK_AES_CTR_PARAMS"},                   // CKM_AES_CTR
	0x00001087: {PStruct, "CK_GCM_PARAMS"},                       // CKM_AES_GCM
	0x00001226: {PStruct, "CK_CHACHA20_PARAMS"},                  // CKM_CHACHA20
	0x00002109: {PBytes, ""},                                     // CKM_AES_KEY_WRAP (optional IV)
	0x0000210A: {PBytes, ""},                                     // CKM_AES_KEY_WRAP_PAD (optional IV)
	0x0000210B: {PBytes, ""},                                     // CKM_AES_KEY_WRAP_KWP (optional IV)
	0x00004021: {PStruct, "CK_SALSA20_CHACHA20_POLY1305_PARAMS"}, // CKM_CHACHA20_POLY1305
	0x0000402A: {PStruct, "CK_HKDF_PARAMS"},                      // CKM_HKDF_DERIVE
	0x0000402B: {PStruct, "CK_HKDF_PARAMS"},                      // CKM_HKDF_DATA
}

// MessageParams are the message parameter structures, in wire order: a
// msgparam's form 2 is the first, 3 the second (docs/protocol.md,
// "Message parameters"). Numbers are stable: append only.
var MessageParams = []string{
	"CK_GCM_MESSAGE_PARAMS",
	"CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS",
}

// MessageMechanisms are the mechanisms whose message-based Init takes, if
// anything, their message parameter structure rather than their usual
// one (PKCS#11 3.0's own example passes CK_GCM_MESSAGE_PARAMS to
// C_MessageEncryptInit): the module checks its size and sends no
// parameter, since each message brings its own.
var MessageMechanisms = map[uint64]string{
	0x00001087: "CK_GCM_MESSAGE_PARAMS",                   // CKM_AES_GCM
	0x00004021: "CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS", // CKM_CHACHA20_POLY1305
}
