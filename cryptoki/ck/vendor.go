package ck

// hsmemu's vendor-defined attributes. CKA_HSMEMU_PROTECTION is a key's
// protection level, as cloud key vaults report it (a CK_ULONG); the
// CKA_HSMEMU_SECRET_* attributes describe a version of a secret, a
// private data object whose CKA_APPLICATION is SecretApplication
// (docs/tokens.md, "Secrets").
const (
	CKA_HSMEMU_PROTECTION = CKA_VENDOR_DEFINED | 0x48530001

	// CKP_HSMEMU_SOFTWARE: software-protected; exportable under the usual
	// rules (C_WrapKey when CKA_EXTRACTABLE, the value when not
	// CKA_SENSITIVE).
	CKP_HSMEMU_SOFTWARE = 1
	// CKP_HSMEMU_HSM: HSM-protected; CKA_SENSITIVE and !CKA_EXTRACTABLE
	// for life. Premium tokens only.
	CKP_HSMEMU_HSM = 2
)

const (
	// CKA_HSMEMU_SECRET_VERSION: the version's number, from 1 (CK_ULONG).
	CKA_HSMEMU_SECRET_VERSION = CKA_VENDOR_DEFINED | 0x48530002
	// CKA_HSMEMU_SECRET_ENABLED: whether the version may be read (CK_BBOOL).
	CKA_HSMEMU_SECRET_ENABLED = CKA_VENDOR_DEFINED | 0x48530003
	// CKA_HSMEMU_SECRET_EXPIRES: when the version stops being readable, in
	// seconds since 1970; 0 for never (CK_ULONG).
	CKA_HSMEMU_SECRET_EXPIRES = CKA_VENDOR_DEFINED | 0x48530004
	// CKA_HSMEMU_SECRET_CONTENT_TYPE: a media type, e.g. "text/plain".
	CKA_HSMEMU_SECRET_CONTENT_TYPE = CKA_VENDOR_DEFINED | 0x48530005
	// CKA_HSMEMU_SECRET_CREATED: when the version was set, in seconds
	// since 1970 (CK_ULONG).
	CKA_HSMEMU_SECRET_CREATED = CKA_VENDOR_DEFINED | 0x48530006
)

// SecretApplication is the CKA_APPLICATION of a secret's data objects.
const SecretApplication = "hsmemu/secret"

// CKA_HSMEMU_IV_COUNTER is an AES key's IV counter for the message-based
// encryption functions (docs/mechanisms.md, "Message-based operations"):
// 16 bytes, two big-endian 64-bit numbers, the counter's high-water mark
// (every value below it may have been handed out) and its limit (the
// first value that is not this key's). The token sets it, before it
// hands out a value from a new block; a caller can read it, never set it.
const CKA_HSMEMU_IV_COUNTER = CKA_VENDOR_DEFINED | 0x48530007
