package ck

import (
	"errors"
	"fmt"
)

// Error is a PKCS#11 return value (CK_RV) as a Go error. It is the one error
// type every layer of hsmemu uses for an outcome the caller sees as a CK_RV:
// a mechanism, the token engine and the admin calls return it (or wrap it,
// with Errorf, to say more in the daemon's log), and the daemon maps an
// error to the CK_RV of its reply exactly once, with errors.As. An Error is
// comparable, so errors.Is(err, ck.Error(ck.CKR_PIN_INCORRECT)) works.
//
// CKR_OK is not an error: Err(CKR_OK) is nil.
type Error uint64

// Error names the return value, as the specification spells it.
func (e Error) Error() string {
	if n, ok := rvNames[uint64(e)]; ok {
		return n
	}
	return fmt.Sprintf("CK_RV 0x%x", uint64(e))
}

// RV is the return value.
func (e Error) RV() uint64 { return uint64(e) }

// Err is the error for a return value: nil for CKR_OK.
func Err(rv uint64) error {
	if rv == CKR_OK {
		return nil
	}
	return Error(rv)
}

// Errorf returns an error the caller sees as code, and whose text says why
// for the daemon's log: a refusal whose CK_RV alone would leave an
// administrator guessing. errors.As finds code in it.
func Errorf(code uint64, format string, args ...any) error {
	return &reason{code: Error(code), why: fmt.Sprintf(format, args...)}
}

// reason is Errorf's error: a CK_RV with its explanation.
type reason struct {
	code Error
	why  string
}

func (r *reason) Error() string { return r.why + " (" + r.code.Error() + ")" }
func (r *reason) Unwrap() error { return r.code }

// RVOf returns the CK_RV an error carries, and false when it carries none.
func RVOf(err error) (uint64, bool) {
	if err == nil {
		return CKR_OK, true
	}
	var e Error
	if errors.As(err, &e) {
		return uint64(e), true
	}
	return 0, false
}

// Reason returns the explanation Errorf attached to an error, if any.
func Reason(err error) (string, bool) {
	var r *reason
	if errors.As(err, &r) {
		return r.why, true
	}
	return "", false
}

