package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"hsmemu/daemon/admin"
	"hsmemu/daemon/adminapi"
	"hsmemu/internal/reqid"
	"hsmemu/keystore"
)

// Admin connections: the administrator's calls (daemon/admin), one JSON
// frame each way (daemon/adminapi).

// adminIdle is how long an admin connection may wait between calls.
const adminIdle = 10 * time.Minute

// adminAllowed: only the daemon's own user and root administer it; the
// users allowed to use its tokens (--allow-uid, --socket-group) are not.
func adminAllowed(uid uint32) bool {
	return uid == 0 || uid == uint32(os.Getuid())
}

// serveAdmin serves an admin connection (docs/protocol.md, "Admin
// connections") until the client closes it or the daemon stops.
func (s *Server) serveAdmin(ctx context.Context, c net.Conn, who keystore.AuditActor) {
	who.Role = "admin"
	for ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(adminIdle))
		var req adminapi.Request
		err := adminapi.ReadFrame(c, &req)
		if err != nil {
			if errors.Is(err, adminapi.ErrFrame) {
				s.log.Warn("closing admin connection: bad frame", "pid", who.PID, "remote", who.Remote, "err", err)
				adminapi.WriteFrame(c, adminapi.Reply{Error: adminapi.Errorf(adminapi.CodeBadRequest, "malformed request: %v", err)})
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		// Progress reports go out at most every 100 ms; one that cannot be
		// sent is dropped (the reply will say whether the call worked).
		var last time.Time
		progress := func(done, total int) {
			if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || done == total {
				last = now
				c.SetWriteDeadline(now.Add(time.Second))
				adminapi.WriteFrame(c, adminapi.Reply{Progress: &adminapi.Progress{Done: done, Total: total}})
			}
		}
		// Every admin call has a request id, in its log lines and in the
		// detail of the audit records it writes.
		rid := reqid.New()
		start := time.Now()
		result, aerr := s.admin.Call(reqid.With(context.WithoutCancel(ctx), rid), who, req, progress)
		clear(req.Args) // the arguments' JSON, PINs included
		s.adminDone(req.Op, rid, who, aerr, time.Since(start))
		rep := adminapi.Reply{Error: aerr}
		if aerr == nil && result != nil {
			b, err := json.Marshal(result)
			if err != nil {
				rep.Error = adminapi.Errorf(adminapi.CodeInternal, "internal error encoding the reply")
			} else {
				rep.Result = b
			}
		}
		c.SetWriteDeadline(time.Now().Add(time.Minute))
		err = adminapi.WriteFrame(c, rep)
		if errors.Is(err, adminapi.ErrFrame) {
			err = adminapi.WriteFrame(c, adminapi.Reply{Error: adminapi.Errorf(adminapi.CodeInternal, "the reply is over the protocol's %d bytes", adminapi.MaxFrame)})
		}
		clear(rep.Result)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.log.Debug("admin connection: reply not sent", "pid", who.PID, "err", err)
			}
			return
		}
	}
}

// adminDone logs an admin call (never its arguments, which may hold PINs
// or secrets) and counts it.
func (s *Server) adminDone(op, rid string, who keystore.AuditActor, aerr *adminapi.Error, d time.Duration) {
	if !admin.Serves(op) {
		op = "unknown" // a label the client does not choose
	}
	outcome := "ok"
	if aerr != nil {
		outcome = aerr.Code
	}
	if who.Remote != "" {
		s.log.Info("admin call", "op", op, "request_id", rid, "remote", who.Remote, "outcome", outcome, "duration", d)
	} else {
		s.log.Info("admin call", "op", op, "request_id", rid, "uid", who.UID, "pid", who.PID, "outcome", outcome, "duration", d)
	}
	s.metrics.Admin(op, outcome, d)
}
