package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// AdminInfo is what the daemon reports of itself to `hsmemu status`, and
// the state directory the master key rotation works on.
type AdminInfo struct {
	Version string
	TPM     tpmroot.Info
	State   *State // nil: master key rotation is not offered
}

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
		result, aerr := s.adminCall(context.WithoutCancel(ctx), who, req, progress)
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

// adminCall decodes and serves one admin call. A panic is a bug: logged
// and answered as internal, and the daemon goes on.
func (s *Server) adminCall(ctx context.Context, who keystore.AuditActor, req adminapi.Request, progress func(done, total int)) (result any, aerr *adminapi.Error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("internal error serving an admin call", "op", req.Op, "panic", fmt.Sprint(p))
			result, aerr = nil, adminapi.Errorf(adminapi.CodeInternal, "internal error; the daemon's log says more")
		}
	}()
	a := &adminOps{s: s, e: s.eng, who: who, progress: progress}
	var err error
	switch req.Op {
	case adminapi.OpStatus:
		result, err = a.status(ctx)
	case adminapi.OpTokenList:
		result, err = a.tokenList(ctx)
	case adminapi.OpTokenShow:
		var args adminapi.TokenRef
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.tokenShow(ctx, args.Label)
		}
	case adminapi.OpTokenCreate:
		var args adminapi.TokenCreate
		if err = decodeArgs(req, &args); err == nil {
			defer clear(args.SOPIN)
			defer clear(args.UserPIN)
			result, err = a.tokenCreate(ctx, args)
		}
	case adminapi.OpTokenDelete:
		var args adminapi.TokenDelete
		if err = decodeArgs(req, &args); err == nil {
			defer clear(args.SOPIN)
			err = a.tokenDelete(ctx, args)
		}
	case adminapi.OpPINChange:
		var args adminapi.PINChange
		if err = decodeArgs(req, &args); err == nil {
			defer clear(args.Old)
			defer clear(args.New)
			err = a.pinChange(ctx, args)
		}
	case adminapi.OpPINReset:
		var args adminapi.PINReset
		if err = decodeArgs(req, &args); err == nil {
			defer clear(args.SOPIN)
			defer clear(args.New)
			err = a.pinReset(ctx, args)
		}
	case adminapi.OpPINUnlock:
		var args adminapi.PINUnlock
		if err = decodeArgs(req, &args); err == nil {
			defer clear(args.SOPIN)
			err = a.pinUnlock(ctx, args)
		}
	case adminapi.OpAuditTail:
		var args adminapi.AuditTail
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.auditTail(ctx, args)
		}
	case adminapi.OpAuditRange:
		var args adminapi.AuditRange
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.auditRange(ctx, args)
		}
	case adminapi.OpAuditVerify:
		result, err = a.auditVerify(ctx)
	case adminapi.OpTokenSet:
		var args adminapi.TokenSet
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.tokenSet(ctx, args)
		}
	case adminapi.OpKeyList:
		var args adminapi.KeyList
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.keyList(ctx, args)
		}
	case adminapi.OpKeyRestore:
		var args adminapi.KeyRestore
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.keyRestore(ctx, args)
		}
	case adminapi.OpKeyShow, adminapi.OpKeyDelete, adminapi.OpKeyRecover, adminapi.OpKeyExportPublic, adminapi.OpKeyBackup:
		var args adminapi.KeyRef
		if err = decodeArgs(req, &args); err == nil {
			switch req.Op {
			case adminapi.OpKeyShow:
				result, err = a.keyShow(ctx, args)
			case adminapi.OpKeyDelete:
				result, err = a.keyDelete(ctx, args)
			case adminapi.OpKeyRecover:
				result, err = a.keyRecover(ctx, args)
			case adminapi.OpKeyBackup:
				result, err = a.keyBackup(ctx, args)
			default:
				result, err = a.keyExportPublic(ctx, args)
			}
		}
	case adminapi.OpKeyGenerate:
		var args adminapi.KeyGenerate
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.keyGenerate(ctx, args)
		}
	case adminapi.OpKeyImport:
		var args adminapi.KeyImport
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.keyImport(ctx, args)
		}
	case adminapi.OpSecretSet:
		var args adminapi.SecretSet
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.secretSet(ctx, args)
		}
	case adminapi.OpSecretGet:
		var args adminapi.SecretGet
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.secretGet(ctx, args)
		}
	case adminapi.OpSecretList:
		var args adminapi.SecretList
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.secretList(ctx, args)
		}
	case adminapi.OpSecretVersions, adminapi.OpSecretDelete, adminapi.OpSecretRecover:
		var args adminapi.SecretRef
		if err = decodeArgs(req, &args); err == nil {
			switch req.Op {
			case adminapi.OpSecretVersions:
				result, err = a.secretVersionsOp(ctx, args)
			case adminapi.OpSecretDelete:
				result, err = a.secretDelete(ctx, args)
			default:
				result, err = a.secretRecover(ctx, args)
			}
		}
	case adminapi.OpSecretPurge:
		var args adminapi.SecretPurge
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.secretPurge(ctx, args)
		}
	case adminapi.OpRotateToken:
		var args adminapi.RotateToken
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.rotateToken(ctx, args)
		}
	case adminapi.OpRotateMasterBegin:
		var args adminapi.RotateMasterBegin
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.rotateMasterBegin(ctx, args)
		}
	case adminapi.OpRotateMasterFinish:
		result, err = a.rotateMasterFinish(ctx)
	case adminapi.OpRotateMasterAbort:
		err = a.rotateMasterAbort(ctx)
	case adminapi.OpKeyPurge:
		var args adminapi.KeyPurge
		if err = decodeArgs(req, &args); err == nil {
			result, err = a.keyPurge(ctx, args)
		}
	default:
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "unknown admin call %q: this daemon may be older than the command", req.Op)
	}
	if err != nil {
		return nil, s.adminErr(req.Op, err)
	}
	if result == nil {
		result = struct{}{}
	}
	return result, nil
}

