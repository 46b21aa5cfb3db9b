package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/internal/reqid"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// Config is what the daemon tells the administrator's calls of itself.
type Config struct {
	Version string
	TPM     tpmroot.Info
	// TPMHealth probes the TPM for status; nil: it is not asked.
	TPMHealth func() tpmroot.Health
	Started   time.Time
	// Rotator rotates the master key; nil: `rotate master` is refused.
	Rotator Rotator
	// DA reads the TPM's dictionary-attack state; nil: status omits it.
	DA func() (tpmroot.DAInfo, error)
}

// Rotator is the state directory's master key rotation (daemon.State):
// begin makes and records the next master key, finish moves every token to
// it, abort forgets one begun and not yet moving.
type Rotator interface {
	BeginMasterRotation(ctx context.Context, esc tpmroot.ProvisionOptions) (uint32, []escrow.EncryptedShare, error)
	FinishMasterRotation(ctx context.Context, progress func(done, total int)) (uint32, error)
	AbortMasterRotation(ctx context.Context) error
}

// ErrEscrowNeeded refuses to rotate an escrowed domain's master key
// without custodians: the new key would die with this TPM.
var ErrEscrowNeeded = errors.New("the domain's master key is escrowed: give the custodians (and threshold) the new master key is split to")

// Handler serves the administrator's calls over one engine and keystore.
type Handler struct {
	eng   *token.Engine
	store *keystore.Store
	log   *slog.Logger
	cfg   Config

	// secretMu orders the calls that number a secret's versions.
	secretMu sync.Mutex
}

// New returns the handler of the administrator's calls.
func New(eng *token.Engine, store *keystore.Store, log *slog.Logger, cfg Config) *Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	return &Handler{eng: eng, store: store, log: log, cfg: cfg}
}

// call is one admin call, acting as who.
type call struct {
	h        *Handler
	eng      *token.Engine
	store    *keystore.Store
	log      *slog.Logger
	who      keystore.AuditActor
	progress func(done, total int) // reports a long call's progress to the client
}

// Call decodes and serves one admin call. A panic is a bug: logged and
// answered as internal, and the daemon goes on.
func (h *Handler) Call(ctx context.Context, who keystore.AuditActor, req adminapi.Request, progress func(done, total int)) (result any, aerr *adminapi.Error) {
	// The call's log lines carry its request id, as its audit records do.
	log := h.log
	if id := reqid.From(ctx); id != "" {
		log = log.With("request_id", id)
	}
	defer func() {
		if p := recover(); p != nil {
			log.Error("internal error serving an admin call", "op", req.Op, "panic", fmt.Sprint(p))
			result, aerr = nil, adminapi.Errorf(adminapi.CodeInternal, "internal error; the daemon's log says more")
		}
	}()
	serve, ok := ops[req.Op]
	if !ok {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "unknown admin call %q: this daemon may be older than the command", req.Op)
	}
	a := &call{h: h, eng: h.eng, store: h.store, log: log, who: who, progress: progress}
	result, err := serve(ctx, a, req)
	// Integrity failures the call met, once each (see keystore.AuditTamper).
	if terr := h.store.AuditTamper(ctx); terr != nil {
		log.Error("tamper record not written", "err", terr)
	}
	if err != nil {
		return nil, adminErr(log, req.Op, err)
	}
	if result == nil {
		result = struct{}{}
	}
	return result, nil
}

// opFunc serves one admin call: it decodes the arguments, runs the call
// and wipes the arguments.
type opFunc func(ctx context.Context, a *call, req adminapi.Request) (any, error)

// noArgs is the arguments of a call that takes none; whatever the request
// carries is ignored.
type noArgs struct{}

// op makes an opFunc of a call's function: the one place arguments are
// decoded (strictly: unknown fields are refused) and wiped after the call
// (every byte slice in them: PINs, key material, secret values).
func op[A, R any](f func(a *call, ctx context.Context, args A) (R, error)) opFunc {
	return func(ctx context.Context, a *call, req adminapi.Request) (any, error) {
		var args A
		if _, none := any(args).(noArgs); !none {
			if len(req.Args) == 0 {
				return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%s needs arguments", req.Op)
			}
			err := adminapi.DecodeJSON(req.Args, &args)
			defer wipe(&args)
			if err != nil {
				return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%s: %v", req.Op, err)
			}
		}
		r, err := f(a, ctx, args)
		if err != nil {
			return nil, err
		}
		return r, nil
	}
}