// rvNames names the return values of ck.go (TestErrorNames checks that it
// names them all).
var rvNames = map[uint64]string{
	CKR_OK:                               "CKR_OK",
	CKR_CANCEL:                           "CKR_CANCEL",
	CKR_HOST_MEMORY:                      "CKR_HOST_MEMORY",
	CKR_SLOT_ID_INVALID:                  "CKR_SLOT_ID_INVALID",
	CKR_GENERAL_ERROR:                    "CKR_GENERAL_ERROR",
	CKR_FUNCTION_FAILED:                  "CKR_FUNCTION_FAILED",
	CKR_ARGUMENTS_BAD:                    "CKR_ARGUMENTS_BAD",
	CKR_NO_EVENT:                         "CKR_NO_EVENT",
	CKR_NEED_TO_CREATE_THREADS:           "CKR_NEED_TO_CREATE_THREADS",
	CKR_CANT_LOCK:                        "CKR_CANT_LOCK",
	CKR_ATTRIBUTE_READ_ONLY:              "CKR_ATTRIBUTE_READ_ONLY",
	CKR_ATTRIBUTE_SENSITIVE:              "CKR_ATTRIBUTE_SENSITIVE",
	CKR_ATTRIBUTE_TYPE_INVALID:           "CKR_ATTRIBUTE_TYPE_INVALID",
	CKR_ATTRIBUTE_VALUE_INVALID:          "CKR_ATTRIBUTE_VALUE_INVALID",
	CKR_ACTION_PROHIBITED:                "CKR_ACTION_PROHIBITED",
	CKR_DATA_INVALID:                     "CKR_DATA_INVALID",
	CKR_DATA_LEN_RANGE:                   "CKR_DATA_LEN_RANGE",
	CKR_DEVICE_ERROR:                     "CKR_DEVICE_ERROR",
	CKR_DEVICE_MEMORY:                    "CKR_DEVICE_MEMORY",
	CKR_DEVICE_REMOVED:                   "CKR_DEVICE_REMOVED",
	CKR_ENCRYPTED_DATA_INVALID:           "CKR_ENCRYPTED_DATA_INVALID",
	CKR_ENCRYPTED_DATA_LEN_RANGE:         "CKR_ENCRYPTED_DATA_LEN_RANGE",
	CKR_AEAD_DECRYPT_FAILED:              "CKR_AEAD_DECRYPT_FAILED",
	CKR_FUNCTION_CANCELED:                "CKR_FUNCTION_CANCELED",
	CKR_FUNCTION_NOT_PARALLEL:            "CKR_FUNCTION_NOT_PARALLEL",
	CKR_FUNCTION_NOT_SUPPORTED:           "CKR_FUNCTION_NOT_SUPPORTED",
	CKR_KEY_HANDLE_INVALID:               "CKR_KEY_HANDLE_INVALID",
	CKR_KEY_SIZE_RANGE:                   "CKR_KEY_SIZE_RANGE",
	CKR_KEY_TYPE_INCONSISTENT:            "CKR_KEY_TYPE_INCONSISTENT",
	CKR_KEY_NOT_NEEDED:                   "CKR_KEY_NOT_NEEDED",
	CKR_KEY_CHANGED:                      "CKR_KEY_CHANGED",
	CKR_KEY_NEEDED:                       "CKR_KEY_NEEDED",
	CKR_KEY_INDIGESTIBLE:                 "CKR_KEY_INDIGESTIBLE",
	CKR_KEY_FUNCTION_NOT_PERMITTED:       "CKR_KEY_FUNCTION_NOT_PERMITTED",
	CKR_KEY_NOT_WRAPPABLE:                "CKR_KEY_NOT_WRAPPABLE",
	CKR_KEY_UNEXTRACTABLE:                "CKR_KEY_UNEXTRACTABLE",
	CKR_MECHANISM_INVALID:                "CKR_MECHANISM_INVALID",
	CKR_MECHANISM_PARAM_INVALID:          "CKR_MECHANISM_PARAM_INVALID",
	CKR_OBJECT_HANDLE_INVALID:            "CKR_OBJECT_HANDLE_INVALID",
	CKR_OPERATION_ACTIVE:                 "CKR_OPERATION_ACTIVE",
	CKR_OPERATION_NOT_INITIALIZED:        "CKR_OPERATION_NOT_INITIALIZED",
	CKR_PIN_INCORRECT:                    "CKR_PIN_INCORRECT",
	CKR_PIN_INVALID:                      "CKR_PIN_INVALID",
	CKR_PIN_LEN_RANGE:                    "CKR_PIN_LEN_RANGE",
	CKR_PIN_EXPIRED:                      "CKR_PIN_EXPIRED",
	CKR_PIN_LOCKED:                       "CKR_PIN_LOCKED",
	CKR_SESSION_CLOSED:                   "CKR_SESSION_CLOSED",
	CKR_SESSION_COUNT:                    "CKR_SESSION_COUNT",
	CKR_SESSION_HANDLE_INVALID:           "CKR_SESSION_HANDLE_INVALID",
	CKR_SESSION_PARALLEL_NOT_SUPPORTED:   "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
	CKR_SESSION_READ_ONLY:                "CKR_SESSION_READ_ONLY",
	CKR_SESSION_EXISTS:                   "CKR_SESSION_EXISTS",
	CKR_SESSION_READ_ONLY_EXISTS:         "CKR_SESSION_READ_ONLY_EXISTS",
	CKR_SESSION_READ_WRITE_SO_EXISTS:     "CKR_SESSION_READ_WRITE_SO_EXISTS",
	CKR_SIGNATURE_INVALID:                "CKR_SIGNATURE_INVALID",
	CKR_SIGNATURE_LEN_RANGE:              "CKR_SIGNATURE_LEN_RANGE",
	CKR_TEMPLATE_INCOMPLETE:              "CKR_TEMPLATE_INCOMPLETE",
	CKR_TEMPLATE_INCONSISTENT:            "CKR_TEMPLATE_INCONSISTENT",
	CKR_TOKEN_NOT_PRESENT:                "CKR_TOKEN_NOT_PRESENT",
	CKR_TOKEN_NOT_RECOGNIZED:             "CKR_TOKEN_NOT_RECOGNIZED",
	CKR_TOKEN_WRITE_PROTECTED:            "CKR_TOKEN_WRITE_PROTECTED",
	CKR_UNWRAPPING_KEY_HANDLE_INVALID:    "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
	CKR_UNWRAPPING_KEY_SIZE_RANGE:        "CKR_UNWRAPPING_KEY_SIZE_RANGE",
	CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
	CKR_USER_ALREADY_LOGGED_IN:           "CKR_USER_ALREADY_LOGGED_IN",
	CKR_USER_NOT_LOGGED_IN:               "CKR_USER_NOT_LOGGED_IN",
	CKR_USER_PIN_NOT_INITIALIZED:         "CKR_USER_PIN_NOT_INITIALIZED",
	CKR_USER_TYPE_INVALID:                "CKR_USER_TYPE_INVALID",
	CKR_USER_ANOTHER_ALREADY_LOGGED_IN:   "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
	CKR_USER_TOO_MANY_TYPES:              "CKR_USER_TOO_MANY_TYPES",
	CKR_WRAPPED_KEY_INVALID:              "CKR_WRAPPED_KEY_INVALID",
	CKR_WRAPPED_KEY_LEN_RANGE:            "CKR_WRAPPED_KEY_LEN_RANGE",
	CKR_WRAPPING_KEY_HANDLE_INVALID:      "CKR_WRAPPING_KEY_HANDLE_INVALID",
	CKR_WRAPPING_KEY_SIZE_RANGE:          "CKR_WRAPPING_KEY_SIZE_RANGE",
	CKR_WRAPPING_KEY_TYPE_INCONSISTENT:   "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
	CKR_RANDOM_SEED_NOT_SUPPORTED:        "CKR_RANDOM_SEED_NOT_SUPPORTED",
	CKR_RANDOM_NO_RNG:                    "CKR_RANDOM_NO_RNG",
	CKR_DOMAIN_PARAMS_INVALID:            "CKR_DOMAIN_PARAMS_INVALID",
	CKR_CURVE_NOT_SUPPORTED:              "CKR_CURVE_NOT_SUPPORTED",
	CKR_BUFFER_TOO_SMALL:                 "CKR_BUFFER_TOO_SMALL",
	CKR_SAVED_STATE_INVALID:              "CKR_SAVED_STATE_INVALID",
	CKR_INFORMATION_SENSITIVE:            "CKR_INFORMATION_SENSITIVE",
	CKR_STATE_UNSAVEABLE:                 "CKR_STATE_UNSAVEABLE",
	CKR_CRYPTOKI_NOT_INITIALIZED:         "CKR_CRYPTOKI_NOT_INITIALIZED",
	CKR_CRYPTOKI_ALREADY_INITIALIZED:     "CKR_CRYPTOKI_ALREADY_INITIALIZED",
	CKR_MUTEX_BAD:                        "CKR_MUTEX_BAD",
	CKR_MUTEX_NOT_LOCKED:                 "CKR_MUTEX_NOT_LOCKED",
	CKR_NEW_PIN_MODE:                     "CKR_NEW_PIN_MODE",
	CKR_NEXT_OTP:                         "CKR_NEXT_OTP",
	CKR_EXCEEDED_MAX_ITERATIONS:          "CKR_EXCEEDED_MAX_ITERATIONS",
	CKR_FIPS_SELF_TEST_FAILED:            "CKR_FIPS_SELF_TEST_FAILED",
	CKR_LIBRARY_LOAD_FAILED:              "CKR_LIBRARY_LOAD_FAILED",
	CKR_PIN_TOO_WEAK:                     "CKR_PIN_TOO_WEAK",
	CKR_PUBLIC_KEY_INVALID:               "CKR_PUBLIC_KEY_INVALID",
	CKR_FUNCTION_REJECTED:                "CKR_FUNCTION_REJECTED",
	CKR_TOKEN_RESOURCE_EXCEEDED:          "CKR_TOKEN_RESOURCE_EXCEEDED",
	CKR_OPERATION_CANCEL_FAILED:          "CKR_OPERATION_CANCEL_FAILED",
	CKR_KEY_EXHAUSTED:                    "CKR_KEY_EXHAUSTED",
	CKR_PARAMETER_SET_NOT_SUPPORTED:      "CKR_PARAMETER_SET_NOT_SUPPORTED",
	CKR_VENDOR_DEFINED:                   "CKR_VENDOR_DEFINED",
}
