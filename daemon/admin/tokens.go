package admin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// Tokens and their PINs.

func (a *call) status(ctx context.Context, _ noArgs) (*adminapi.Status, error) {
	info := a.h.cfg
	_, commit := adminapi.Build()
	st := &adminapi.Status{
		Version:   info.Version,
		Commit:    commit,
		Started:   a.h.cfg.Started,
		UptimeSec: time.Since(a.h.cfg.Started).Seconds(),
		TPM: adminapi.TPMInfo{Kind: info.TPM.Kind, Path: info.TPM.Path, Manufacturer: info.TPM.Manufacturer,
			Vendor: info.TPM.VendorString, Firmware: info.TPM.FirmwareVersion, Available: true},
	}
	if info.TPMHealth != nil {
		h := info.TPMHealth()
		st.TPM.Available, st.TPM.Reconnects = h.OK, h.Reconnects
		if !h.OK {
			st.TPM.Error, st.TPM.DownSince = h.Err, &h.Since
		}
	}
	if a.h.cfg.DA != nil {
		if da, err := a.h.cfg.DA(); err == nil {
			st.TPM.DA = &adminapi.TPMDA{Counter: da.Counter, MaxTries: da.MaxTries,
				RecoverySec: uint32(da.Recovery / time.Second), LockoutRecoverySec: uint32(da.LockoutRecovery / time.Second),
				LockoutAuthSet: da.LockoutAuthSet, InLockout: da.InLockout, LockoutLeftSec: uint32(da.LockoutLeft() / time.Second)}
		}
	}
	where := a.store.Storage()
	st.Keystore = adminapi.Keystore{Engine: where.Engine, Location: where.Location}
	b := a.store.PINBinding()
	st.PINs = adminapi.PINState{Bound: b.Bound, Recoverable: b.Recoverable, Why: b.Why}
	var err error
	if st.PINs.BoundRecords, st.PINs.UnboundRecords, err = a.store.PINRecords(ctx); err != nil {
		return nil, err
	}
	switch an, err := a.store.AnchorStatus(ctx); {
	case err == nil:
		st.Anchor = &adminapi.Anchor{NVIndex: an.Handle, Counter: an.Anchored, Generation: an.Generation, Unanchored: an.Generation - an.AnchoredGen}
	case !errors.Is(err, keystore.ErrNotFound):
		return nil, err
	}
	if st.Nodes, err = a.nodes(ctx); err != nil {
		return nil, err
	}
	rec, err := a.store.RootRecord(ctx)
	if err != nil {
		return nil, err
	}
	st.Domain, st.Escrowed, st.MasterGeneration, st.RotationPending = rec.DomainID, rec.Escrow != nil, rec.MasterGeneration, rec.Next != nil
	st.NodeMasterGeneration = a.store.MasterGeneration()
	if st.Tokens, err = a.tokenList(ctx, noArgs{}); err != nil {
		return nil, err
	}
	st.Apps, st.Sessions = a.eng.Counts()
	// Failures the listing above met are recorded before they are counted.
	if err := a.store.AuditTamper(ctx); err != nil {
		return nil, err
	}
	if st.TamperDetected, err = a.store.TamperCount(ctx); err != nil {
		return nil, err
	}
	if st.Audit.Records, st.Audit.Head, err = a.store.AuditHead(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

func (a *call) token(ti keystore.TokenInfo, objects int64) adminapi.Token {
	if ti.Tampered != nil {
		t := adminapi.Token{Slot: ti.ID, Label: ti.Label, Tampered: keystore.TamperWhat(ti.Tampered)}
		if ti.UUID != (keystore.UUID{}) {
			t.UUID = ti.UUID.String()
		}
		return t
	}
	all, _ := a.eng.SessionCounts(ti.UUID)
	return adminapi.Token{
		Label: ti.Label, Slot: ti.ID, Serial: ti.Serial, Tier: ti.Tier.String(), UUID: ti.UUID.String(),
		Created: ti.Created, Objects: objects, UserPINSet: ti.UserPINSet,
		SOFailures: ti.SOFailures, UserFailures: ti.UserFailures,
		SOLocked: a.store.Locked(ti, keystore.RoleSO), UserLocked: a.store.Locked(ti, keystore.RoleUser),
		Sessions: int(all), LoggedIn: a.store.LoggedIn(ti.UUID),
		RetentionDays: ti.RetentionDays, PurgeProtection: ti.PurgeProtection,
	}
}

func (a *call) tokenList(ctx context.Context, _ noArgs) ([]adminapi.Token, error) {
	tis, err := a.store.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	counts, err := a.store.ObjectCounts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]adminapi.Token, 0, len(tis))
	for _, ti := range tis {
		out = append(out, a.token(ti, counts[ti.ID]))
	}
	return out, nil
}

