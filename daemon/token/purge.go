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
// audits each in the transaction that purges it: a daemon killed half
// way leaves no object purged unrecorded (the rest are purged, and
// recorded, by the next run, on whichever daemon). The daemon runs it at
// start and then every interval.
func (e *Engine) PurgeExpired(ctx context.Context) {
	who := keystore.AuditActor{UID: uint32(os.Getuid()), PID: int32(os.Getpid()), Role: "daemon"}
	// One request id for the run: its records and log lines tie together.
	ctx, id := withRequestID(ctx)
	actors := map[keystore.UUID]keystore.AuditActor{}
	purged, err := e.store.PurgeExpiredAudited(ctx, time.Now(), func(d keystore.Deleted) keystore.AuditNote {
		a, ok := actors[d.Token]
		if !ok {
			a = e.tokenActor(ctx, who, d.Token)
			actors[d.Token] = a
		}
		detail := DeletedDetail(d)
		detail["why"] = "retention ended"
		return keystore.AuditNote{Actor: a, Event: ObjectEvent(d.Class, "purge"), Detail: detail}
	})
	if err != nil {
		e.log.Error("purging expired deleted objects", "err", err, "purged", len(purged), "request_id", id)
	}
	for _, d := range purged {
		e.logAudited(ObjectEvent(d.Class, "purge"), id, actors[d.Token])
	}
	if len(purged) > 0 {
		e.log.Info("purged deleted objects whose retention ended", "count", len(purged), "request_id", id)
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
