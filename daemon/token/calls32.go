package token

import (
	"bytes"
	"context"
	"errors"
	"maps"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// The calls PKCS#11 3.2 adds: key encapsulation (C_EncapsulateKey,
// C_DecapsulateKey), verification with the signature first
// (C_VerifySignatureInit and kin), C_GetSessionValidationFlags, and
// authenticated wrapping with AES-GCM (C_WrapKeyAuthenticated,
// C_UnwrapKeyAuthenticated). The asynchronous calls are the module's.

func (e *Engine) cEncapsulateKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	t, err := templ(a.Template(3))
	if err != nil {
		return err
	}
	return e.encapsulateKey(ctx, app, a.Ulong(0), a.Mechanism(1), a.Ulong(2), t, a.Out(4), r)
}

func (e *Engine) cDecapsulateKey(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	return newObject(3, r, a, func(t []attr) (uint64, error) {
		return e.decapsulateKey(ctx, app, a.Ulong(0), a.Mechanism(1), a.Ulong(2), t, in(a, 4))
	})
}

// kemTemplate checks the template of the key a KEM makes: a secret key,
// a generic secret unless it says otherwise, whose value is the shared
// secret. Like an unwrapped key, it was never only the token's
// (C_EncapsulateKey: CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE
// false, CKA_LOCAL false).
func kemTemplate(tmpl []attr, so bool, pol policy) (map[uint64][]byte, uint64, uint64, error) {
	m, class, kt, err := checkTemplate(tmpl, so, pol.legacy(), originUnwrap, ck.CKO_SECRET_KEY, noKeyType)
	if errors.Is(err, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)) {
		tmpl = append(tmpl, attr{Type: ck.CKA_KEY_TYPE, Value: ulong(ck.CKK_GENERIC_SECRET)})
		m, class, kt, err = checkTemplate(tmpl, so, pol.legacy(), originUnwrap, ck.CKO_SECRET_KEY, noKeyType)
	}
	return m, class, kt, err
}

// kemKey completes the new key with the shared secret: a template's
// CKA_VALUE_LEN must be the secret's length (ML-KEM's secrets are 32
// bytes, an AES-256 key).
func kemKey(m map[uint64][]byte, class, kt uint64, secret []byte, pol policy) error {
	if v, ok := m[ck.CKA_VALUE_LEN]; ok && ulongOf(v) != uint64(len(secret)) {
		return ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	delete(m, ck.CKA_VALUE_LEN)
	m[ck.CKA_VALUE] = secret
	return completeObject(m, class, kt, originUnwrap, 0, nil, pol)
}

// encapsulable holds the key C_EncapsulateKey would make to the public
// key's CKA_ENCAPSULATE_TEMPLATE, as CKA_WRAP_TEMPLATE holds a key to be
// wrapped: every attribute of it must match the new key, complete with
// its defaults, which is checked before anything is encapsulated (a
// placeholder stands for the secret; no template can name CKA_VALUE). A
// key that does not match is CKR_KEY_HANDLE_INVALID (PKCS#11 3.2,
// C_EncapsulateKey).
func encapsulable(pub *Object, m map[uint64][]byte, class, kt uint64, pol policy) error {
	t, ok := pub.attrs.Get(ck.CKA_ENCAPSULATE_TEMPLATE)
	if !ok || len(t) == 0 {
		return nil
	}
	want, err := keystore.DecodeAttributes(t)
	if err != nil {
		return ck.Error(ck.CKR_KEY_HANDLE_INVALID)
	}
	trial := maps.Clone(m)
	if err := kemKey(trial, class, kt, make([]byte, 32), pol); err != nil {
		return err
	}
	o, err := split(trial, class, kt)
	if err != nil {
		return err
	}
	if !o.matches(want) {
		return ck.Error(ck.CKR_KEY_HANDLE_INVALID)
	}
	return nil
}

// encapsulateKey is C_EncapsulateKey. A NULL or short ciphertext buffer
// asks for the length only: no key is made (the handle returned is
// CK_INVALID_HANDLE).
func (e *Engine) encapsulateKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, pubHandle uint64, tmpl []attr, out wire.OutSpec, r *wire.Results) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return err
	}
	mc, ok := pol.mechs.Get(wm.Type)
	if !ok || !mc.Does(mech.Encapsulate) {
		return ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	pub, err := e.useKey(ctx, app, s, pubHandle, mc, wm.Type, ck.CKA_ENCAPSULATE)
	if err != nil {
		return err
	}
	m, class, kt, err := kemTemplate(tmpl, app.isSO(s), pol)
	if err != nil {
		return err
	}
	if err := encapsulable(pub, m, class, kt, pol); err != nil {
		return err
	}
	n, err := mc.CiphertextLen(pub)
	if err != nil {
		return err
	}
	if !out.Present || out.Capacity < uint64(n) {
		rv := r.OutBytes(out, make([]byte, n))
		r.Ulong(0) // CK_INVALID_HANDLE
		return ck.Err(rv)
	}
	ct, secret, err := mc.Encapsulate(pub, wm)
	if err != nil {
		return err
	}
	if err := kemKey(m, class, kt, secret, pol); err != nil {
		return err
	}
	k, err := e.keep(ctx, app, s, "encapsulate", m, class, kt)
	if err != nil {
		return err
	}
	r.OutBytes(out, ct)
	r.Ulong(k)
	return nil
}