// done is op for a call whose only result is success.
func done[A any](f func(a *call, ctx context.Context, args A) error) opFunc {
	return op(func(a *call, ctx context.Context, args A) (any, error) { return nil, f(a, ctx, args) })
}

// ops is the table of the administrator's calls.
var ops = map[string]opFunc{
	adminapi.OpStatus:      op((*call).status),
	adminapi.OpTokenList:   op((*call).tokenList),
	adminapi.OpTokenShow:   op((*call).tokenShow),
	adminapi.OpTokenCreate: op((*call).tokenCreate),
	adminapi.OpTokenSet:    op((*call).tokenSet),
	adminapi.OpTokenDelete: done((*call).tokenDelete),
	adminapi.OpTokenLogout: op((*call).tokenLogout),

	adminapi.OpPINChange: done((*call).pinChange),
	adminapi.OpPINReset:  done((*call).pinReset),
	adminapi.OpPINUnlock: done((*call).pinUnlock),

	adminapi.OpAuditTail:   op((*call).auditTail),
	adminapi.OpAuditRange:  op((*call).auditRange),
	adminapi.OpAuditVerify: op((*call).auditVerify),

	adminapi.OpKeyList:         op((*call).keyList),
	adminapi.OpKeyShow:         op((*call).keyShow),
	adminapi.OpKeyGenerate:     op((*call).keyGenerate),
	adminapi.OpKeyImport:       op((*call).keyImport),
	adminapi.OpKeyExportPublic: op((*call).keyExportPublic),
	adminapi.OpKeyDelete:       op((*call).keyDelete),
	adminapi.OpKeyRecover:      op((*call).keyRecover),
	adminapi.OpKeyPurge:        op((*call).keyPurge),
	adminapi.OpKeyBackup:       op((*call).keyBackup),
	adminapi.OpKeyRestore:      op((*call).keyRestore),

	adminapi.OpSecretSet:      op((*call).secretSet),
	adminapi.OpSecretGet:      op((*call).secretGet),
	adminapi.OpSecretList:     op((*call).secretList),
	adminapi.OpSecretVersions: op((*call).secretVersionsOp),
	adminapi.OpSecretDelete:   op((*call).secretDelete),
	adminapi.OpSecretRecover:  op((*call).secretRecover),
	adminapi.OpSecretPurge:    op((*call).secretPurge),

	adminapi.OpCertImport:  op((*call).certImport),
	adminapi.OpCertRequest: op((*call).certRequest),
	adminapi.OpCertList:    op((*call).certList),
	adminapi.OpCertShow:    op((*call).certShow),
	adminapi.OpCertExport:  op((*call).certExport),

	adminapi.OpRotateToken:        op((*call).rotateToken),
	adminapi.OpRotateMasterBegin:  op((*call).rotateMasterBegin),
	adminapi.OpRotateMasterFinish: op((*call).rotateMasterFinish),
	adminapi.OpRotateMasterAbort:  done((*call).rotateMasterAbort),

	adminapi.OpNodeLeave: done((*call).nodeLeave),
}

// Serves says whether op is an admin call this daemon serves.
func Serves(op string) bool {
	_, ok := ops[op]
	return ok
}

// wipe clears every byte slice in the arguments, nested structures and
// pointers to them included.
func wipe(v any) { wipeValue(reflect.ValueOf(v)) }

func wipeValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			wipeValue(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			wipeValue(v.Field(i))
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			clear(v.Bytes())
			return
		}
		for i := range v.Len() {
			wipeValue(v.Index(i))
		}
	}
}