func decodeArgs(req adminapi.Request, v any) error {
	if len(req.Args) == 0 {
		return adminapi.Errorf(adminapi.CodeBadRequest, "%s needs arguments", req.Op)
	}
	if err := adminapi.DecodeJSON(req.Args, v); err != nil {
		return adminapi.Errorf(adminapi.CodeBadRequest, "%s: %v", req.Op, err)
	}
	return nil
}

// adminErr turns an error into the admin protocol's, logging what is the
// daemon's fault.
func (s *Server) adminErr(op string, err error) *adminapi.Error {
	var ae *adminapi.Error
	var code ck.Error
	why, reasoned := ck.Reason(err)
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, keystore.ErrNotFound):
		return adminapi.Errorf(adminapi.CodeNotFound, "not found")
	case errors.Is(err, keystore.ErrTokenExists):
		return adminapi.Errorf(adminapi.CodeExists, "a token with that label exists")
	case errors.Is(err, keystore.ErrPINIncorrect):
		return adminapi.Errorf(adminapi.CodePINIncorrect, "the PIN is incorrect; the failure was counted")
	case errors.Is(err, keystore.ErrPINLocked):
		return adminapi.Errorf(adminapi.CodePINLocked, "the PIN is locked after too many failures: `hsmemu pin unlock` or `pin reset` clears it")
	case errors.Is(err, keystore.ErrPINNotInitialized):
		return adminapi.Errorf(adminapi.CodeNotFound, "the user PIN is not set: `hsmemu pin reset` sets it with the SO PIN")
	case errors.Is(err, keystore.ErrRotationPending):
		return adminapi.Errorf(adminapi.CodeInUse, "a master key rotation is under way: `hsmemu rotate master --resume` finishes it")
	case errors.Is(err, keystore.ErrNoRotation):
		return adminapi.Errorf(adminapi.CodeNotFound, "no master key rotation is under way")
	case errors.Is(err, keystore.ErrRotationStarted):
		return adminapi.Errorf(adminapi.CodeRefused, "the master key rotation has begun moving tokens: `hsmemu rotate master --resume` finishes it")
	case errors.Is(err, ErrEscrowNeeded):
		return adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
	case errors.Is(err, keystore.ErrUserPINNeeded):
		return adminapi.Errorf(adminapi.CodeBadRequest, "the token has a user PIN: give it too, the new data key is wrapped under it")
	case errors.Is(err, keystore.ErrPurgeProtected):
		return adminapi.Errorf(adminapi.CodeRefused, "the token has purge protection: it holds objects, live or deleted, whose retention has not ended")
	case errors.Is(err, keystore.ErrTampered):
		s.log.Error("admin call: keystore integrity check failed", "op", op, "err", err)
		return adminapi.Errorf(adminapi.CodeTampered, "the keystore failed an integrity check (see the daemon's log and `hsmemu audit verify`)")
	case reasoned:
		return adminapi.Errorf(adminapi.CodeRefused, "refused: %s", why)
	case errors.As(err, &code):
		switch uint64(code) {
		case ck.CKR_FUNCTION_CANCELED:
			return adminapi.Errorf(adminapi.CodeInternal, "the daemon is stopping")
		case ck.CKR_PIN_INCORRECT:
			return adminapi.Errorf(adminapi.CodePINIncorrect, "the PIN is incorrect; the failure was counted")
		case ck.CKR_PIN_LOCKED:
			return adminapi.Errorf(adminapi.CodePINLocked, "the PIN is locked after too many failures: `hsmemu pin unlock` or `pin reset` clears it")
		case ck.CKR_USER_PIN_NOT_INITIALIZED:
			return adminapi.Errorf(adminapi.CodeNotFound, "the user PIN is not set: `hsmemu pin reset` sets it with the SO PIN")
		case ck.CKR_TEMPLATE_INCONSISTENT, ck.CKR_TEMPLATE_INCOMPLETE, ck.CKR_ATTRIBUTE_VALUE_INVALID,
			ck.CKR_ATTRIBUTE_TYPE_INVALID, ck.CKR_CURVE_NOT_SUPPORTED, ck.CKR_KEY_SIZE_RANGE:
			return adminapi.Errorf(adminapi.CodeBadRequest, "the token refused the key's attributes (CK_RV 0x%x)", uint64(code))
		}
		return adminapi.Errorf(adminapi.CodeRefused, "refused by the token (CK_RV 0x%x)", uint64(code))
	}
	s.log.Error("admin call failed", "op", op, "err", err)
	return adminapi.Errorf(adminapi.CodeInternal, "internal error; the daemon's log says more")
}

