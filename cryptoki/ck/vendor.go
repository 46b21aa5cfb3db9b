package ck

// hsmemu's vendor-defined attribute: a key's protection level, as cloud key
// vaults report it. Its value is a CK_ULONG.
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