// decapsulateKey is C_DecapsulateKey.
func (e *Engine) decapsulateKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, privHandle uint64, tmpl []attr, ct []byte) (uint64, error) {
	s, pol, mc, priv, err := e.unwrappingKey(ctx, app, h, wm.Type, privHandle, ck.CKA_DECAPSULATE,
		func(mc *mech.Mechanism) bool { return mc.Does(mech.Decapsulate) })
	if err != nil {
		return 0, err
	}
	// The private key's CKA_DECAPSULATE_TEMPLATE is imposed on the new
	// key as an unwrapping key's CKA_UNWRAP_TEMPLATE is.
	tmpl, err = impose(tmpl, priv, ck.CKA_DECAPSULATE_TEMPLATE)
	if err != nil {
		return 0, err
	}
	m, class, kt, err := kemTemplate(tmpl, app.isSO(s), pol)
	if err != nil {
		return 0, err
	}
	secret, err := mc.Decapsulate(priv, wm, ct)
	if err != nil {
		return 0, err
	}
	if err := kemKey(m, class, kt, secret, pol); err != nil {
		return 0, err
	}
	return e.keep(ctx, app, s, "decapsulate", m, class, kt)
}

func (e *Engine) cVerifySignatureInit(ctx context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	h := a.Ulong(0)
	if err := e.opInit(ctx, app, h, opVerifySignature, a.Mechanism(1), a.Ulong(2)); err != nil {
		return err
	}
	sig := bytes.Clone(in(a, 3))
	return withOp(app, h, opVerifySignature, func(op *operation) (bool, error) {
		op.sig = sig
		return false, nil
	})
}

// cVerifySignature is C_VerifySignature: the data in one part, checked
// against the signature C_VerifySignatureInit gave. It ends the
// operation, whatever the outcome.
func (e *Engine) cVerifySignature(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	data := in(a, 1)
	return withOp(app, a.Ulong(0), opVerifySignature, func(op *operation) (bool, error) {
		if op.parts {
			return true, ck.Error(ck.CKR_OPERATION_ACTIVE)
		}
		if err := op.signer.Update(data); err != nil {
			return true, err
		}
		return true, op.signer.Verify(op.sig)
	})
}

func (e *Engine) cVerifySignatureFinal(_ context.Context, app *App, a *wire.Args, _ *wire.Results) error {
	return withOp(app, a.Ulong(0), opVerifySignature, func(op *operation) (bool, error) {
		if op.singlePart() {
			return true, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
		}
		return true, op.signer.Verify(op.sig)
	})
}

