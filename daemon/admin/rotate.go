package admin

import (
	"context"
	"errors"
	"fmt"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// Rotating a token's data key and the domain's master key.

func (a *call) rotateToken(ctx context.Context, args adminapi.RotateToken) (*adminapi.Rotated, error) {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return nil, err
	}
	// The user PIN is checked first, as the user's: its own count, delays
	// and audit record.
	if ti.UserPINSet && args.UserPIN != nil {
		err := a.eng.PINAttempt(ctx, ti.UUID, keystore.RoleUser, func() error {
			return a.store.CheckPIN(ctx, ti.UUID, keystore.RoleUser, args.UserPIN)
		})
		if errors.Is(err, keystore.ErrPINIncorrect) {
			who := a.who
			who.Role = "admin as user"
			a.eng.AuditPINFailure(ctx, who, ti.UUID, keystore.RoleUser, "rotate.token.failure")
		}
		if err != nil {
			return nil, err
		}
	}
	var n int
	err = a.soCheck(ctx, ti, "rotate.token", func() error {
		var err error
		n, err = a.store.RotateDataKey(ctx, ti.UUID, args.SOPIN, args.UserPIN, a.progress)
		return err
	})
	if err != nil {
		return nil, err
	}
	after, err := a.store.Token(ctx, ti.UUID)
	if err != nil {
		return nil, err
	}
	a.log.Info("token data key rotated", "label", ti.Label, "resealed", n, "generation", after.DataGeneration)
	a.eng.Audit(ctx, a.who, ti.UUID, "rotate.token", map[string]string{"resealed": fmt.Sprint(n), "data_generation": fmt.Sprint(after.DataGeneration)})
	return &adminapi.Rotated{Label: ti.Label, Resealed: n, DataGeneration: after.DataGeneration}, nil
}

func (a *call) rotateMasterBegin(ctx context.Context, args adminapi.RotateMasterBegin) (*adminapi.MasterBegun, error) {
	st := a.h.cfg.Rotator
	if st == nil {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "this daemon does not rotate its master key")
	}
	var opts tpmroot.ProvisionOptions
	for _, c := range args.Custodians {
		cu, err := escrow.ParseCustodianPEM(c.Name, c.PEM)
		if err != nil {
			return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
		}
		opts.Custodians = append(opts.Custodians, cu)
	}
	opts.Threshold = args.Threshold
	if len(opts.Custodians) > 0 && (opts.Threshold < 1 || opts.Threshold > len(opts.Custodians)) {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "the threshold must be 1 to %d", len(opts.Custodians))
	}
	gen, shares, err := st.BeginMasterRotation(ctx, opts)
	if err != nil {
		return nil, err
	}
	res := &adminapi.MasterBegun{Generation: gen}
	for _, sh := range shares {
		res.Shares = append(res.Shares, adminapi.Share{Custodian: sh.Custodian, Fingerprint: sh.Fingerprint, Index: int(sh.Index), File: sh.File})
	}
	a.log.Info("master key rotation begun", "generation", gen, "custodians", len(shares))
	a.eng.Audit(ctx, a.who, keystore.UUID{}, "rotate.master.begin", map[string]string{"generation": fmt.Sprint(gen), "custodians": fmt.Sprint(len(shares)), "threshold": fmt.Sprint(opts.Threshold)})
	return res, nil
}

func (a *call) rotateMasterFinish(ctx context.Context, _ noArgs) (*adminapi.MasterRotated, error) {
	st := a.h.cfg.Rotator
	if st == nil {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "this daemon does not rotate its master key")
	}
	gen, err := st.FinishMasterRotation(ctx, a.progress)
	if err != nil {
		return nil, err
	}
	a.log.Info("master key rotated", "generation", gen)
	a.eng.Audit(ctx, a.who, keystore.UUID{}, "rotate.master", map[string]string{"generation": fmt.Sprint(gen)})
	return &adminapi.MasterRotated{Generation: gen}, nil
}

func (a *call) rotateMasterAbort(ctx context.Context, _ noArgs) error {
	st := a.h.cfg.Rotator
	if st == nil {
		return adminapi.Errorf(adminapi.CodeBadRequest, "this daemon does not rotate its master key")
	}
	if err := st.AbortMasterRotation(ctx); err != nil {
		return err
	}
	a.log.Info("master key rotation aborted")
	a.eng.Audit(ctx, a.who, keystore.UUID{}, "rotate.master.abort", nil)
	return nil
}