// adminErr turns an error into the admin protocol's, logging what is the
// daemon's fault.
func adminErr(log *slog.Logger, op string, err error) *adminapi.Error {
	var ae *adminapi.Error
	var code ck.Error
	why, reasoned := ck.Reason(err)
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, keystore.ErrNotFound):
		return adminapi.Errorf(adminapi.CodeNotFound, "not found")
	case errors.Is(err, keystore.ErrTokenExists):
		return adminapi.Errorf(adminapi.CodeExists, "a token with that label exists")
	case errors.Is(err, keystore.ErrPINIncorrect):
		return adminapi.Errorf(adminapi.CodePINIncorrect, "the PIN is incorrect; the failure was counted")
	case errors.Is(err, keystore.ErrPINLocked):
		return adminapi.Errorf(adminapi.CodePINLocked, "the PIN is locked after too many failures: `hsmemu pin unlock` or `pin reset` clears it")
	case errors.Is(err, keystore.ErrTPMLockout):
		return adminapi.Errorf(adminapi.CodePINLocked, "%s", tpmLockoutMessage(err))
	case errors.Is(err, keystore.ErrPINNotInitialized):
		return adminapi.Errorf(adminapi.CodeNotFound, "the user PIN is not set: `hsmemu pin reset` sets it with the SO PIN")
	case errors.Is(err, keystore.ErrRotationPending):
		return adminapi.Errorf(adminapi.CodeInUse, "a master key rotation is under way: `hsmemu rotate master --resume` finishes it")
	case errors.Is(err, keystore.ErrNoRotation):
		return adminapi.Errorf(adminapi.CodeNotFound, "no master key rotation is under way")
	case errors.Is(err, keystore.ErrRotationStarted):
		return adminapi.Errorf(adminapi.CodeRefused, "the master key rotation has begun moving tokens: `hsmemu rotate master --resume` finishes it")
	case errors.Is(err, ErrEscrowNeeded):
		return adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
	case errors.Is(err, keystore.ErrUserPINNeeded):
		return adminapi.Errorf(adminapi.CodeBadRequest, "the token has a user PIN: give it too, the new data key is wrapped under it")
	case errors.Is(err, keystore.ErrLastNode):
		return adminapi.Errorf(adminapi.CodeRefused, "the domain's last node cannot leave it: its keys would have no TPM left to open them")
	case errors.Is(err, keystore.ErrPurgeProtected):
		return adminapi.Errorf(adminapi.CodeRefused, "the token has purge protection: it holds objects, live or deleted, whose retention has not ended")
	case errors.Is(err, keystore.ErrFull):
		log.Warn("admin call: write refused, the keystore's filesystem is full", "op", op, "err", err)
		return adminapi.Errorf(adminapi.CodeInternal, "the keystore's filesystem is full: nothing was written; free space on it and try again")
	case errors.Is(err, keystore.ErrTampered):
		log.Error("admin call: keystore integrity check failed", "op", op, "err", err)
		return adminapi.Errorf(adminapi.CodeTampered, "the keystore failed an integrity check (see the daemon's log and `hsmemu audit verify`)")
	case reasoned:
		return adminapi.Errorf(adminapi.CodeRefused, "refused: %s", why)
	case errors.As(err, &code):
		switch uint64(code) {
		case ck.CKR_FUNCTION_CANCELED:
			return adminapi.Errorf(adminapi.CodeInternal, "the daemon is stopping")
		case ck.CKR_PIN_INCORRECT:
			return adminapi.Errorf(adminapi.CodePINIncorrect, "the PIN is incorrect; the failure was counted")
		case ck.CKR_PIN_LOCKED:
			return adminapi.Errorf(adminapi.CodePINLocked, "the PIN is locked after too many failures: `hsmemu pin unlock` or `pin reset` clears it")
		case ck.CKR_USER_PIN_NOT_INITIALIZED:
			return adminapi.Errorf(adminapi.CodeNotFound, "the user PIN is not set: `hsmemu pin reset` sets it with the SO PIN")
		case ck.CKR_TEMPLATE_INCONSISTENT, ck.CKR_TEMPLATE_INCOMPLETE, ck.CKR_ATTRIBUTE_VALUE_INVALID,
			ck.CKR_ATTRIBUTE_TYPE_INVALID, ck.CKR_CURVE_NOT_SUPPORTED, ck.CKR_KEY_SIZE_RANGE:
			return adminapi.Errorf(adminapi.CodeBadRequest, "the token refused the key's attributes (CK_RV 0x%x)", uint64(code))
		}
		return adminapi.Errorf(adminapi.CodeRefused, "refused by the token (CK_RV 0x%x)", uint64(code))
	}
	log.Error("admin call failed", "op", op, "err", err)
	return adminapi.Errorf(adminapi.CodeInternal, "internal error; the daemon's log says more")
}

// tpmLockoutMessage says, plainly, that the TPM refuses PIN checks and
// until when.
func tpmLockoutMessage(err error) string {
	const msg = "the TPM's dictionary-attack lockout is active (too many wrong PINs, over every token): every PIN check waits"
	var le *keystore.TPMLockoutError
	if errors.As(err, &le) && !le.Until.IsZero() {
		return fmt.Sprintf("%s until %s at the latest; the PIN was not tried and no failure was counted", msg, le.Until.Local().Format(time.DateTime))
	}
	return msg + " until the TPM's counter is reset; the PIN was not tried"
}