// lookup finds a token by label, with an error that says what exists.
func (a *call) lookup(ctx context.Context, label string) (keystore.TokenInfo, error) {
	if label == "" {
		return keystore.TokenInfo{}, adminapi.Errorf(adminapi.CodeBadRequest, "no token label given")
	}
	ti, err := a.store.TokenByLabel(ctx, label)
	if errors.Is(err, keystore.ErrNotFound) {
		return ti, adminapi.Errorf(adminapi.CodeNotFound, "no token is labelled %q (`hsmemu token list` lists them)", label)
	}
	return ti, err
}

func (a *call) tokenShow(ctx context.Context, args adminapi.TokenRef) (*adminapi.Token, error) {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return nil, err
	}
	counts, err := a.store.ObjectCounts(ctx)
	if err != nil {
		return nil, err
	}
	t := a.token(ti, counts[ti.ID])
	return &t, nil
}

func checkNewPIN(what string, pin []byte) error {
	if len(pin) < token.MinPINLen || len(pin) > token.MaxPINLen {
		return adminapi.Errorf(adminapi.CodePINInvalid, "the %s must be %d to %d bytes, not %d", what, token.MinPINLen, token.MaxPINLen, len(pin))
	}
	return nil
}

func (a *call) tokenCreate(ctx context.Context, args adminapi.TokenCreate) (*adminapi.Token, error) {
	tier, err := keystore.ParseTier(args.Tier)
	if err != nil {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
	}
	if args.Label == "" || len(args.Label) > 32 {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "a token label is 1 to 32 bytes, not %d", len(args.Label))
	}
	if err := checkNewPIN("SO PIN", args.SOPIN); err != nil {
		return nil, err
	}
	if args.UserPIN != nil {
		if err := checkNewPIN("user PIN", args.UserPIN); err != nil {
			return nil, err
		}
	}
	ti, err := a.store.CreateToken(ctx, keystore.TokenSpec{Label: args.Label, Tier: tier, SOPIN: args.SOPIN, UserPIN: args.UserPIN})
	if errors.Is(err, keystore.ErrTokenExists) {
		return nil, adminapi.Errorf(adminapi.CodeExists, "a token labelled %q exists", args.Label)
	}
	if err != nil {
		return nil, err
	}
	a.log.Info("token created", "label", ti.Label, "slot", ti.ID, "tier", ti.Tier.String(), "by_uid", a.who.UID)
	a.eng.Audit(ctx, a.who, ti.UUID, "token.create", map[string]string{"tier": ti.Tier.String(), "slot": fmt.Sprint(ti.ID), "via": "admin"})
	t := a.token(ti, 0)
	return &t, nil
}

// soCheck checks the token's SO PIN as a login would: the same delays,
// the same count, an audit record of a failure.
func (a *call) soCheck(ctx context.Context, ti keystore.TokenInfo, event string, check func() error) error {
	err := a.eng.PINAttempt(ctx, ti.UUID, keystore.RoleSO, check)
	if errors.Is(err, keystore.ErrPINIncorrect) {
		a.eng.AuditPINFailure(ctx, a.who, ti.UUID, keystore.RoleSO, event+".failure")
	}
	return err
}

