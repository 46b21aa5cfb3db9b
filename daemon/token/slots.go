package token

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// Slots. Slot 0 always holds a fresh, uninitialised token: C_InitToken on
// it creates a new token, which appears in a slot of its own. A token's
// slot id is its keystore row id, stable across restarts and never reused.
//
// The slot list names the initialised tokens first, in the order they
// were made, and the free slot last, as SoftHSMv2 does: clients that take
// "the first slot with a token" (many test programs, p11-kit's server
// given a token URI) then get a token they can open a session on.

const freeSlot = 0

var version = wire.CKVersion{Major: 0, Minor: 1}

// slotList returns the slot ids (every slot has a token present).
// A scoped application (a remote identity) sees only the tokens its scope
// shows, and the free slot only when it may create tokens.
func (e *Engine) slotList(ctx context.Context, app *App) ([]uint64, error) {
	toks, err := e.store.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	sc := scopeOf(app)
	ids := make([]uint64, 0, len(toks)+1)
	for _, t := range toks {
		if sc.visible(t, t.Tampered) {
			ids = append(ids, uint64(t.ID))
		}
	}
	if sc.seesFree() {
		ids = append(ids, freeSlot)
	}
	return ids, nil
}

// token returns the token in a slot; slot 0's is uninitialised.
// A token app's scope does not show is not there (CKR_SLOT_ID_INVALID).
func (e *Engine) token(ctx context.Context, app *App, slot uint64) (keystore.TokenInfo, error) {
	sc := scopeOf(app)
	if slot == freeSlot {
		if !sc.seesFree() {
			return keystore.TokenInfo{}, ck.Error(ck.CKR_SLOT_ID_INVALID)
		}
		return keystore.TokenInfo{}, ck.Error(ck.CKR_TOKEN_NOT_RECOGNIZED)
	}
	if slot > 1<<62 {
		return keystore.TokenInfo{}, ck.Error(ck.CKR_SLOT_ID_INVALID)
	}
	ti, err := e.store.TokenByID(ctx, int64(slot))
	if errors.Is(err, keystore.ErrNotFound) {
		return ti, ck.Error(ck.CKR_SLOT_ID_INVALID)
	}
	if (err == nil || errors.Is(err, keystore.ErrTampered)) && !sc.visible(ti, err) {
		return keystore.TokenInfo{}, ck.Error(ck.CKR_SLOT_ID_INVALID)
	}
	return ti, err
}

// scopeOf is app's scope; nil (everything) for no application.
func scopeOf(app *App) *Scope {
	if app == nil {
		return nil
	}
	return app.Scope
}

// slotInfo describes a slot.
func (e *Engine) slotInfo(ctx context.Context, app *App, slot uint64) (*wire.SlotInfo, error) {
	if slot != freeSlot {
		// A tampered token is present, and says so in its token info.
		if _, err := e.token(ctx, app, slot); err != nil && !errors.Is(err, keystore.ErrTampered) {
			return nil, err
		}
	} else if !scopeOf(app).seesFree() {
		return nil, ck.Error(ck.CKR_SLOT_ID_INVALID)
	}
	return &wire.SlotInfo{
		SlotDescription: fmt.Sprintf("hsmemu slot %d", slot),
		ManufacturerID:  "hsmemu",
		Flags:           ck.CKF_TOKEN_PRESENT,
		HardwareVersion: version,
		FirmwareVersion: version,
	}, nil
}

// tokenInfo describes the token in a slot.
func (e *Engine) tokenInfo(ctx context.Context, app *App, slot uint64) (*wire.TokenInfo, error) {
	info := &wire.TokenInfo{
		ManufacturerID:     "hsmemu",
		Model:              "hsmemu",
		Flags:              ck.CKF_RNG | ck.CKF_LOGIN_REQUIRED,
		MaxSessionCount:    uint64(e.cfg.MaxSessions),
		MaxRwSessionCount:  uint64(e.cfg.MaxSessions),
		MaxPinLen:          MaxPINLen,
		MinPinLen:          MinPINLen,
		TotalPublicMemory:  ck.CK_UNAVAILABLE_INFORMATION,
		FreePublicMemory:   ck.CK_UNAVAILABLE_INFORMATION,
		TotalPrivateMemory: ck.CK_UNAVAILABLE_INFORMATION,
		FreePrivateMemory:  ck.CK_UNAVAILABLE_INFORMATION,
		HardwareVersion:    version,
		FirmwareVersion:    version,
	}
	if slot == freeSlot {
		if !scopeOf(app).seesFree() {
			return nil, ck.Error(ck.CKR_SLOT_ID_INVALID)
		}
		return info, nil
	}
	ti, err := e.token(ctx, app, slot)
	if errors.Is(err, keystore.ErrTampered) {
		// Present but unusable: its row failed authentication, so none of
		// it is believed. Every call on it but this and C_GetSlotInfo is
		// CKR_DEVICE_ERROR; the label says why, both PINs are locked and
		// the token is write protected, for clients that read flags.
		info.Label = fmt.Sprintf("TAMPERED slot %d", slot)
		info.Model = "hsmemu tampered"
		info.Flags = ck.CKF_TOKEN_INITIALIZED | ck.CKF_WRITE_PROTECTED | ck.CKF_SO_PIN_LOCKED | ck.CKF_USER_PIN_LOCKED
		return info, nil
	}
	if err != nil {
		return nil, err
	}
	info.Label = ti.Label
	info.Model = "hsmemu " + ti.Tier.String()
	info.SerialNumber = ti.Serial
	info.Flags |= ck.CKF_TOKEN_INITIALIZED | e.pinFlags(ti)
	if ti.UserPINSet {
		info.Flags |= ck.CKF_USER_PIN_INITIALIZED
	}
	info.SessionCount, info.RwSessionCount = e.sessionCounts(ti.UUID)
	return info, nil
}

