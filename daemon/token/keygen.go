package token

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// Key generation, wrapping, unwrapping and derivation: the engine's side.
// The mechanism makes or transforms the material; the engine checks the
// templates, the keys' permissions and the wrapping policy, and stores the
// result like any other object.

// generateKey makes a secret key.
func (e *Engine) generateKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, tmpl []attr) (uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, err
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return 0, err
	}
	mc, ok := pol.mechs.Get(wm.Type)
	if !ok || !mc.Does(mech.Generate) {
		return 0, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	// A secret key, or DSA's domain parameters.
	m, class, kt, err := checkTemplate(tmpl, app.isSO(s), pol.legacy(), originGenerate, mc.GenClass(), mc.GenKeyType())
	if err != nil {
		return 0, err
	}
	add, err := mc.Generate(wm, m)
	if err != nil {
		return 0, err
	}
	maps.Copy(m, add)
	if err := completeObject(m, class, kt, originGenerate, wm.Type, nil, pol); err != nil {
		return 0, err
	}
	return e.keep(ctx, app, s, "generate", m, class, kt)
}

// generateKeyPair makes a public and a private key.
func (e *Engine) generateKeyPair(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, pubTmpl, privTmpl []attr) (uint64, uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, 0, err
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return 0, 0, err
	}
	mc, ok := pol.mechs.Get(wm.Type)
	if !ok || !mc.Does(mech.GeneratePair) {
		return 0, 0, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	so := app.isSO(s)
	pub, pc, pkt, err := checkTemplate(pubTmpl, so, pol.legacy(), originGenerate, ck.CKO_PUBLIC_KEY, mc.GenKeyType())
	if err != nil {
		return 0, 0, err
	}
	priv, vc, vkt, err := checkTemplate(privTmpl, so, pol.legacy(), originGenerate, ck.CKO_PRIVATE_KEY, mc.GenKeyType())
	if err != nil {
		return 0, 0, err
	}
	pubAdd, privAdd, err := mc.GeneratePair(wm, pub, priv)
	if err != nil {
		return 0, 0, err
	}
	maps.Copy(pub, pubAdd)
	maps.Copy(priv, privAdd)
	if err := completeObject(pub, pc, pkt, originGenerate, wm.Type, nil, pol); err != nil {
		return 0, 0, err
	}
	if err := completeObject(priv, vc, vkt, originGenerate, wm.Type, nil, pol); err != nil {
		return 0, 0, err
	}
	ph, err := e.keep(ctx, app, s, "generate", pub, pc, pkt)
	if err != nil {
		return 0, 0, err
	}
	vh, err := e.keep(ctx, app, s, "generate", priv, vc, vkt)
	if err != nil {
		// Do not leave half a pair behind.
		e.destroyObject(ctx, app, h, ph)
		return 0, 0, err
	}
	return ph, vh, nil
}

