package token

import (
	"bytes"
	"context"
	"errors"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// Dispatch serves one decoded call for app and returns its CK_RV; when the
// CK_RV carries results (wire.HasResults), they are in r. This is the one
// place errors become CK_RVs.
func (e *Engine) Dispatch(ctx context.Context, app *App, a *wire.Args, r *wire.Results) uint64 {
	code := uint64(ck.CKR_OK)
	if err := handlers[a.Call().ID](e, ctx, app, a, r); err != nil {
		var known bool
		code, known = rvOf(err)
		if errors.Is(err, keystore.ErrFull) {
			e.noteFull(a.Call().Name, err)
		} else if !known {
			e.log.Error("call failed", "call", a.Call().Name, "pid", app.PID, "err", err)
		} else if why, ok := ck.Reason(err); ok {
			e.log.Info("call refused", "call", a.Call().Name, "pid", app.PID, "why", why)
		}
		if errors.Is(err, keystore.ErrTampered) && keystore.TamperWhat(err) == "" {
			// Not a row the keystore named (it records those itself).
			e.audit(ctx, actor(app, ""), keystore.UUID{}, "tamper.detected", map[string]string{"call": a.Call().Name})
		}
	}
	// Integrity failures the call met, returned or skipped (a bad object
	// left out of a find, a bad token row in the slot list), once each.
	if err := e.store.AuditTamper(ctx); err != nil {
		e.log.Error("tamper record not written", "err", err)
	}
	return code
}

// templ converts a wire template into the engine's attributes, copying the
// values out of the request buffer (which the next request reuses). A
// nested template (CKA_WRAP_TEMPLATE and kin) is kept in its canonical
// encoding.
func templ(in []wire.Attribute) ([]attr, error) {
	out := make([]attr, len(in))
	for i, a := range in {
		out[i].Type = a.Type
		switch {
		case a.Nested != nil:
			nested, err := templ(a.Nested)
			if err != nil {
				return nil, err
			}
			attrs, err := keystore.NewAttributes(nested...)
			if err != nil {
				return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
			}
			out[i].Value = attrs.Encode()
		case a.Null:
			if len(a.Value) != 0 {
				return nil, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
			}
			out[i].Value = vEmpty
		default:
			out[i].Value = bytes.Clone(a.Value)
			if out[i].Value == nil {
				out[i].Value = vEmpty
			}
		}
	}
	return out, nil
}

// handler serves one call: its arguments are in a, its results go into r,
// and an error is its CK_RV (a CK_RV that carries results, such as
// CKR_BUFFER_TOO_SMALL, with them in r).
type handler func(e *Engine, ctx context.Context, app *App, a *wire.Args, r *wire.Results) error

// handlers is the dispatch table, indexed by the call ids of
// cryptoki/calls. It is built once, from handlerOf; building it checks
// that every call the module forwards has a handler and that every handler
// names a forwarded call, so a misspelt name stops the daemon's tests, not
// a client.
var handlers = buildHandlers(handlerOf)

func buildHandlers(byName map[string]handler) []handler {
	t := make([]handler, len(calls.Table)+1)
	for name, h := range byName {
		c, ok := calls.ByName(name)
		if !ok || c.Mode != calls.Forwarded {
			panic("token: internal error: a handler for " + name + ", which the module does not forward")
		}
		t[c.ID] = h
	}
	for i := range calls.Table {
		if c := &calls.Table[i]; c.Mode == calls.Forwarded && t[c.ID] == nil {
			panic("token: internal error: no handler for " + c.Name)
		}
	}
	return t
}

// handlerOf names each forwarded call's handler.
var handlerOf = map[string]handler{
	"C_GetSlotList":       (*Engine).cGetSlotList,
	"C_GetSlotInfo":       (*Engine).cGetSlotInfo,
	"C_GetTokenInfo":      (*Engine).cGetTokenInfo,
	"C_GetMechanismList":  (*Engine).cGetMechanismList,
	"C_GetMechanismInfo":  (*Engine).cGetMechanismInfo,
	"C_WaitForSlotEvent":  (*Engine).cWaitForSlotEvent,
	"C_InitToken":         (*Engine).cInitToken,
	"C_InitPIN":           (*Engine).cInitPIN,
	"C_SetPIN":            (*Engine).cSetPIN,
	"C_OpenSession":       (*Engine).cOpenSession,
	"C_CloseSession":      (*Engine).cCloseSession,
	"C_CloseAllSessions":  (*Engine).cCloseAllSessions,
	"C_GetSessionInfo":    (*Engine).cGetSessionInfo,
	"C_Login":             (*Engine).cLogin,
	"C_LoginUser":         notSupported,
	"C_Logout":            (*Engine).cLogout,
	"C_SessionCancel":     (*Engine).cSessionCancel,
	"C_CreateObject":      (*Engine).cCreateObject,
	"C_CopyObject":        (*Engine).cCopyObject,
	"C_DestroyObject":     (*Engine).cDestroyObject,
	"C_GetObjectSize":     (*Engine).cGetObjectSize,
	"C_GetAttributeValue": (*Engine).cGetAttributeValue,
	"C_SetAttributeValue": (*Engine).cSetAttributeValue,
	"C_FindObjectsInit":   (*Engine).cFindObjectsInit,
	"C_FindObjects":       (*Engine).cFindObjects,
	"C_FindObjectsFinal":  (*Engine).cFindObjectsFinal,
	"C_EncryptInit":       opInit(opEncrypt),
	"C_Encrypt":           crypt(opEncrypt),
	"C_EncryptUpdate":     cryptUpdate(opEncrypt),
	"C_EncryptFinal":      cryptFinal(opEncrypt),
	"C_DecryptInit":       opInit(opDecrypt),
	"C_Decrypt":           crypt(opDecrypt),
	"C_DecryptUpdate":     cryptUpdate(opDecrypt),
	"C_DecryptFinal":      cryptFinal(opDecrypt),
	"C_DigestInit":        (*Engine).cDigestInit,
	"C_Digest":            (*Engine).cDigest,
	"C_DigestUpdate":      (*Engine).cDigestUpdate,
	"C_DigestKey":         (*Engine).cDigestKey,
	"C_DigestFinal":       (*Engine).cDigestFinal,
	"C_SignInit":          opInit(opSign),
	"C_Sign":              (*Engine).cSign,
	"C_SignUpdate":        signVerifyUpdate(opSign),
	"C_SignFinal":         (*Engine).cSignFinal,
	"C_SignRecoverInit":   noMechanism,
	"C_SignRecover":       notInitialized,
	"C_VerifyInit":        opInit(opVerify),
	"C_Verify":            (*Engine).cVerify,
	"C_VerifyUpdate":      signVerifyUpdate(opVerify),
	"C_VerifyFinal":       (*Engine).cVerifyFinal,
	"C_VerifyRecoverInit": noMechanism,
	"C_VerifyRecover":     notInitialized,
	"C_GenerateKey":       (*Engine).cGenerateKey,
	"C_GenerateKeyPair":   (*Engine).cGenerateKeyPair,
	"C_WrapKey":           (*Engine).cWrapKey,
	"C_UnwrapKey":         (*Engine).cUnwrapKey,
	"C_DeriveKey":         (*Engine).cDeriveKey,
	"C_SeedRandom":        (*Engine).cSeedRandom,
	"C_GenerateRandom":    (*Engine).cGenerateRandom,

	// The message-based functions of PKCS#11 3.0 (messages.go, msg*.go).
	"C_MessageEncryptInit":  msgInit(msgEncrypt),
	"C_EncryptMessage":      (*Engine).cEncryptMessage,
	"C_EncryptMessageBegin": (*Engine).cEncryptMessageBegin,
	"C_EncryptMessageNext":  (*Engine).cEncryptMessageNext,
	"C_MessageEncryptFinal": msgFinal(msgEncrypt),
	"C_MessageDecryptInit":  msgInit(msgDecrypt),
	"C_DecryptMessage":      (*Engine).cDecryptMessage,
	"C_DecryptMessageBegin": (*Engine).cDecryptMessageBegin,
	"C_DecryptMessageNext":  (*Engine).cDecryptMessageNext,
	"C_MessageDecryptFinal": msgFinal(msgDecrypt),
	"C_MessageSignInit":     msgInit(msgSign),
	"C_SignMessage":         (*Engine).cSignMessage,
	"C_SignMessageBegin":    msgBegin(msgSign),
	"C_SignMessageNext":     (*Engine).cSignMessageNext,
	"C_MessageSignFinal":    msgFinal(msgSign),
	"C_MessageVerifyInit":   msgInit(msgVerify),
	"C_VerifyMessage":       (*Engine).cVerifyMessage,
	"C_VerifyMessageBegin":  msgBegin(msgVerify),
	"C_VerifyMessageNext":   (*Engine).cVerifyMessageNext,
	"C_MessageVerifyFinal":  msgFinal(msgVerify),

	// The PKCS#11 3.2 additions (calls32.go).
	"C_EncapsulateKey":            (*Engine).cEncapsulateKey,
	"C_DecapsulateKey":            (*Engine).cDecapsulateKey,
	"C_VerifySignatureInit":       (*Engine).cVerifySignatureInit,
	"C_VerifySignature":           (*Engine).cVerifySignature,
	"C_VerifySignatureUpdate":     signVerifyUpdate(opVerifySignature),
	"C_VerifySignatureFinal":      (*Engine).cVerifySignatureFinal,
	"C_GetSessionValidationFlags": (*Engine).cGetSessionValidationFlags,
	"C_WrapKeyAuthenticated":      (*Engine).cWrapKeyAuthenticated,
	"C_UnwrapKeyAuthenticated":    (*Engine).cUnwrapKeyAuthenticated,
}

// in is a byte-string argument; a NULL one reads as empty.
func in(a *wire.Args, i int) []byte {
	b, _ := a.Bytes(i)
	return b
}

func (e *Engine) cGetSlotList(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	ids, err := e.slotList(ctx, app)
	if err != nil {
		return err
	}
	return ck.Err(r.OutUlongs(a.Out(1), ids))
}

func (e *Engine) cGetSlotInfo(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	info, err := e.slotInfo(ctx, app, a.Ulong(0))
	if err == nil {
		r.Struct(info)
	}
	return err
}

func (e *Engine) cGetTokenInfo(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	info, err := e.tokenInfo(ctx, app, a.Ulong(0))
	if err == nil {
		r.Struct(info)
	}
	return err
}

func (e *Engine) cGetMechanismList(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	list, err := e.mechanismList(ctx, app, a.Ulong(0))
	if err != nil {
		return err
	}
	return ck.Err(r.OutUlongs(a.Out(1), list))
}

func (e *Engine) cGetMechanismInfo(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	info, err := e.mechanismInfo(ctx, app, a.Ulong(0), a.Ulong(1))
	if err == nil {
		r.Struct(info)
	}
	return err
}

// cWaitForSlotEvent: slots never change under a client (a token created
// by C_InitToken or the administrator appears in the next slot list), so
// there is no event to report and none to wait for.
func (e *Engine) cWaitForSlotEvent(_ context.Context, _ *App, a *wire.Args, _ *wire.Results) error {
	if a.Ulong(0)&ck.CKF_DONT_BLOCK != 0 {
		return ck.Error(ck.CKR_NO_EVENT)
	}
	return ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
}

func (e *Engine) cInitToken(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	pin, null := a.Bytes(1)
	label, lnull := a.Label(2)
	if null || lnull {
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	return e.initToken(ctx, app, a.Ulong(0), pin, label)
}

func (e *Engine) cInitPIN(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	pin, null := a.Bytes(1)
	if null {
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	return e.initPIN(ctx, app, a.Ulong(0), pin)
}

func (e *Engine) cSetPIN(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	old, n1 := a.Bytes(1)
	nw, n2 := a.Bytes(2)
	if n1 || n2 {
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	return e.setPIN(ctx, app, a.Ulong(0), old, nw)
}

func (e *Engine) cOpenSession(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	h, err := e.openSession(ctx, app, a.Ulong(0), a.Ulong(1))
	if err == nil {
		r.Ulong(h)
	}
	return err
}

func (e *Engine) cCloseSession(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.closeSession(ctx, app, a.Ulong(0))
}

func (e *Engine) cCloseAllSessions(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.closeAllSessions(ctx, app, a.Ulong(0))
}

func (e *Engine) cGetSessionInfo(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	info, err := e.sessionInfo(ctx, app, a.Ulong(0))
	if err == nil {
		r.Struct(info)
	}
	return err
}

func (e *Engine) cSessionCancel(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return app.sessionCancel(a.Ulong(0), a.Ulong(1))
}

func (e *Engine) cLogin(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	pin, null := a.Bytes(2)
	return e.login(ctx, app, a.Ulong(0), a.Ulong(1), pin, null)
}

func (e *Engine) cLogout(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.logout(ctx, app, a.Ulong(0))
}

// newObject serves the calls that make one object from a template (the
// template's argument index) and return its handle.
func newObject(ti int, r *wire.Results, a *wire.Args, create func(t []attr) (uint64, error)) error {
	t, err := templ(a.Template(ti))
	if err != nil {
		return err
	}
	h, err := create(t)
	if err == nil {
		r.Ulong(h)
	}
	return err
}

func (e *Engine) cCreateObject(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(1, r, a, func(t []attr) (uint64, error) { return e.createObject(ctx, app, a.Ulong(0), t) })
}

func (e *Engine) cCopyObject(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(2, r, a, func(t []attr) (uint64, error) { return e.copyObject(ctx, app, a.Ulong(0), a.Ulong(1), t) })
}

func (e *Engine) cDestroyObject(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.destroyObject(ctx, app, a.Ulong(0), a.Ulong(1))
}

func (e *Engine) cGetObjectSize(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	n, err := e.objectSize(ctx, app, a.Ulong(0), a.Ulong(1))
	if err == nil {
		r.Ulong(n)
	}
	return err
}

func (e *Engine) cGetAttributeValue(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	answers, err := e.getAttributes(ctx, app, a.Ulong(0), a.Ulong(1), a.Query(2))
	if answers != nil {
		r.Answers(answers)
	}
	return err
}

func (e *Engine) cSetAttributeValue(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	t, err := templ(a.Template(2))
	if err != nil {
		return err
	}
	return e.setAttributes(ctx, app, a.Ulong(0), a.Ulong(1), t)
}

func (e *Engine) cFindObjectsInit(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	t, err := templ(a.Template(1))
	if err != nil {
		return err
	}
	return e.findObjectsInit(ctx, app, a.Ulong(0), t)
}

func (e *Engine) cFindObjects(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	hs, err := e.findObjects(ctx, app, a.Ulong(0), a.Max(1))
	if err == nil {
		r.Handles(hs)
	}
	return err
}

func (e *Engine) cFindObjectsFinal(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.findObjectsFinal(ctx, app, a.Ulong(0))
}

// opInit serves the Init calls that take a key.
func opInit(kind opKind) handler {
	return func(e *Engine, ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
		return e.opInit(ctx, app, a.Ulong(0), kind, a.Mechanism(1), a.Ulong(2))
	}
}

func crypt(kind opKind) handler {
	return func(e *Engine, _ context.Context, app *App, a *wire.Args, r *wire.Results) error {
		return app.crypt(a.Ulong(0), kind, in(a, 1), a.Out(2), r)
	}
}

func cryptUpdate(kind opKind) handler {
	return func(e *Engine, _ context.Context, app *App, a *wire.Args, r *wire.Results) error {
		return app.cryptUpdate(a.Ulong(0), kind, in(a, 1), a.Out(2), r, e.cfg.MaxOpBuffer)
	}
}

func cryptFinal(kind opKind) handler {
	return func(e *Engine, _ context.Context, app *App, a *wire.Args, r *wire.Results) error {
		return app.cryptFinal(a.Ulong(0), kind, a.Out(1), r)
	}
}

func signVerifyUpdate(kind opKind) handler {
	return func(e *Engine, _ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
		return app.signVerifyUpdate(a.Ulong(0), kind, in(a, 1))
	}
}

func (e *Engine) cDigestInit(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.opInit(ctx, app, a.Ulong(0), opDigest, a.Mechanism(1), 0)
}

func (e *Engine) cDigest(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return app.digest(a.Ulong(0), in(a, 1), a.Out(2), r)
}

func (e *Engine) cDigestUpdate(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return app.digestUpdate(a.Ulong(0), in(a, 1))
}

func (e *Engine) cDigestKey(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.digestKey(ctx, app, a.Ulong(0), a.Ulong(1))
}

func (e *Engine) cDigestFinal(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return app.digestFinal(a.Ulong(0), a.Out(1), r)
}

func (e *Engine) cSign(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return app.sign(a.Ulong(0), in(a, 1), a.Out(2), r)
}

func (e *Engine) cSignFinal(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return app.signFinal(a.Ulong(0), a.Out(1), r)
}

func (e *Engine) cVerify(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return app.verify(a.Ulong(0), in(a, 1), in(a, 2))
}

func (e *Engine) cVerifyFinal(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return app.verifyFinal(a.Ulong(0), in(a, 1))
}

func (e *Engine) cGenerateKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(2, r, a, func(t []attr) (uint64, error) { return e.generateKey(ctx, app, a.Ulong(0), a.Mechanism(1), t) })
}

func (e *Engine) cGenerateKeyPair(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	pt, err := templ(a.Template(2))
	if err != nil {
		return err
	}
	vt, err := templ(a.Template(3))
	if err != nil {
		return err
	}
	ph, vh, err := e.generateKeyPair(ctx, app, a.Ulong(0), a.Mechanism(1), pt, vt)
	if err == nil {
		r.Ulong(ph)
		r.Ulong(vh)
	}
	return err
}

func (e *Engine) cWrapKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.wrapKey(ctx, app, a.Ulong(0), a.Mechanism(1), a.Ulong(2), a.Ulong(3), a.Out(4), r)
}

func (e *Engine) cUnwrapKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(4, r, a, func(t []attr) (uint64, error) {
		return e.unwrapKey(ctx, app, a.Ulong(0), a.Mechanism(1), a.Ulong(2), in(a, 3), t)
	})
}

func (e *Engine) cDeriveKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(3, r, a, func(t []attr) (uint64, error) {
		return e.deriveKey(ctx, app, a.Ulong(0), a.Mechanism(1), a.Ulong(2), t)
	})
}

