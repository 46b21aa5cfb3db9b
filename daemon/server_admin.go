package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"hsmemu/daemon/adminapi"
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
func (s *Server) serveAdmin(ctx context.Context, c *net.UnixConn, cred *syscall.Ucred) {
	who := keystore.AuditActor{UID: cred.Uid, PID: cred.Pid, Role: "admin"}
	for ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(adminIdle))
		var req adminapi.Request
		err := adminapi.ReadFrame(c, &req)
		if err != nil {
			if errors.Is(err, adminapi.ErrFrame) {
				s.log.Warn("closing admin connection: bad frame", "pid", cred.Pid, "err", err)
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
		result, aerr := s.admin.Call(context.WithoutCancel(ctx), who, req, progress)
		clear(req.Args) // the arguments' JSON, PINs included
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
				s.log.Debug("admin connection: reply not sent", "pid", cred.Pid, "err", err)
			}
			return
		}
	}
}
