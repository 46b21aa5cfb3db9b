package token

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// rvOf maps an error to the CK_RV the caller sees. A ck.Error is its own
// answer; the keystore's sentinel errors have theirs. Errors that carry no
// CK_RV are the daemon's fault or the store's, and become
// CKR_DEVICE_ERROR; the caller logs them.
func rvOf(err error) (uint64, bool) {
	if code, ok := ck.RVOf(err); ok {
		return code, true
	}
	switch {
	case errors.Is(err, keystore.ErrPINIncorrect):
		return ck.CKR_PIN_INCORRECT, true
	case errors.Is(err, keystore.ErrPINLocked):
		return ck.CKR_PIN_LOCKED, true
	case errors.Is(err, keystore.ErrTPMLockout):
		// The TPM counted too many wrong PINs (over every token) and
		// refuses PIN checks until the count drains: PKCS#11's "the token
		// is unwilling to permit further attempts at authentication",
		// which may or may not last. The role's own counter is not
		// touched, so its token flags do not say locked.
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
	case errors.Is(err, keystore.ErrFull):
		// PKCS#11's "the token does not have sufficient memory to
		// perform the requested function".
		return ck.CKR_DEVICE_MEMORY, true
	case errors.Is(err, context.Canceled):
		return ck.CKR_FUNCTION_CANCELED, true
	}
	return ck.CKR_DEVICE_ERROR, false
}

// asRV keeps an error that is a CK_RV and makes any other fallback.
func asRV(err error, fallback uint64) error {
	if _, ok := ck.RVOf(err); ok {
		return err
	}
	return ck.Error(fallback)
}

// fullLog says in the daemon's log that writes are refused for want of
// space: at once for the first refusal, then at most once every
// fullLogEvery with the count in between, so a busy daemon on a full disk
// does not fill its log (which may share the disk) with one line a call.
type fullLog struct {
	last    atomic.Int64 // unix nanoseconds of the last line; 0 before the first
	pending atomic.Int64 // refusals since it
}

const fullLogEvery = time.Minute

func (e *Engine) noteFull(call string, err error) {
	f := &e.full
	f.pending.Add(1)
	now := time.Now().UnixNano()
	last := f.last.Load()
	if last != 0 && now-last < int64(fullLogEvery) || !f.last.CompareAndSwap(last, now) {
		return
	}
	e.log.Warn("write refused: the keystore's filesystem is full; reads, signatures and session objects go on, and writes succeed again once space is freed",
		"call", call, "refused", f.pending.Swap(0), "err", err)
}