func (e *Engine) cSeedRandom(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.seedRandom(ctx, app, a.Ulong(0))
}

func (e *Engine) cGenerateRandom(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	b, err := e.generateRandom(ctx, app, a.Ulong(0), a.Filled(1))
	if err == nil {
		r.Filled(b)
	}
	return err
}

func msgInit(k msgKind) handler {
	return func(e *Engine, ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
		return e.msgInit(ctx, app, a.Ulong(0), k, a.Mechanism(1), a.Ulong(2))
	}
}

func msgFinal(k msgKind) handler {
	return func(_ *Engine, _ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
		return messageFinal(app, a.Ulong(0), k)
	}
}

func msgBegin(k msgKind) handler {
	return func(e *Engine, _ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
		return e.signVerifyMessageBegin(app, a.Ulong(0), k, a.MsgParam(1))
	}
}

func (e *Engine) cEncryptMessage(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.encryptMessage(ctx, app, a.Ulong(0), a.MsgParam(1), in(a, 2), in(a, 3), a.Out(4), r)
}

func (e *Engine) cEncryptMessageBegin(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.encryptMessageBegin(ctx, app, a.Ulong(0), a.MsgParam(1), in(a, 2), r)
}

func (e *Engine) cEncryptMessageNext(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.encryptMessageNext(app, a.Ulong(0), a.MsgParam(1), in(a, 2), a.Out(3), a.Ulong(4), r)
}