// adminOps are the admin calls, acting as who.
type adminOps struct {
	s        *Server
	e        *Engine
	who      keystore.AuditActor
	progress func(done, total int) // reports a long call's progress to the client
}

func (a *adminOps) status(ctx context.Context) (*adminapi.Status, error) {
	info := a.s.cfg.Admin
	st := &adminapi.Status{
		Version:   info.Version,
		Started:   a.s.started,
		UptimeSec: time.Since(a.s.started).Seconds(),
		TPM: adminapi.TPMInfo{Kind: info.TPM.Kind, Path: info.TPM.Path, Manufacturer: info.TPM.Manufacturer,
			Vendor: info.TPM.VendorString, Firmware: info.TPM.FirmwareVersion},
	}
	rec, err := a.e.store.RootRecord(ctx)
	if err != nil {
		return nil, err
	}
	st.Domain, st.Escrowed, st.MasterGeneration, st.RotationPending = rec.DomainID, rec.Escrow != nil, rec.MasterGeneration, rec.Next != nil
	if st.Tokens, err = a.tokenList(ctx); err != nil {
		return nil, err
	}
	st.Apps, st.Sessions = a.e.counts()
	if st.Audit.Records, st.Audit.Head, err = a.e.store.AuditHead(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

func (a *adminOps) token(ti keystore.TokenInfo, objects int64) adminapi.Token {
	all, _ := a.e.sessionCounts(ti.UUID)
	return adminapi.Token{
		Label: ti.Label, Slot: ti.ID, Serial: ti.Serial, Tier: ti.Tier.String(), UUID: ti.UUID.String(),
		Created: ti.Created, Objects: objects, UserPINSet: ti.UserPINSet,
		SOFailures: ti.SOFailures, UserFailures: ti.UserFailures,
		SOLocked: a.e.store.Locked(ti, keystore.RoleSO), UserLocked: a.e.store.Locked(ti, keystore.RoleUser),
		Sessions: int(all), LoggedIn: a.e.store.LoggedIn(ti.UUID),
		RetentionDays: ti.RetentionDays, PurgeProtection: ti.PurgeProtection,
	}
}

func (a *adminOps) tokenList(ctx context.Context) ([]adminapi.Token, error) {
	tis, err := a.e.store.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	counts, err := a.e.store.ObjectCounts(ctx)
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
func (a *adminOps) lookup(ctx context.Context, label string) (keystore.TokenInfo, error) {
	if label == "" {
		return keystore.TokenInfo{}, adminapi.Errorf(adminapi.CodeBadRequest, "no token label given")
	}
	ti, err := a.e.store.TokenByLabel(ctx, label)
	if errors.Is(err, keystore.ErrNotFound) {
		return ti, adminapi.Errorf(adminapi.CodeNotFound, "no token is labelled %q (`hsmemu token list` lists them)", label)
	}
	return ti, err
}

func (a *adminOps) tokenShow(ctx context.Context, label string) (*adminapi.Token, error) {
	ti, err := a.lookup(ctx, label)
	if err != nil {
		return nil, err
	}
	counts, err := a.e.store.ObjectCounts(ctx)
	if err != nil {
		return nil, err
	}
	t := a.token(ti, counts[ti.ID])
	return &t, nil
}

func checkNewPIN(what string, pin []byte) error {
	if len(pin) < minPINLen || len(pin) > maxPINLen {
		return adminapi.Errorf(adminapi.CodePINInvalid, "the %s must be %d to %d bytes, not %d", what, minPINLen, maxPINLen, len(pin))
	}
	return nil
}

func (a *adminOps) tokenCreate(ctx context.Context, args adminapi.TokenCreate) (*adminapi.Token, error) {
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
	ti, err := a.e.store.CreateToken(ctx, keystore.TokenSpec{Label: args.Label, Tier: tier, SOPIN: args.SOPIN, UserPIN: args.UserPIN})
	if errors.Is(err, keystore.ErrTokenExists) {
		return nil, adminapi.Errorf(adminapi.CodeExists, "a token labelled %q exists", args.Label)
	}
	if err != nil {
		return nil, err
	}
	a.e.log.Info("token created", "label", ti.Label, "slot", ti.ID, "tier", ti.Tier.String(), "by_uid", a.who.UID)
	a.e.audit(ctx, a.who, ti.UUID, "token.create", map[string]string{"tier": ti.Tier.String(), "slot": fmt.Sprint(ti.ID), "via": "admin"})
	t := a.token(ti, 0)
	return &t, nil
}

// soCheck checks the token's SO PIN as a login would: the same delays,
// the same count, an audit record of a failure.
func (a *adminOps) soCheck(ctx context.Context, ti keystore.TokenInfo, event string, check func() error) error {
	err := a.e.pinAttempt(ctx, ti.UUID, keystore.RoleSO, check)
	if errors.Is(err, keystore.ErrPINIncorrect) {
		a.e.auditPINFailure(ctx, a.who, ti.UUID, keystore.RoleSO, event+".failure")
	}
	return err
}

func (a *adminOps) tokenDelete(ctx context.Context, args adminapi.TokenDelete) error {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	if all, _ := a.e.sessionCounts(ti.UUID); all > 0 {
		return adminapi.Errorf(adminapi.CodeInUse, "%d sessions are open on token %q: close the applications using it first", all, ti.Label)
	}
	err = a.soCheck(ctx, ti, "token.delete", func() error {
		if err := a.e.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN); err != nil {
			return err
		}
		return a.e.store.DeleteToken(ctx, ti.UUID)
	})
	if err != nil {
		return err
	}
	a.e.mu.Lock()
	delete(a.e.logins, ti.UUID)
	a.e.mu.Unlock()
	a.e.log.Info("token deleted", "label", ti.Label, "slot", ti.ID, "by_uid", a.who.UID)
	who := a.who
	who.Token = ti.Label
	a.e.audit(ctx, who, keystore.UUID{}, "token.delete", map[string]string{"slot": fmt.Sprint(ti.ID), "uuid": ti.UUID.String()})
	return nil
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

func (a *adminOps) pinChange(ctx context.Context, args adminapi.PINChange) error {
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
	err = a.e.pinAttempt(ctx, ti.UUID, role, func() error {
		return a.e.store.SetPIN(ctx, ti.UUID, role, args.Old, args.New)
	})
	if errors.Is(err, keystore.ErrPINIncorrect) {
		a.e.auditPINFailure(ctx, a.who, ti.UUID, role, "pin.change.failure")
	}
	if err != nil {
		return err
	}
	a.e.audit(ctx, a.who, ti.UUID, "pin.change", map[string]string{"role": roleName(role)})
	return nil
}

func (a *adminOps) pinReset(ctx context.Context, args adminapi.PINReset) error {
	if err := checkNewPIN("new user PIN", args.New); err != nil {
		return err
	}
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return err
	}
	err = a.soCheck(ctx, ti, "pin.reset", func() error {
		return a.e.store.ResetUserPIN(ctx, ti.UUID, args.SOPIN, args.New)
	})
	if err != nil {
		return err
	}
	a.e.clearDelay(ti.UUID, keystore.RoleUser)
	a.e.audit(ctx, a.who, ti.UUID, "pin.reset", map[string]string{"role": "user"})
	return nil
}

func (a *adminOps) pinUnlock(ctx context.Context, args adminapi.PINUnlock) error {
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
			return a.e.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN)
		})
		if err != nil {
			return err
		}
	}
	// The SO's own lock is lifted on the administrator's word alone: the
	// peer credentials of the daemon's user or root, who hold the TPM the
	// keys depend on anyway.
	if err := a.e.store.ClearFailures(ctx, ti.UUID, role); err != nil {
		return err
	}
	a.e.clearDelay(ti.UUID, role)
	a.e.audit(ctx, a.who, ti.UUID, "pin.unlock", map[string]string{"role": roleName(role)})
	return nil
}

