package calls

import "hsmemu/cryptoki/ck"

// TooLarge is c's answer to arguments longer than it can carry: a
// request over the daemon's data bound (wire.RequestBound), which the
// daemon refuses unread, or arguments the module cannot put in a frame
// (a byte string over 16 MiB, a request over the frame's cap), which it
// refuses itself. Both sides answer the same: the specification's code
// for input of a bad length where the call has one,
// CKR_MECHANISM_PARAM_INVALID for an Init (only a parameter can make one
// long), CKR_DEVICE_MEMORY (the token cannot hold it) for calls with
// data but no such code, CKR_FUNCTION_NOT_SUPPORTED for calls the daemon
// does not serve. Calls not listed, whose arguments all have a small
// fixed bound, get CKR_ARGUMENTS_BAD: their request cannot be well
// formed.
func TooLarge(c *Call) uint64 {
	if rv, ok := tooLarge[c.Name]; ok {
		return rv
	}
	return ck.CKR_ARGUMENTS_BAD
}

var tooLarge = map[string]uint64{
	"C_Encrypt":       ck.CKR_DATA_LEN_RANGE,
	"C_EncryptUpdate": ck.CKR_DATA_LEN_RANGE,
	"C_Sign":          ck.CKR_DATA_LEN_RANGE,
	"C_SignUpdate":    ck.CKR_DATA_LEN_RANGE,
	"C_Verify":        ck.CKR_DATA_LEN_RANGE,
	"C_VerifyUpdate":  ck.CKR_DATA_LEN_RANGE,
	"C_Decrypt":       ck.CKR_ENCRYPTED_DATA_LEN_RANGE,
	"C_DecryptUpdate": ck.CKR_ENCRYPTED_DATA_LEN_RANGE,
	"C_VerifyFinal":   ck.CKR_SIGNATURE_LEN_RANGE,
	"C_UnwrapKey":     ck.CKR_WRAPPED_KEY_LEN_RANGE,

	// PKCS#11 3.2.
	"C_DecapsulateKey":         ck.CKR_WRAPPED_KEY_LEN_RANGE,
	"C_EncapsulateKey":         ck.CKR_DEVICE_MEMORY,
	"C_VerifySignatureInit":    ck.CKR_SIGNATURE_LEN_RANGE,
	"C_VerifySignature":        ck.CKR_DATA_LEN_RANGE,
	"C_VerifySignatureUpdate":  ck.CKR_DATA_LEN_RANGE,
	"C_WrapKeyAuthenticated":   ck.CKR_DEVICE_MEMORY,
	"C_UnwrapKeyAuthenticated": ck.CKR_WRAPPED_KEY_LEN_RANGE,

	// The message-based calls, by their lists of return values: the
	// Begins have no length code.
	"C_EncryptMessage":      ck.CKR_DATA_LEN_RANGE,
	"C_EncryptMessageNext":  ck.CKR_DATA_LEN_RANGE,
	"C_SignMessage":         ck.CKR_DATA_LEN_RANGE,
	"C_SignMessageNext":     ck.CKR_DATA_LEN_RANGE,
	"C_VerifyMessage":       ck.CKR_DATA_LEN_RANGE,
	"C_VerifyMessageNext":   ck.CKR_DATA_LEN_RANGE,
	"C_DecryptMessage":      ck.CKR_ENCRYPTED_DATA_LEN_RANGE,
	"C_DecryptMessageNext":  ck.CKR_ENCRYPTED_DATA_LEN_RANGE,
	"C_EncryptMessageBegin": ck.CKR_DEVICE_MEMORY,
	"C_DecryptMessageBegin": ck.CKR_DEVICE_MEMORY,
	"C_SignMessageBegin":    ck.CKR_DEVICE_MEMORY,
	"C_VerifyMessageBegin":  ck.CKR_DEVICE_MEMORY,
	"C_MessageEncryptInit":  ck.CKR_MECHANISM_PARAM_INVALID,
	"C_MessageDecryptInit":  ck.CKR_MECHANISM_PARAM_INVALID,
	"C_MessageSignInit":     ck.CKR_MECHANISM_PARAM_INVALID,
	"C_MessageVerifyInit":   ck.CKR_MECHANISM_PARAM_INVALID,

	"C_EncryptInit": ck.CKR_MECHANISM_PARAM_INVALID,
	"C_DecryptInit": ck.CKR_MECHANISM_PARAM_INVALID,
	"C_DigestInit":  ck.CKR_MECHANISM_PARAM_INVALID,
	"C_SignInit":    ck.CKR_MECHANISM_PARAM_INVALID,
	"C_VerifyInit":  ck.CKR_MECHANISM_PARAM_INVALID,

	"C_InitToken": ck.CKR_PIN_LEN_RANGE,
	"C_InitPIN":   ck.CKR_PIN_LEN_RANGE,
	"C_SetPIN":    ck.CKR_PIN_LEN_RANGE,

	"C_Digest":            ck.CKR_DEVICE_MEMORY,
	"C_DigestUpdate":      ck.CKR_DEVICE_MEMORY,
	"C_CreateObject":      ck.CKR_DEVICE_MEMORY,
	"C_CopyObject":        ck.CKR_DEVICE_MEMORY,
	"C_SetAttributeValue": ck.CKR_DEVICE_MEMORY,
	"C_FindObjectsInit":   ck.CKR_DEVICE_MEMORY,
	"C_GenerateKey":       ck.CKR_DEVICE_MEMORY,
	"C_GenerateKeyPair":   ck.CKR_DEVICE_MEMORY,
	"C_WrapKey":           ck.CKR_DEVICE_MEMORY,
	"C_DeriveKey":         ck.CKR_DEVICE_MEMORY,
	"C_SeedRandom":        ck.CKR_DEVICE_MEMORY,

	"C_LoginUser":         ck.CKR_FUNCTION_NOT_SUPPORTED,
	"C_SignRecoverInit":   ck.CKR_FUNCTION_NOT_SUPPORTED,
	"C_SignRecover":       ck.CKR_FUNCTION_NOT_SUPPORTED,
	"C_VerifyRecoverInit": ck.CKR_FUNCTION_NOT_SUPPORTED,
	"C_VerifyRecover":     ck.CKR_FUNCTION_NOT_SUPPORTED,
}