// wrapKey wraps a key under another, within the wrapping policy: the key
// must be extractable; one with CKA_WRAP_WITH_TRUSTED only under a trusted
// key; and the wrapping key's CKA_WRAP_TEMPLATE, if any, must match it.
func (e *Engine) wrapKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, wrappingHandle, keyHandle uint64, out wire.OutSpec, r *wire.Results) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	mechs, err := e.mechsOf(ctx, s)
	if err != nil {
		return err
	}
	mc, ok := mechs.Get(wm.Type)
	if !ok || !mc.Does(mech.Wrap) {
		return ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	wk, err := e.useKey(ctx, app, s, wrappingHandle, mc, wm.Type, ck.CKA_WRAP)
	if err != nil {
		return wrappingErr(err, ck.CKR_WRAPPING_KEY_HANDLE_INVALID, ck.CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
	}
	enc, err := e.wrappable(ctx, app, s, wk, keyHandle, "C_WrapKey")
	if err != nil {
		return err
	}
	wrapped, err := mc.Wrap(wk, wm, enc)
	wipe(enc)
	if err != nil {
		return err
	}
	return ck.Err(r.OutBytes(out, wrapped))
}

// wrappable checks that the key keyHandle may leave under wrapping key wk
// (C_WrapKey, C_WrapKeyAuthenticated) and returns its encoding, for the
// caller to wipe: the key must be a secret or private key and
// extractable; one with CKA_WRAP_WITH_TRUSTED goes only under a trusted
// key; and the wrapping key's CKA_WRAP_TEMPLATE, if any, must match it.
func (e *Engine) wrappable(ctx context.Context, app *App, s *session, wk *Object, keyHandle uint64, call string) ([]byte, error) {
	_, o, err := e.resolve(ctx, app, s, keyHandle)
	if err != nil {
		return nil, wrappingErr(err, ck.CKR_KEY_HANDLE_INVALID, 0)
	}
	if classMask(o.Class())&(mSecret|mPriv) == 0 {
		return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
	}
	if !o.Bool(ck.CKA_EXTRACTABLE) {
		e.log.Warn("wrap refused: the key is not extractable", "pid", app.PID)
		detail := ObjectDetail(keystore.UUID{}, o.Class(), o.All())
		delete(detail, "object")
		detail["call"] = call
		e.audit(ctx, actor(app, sessionRole(app, s)), s.token, "export.refused", detail)
		return nil, ck.Error(ck.CKR_KEY_UNEXTRACTABLE)
	}
	if o.Bool(ck.CKA_WRAP_WITH_TRUSTED) && !wk.Bool(ck.CKA_TRUSTED) {
		return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
	}
	if t, ok := wk.attrs.Get(ck.CKA_WRAP_TEMPLATE); ok && len(t) > 0 {
		want, err := keystore.DecodeAttributes(t)
		if err != nil || !o.matches(want) {
			return nil, ck.Error(ck.CKR_KEY_NOT_WRAPPABLE)
		}
	}
	return mech.EncodeKey(o)
}

// wrappingErr renames a key lookup's errors for the key's role in a wrap.
func wrappingErr(err error, handle, keyType uint64) error {
	code, _ := rvOf(err)
	switch {
	case code == ck.CKR_KEY_HANDLE_INVALID || code == ck.CKR_OBJECT_HANDLE_INVALID:
		return ck.Error(handle)
	case code == ck.CKR_KEY_TYPE_INCONSISTENT && keyType != 0:
		return ck.Error(keyType)
	}
	return err
}

func wipe(b []byte) { clear(b) }

// unwrappingKey is what C_UnwrapKey, C_DecapsulateKey and
// C_UnwrapKeyAuthenticated check first: the session, its tier's
// mechanism (allowed by does), and the key that opens the input, usable
// for need (CKA_UNWRAP or CKA_DECAPSULATE) without a context-specific
// login. A bad key handle or type is reported as the unwrapping key's.
func (e *Engine) unwrappingKey(ctx context.Context, app *App, h, typ, keyHandle, need uint64, does func(*mech.Mechanism) bool) (*session, policy, *mech.Mechanism, *Object, error) {
	s, err := app.session(h)
	if err != nil {
		return nil, policy{}, nil, nil, err
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return nil, policy{}, nil, nil, err
	}
	mc, ok := pol.mechs.Get(typ)
	if !ok || !does(mc) {
		return nil, policy{}, nil, nil, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	k, err := e.useKey(ctx, app, s, keyHandle, mc, typ, need)
	if err != nil {
		return nil, policy{}, nil, nil, wrappingErr(err, ck.CKR_UNWRAPPING_KEY_HANDLE_INVALID, ck.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
	}
	if k.needsContextLogin() {
		return nil, policy{}, nil, nil, ck.Error(ck.CKR_KEY_FUNCTION_NOT_PERMITTED)
	}
	return s, pol, mc, k, nil
}

// unwrapKey unwraps a key into a new object described by the template.
func (e *Engine) unwrapKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, unwrappingHandle uint64, wrapped []byte, tmpl []attr) (uint64, error) {
	s, pol, mc, uk, err := e.unwrappingKey(ctx, app, h, wm.Type, unwrappingHandle, ck.CKA_UNWRAP,
		func(mc *mech.Mechanism) bool { return mc.Does(mech.Unwrap) })
	if err != nil {
		return 0, err
	}
	return e.unwrapped(ctx, app, s, pol, uk, tmpl, func() ([]byte, error) {
		return mc.Unwrap(uk, wm, wrapped)
	})
}

// unwrapped makes the key an unwrap (C_UnwrapKey,
// C_UnwrapKeyAuthenticated) decrypts with open, under unwrapping key uk,
// from the caller's template.
func (e *Engine) unwrapped(ctx context.Context, app *App, s *session, pol policy, uk *Object, tmpl []attr, open func() ([]byte, error)) (uint64, error) {
	// The unwrapping key's CKA_UNWRAP_TEMPLATE is imposed on the new key,
	// before the template is checked, so every rule applies to it too.
	tmpl, err := impose(tmpl, uk, ck.CKA_UNWRAP_TEMPLATE)
	if err != nil {
		return 0, err
	}
	m, class, kt, err := checkTemplate(tmpl, app.isSO(s), pol.legacy(), originUnwrap, 0, noKeyType)
	if err != nil {
		return 0, err
	}
	plain, err := open()
	if err != nil {
		return 0, err
	}
	defer wipe(plain)
	add, err := mech.DecodeKey(plain, class, kt, m)
	if err != nil {
		return 0, err
	}
	for t, v := range add {
		if given, ok := m[t]; ok && string(given) != string(v) {
			return 0, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
		}
	}
	maps.Copy(m, add)
	if err := completeObject(m, class, kt, originUnwrap, 0, nil, pol); err != nil {
		return 0, err
	}
	return e.keep(ctx, app, s, "unwrap", m, class, kt)
}

// maxDerivedKey bounds a derived key's length.
const maxDerivedKey = 64 << 10

// impose adds a key's template attribute (CKA_UNWRAP_TEMPLATE,
// CKA_DERIVE_TEMPLATE) to a caller's template: a value the caller gives
// differently is CKR_TEMPLATE_INCONSISTENT.
func impose(tmpl []attr, o *Object, t uint64) ([]attr, error) {
	v, ok := o.attrs.Get(t)
	if !ok || len(v) == 0 {
		return tmpl, nil
	}
	imposed, err := keystore.DecodeAttributes(v)
	if err != nil {
		return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	out := slices.Clone(tmpl)
outer:
	for _, a := range imposed {
		for _, c := range tmpl {
			if c.Type == a.Type {
				if !bytes.Equal(c.Value, a.Value) {
					return nil, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
				}
				continue outer
			}
		}
		out = append(out, attr{Type: a.Type, Value: a.Value})
	}
	return out, nil
}

// deriveKey derives a secret key from a base key.
func (e *Engine) deriveKey(ctx context.Context, app *App, h uint64, wm *wire.Mechanism, baseHandle uint64, tmpl []attr) (uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, err
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return 0, err
	}
	mc, ok := pol.mechs.Get(wm.Type)
	if !ok || !mc.Does(mech.Derive) {
		return 0, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	base, err := e.useKey(ctx, app, s, baseHandle, mc, wm.Type, ck.CKA_DERIVE)
	if err != nil {
		return 0, err
	}
	if base.needsContextLogin() {
		return 0, ck.Error(ck.CKR_KEY_FUNCTION_NOT_PERMITTED)
	}
	if tmpl, err = impose(tmpl, base, ck.CKA_DERIVE_TEMPLATE); err != nil {
		return 0, err
	}
	so := app.isSO(s)
	m, class, kt, err := checkTemplate(tmpl, so, pol.legacy(), originDerive, ck.CKO_SECRET_KEY, noKeyType)
	if errors.Is(err, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)) {
		// No key type: a generic secret.
		tmpl = append(tmpl, attr{Type: ck.CKA_KEY_TYPE, Value: ulong(ck.CKK_GENERIC_SECRET)})
		m, class, kt, err = checkTemplate(tmpl, so, pol.legacy(), originDerive, ck.CKO_SECRET_KEY, noKeyType)
	}
	if err != nil {
		return 0, err
	}
	length := 0
	if v, ok := m[ck.CKA_VALUE_LEN]; ok {
		n := ulongOf(v)
		if n > maxDerivedKey {
			return 0, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		length = int(n)
	}
	// Key types of a fixed length say it themselves (DES, DES2, DES3 and
	// ChaCha20 keys have no CKA_VALUE_LEN).
	switch {
	case kt == ck.CKK_CHACHA20 && length == 0:
		length = 32
	case desKeyLen(kt) != 0:
		length = desKeyLen(kt)
	case kt == ck.CKK_AES && length == 0:
		return 0, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	value, err := mc.Derive(base, wm, length)
	if err != nil {
		return 0, err
	}
	if desKeyLen(kt) != 0 {
		// A derived DES key gets its parity bits set, as DES keys have.
		mech.SetDESParity(value)
	}
	m[ck.CKA_VALUE] = value
	if err := completeObject(m, class, kt, originDerive, 0, base, pol); err != nil {
		return 0, err
	}
	return e.keep(ctx, app, s, "derive", m, class, kt)
}
