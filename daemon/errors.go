package daemon

import (
	"context"
	"errors"
	"fmt"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// rvError is a PKCS#11 return value as a Go error. Every engine function
// returns errors; dispatch maps them to a CK_RV exactly once (rvOf).
type rvError uint64

func (e rvError) Error() string { return fmt.Sprintf("CK_RV 0x%x", uint64(e)) }

// rv returns the error for a CK_RV.
func rv(v uint64) error { return rvError(v) }

// rvOf maps an error to the CK_RV the caller sees. Errors that carry no
// CK_RV of their own are the daemon's fault or the store's, and become
// CKR_DEVICE_ERROR; the caller logs them.
func rvOf(err error) (uint64, bool) {
	var e rvError
	var r *refused
	switch {
	case err == nil:
		return ck.CKR_OK, true
	case errors.As(err, &e):
		return uint64(e), true
	case errors.As(err, &r):
		return r.code, true
	case errors.Is(err, keystore.ErrPINIncorrect):
		return ck.CKR_PIN_INCORRECT, true
	case errors.Is(err, keystore.ErrPINLocked):
		return ck.CKR_PIN_LOCKED, true
	case errors.Is(err, keystore.ErrPINLenRange):
		return ck.CKR_PIN_LEN_RANGE, true
	case errors.Is(err, keystore.ErrPINNotInitialized):
		return ck.CKR_USER_PIN_NOT_INITIALIZED, true
	case errors.Is(err, keystore.ErrNotLoggedIn):
		return ck.CKR_USER_NOT_LOGGED_IN, true
	case errors.Is(err, keystore.ErrNotFound):
		return ck.CKR_OBJECT_HANDLE_INVALID, true
	case errors.Is(err, keystore.ErrPurgeProtected):
		// C_InitToken on a token whose objects purge protection keeps.
		return ck.CKR_ACTION_PROHIBITED, true
	case errors.Is(err, context.Canceled):
		return ck.CKR_FUNCTION_CANCELED, true
	}
	return ck.CKR_DEVICE_ERROR, false
}

// asRV keeps an error that is a CK_RV and makes any other fallback.
func asRV(err error, fallback uint64) error {
	var e rvError
	if errors.As(err, &e) {
		return e
	}
	return rv(fallback)
}
