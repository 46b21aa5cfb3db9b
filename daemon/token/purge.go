package token

import (
	"context"
	"os"
	"time"

	"hsmemu/keystore"
)

// Soft-deleted token objects are kept for their token's retention
// (docs/tokens.md, "Deleting"); the purger removes them once it ends.

// PurgeExpired purges the deleted objects whose retention has ended, and
// audits each. The daemon runs it at start and then every interval.
func (e *Engine) PurgeExpired(ctx context.Context) {
	purged, err := e.store.PurgeExpired(ctx, time.Now())
	if err != nil {
		e.log.Error("purging expired deleted objects", "err", err)
	}
	who := keystore.AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "daemon"}
	for _, d := range purged {
		detail := DeletedDetail(d)
		detail["why"] = "retention ended"
		e.audit(ctx, who, d.Token, ObjectEvent(d.Class, "purge"), detail)
	}
	if len(purged) > 0 {
		e.log.Info("purged deleted objects whose retention ended", "count", len(purged))
	}
}

// RunPurger purges expired deleted objects now and every interval until
// ctx ends.
func (e *Engine) RunPurger(ctx context.Context, every time.Duration) {
	e.PurgeExpired(context.WithoutCancel(ctx))
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.PurgeExpired(context.WithoutCancel(ctx))
		}
	}
}