func auditRecords(recs []keystore.AuditRecord) []adminapi.AuditRecord {
	out := make([]adminapi.AuditRecord, len(recs))
	for i, r := range recs {
		out[i] = adminapi.AuditRecord{Seq: r.Seq, Time: r.Time, Event: r.Event, Detail: r.Detail, PrevHash: r.PrevHash, Hash: r.Hash,
			Actor: adminapi.AuditActor{UID: r.Actor.UID, PID: r.Actor.PID, Token: r.Actor.Token, Role: r.Actor.Role}}
	}
	return out
}

// maxAuditBatch bounds the records of one reply, to stay under the frame
// cap; the client pages through more.
const maxAuditBatch = 1000

func (a *adminOps) auditTail(ctx context.Context, args adminapi.AuditTail) ([]adminapi.AuditRecord, error) {
	if args.N <= 0 || args.N > maxAuditBatch {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "audit.tail takes 1 to %d records, not %d", maxAuditBatch, args.N)
	}
	recs, err := a.e.store.AuditTail(ctx, args.N)
	return auditRecords(recs), err
}

func (a *adminOps) auditRange(ctx context.Context, args adminapi.AuditRange) ([]adminapi.AuditRecord, error) {
	if args.Limit <= 0 || args.Limit > maxAuditBatch {
		args.Limit = maxAuditBatch
	}
	recs, err := a.e.store.AuditRecords(ctx, args.After, args.Limit)
	return auditRecords(recs), err
}

