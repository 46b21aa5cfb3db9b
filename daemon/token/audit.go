package token

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"hsmemu/cryptoki/ck"
	"hsmemu/internal/reqid"
	"hsmemu/keystore"
)

// Security-relevant events go to the keystore's hash-chained audit log
// (keystore/audit.go). Event names are dotted, subject first. Token
// objects' keys are audited from birth to destruction; session objects,
// which die with their session and are a hot path for some clients (an
// ECDH secret per TLS handshake), are not. Reads of sensitive attributes,
// which clients such as pkcs11-tool make by the dozen, are refused but not
// audited; a refused export of an unextractable key is.

// actor is an application's process acting in a role ("" when no one is
// logged in).
// A remote application is named by its certificate's identity.
func actor(app *App, role string) keystore.AuditActor {
	who := keystore.AuditActor{UID: app.UID, PID: app.PID, Role: role}
	if app.Scope != nil {
		who.Remote = app.Scope.Identity
	}
	return who
}

// RoleName names a role as the audit log and the admin protocol do.
func RoleName(r keystore.Role) string {
	if r == keystore.RoleSO {
		return "so"
	}
	return "user"
}

// sessionRole is the role logged in to the session's token, or "".
func sessionRole(app *App, s *session) string {
	if r, in := app.role(s); in {
		return RoleName(r)
	}
	return ""
}

// audit appends a record. A record that cannot be written is logged as an
// error; the call it records has already happened.
func (e *Engine) audit(ctx context.Context, who keystore.AuditActor, token keystore.UUID, event string, detail map[string]string) {
	who = e.tokenActor(ctx, who, token)
	ctx, id := withRequestID(ctx)
	if _, err := e.store.Audit(ctx, who, event, detail); err != nil {
		e.log.Error("audit record not written", "event", event, "request_id", id, "err", err)
		return
	}
	e.logAudited(event, id, who)
}

// withRequestID gives ctx the call's request id, which goes into the
// record's detail (the keystore adds it) and into the log line that ties
// the two together.
func withRequestID(ctx context.Context) (context.Context, string) {
	id := reqid.Ensure(ctx)
	if reqid.From(ctx) != id {
		ctx = reqid.With(ctx, id)
	}
	return ctx, id
}

// logAudited is the log line of a record written.
func (e *Engine) logAudited(event, id string, who keystore.AuditActor) {
	e.log.Info("audited", "event", event, "request_id", id, "pid", who.PID, "token", who.Token)
}

// tokenActor names the token in who, by its label, when the event
// concerns one.
func (e *Engine) tokenActor(ctx context.Context, who keystore.AuditActor, token keystore.UUID) keystore.AuditActor {
	if token != (keystore.UUID{}) && who.Token == "" {
		if ti, err := e.store.Token(ctx, token); err == nil {
			who.Token = ti.Label
		} else {
			who.Token = token.String()
		}
	}
	return who
}

// auditPINFailure records a wrong PIN and, when it locked the role, the
// lockout.
func (e *Engine) auditPINFailure(ctx context.Context, who keystore.AuditActor, token keystore.UUID, role keystore.Role, event string) {
	e.audit(ctx, who, token, event, map[string]string{"role": RoleName(role)})
	if ti, err := e.store.Token(ctx, token); err == nil && e.store.Locked(ti, role) {
		e.log.Warn("PIN locked after too many failures", "token", ti.Label, "role", role.String())
		e.audit(ctx, who, token, "pin.lockout", map[string]string{"role": RoleName(role)})
	}
}

// ObjectEvent names what happened to an object: key.* for keys,
// object.* for the other classes.
func ObjectEvent(class uint64, verb string) string {
	switch class {
	case ck.CKO_SECRET_KEY, ck.CKO_PRIVATE_KEY, ck.CKO_PUBLIC_KEY:
		return "key." + verb
	}
	return "object." + verb
}

// ClassName is a class's name for the audit log.
func ClassName(class uint64) string {
	switch class {
	case ck.CKO_DATA:
		return "data"
	case ck.CKO_CERTIFICATE:
		return "certificate"
	case ck.CKO_PUBLIC_KEY:
		return "public-key"
	case ck.CKO_PRIVATE_KEY:
		return "private-key"
	case ck.CKO_SECRET_KEY:
		return "secret-key"
	}
	return "other"
}

// ObjectDetail describes an object for the audit log: its identity, class,
// key type, label and CKA_ID, never a value.
func ObjectDetail(uuid keystore.UUID, class uint64, m map[uint64][]byte) map[string]string {
	d := map[string]string{"object": uuid.String(), "class": ClassName(class)}
	if kt, ok := m[ck.CKA_KEY_TYPE]; ok && len(kt) == 8 {
		d["key_type"] = fmt.Sprintf("0x%x", binary.BigEndian.Uint64(kt))
	}
	if l, ok := m[ck.CKA_LABEL]; ok && len(l) > 0 {
		d["label"] = string(l)
	}
	if id, ok := m[ck.CKA_ID]; ok && len(id) > 0 {
		d["id"] = hex.EncodeToString(id)
	}
	return d
}

// DeletedDetail describes a deleted object for the audit log, as
// ObjectDetail does a live one.
func DeletedDetail(d keystore.Deleted) map[string]string {
	detail := map[string]string{"object": d.UUID.String(), "class": ClassName(d.Class)}
	if len(d.Label) > 0 {
		detail["label"] = string(d.Label)
	}
	if len(d.CKAID) > 0 {
		detail["id"] = hex.EncodeToString(d.CKAID)
	}
	return detail
}