// appList returns the attached applications, as they are now.
func (e *Engine) appList() []*App {
	e.mu.Lock()
	defer e.mu.Unlock()
	apps := make([]*App, 0, len(e.apps))
	for _, a := range e.apps {
		apps = append(apps, a)
	}
	return apps
}

// sessionCounts counts the open sessions on a token, over all applications.
func (e *Engine) sessionCounts(token keystore.UUID) (all, rw uint64) {
	for _, a := range e.appList() {
		a.mu.Lock()
		for _, s := range a.sessions {
			if s.token == token {
				all++
				if s.rw {
					rw++
				}
			}
		}
		a.mu.Unlock()
	}
	return all, rw
}

// blankLabel reads a CK_TOKEN_INFO label: 32 bytes, blank padded.
func blankLabel(label []byte) string {
	return string(bytes.TrimRight(label, " \x00"))
}

// initToken initialises the token in a slot: on slot 0 it creates a new
// token; on an initialised token it checks the SO PIN and re-initialises
// it, destroying its objects.
func (e *Engine) initToken(ctx context.Context, app *App, slot uint64, pin, label []byte) error {
	if len(pin) < MinPINLen || len(pin) > MaxPINLen {
		return ck.Error(ck.CKR_PIN_LEN_RANGE)
	}
	name := blankLabel(label)
	if name == "" {
		e.log.Info("C_InitToken refused: an empty label cannot name a token")
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	if slot == freeSlot {
		// A remote identity that may create tokens creates only those
		// it will see.
		if sc := scopeOf(app); !sc.seesFree() || !sc.Sees(name) {
			return ck.Error(ck.CKR_SLOT_ID_INVALID)
		}
		ti, err := e.store.CreateToken(ctx, keystore.TokenSpec{Label: name, Tier: e.cfg.DefaultTier, SOPIN: pin})
		if errors.Is(err, keystore.ErrTokenExists) {
			e.log.Info("C_InitToken refused: the label is already in use", "label", name)
			return ck.Error(ck.CKR_ARGUMENTS_BAD)
		}
		if err != nil {
			return err
		}
		e.log.Info("token created", "label", name, "slot", ti.ID, "tier", ti.Tier.String())
		e.audit(ctx, actor(app, ""), ti.UUID, "token.create", map[string]string{"tier": ti.Tier.String(), "slot": fmt.Sprint(ti.ID), "via": "C_InitToken"})
		return nil
	}
	ti, err := e.token(ctx, app, slot)
	if err != nil {
		return err
	}
	if !scopeOf(app).Sees(name) {
		// A remote identity's new label must be one it sees: another
		// would hand the token, with whatever its SO set up in it, to
		// the identities that see that label.
		e.log.Info("C_InitToken refused: the new label is outside the client's tokens", "remote", scopeOf(app).Identity)
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	if all, _ := e.sessionCounts(ti.UUID); all > 0 {
		return ck.Error(ck.CKR_SESSION_EXISTS)
	}
	// The SO PIN is checked here as at login: the same delays apply.
	err = e.pinAttempt(ctx, scopeOf(app), ti.UUID, keystore.RoleSO, func() error {
		return e.store.Reinit(ctx, ti.UUID, pin, name)
	})
	if errors.Is(err, keystore.ErrPINIncorrect) {
		e.auditPINFailure(ctx, actor(app, "so"), ti.UUID, keystore.RoleSO, "token.reinit.failure")
	}
	if errors.Is(err, keystore.ErrTokenExists) {
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	if err == nil {
		e.log.Info("token re-initialised", "label", name, "slot", slot)
		e.audit(ctx, actor(app, "so"), ti.UUID, "token.reinit", map[string]string{"old_label": ti.Label, "slot": fmt.Sprint(slot)})
	}
	return err
}

func (e *Engine) tokenLogin(token keystore.UUID) *tokenLogin {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.loginOf(token)
}

// mechanismList returns the mechanisms a slot's token implements, sorted.
func (e *Engine) mechanismList(ctx context.Context, app *App, slot uint64) ([]uint64, error) {
	mechs, err := e.slotMechs(ctx, app, slot)
	if err != nil {
		return nil, err
	}
	return slices.Clone(mechs.Types()), nil
}

// mechanismInfo describes one mechanism.
func (e *Engine) mechanismInfo(ctx context.Context, app *App, slot, typ uint64) (*wire.MechanismInfo, error) {
	mechs, err := e.slotMechs(ctx, app, slot)
	if err != nil {
		return nil, err
	}
	m, ok := mechs.Get(typ)
	if !ok {
		return nil, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	info := m.Info()
	return &info, nil
}