func (a *adminOps) auditVerify(ctx context.Context) (*adminapi.AuditVerify, error) {
	rep, err := a.e.store.VerifyAudit(ctx)
	if err != nil {
		return nil, err
	}
	out := &adminapi.AuditVerify{OK: rep.OK, Records: rep.Records, HeadSeq: rep.HeadSeq, Head: rep.Head, BadSeq: rep.BadSeq, Problem: rep.Problem}
	if !rep.OK {
		a.e.log.Error("audit log verification failed", "problem", rep.Problem)
		a.e.audit(ctx, a.who, keystore.UUID{}, "tamper.detected", map[string]string{"what": "audit log", "problem": rep.Problem})
	}
	return out, nil
}

// counts returns how many applications are attached and how many sessions
// they hold.
func (e *Engine) counts() (apps, sessions int) {
	list := e.appList()
	for _, app := range list {
		app.mu.Lock()
		sessions += len(app.sessions)
		app.mu.Unlock()
	}
	return len(list), sessions
}

// clearDelay forgets the delay a role's failures earned, once its count
// was cleared.
func (e *Engine) clearDelay(token keystore.UUID, role keystore.Role) {
	tl := e.tokenLogin(token)
	tl.attempt.Lock()
	tl.lastFail[role] = time.Time{}
	tl.attempt.Unlock()
}

