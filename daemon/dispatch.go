package daemon

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
	code, err := e.dispatch(ctx, app, a, r)
	if err != nil {
		var known bool
		code, known = rvOf(err)
		var r *refused
		switch {
		case !known:
			e.log.Error("call failed", "call", a.Call().Name, "pid", app.PID, "err", err)
		case errors.As(err, &r):
			e.log.Info("call refused", "call", a.Call().Name, "pid", app.PID, "why", r.why)
		}
		if errors.Is(err, keystore.ErrTampered) {
			e.audit(ctx, actor(app, ""), keystore.UUID{}, "tamper.detected", map[string]string{"call": a.Call().Name})
		}
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
				return nil, rv(ck.CKR_TEMPLATE_INCONSISTENT)
			}
			out[i].Value = attrs.Encode()
		case a.Null:
			if len(a.Value) != 0 {
				return nil, rv(ck.CKR_ATTRIBUTE_VALUE_INVALID)
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

func (e *Engine) dispatch(ctx context.Context, app *App, a *wire.Args, r *wire.Results) (uint64, error) {
	c := a.Call()
	switch c.Name {
	case "C_GetSlotList":
		ids, err := e.SlotList(ctx)
		if err != nil {
			return 0, err
		}
		return r.OutUlongs(a.Out(1), ids), nil
	case "C_GetSlotInfo":
		info, err := e.SlotInfo(ctx, a.Ulong(0))
		if err != nil {
			return 0, err
		}
		r.Struct(info)
		return ck.CKR_OK, nil
	case "C_GetTokenInfo":
		info, err := e.TokenInfo(ctx, a.Ulong(0))
		if err != nil {
			return 0, err
		}
		r.Struct(info)
		return ck.CKR_OK, nil
	case "C_GetMechanismList":
		list, err := e.MechanismList(ctx, a.Ulong(0))
		if err != nil {
			return 0, err
		}
		return r.OutUlongs(a.Out(1), list), nil
	case "C_GetMechanismInfo":
		info, err := e.MechanismInfo(ctx, a.Ulong(0), a.Ulong(1))
		if err != nil {
			return 0, err
		}
		r.Struct(info)
		return ck.CKR_OK, nil
	case "C_WaitForSlotEvent":
		if a.Ulong(0)&ck.CKF_DONT_BLOCK != 0 {
			return ck.CKR_NO_EVENT, nil
		}
		return ck.CKR_FUNCTION_NOT_SUPPORTED, nil
	case "C_InitToken":
		pin, null := a.Bytes(1)
		label, lnull := a.Label(2)
		if null || lnull {
			return ck.CKR_ARGUMENTS_BAD, nil
		}
		return ck.CKR_OK, e.InitToken(ctx, app, a.Ulong(0), pin, label)
	case "C_InitPIN":
		pin, null := a.Bytes(1)
		if null {
			return ck.CKR_ARGUMENTS_BAD, nil
		}
		return ck.CKR_OK, e.InitPIN(ctx, app, a.Ulong(0), pin)
	case "C_SetPIN":
		old, n1 := a.Bytes(1)
		nw, n2 := a.Bytes(2)
		if n1 || n2 {
			return ck.CKR_ARGUMENTS_BAD, nil
		}
		return ck.CKR_OK, e.SetPIN(ctx, app, a.Ulong(0), old, nw)
	case "C_OpenSession":
		h, err := e.OpenSession(ctx, app, a.Ulong(0), a.Ulong(1))
		if err != nil {
			return 0, err
		}
		r.Ulong(h)
		return ck.CKR_OK, nil
	case "C_CloseSession":
		return ck.CKR_OK, e.CloseSession(ctx, app, a.Ulong(0))
	case "C_CloseAllSessions":
		return ck.CKR_OK, e.CloseAllSessions(ctx, app, a.Ulong(0))
	case "C_GetSessionInfo":
		info, err := e.SessionInfo(ctx, app, a.Ulong(0))
		if err != nil {
			return 0, err
		}
		r.Struct(info)
		return ck.CKR_OK, nil
	case "C_Login":
		pin, null := a.Bytes(2)
		return ck.CKR_OK, e.Login(ctx, app, a.Ulong(0), a.Ulong(1), pin, null)
	case "C_Logout":
		return ck.CKR_OK, e.Logout(ctx, app, a.Ulong(0))
	case "C_CreateObject":
		t, err := templ(a.Template(1))
		if err != nil {
			return 0, err
		}
		h, err := e.CreateObject(ctx, app, a.Ulong(0), t)
		if err != nil {
			return 0, err
		}
		r.Ulong(h)
		return ck.CKR_OK, nil
	case "C_CopyObject":
		t, err := templ(a.Template(2))
		if err != nil {
			return 0, err
		}
		h, err := e.CopyObject(ctx, app, a.Ulong(0), a.Ulong(1), t)
		if err != nil {
			return 0, err
		}
		r.Ulong(h)
		return ck.CKR_OK, nil
	case "C_DestroyObject":
		return ck.CKR_OK, e.DestroyObject(ctx, app, a.Ulong(0), a.Ulong(1))
	case "C_GetObjectSize":
		n, err := e.ObjectSize(ctx, app, a.Ulong(0), a.Ulong(1))
		if err != nil {
			return 0, err
		}
		r.Ulong(n)
		return ck.CKR_OK, nil
	case "C_GetAttributeValue":
		answers, code, err := e.GetAttributes(ctx, app, a.Ulong(0), a.Ulong(1), a.Query(2))
		if err != nil {
			return 0, err
		}
		r.Answers(answers)
		return code, nil
	case "C_SetAttributeValue":
		t, err := templ(a.Template(2))
		if err != nil {
			return 0, err
		}
		return ck.CKR_OK, e.SetAttributes(ctx, app, a.Ulong(0), a.Ulong(1), t)
	case "C_FindObjectsInit":
		t, err := templ(a.Template(1))
		if err != nil {
			return 0, err
		}
		return ck.CKR_OK, e.FindObjectsInit(ctx, app, a.Ulong(0), t)
	case "C_FindObjects":
		hs, err := e.FindObjects(ctx, app, a.Ulong(0), a.Max(1))
		if err != nil {
			return 0, err
		}
		r.Handles(hs)
		return ck.CKR_OK, nil
	case "C_FindObjectsFinal":
		return ck.CKR_OK, e.FindObjectsFinal(ctx, app, a.Ulong(0))
	case "C_GenerateRandom":
		b, err := e.GenerateRandom(ctx, app, a.Ulong(0), a.Filled(1))
		if err != nil {
			return 0, err
		}
		r.Filled(b)
		return ck.CKR_OK, nil
	case "C_SeedRandom":
		return ck.CKR_OK, e.SeedRandom(ctx, app, a.Ulong(0))
	}
	if code, handled, err := e.dispatchOps(ctx, app, a, r); handled {
		return code, err
	}
	return e.noMechanisms(app, c, a)
}

// opOf maps the Init calls to their kind of operation.
var opOf = map[string]opKind{
	"C_EncryptInit": opEncrypt, "C_DecryptInit": opDecrypt, "C_DigestInit": opDigest,
	"C_SignInit": opSign, "C_VerifyInit": opVerify,
}

// dispatchOps serves the calls of operations in progress.
func (e *Engine) dispatchOps(ctx context.Context, app *App, a *wire.Args, r *wire.Results) (code uint64, handled bool, err error) {
	h := func() uint64 { return a.Ulong(0) }
	in := func(i int) []byte { b, _ := a.Bytes(i); return b }
	switch name := a.Call().Name; name {
	case "C_EncryptInit", "C_DecryptInit", "C_SignInit", "C_VerifyInit":
		return ck.CKR_OK, true, e.OpInit(ctx, app, h(), opOf[name], a.Mechanism(1), a.Ulong(2))
	case "C_DigestInit":
		return ck.CKR_OK, true, e.OpInit(ctx, app, h(), opDigest, a.Mechanism(1), 0)
	case "C_Encrypt":
		code, err = e.Crypt(app, h(), opEncrypt, in(1), a.Out(2), r)
		return code, true, err
	case "C_Decrypt":
		code, err = e.Crypt(app, h(), opDecrypt, in(1), a.Out(2), r)
		return code, true, err
	case "C_EncryptUpdate":
		code, err = e.CryptUpdate(app, h(), opEncrypt, in(1), a.Out(2), r)
		return code, true, err
	case "C_DecryptUpdate":
		code, err = e.CryptUpdate(app, h(), opDecrypt, in(1), a.Out(2), r)
		return code, true, err
	case "C_EncryptFinal":
		code, err = e.CryptFinal(app, h(), opEncrypt, a.Out(1), r)
		return code, true, err
	case "C_DecryptFinal":
		code, err = e.CryptFinal(app, h(), opDecrypt, a.Out(1), r)
		return code, true, err
	case "C_Digest":
		code, err = e.Digest(app, h(), in(1), a.Out(2), r)
		return code, true, err
	case "C_DigestUpdate":
		return ck.CKR_OK, true, e.DigestUpdate(app, h(), in(1))
	case "C_DigestKey":
		return ck.CKR_OK, true, e.DigestKey(ctx, app, h(), a.Ulong(1))
	case "C_DigestFinal":
		code, err = e.DigestFinal(app, h(), a.Out(1), r)
		return code, true, err
	case "C_Sign":
		code, err = e.Sign(app, h(), in(1), a.Out(2), r)
		return code, true, err
	case "C_SignUpdate":
		return ck.CKR_OK, true, e.SignVerifyUpdate(app, h(), opSign, in(1))
	case "C_SignFinal":
		code, err = e.SignFinal(app, h(), a.Out(1), r)
		return code, true, err
	case "C_Verify":
		return ck.CKR_OK, true, e.Verify(app, h(), in(1), in(2))
	case "C_VerifyUpdate":
		return ck.CKR_OK, true, e.SignVerifyUpdate(app, h(), opVerify, in(1))
	case "C_GenerateKey":
		t, err := templ(a.Template(2))
		if err != nil {
			return 0, true, err
		}
		kh, err := e.GenerateKey(ctx, app, h(), a.Mechanism(1), t)
		if err == nil {
			r.Ulong(kh)
		}
		return ck.CKR_OK, true, err
	case "C_GenerateKeyPair":
		pt, err := templ(a.Template(2))
		if err != nil {
			return 0, true, err
		}
		vt, err := templ(a.Template(3))
		if err != nil {
			return 0, true, err
		}
		ph, vh, err := e.GenerateKeyPair(ctx, app, h(), a.Mechanism(1), pt, vt)
		if err == nil {
			r.Ulong(ph)
			r.Ulong(vh)
		}
		return ck.CKR_OK, true, err
	case "C_WrapKey":
		code, err = e.WrapKey(ctx, app, h(), a.Mechanism(1), a.Ulong(2), a.Ulong(3), a.Out(4), r)
		return code, true, err
	case "C_UnwrapKey":
		t, err := templ(a.Template(4))
		if err != nil {
			return 0, true, err
		}
		kh, err := e.UnwrapKey(ctx, app, h(), a.Mechanism(1), a.Ulong(2), in(3), t)
		if err == nil {
			r.Ulong(kh)
		}
		return ck.CKR_OK, true, err
	case "C_DeriveKey":
		t, err := templ(a.Template(3))
		if err != nil {
			return 0, true, err
		}
		kh, err := e.DeriveKey(ctx, app, h(), a.Mechanism(1), a.Ulong(2), t)
		if err == nil {
			r.Ulong(kh)
		}
		return ck.CKR_OK, true, err
	case "C_VerifyFinal":
		return ck.CKR_OK, true, e.VerifyFinal(app, h(), in(1))
	}
	return 0, false, nil
}

// noMechanisms answers the cryptographic calls no mechanism implements
// yet: an Init names a mechanism the token does not have for it, and
// nothing can be in progress. Everything else is not supported.
func (e *Engine) noMechanisms(app *App, c *calls.Call, a *wire.Args) (uint64, error) {
	code := uint64(ck.CKR_FUNCTION_NOT_SUPPORTED)
	switch c.Name {
	case "C_SignRecoverInit", "C_VerifyRecoverInit":
		code = ck.CKR_MECHANISM_INVALID
	case "C_SignRecover", "C_VerifyRecover":
		code = ck.CKR_OPERATION_NOT_INITIALIZED
	default:
		return code, nil
	}
	if _, err := app.session(a.Ulong(0)); err != nil {
		return 0, err
	}
	return code, nil
}