func (e *Engine) cDecryptMessage(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.decryptMessage(app, a.Ulong(0), a.MsgParam(1), in(a, 2), in(a, 3), a.Out(4), r)
}

func (e *Engine) cDecryptMessageBegin(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.decryptMessageBegin(app, a.Ulong(0), a.MsgParam(1), in(a, 2))
}

func (e *Engine) cDecryptMessageNext(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.decryptMessageNext(app, a.Ulong(0), a.MsgParam(1), in(a, 2), a.Out(3), a.Ulong(4), r)
}

func (e *Engine) cSignMessage(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return e.signMessage(app, a.Ulong(0), a.MsgParam(1), in(a, 2), a.Out(3), r)
}

func (e *Engine) cSignMessageNext(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	out, last := a.OptOut(3)
	return e.signMessageNext(app, a.Ulong(0), a.MsgParam(1), in(a, 2), out, last, r)
}

func (e *Engine) cVerifyMessage(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return e.verifyMessage(app, a.Ulong(0), a.MsgParam(1), in(a, 2), in(a, 3))
}

// cVerifyMessageNext: a NULL signature says more parts follow.
func (e *Engine) cVerifyMessageNext(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	sig, null := a.Bytes(3)
	return e.verifyMessageNext(app, a.Ulong(0), a.MsgParam(1), in(a, 2), sig, !null)
}

// notSupported answers the calls the token does not implement.
func notSupported(*Engine, context.Context, *App, *wire.Args, *wire.Results) error {
	return ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
}

// noMechanism answers the Inits of operations no mechanism here does
// (C_SignRecoverInit, C_VerifyRecoverInit): the session is checked, and
// any mechanism is one the token does not have for them.
func noMechanism(_ *Engine, _ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	if _, err := app.session(a.Ulong(0)); err != nil {
		return err
	}
	return ck.Error(ck.CKR_MECHANISM_INVALID)
}

// notInitialized answers the calls of those operations: none can have
// started.
func notInitialized(_ *Engine, _ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	if _, err := app.session(a.Ulong(0)); err != nil {
		return err
	}
	return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
}