func (a *adminOps) rotateToken(ctx context.Context, args adminapi.RotateToken) (*adminapi.Rotated, error) {
	defer clear(args.SOPIN)
	defer clear(args.UserPIN)
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return nil, err
	}
	// The user PIN is checked first, as the user's: its own count, delays
	// and audit record.
	if ti.UserPINSet && args.UserPIN != nil {
		err := a.e.pinAttempt(ctx, ti.UUID, keystore.RoleUser, func() error {
			return a.e.store.CheckPIN(ctx, ti.UUID, keystore.RoleUser, args.UserPIN)
		})
		if errors.Is(err, keystore.ErrPINIncorrect) {
			who := a.who
			who.Role = "admin as user"
			a.e.auditPINFailure(ctx, who, ti.UUID, keystore.RoleUser, "rotate.token.failure")
		}
		if err != nil {
			return nil, err
		}
	}
	var n int
	err = a.soCheck(ctx, ti, "rotate.token", func() error {
		var err error
		n, err = a.e.store.RotateDataKey(ctx, ti.UUID, args.SOPIN, args.UserPIN, a.progress)
		return err
	})
	if err != nil {
		return nil, err
	}
	after, err := a.e.store.Token(ctx, ti.UUID)
	if err != nil {
		return nil, err
	}
	a.e.log.Info("token data key rotated", "label", ti.Label, "resealed", n, "generation", after.DataGeneration)
	a.e.audit(ctx, a.who, ti.UUID, "rotate.token", map[string]string{"resealed": fmt.Sprint(n), "data_generation": fmt.Sprint(after.DataGeneration)})
	return &adminapi.Rotated{Label: ti.Label, Resealed: n, DataGeneration: after.DataGeneration}, nil
}

func (a *adminOps) rotateMasterBegin(ctx context.Context, args adminapi.RotateMasterBegin) (*adminapi.MasterBegun, error) {
	st := a.s.cfg.Admin.State
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
	a.e.log.Info("master key rotation begun", "generation", gen, "custodians", len(shares))
	a.e.audit(ctx, a.who, keystore.UUID{}, "rotate.master.begin", map[string]string{"generation": fmt.Sprint(gen), "custodians": fmt.Sprint(len(shares)), "threshold": fmt.Sprint(opts.Threshold)})
	return res, nil
}

func (a *adminOps) rotateMasterFinish(ctx context.Context) (*adminapi.MasterRotated, error) {
	st := a.s.cfg.Admin.State
	if st == nil {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "this daemon does not rotate its master key")
	}
	gen, err := st.FinishMasterRotation(ctx, a.progress)
	if err != nil {
		return nil, err
	}
	a.e.log.Info("master key rotated", "generation", gen)
	a.e.audit(ctx, a.who, keystore.UUID{}, "rotate.master", map[string]string{"generation": fmt.Sprint(gen)})
	return &adminapi.MasterRotated{Generation: gen}, nil
}

func (a *adminOps) rotateMasterAbort(ctx context.Context) error {
	st := a.s.cfg.Admin.State
	if st == nil {
		return adminapi.Errorf(adminapi.CodeBadRequest, "this daemon does not rotate its master key")
	}
	if err := st.AbortMasterRotation(ctx); err != nil {
		return err
	}
	a.e.log.Info("master key rotation aborted")
	a.e.audit(ctx, a.who, keystore.UUID{}, "rotate.master.abort", nil)
	return nil
}
