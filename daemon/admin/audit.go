package admin

import (
	"context"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

// The audit log, read and verified.

func auditRecords(recs []keystore.AuditRecord) []adminapi.AuditRecord {
	out := make([]adminapi.AuditRecord, len(recs))
	for i, r := range recs {
		out[i] = adminapi.AuditRecord{Seq: r.Seq, Time: r.Time, Event: r.Event, Detail: r.Detail, PrevHash: r.PrevHash, Hash: r.Hash,
			Actor: adminapi.AuditActor{UID: r.Actor.UID, PID: r.Actor.PID, Token: r.Actor.Token, Role: r.Actor.Role, Remote: r.Actor.Remote}}
	}
	return out
}

// maxAuditBatch bounds the records of one reply, to stay under the frame
// cap; the client pages through more.
const maxAuditBatch = 1000

func (a *call) auditTail(ctx context.Context, args adminapi.AuditTail) ([]adminapi.AuditRecord, error) {
	if args.N <= 0 || args.N > maxAuditBatch {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "audit.tail takes 1 to %d records, not %d", maxAuditBatch, args.N)
	}
	recs, err := a.store.AuditTail(ctx, args.N)
	return auditRecords(recs), err
}

func (a *call) auditRange(ctx context.Context, args adminapi.AuditRange) ([]adminapi.AuditRecord, error) {
	if args.Limit <= 0 || args.Limit > maxAuditBatch {
		args.Limit = maxAuditBatch
	}
	recs, err := a.store.AuditRecords(ctx, args.After, args.Limit)
	return auditRecords(recs), err
}

func (a *call) auditVerify(ctx context.Context, _ noArgs) (*adminapi.AuditVerify, error) {
	rep, err := a.store.VerifyAudit(ctx)
	if err != nil {
		return nil, err
	}
	out := &adminapi.AuditVerify{OK: rep.OK, Records: rep.Records, HeadSeq: rep.HeadSeq, Head: rep.Head, BadSeq: rep.BadSeq, Problem: rep.Problem}
	if !rep.OK {
		a.log.Error("audit log verification failed", "problem", rep.Problem)
		a.eng.Audit(ctx, a.who, keystore.UUID{}, "tamper.detected", map[string]string{"what": "audit log", "problem": rep.Problem})
	}
	return out, nil
}
