package daemon

import (
	"errors"
	"fmt"
	"log/slog"

	"hsmemu/tpmroot"
)

// A managed swtpm is the daemon's alone, so its dictionary-attack
// parameters are the daemon's to set: tpmroot.ManagedDA (or
// StateConfig.DA), and a lockout authorisation kept nowhere, so the
// counter of wrong PINs drains with time only. It is done the first time
// the swtpm is opened with an empty lockout authorisation: when a state
// directory is provisioned or recovered, and at the first start of this
// version on one provisioned before. A device TPM's parameters are the
// machine's: the daemon reports them and leaves them (Exposure).

// configureManagedDA sets a managed swtpm's dictionary-attack parameters
// if no one has yet.
func configureManagedDA(tpm *tpmroot.TPM, spec tpmroot.Spec, p tpmroot.DAParams, log *slog.Logger) error {
	if spec.Kind != tpmroot.KindManaged {
		return nil
	}
	if p == (tpmroot.DAParams{}) {
		p = tpmroot.ManagedDA
	}
	da, err := tpm.DAInfo()
	if err != nil {
		return err
	}
	if da.LockoutAuthSet {
		return nil
	}
	err = tpm.ConfigureDA(p)
	if errors.Is(err, tpmroot.ErrLockoutAuthSet) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("set the managed swtpm's dictionary-attack parameters: %w", err)
	}
	log.Info("the managed swtpm's dictionary-attack protection is set: its lockout authorisation is random and kept nowhere",
		"max_tries", p.MaxTries, "recovery", p.Recovery.String(), "lockout_recovery", p.LockoutRecovery.String())
	return nil
}