func (a *call) tokenDelete(ctx context.Context, args adminapi.TokenDelete) error {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	if all, _ := a.eng.SessionCounts(ti.UUID); all > 0 {
		return adminapi.Errorf(adminapi.CodeInUse, "%d sessions are open on token %q: close the applications using it first", all, ti.Label)
	}
	err = a.soCheck(ctx, ti, "token.delete", func() error {
		if err := a.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN); err != nil {
			return err
		}
		return a.store.DeleteToken(ctx, ti.UUID)
	})
	if err != nil {
		return err
	}
	a.eng.ForgetToken(ti.UUID)
	a.log.Info("token deleted", "label", ti.Label, "slot", ti.ID, "by_uid", a.who.UID)
	who := a.who
	who.Token = ti.Label
	a.eng.Audit(ctx, who, keystore.UUID{}, "token.delete", map[string]string{"slot": fmt.Sprint(ti.ID), "uuid": ti.UUID.String()})
	return nil
}

// tokenLogout ends every login of the token on every daemon of the
// domain, with the SO PIN: this daemon's sessions are in the public state
// before the reply, the other daemons' within the invalidation bound
// (docs/cluster.md).
func (a *call) tokenLogout(ctx context.Context, args adminapi.TokenLogout) (*adminapi.TokenLoggedOut, error) {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return nil, err
	}
	var epoch uint32
	var apps int
	err = a.soCheck(ctx, ti, "token.logout", func() error {
		if err := a.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN); err != nil {
			return err
		}
		epoch, apps, err = a.eng.LogoutAll(ctx, ti.UUID)
		return err
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("token logged out on every daemon", "label", ti.Label, "slot", ti.ID, "login_epoch", epoch, "applications", apps, "by_uid", a.who.UID)
	a.eng.Audit(ctx, a.who, ti.UUID, "token.logout", map[string]string{"login_epoch": fmt.Sprint(epoch), "applications": fmt.Sprint(apps)})
	return &adminapi.TokenLoggedOut{Token: ti.Label, LoginEpoch: epoch, Applications: apps}, nil
}

func parseRole(s string) (keystore.Role, error) {
	switch s {
	case "user", "":
		return keystore.RoleUser, nil
	case "so":
		return keystore.RoleSO, nil
	}
	return 0, adminapi.Errorf(adminapi.CodeBadRequest, "unknown role %q: want user or so", s)
}

func (a *call) pinChange(ctx context.Context, args adminapi.PINChange) error {
	role, err := parseRole(args.Role)
	if err != nil {
		return err
	}
	if err := checkNewPIN("new PIN", args.New); err != nil {
		return err
	}
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	err = a.eng.PINAttempt(ctx, ti.UUID, role, func() error {
		return a.store.SetPIN(ctx, ti.UUID, role, args.Old, args.New)
	})
	if errors.Is(err, keystore.ErrPINIncorrect) {
		a.eng.AuditPINFailure(ctx, a.who, ti.UUID, role, "pin.change.failure")
	}
	if err != nil {
		return err
	}
	a.eng.Audit(ctx, a.who, ti.UUID, "pin.change", map[string]string{"role": token.RoleName(role)})
	return nil
}

func (a *call) pinReset(ctx context.Context, args adminapi.PINReset) error {
	if err := checkNewPIN("new user PIN", args.New); err != nil {
		return err
	}
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	err = a.soCheck(ctx, ti, "pin.reset", func() error {
		return a.store.ResetUserPIN(ctx, ti.UUID, args.SOPIN, args.New)
	})
	if err != nil {
		return err
	}
	a.eng.ClearDelay(ti.UUID, keystore.RoleUser)
	a.eng.Audit(ctx, a.who, ti.UUID, "pin.reset", map[string]string{"role": "user"})
	return nil
}

func (a *call) pinUnlock(ctx context.Context, args adminapi.PINUnlock) error {
	role, err := parseRole(args.Role)
	if err != nil {
		return err
	}
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	if role == keystore.RoleUser {
		err = a.soCheck(ctx, ti, "pin.unlock", func() error {
			return a.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN)
		})
		if err != nil {
			return err
		}
	}
	// The SO's own lock is lifted on the administrator's word alone: the
	// peer credentials of the daemon's user or root, who hold the TPM the
	// keys depend on anyway.
	if err := a.store.ClearFailures(ctx, ti.UUID, role); err != nil {
		return err
	}
	a.eng.ClearDelay(ti.UUID, role)
	a.eng.Audit(ctx, a.who, ti.UUID, "pin.unlock", map[string]string{"role": token.RoleName(role)})
	return nil
}
