package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

// Rollback detection: the keystore's anchor record (keystore/anchor.go)
// tied to a counter in the TPM (tpmroot/counter.go), here where the two
// meet. docs/keychain.md, "Rollback", says what it catches and what not.

// The default anchor intervals. An anchor increments a TPM NV counter,
// and with it writes the TPM's NV memory, at most once per interval and
// only when the keystore changed. swtpm writes a file; a TPM chip writes
// flash rated for a few hundred thousand cycles, hence its longer
// interval: at most 96 increments a day, 35,000 a year.
const (
	DefaultAnchorInterval = 10 * time.Second
	DeviceAnchorInterval  = 15 * time.Minute
)

// AnchorInterval is the default anchor interval for a TPM of kind.
func AnchorInterval(kind tpmroot.Kind) time.Duration {
	if kind == tpmroot.KindDevice {
		return DeviceAnchorInterval
	}
	return DefaultAnchorInterval
}

// adminActor is who an operator's command acts as in the audit log.
func adminActor() keystore.AuditActor {
	return keystore.AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "admin"}
}

// anchor ties the keystore to its counter in the TPM, defining the
// counter for a keystore that has none yet, and refuses a keystore older
// than its anchor. reset re-anchors on purpose, for that reason (see
// keystore.AnchorOptions).
func anchor(ctx context.Context, tpm *tpmroot.TPM, store *keystore.Store, domain []byte, reset string, log *slog.Logger) (*tpmroot.Counter, keystore.AnchorReport, error) {
	var rep keystore.AnchorReport
	handle, recorded, err := store.AnchorHandle(ctx)
	if err != nil {
		return nil, rep, err
	}
	if !recorded {
		handle = tpmroot.AnchorHandle(domain)
	}
	auth, err := store.AnchorAuth(ctx)
	if err != nil {
		return nil, rep, err
	}
	defer clear(auth)
	c, err := tpm.OpenCounter(handle, auth)
	if errors.Is(err, tpmroot.ErrNoCounter) {
		if recorded && reset == "" {
			return nil, rep, &keystore.RollbackError{What: "counter", Handle: handle, Detail: fmt.Sprintf(
				"the keystore is anchored in the TPM's counter 0x%08x, which this TPM does not hold: it was deleted, or the keystore was brought from another TPM (`hsmemu domain recover` moves a keystore to a new TPM)", handle)}
		}
		if c, err = tpm.DefineCounter(handle, auth); err == nil {
			log.Info("defined the keystore's anchor counter in the TPM", "nv_index", fmt.Sprintf("0x%08x", handle))
		}
	}
	if err != nil {
		return nil, rep, fmt.Errorf("the keystore's anchor counter: %w", err)
	}
	opts := keystore.AnchorOptions{Handle: handle, Reset: reset}
	if reset != "" {
		opts.Actor = adminActor()
	}
	rep, err = store.AttachAnchor(ctx, c, opts)
	if err != nil {
		return nil, rep, err
	}
	nv := fmt.Sprintf("0x%08x", rep.Handle)
	switch {
	case rep.Reset:
		log.Warn("re-anchored the keystore on purpose", "reason", reset, "anchors_behind", rep.Behind, "nv_index", nv, "counter", rep.Anchored)
	case rep.Created:
		log.Info("the keystore is anchored in the TPM", "nv_index", nv, "counter", rep.Anchored, "rows", rep.Rows)
	case rep.TPMBehind > 0:
		log.Warn("the TPM's anchor counter was behind the keystore: the TPM's state was put back; re-anchored", "by", rep.TPMBehind, "nv_index", nv)
	default:
		log.Info("the keystore matches its anchor in the TPM", "nv_index", nv, "counter", rep.Anchored, "generation", rep.Generation)
	}
	if rep.AuditLost != "" {
		log.Error("the audit log lost its newest records: " + rep.AuditLost)
	}
	return c, rep, nil
}

// openAnchor anchors an opened state's keystore; OpenState calls it once
// the keystore is attached.
func (s *State) openAnchor(ctx context.Context, cfg StateConfig) error {
	c, rep, err := anchor(ctx, s.TPM, s.Store, s.Root.DomainID(), cfg.Reanchor, s.logger())
	if err != nil {
		return err
	}
	s.Counter, s.Anchor = c, rep
	return nil
}

func (s *State) logger() *slog.Logger {
	if s.log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.log
}

// RunAnchor anchors the keystore every interval (when it changed) until
// ctx ends. It returns nil then, or the *keystore.RollbackError of a
// keystore found behind its counter while in use (another copy of it
// anchoring on this TPM, or the file replaced): the daemon stops. Other
// failures (a TPM rate limiting its NV writes) are logged and tried again
// at the next tick. A State opened without a TPM counter has nothing to
// do.
func (s *State) RunAnchor(ctx context.Context, every time.Duration) error {
	if s.Counter == nil || s.Store == nil {
		return nil
	}
	if every <= 0 {
		every = AnchorInterval(s.Spec.Kind)
	}
	log := s.logger()
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, err := s.Store.Anchor(ctx)
		switch {
		case errors.Is(err, keystore.ErrRolledBack):
			log.Error("the keystore is behind its anchor in the TPM: stopping", "err", err)
			return err
		case err != nil && ctx.Err() == nil:
			if !failing {
				log.Warn("anchoring the keystore failed; trying again at each interval", "err", err)
			}
			failing = true
		case err == nil && failing:
			log.Info("anchoring the keystore works again")
			failing = false
		}
	}
}

// closeAnchor anchors a last time, for a clean stop.
func (s *State) closeAnchor() error {
	if s.Counter == nil || s.Store == nil {
		return nil
	}
	if _, err := s.Store.Anchor(context.Background()); err != nil {
		s.logger().Error("the last anchor before stopping failed: the writes since the previous one can be rolled back", "err", err)
		return err
	}
	return nil
}
