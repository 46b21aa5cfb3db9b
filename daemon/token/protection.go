package token

import (
	"context"

	"hsmemu/cryptoki/ck"
	"hsmemu/keystore"
)

// Key protection and tiers. A secret or private key is software-protected
// or HSM-protected (CKA_HSMEMU_PROTECTION). An HSM-protected key is
// CKA_SENSITIVE and not CKA_EXTRACTABLE for life: its value is never
// returned and never wrapped. Only premium tokens hold them, and there keys
// are HSM-protected unless the template asks otherwise: by asking for
// software protection, or for a key that is not sensitive or extractable.

// protect decides a new key's protection from its template (before the
// defaults fill it) and the token's tier.
func protect(m map[uint64][]byte, tier keystore.Tier) error {
	p, given := m[ck.CKA_HSMEMU_PROTECTION]
	sens, sensGiven := m[ck.CKA_SENSITIVE]
	extr, extrGiven := m[ck.CKA_EXTRACTABLE]
	looseAsked := (sensGiven && !isTrue(sens)) || (extrGiven && isTrue(extr))
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
			return ck.Errorf(ck.CKR_TEMPLATE_INCONSISTENT, "an HSM-protected key is sensitive and not extractable; the template asks otherwise")
		}
	case tier == keystore.TierPremium && !looseAsked:
		level = ck.CKP_HSMEMU_HSM
	}
	m[ck.CKA_HSMEMU_PROTECTION] = ulong(level)
	if level == ck.CKP_HSMEMU_HSM {
		m[ck.CKA_SENSITIVE] = vTrue
		m[ck.CKA_EXTRACTABLE] = vFalse
	}
	return nil
}

// tierOf returns the tier of a session's token. A token's tier is fixed
// when it is made, so the session keeps it after the first authenticated
// read instead of reading the token row at every key it creates.
func (e *Engine) tierOf(ctx context.Context, s *session) (keystore.Tier, error) {
	if t := s.tier.Load(); t != 0 {
		return keystore.Tier(t), nil
	}
	ti, err := e.store.Token(ctx, s.token)
	if err != nil {
		return 0, err
	}
	s.tier.Store(uint32(ti.Tier))
	return ti.Tier, nil
}