// cGetSessionValidationFlags: hsmemu's operations are not validated
// (no FIPS 140 or Common Criteria validation stands behind them), so
// CKS_LAST_VALIDATION_OK is never set.
func (e *Engine) cGetSessionValidationFlags(_ context.Context, app *App, a *wire.Args, r *wire.Results) error {
	if _, err := app.session(a.Ulong(0)); err != nil {
		return err
	}
	if a.Ulong(1) != ck.CKS_LAST_VALIDATION_OK {
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	r.Ulong(0)
	return nil
}

func (e *Engine) cWrapKeyAuthenticated(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	typ, p := a.MsgMechanism(1)
	return e.wrapKeyAuthenticated(ctx, app, a.Ulong(0), typ, p, a.Ulong(2), a.Ulong(3), in(a, 4), a.Out(5), r)
}

func (e *Engine) cUnwrapKeyAuthenticated(ctx context.Context, app *App, a *wire.Args, r *wire.Results) error {
	typ, p := a.MsgMechanism(1)
	return newObject(4, r, a, func(t []attr) (uint64, error) {
		return e.unwrapKeyAuthenticated(ctx, app, a.Ulong(0), typ, p, a.Ulong(2), in(a, 3), t, in(a, 5))
	})
}

// authWrapping says whether mechanism typ wraps authenticated: AES-GCM,
// the one of PKCS#11 3.2's two (AES-CCM the other) the token has.
// ChaCha20-Poly1305 is a message cipher too, but 3.2 defines no
// authenticated wrap with it.
func authWrapping(typ uint64, mc *mech.Mechanism, f mech.Func) bool {
	return typ == ck.CKM_AES_GCM && mc.Does(f)
}

// wrapKeyAuthenticated is C_WrapKeyAuthenticated (PKCS#11 3.2, "AES-GCM
// authenticated wrap / unwrap"): the key's encoding, as C_WrapKey's, is
// sealed with an AEAD's message mechanism under the wrapping key and the
// associated data; the IV the token makes and the tag go back in the
// mechanism's CK_GCM_MESSAGE_PARAMS, the ciphertext in pWrappedKey. The
// IV rules are C_EncryptMessage's (the token makes every IV). A NULL or
// short buffer asks for the length only: nothing is sealed, no IV is
// used up and the parameter is not written.
//
// A prefetch (a NULL buffer asking for the whole result, from protocol
// version 6, calls.Prefetches) is sealed as the real call is, using up
// one IV of the token's, and gets the ciphertext with the IV and the tag:
// the module holds them and hands them over to the follow-up that brings
// the same mechanism, parameter, keys and associated data. There is no
// operation to keep, as for C_WrapKey: a follow-up with any other
// argument comes here and is sealed anew, under a new IV, so an IV never
// seals two inputs. One whose IV and tag would not fit the caller's
// parameter, or whose ciphertext is past wire.MaxPrefetch, is a plain
// size query (no IV used up), and its follow-up comes here.
func (e *Engine) wrapKeyAuthenticated(ctx context.Context, app *App, h, typ uint64, p *wire.Param, wrappingHandle, keyHandle uint64, aad []byte, out wire.OutSpec, r *wire.Results) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	mechs, err := e.mechsOf(ctx, s)
	if err != nil {
		return err
	}
	mc, ok := mechs.Get(typ)
	if !ok || !authWrapping(typ, mc, mech.MessageEncrypt) {
		return ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	ref, wk, err := e.useKeyRef(ctx, app, s, wrappingHandle, mc, typ, ck.CKA_WRAP)
	if err != nil {
		return wrappingErr(err, ck.CKR_WRAPPING_KEY_HANDLE_INVALID, ck.CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
	}
	ciph, err := mc.MessageCipher(wk, true)
	if err != nil {
		return wrappingErr(err, ck.CKR_WRAPPING_KEY_HANDLE_INVALID, ck.CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
	}
	mp, err := ciph.Params(p, true)
	if err != nil {
		return err
	}
	enc, err := e.wrappable(ctx, app, s, wk, keyHandle, "C_WrapKeyAuthenticated")
	if err != nil {
		return err
	}
	defer wipe(enc)
	if out.Prefetch && !out.Present && (len(enc) > wire.MaxPrefetch ||
		!wire.MsgOutFits(p, map[string][]byte{"pIv": make([]byte, len(mp.IV)), "pTag": make([]byte, mp.TagLen)})) {
		out.Prefetch = false
	}
	if !fits(out, len(enc)) && !out.Prefetch {
		r.MsgOut(p, nil)
		return ck.Err(r.OutBytes(out, make([]byte, len(enc))))
	}
	var iv []byte
	switch mp.Gen {
	case mech.IVCounter:
		if !hasIVCounter(wk) {
			return ck.Error(ck.CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
		}
		ivs, err := e.ivCounterOf(ctx, app, ref, wk)
		if err != nil {
			return err
		}
		c, err := ivs.take(ctx)
		if err != nil {
			return err
		}
		iv = mech.CounterIV(mp, c)
	case mech.IVRandom:
		iv = mech.RandomIV(mp)
	default:
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	ct, tag, err := ciph.Seal(mp, iv, aad, enc)
	if err != nil {
		return err
	}
	outs := map[string][]byte{"pIv": iv, "pTag": tag}
	if !wire.MsgOutFits(p, outs) {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	r.MsgOut(p, outs)
	return ck.Err(r.OutBytes(out, ct))
}

// unwrapKeyAuthenticated is C_UnwrapKeyAuthenticated: the IV and the tag
// come in the mechanism's parameter. A tag that does not match the
// wrapped key and the associated data is CKR_WRAPPED_KEY_INVALID, the
// call's code for it (CKR_AEAD_DECRYPT_FAILED is not among its return
// values).
func (e *Engine) unwrapKeyAuthenticated(ctx context.Context, app *App, h, typ uint64, p *wire.Param, unwrappingHandle uint64, wrapped []byte, tmpl []attr, aad []byte) (uint64, error) {
	s, pol, mc, uk, err := e.unwrappingKey(ctx, app, h, typ, unwrappingHandle, ck.CKA_UNWRAP,
		func(mc *mech.Mechanism) bool { return authWrapping(typ, mc, mech.MessageDecrypt) })
	if err != nil {
		return 0, err
	}
	ciph, err := mc.MessageCipher(uk, false)
	if err != nil {
		return 0, wrappingErr(err, ck.CKR_UNWRAPPING_KEY_HANDLE_INVALID, ck.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
	}
	mp, err := ciph.Params(p, false)
	if err != nil {
		return 0, err
	}
	if mp.Tag == nil {
		return 0, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return e.unwrapped(ctx, app, s, pol, uk, tmpl, func() ([]byte, error) {
		plain, err := ciph.Open(mp, mp.IV, aad, wrapped, mp.Tag)
		if c, _ := rvOf(err); c == ck.CKR_AEAD_DECRYPT_FAILED {
			return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		return plain, err
	})
}
