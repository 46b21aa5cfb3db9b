package token

import (
	"context"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// Key protection and tiers. A secret or private key is software-protected
// or HSM-protected (CKA_HSMEMU_PROTECTION). An HSM-protected key is
// CKA_SENSITIVE and not CKA_EXTRACTABLE for life: its value is never
// returned and never wrapped. It is also CKA_PRIVATE: usable only by the
// token's logged-in user, and sealed under the token's data key, which
// only a PIN opens; a public key's secret is sealed under the token's KEK,
// which the TPM derives for anyone who can use it. Only premium tokens
// hold them, and there keys are HSM-protected unless the template asks
// otherwise: by asking for software protection, or for a key that is not
// sensitive, extractable or not private.

// protect decides a new key's protection from its template (before the
// defaults fill it) and the token's tier.
func protect(m map[uint64][]byte, tier keystore.Tier) error {
	p, given := m[ck.CKA_HSMEMU_PROTECTION]
	sens, sensGiven := m[ck.CKA_SENSITIVE]
	extr, extrGiven := m[ck.CKA_EXTRACTABLE]
	priv, privGiven := m[ck.CKA_PRIVATE]
	looseAsked := (sensGiven && !isTrue(sens)) || (extrGiven && isTrue(extr)) || (privGiven && !isTrue(priv))
	level := uint64(ck.CKP_HSMEMU_SOFTWARE)
	switch {
	case given:
		level = ulongOf(p)
		if level != ck.CKP_HSMEMU_SOFTWARE && level != ck.CKP_HSMEMU_HSM {
			return ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
		if level == ck.CKP_HSMEMU_HSM && tier != keystore.TierPremium {
			return ck.Errorf(ck.CKR_TEMPLATE_INCONSISTENT, "an HSM-protected key needs a premium token; this token is %s", tier)
		}
		if level == ck.CKP_HSMEMU_HSM && looseAsked {
			return ck.Errorf(ck.CKR_TEMPLATE_INCONSISTENT, "an HSM-protected key is sensitive, private and not extractable; the template asks otherwise")
		}
	case tier == keystore.TierPremium && !looseAsked:
		level = ck.CKP_HSMEMU_HSM
	}
	m[ck.CKA_HSMEMU_PROTECTION] = ulong(level)
	if level == ck.CKP_HSMEMU_HSM {
		m[ck.CKA_SENSITIVE] = vTrue
		m[ck.CKA_EXTRACTABLE] = vFalse
		m[ck.CKA_PRIVATE] = vTrue
	}
	return nil
}

// tierOf returns the policy of a session's token: its tier and its
// mechanism table. A token's tier is fixed when it is made, so the session
// keeps it after the first authenticated read instead of reading the
// token row at every key it creates.
func (e *Engine) tierOf(ctx context.Context, s *session) (policy, error) {
	if t := s.tier.Load(); t != 0 {
		return e.policyOf(keystore.Tier(t)), nil
	}
	ti, err := e.store.Token(ctx, s.token)
	if err != nil {
		return policy{}, err
	}
	s.tier.Store(uint32(ti.Tier))
	return e.policyOf(ti.Tier), nil
}

// policyOf is the policy of a token of the given tier.
func (e *Engine) policyOf(tier keystore.Tier) policy {
	return policy{tier: tier, mechs: e.mechsFor(tier)}
}

// mechsFor is the mechanism table of a token of the given tier: the
// legacy one when the daemon runs with the legacy policy and the token is
// not premium, which never allows the legacy algorithms.
func (e *Engine) mechsFor(tier keystore.Tier) *mech.Table {
	if e.legacy != nil && tier != keystore.TierPremium {
		return e.legacy
	}
	return e.mechs
}

// mechsOf is the mechanism table of a session's token. Without the
// legacy policy every token has the modern table, and the token's tier
// is not read.
func (e *Engine) mechsOf(ctx context.Context, s *session) (*mech.Table, error) {
	if e.legacy == nil {
		return e.mechs, nil
	}
	pol, err := e.tierOf(ctx, s)
	if err != nil {
		return nil, err
	}
	return pol.mechs, nil
}

// slotMechs is the mechanism table of a slot's token; the free slot's is
// that of the tier C_InitToken gives new tokens.
func (e *Engine) slotMechs(ctx context.Context, app *App, slot uint64) (*mech.Table, error) {
	if slot == freeSlot {
		if !scopeOf(app).seesFree() {
			return nil, ck.Error(ck.CKR_SLOT_ID_INVALID)
		}
		return e.mechsFor(e.cfg.DefaultTier), nil
	}
	ti, err := e.token(ctx, app, slot)
	if err != nil {
		return nil, err
	}
	return e.mechsFor(ti.Tier), nil
}
