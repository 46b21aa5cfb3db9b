package token

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// What the administrator's calls (daemon/admin) use of the engine: acting
// as a token's user, a PIN check counted and delayed like a login's,
// forgetting a deleted token, session counts, and the audit log. The
// engine's state stays its own: admin sees none of its fields.

// UserSession is the administrator acting as a token's user: an
// application of its own, with one read-write session, logged in with the
// user PIN like any other (the same failure count, delays and audit
// records). Objects it makes go through the calls an application makes,
// so every attribute rule, the token's tier and the audit log apply.
type UserSession struct {
	e   *Engine
	app *App
	h   uint64
}

// AsUser runs f as ti's user, logged in with pin, on behalf of who (the
// administrator's process); the login ends when f returns. The login is
// counted like an application's, so it never closes the token under one.
func (e *Engine) AsUser(ctx context.Context, ti keystore.TokenInfo, who keystore.AuditActor, pin []byte, f func(u *UserSession) error) error {
	var id AppID
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	app, _ := e.Attach(id, who.PID, who.UID)
	defer e.Detach(app)
	h, err := e.openSession(ctx, app, uint64(ti.ID), ck.CKF_SERIAL_SESSION|ck.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	if err := e.login(ctx, app, h, ck.CKU_USER, pin, false); err != nil {
		return err
	}
	return f(&UserSession{e: e, app: app, h: h})
}

// CreateObject is C_CreateObject; it returns the new object's handle.
func (u *UserSession) CreateObject(ctx context.Context, tmpl []keystore.Attribute) (uint64, error) {
	return u.e.createObject(ctx, u.app, u.h, tmpl)
}

// GenerateKey is C_GenerateKey.
func (u *UserSession) GenerateKey(ctx context.Context, m *wire.Mechanism, tmpl []keystore.Attribute) (uint64, error) {
	return u.e.generateKey(ctx, u.app, u.h, m, tmpl)
}

// GenerateKeyPair is C_GenerateKeyPair; it returns the public and the
// private key's handles.
func (u *UserSession) GenerateKeyPair(ctx context.Context, m *wire.Mechanism, pub, priv []keystore.Attribute) (uint64, uint64, error) {
	return u.e.generateKeyPair(ctx, u.app, u.h, m, pub, priv)
}

// DestroyObject is C_DestroyObject.
func (u *UserSession) DestroyObject(ctx context.Context, h uint64) error {
	return u.e.destroyObject(ctx, u.app, u.h, h)
}

// Stored returns the keystore object behind a handle of a token object.
func (u *UserSession) Stored(ctx context.Context, h uint64) (*keystore.Object, error) {
	u.app.mu.Lock()
	ref, ok := u.app.handles[h]
	u.app.mu.Unlock()
	if !ok || ref.mem != nil {
		return nil, errors.New("token: a handle of no token object")
	}
	return u.e.store.Open(ctx, ref.id)
}

// PINAttempt runs check, a check of role's PIN on the token, as a login's
// check runs: one at a time per token, after the delay earlier failures
// earned, starting the next delay when the PIN was wrong.
func (e *Engine) PINAttempt(ctx context.Context, token keystore.UUID, role keystore.Role, check func() error) error {
	return e.pinAttempt(ctx, nil, token, role, check)
}

// ClearDelay forgets the delay a role's failures earned, once its count
// was cleared (pin reset, pin unlock).
func (e *Engine) ClearDelay(token keystore.UUID, role keystore.Role) {
	tl := e.tokenLogin(token)
	tl.attempt.Lock()
	tl.lastFail[role] = time.Time{}
	tl.attempt.Unlock()
}

// ForgetToken drops what the engine keeps of a deleted token.
func (e *Engine) ForgetToken(token keystore.UUID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.logins, token)
}

// SessionCounts counts the open sessions on a token, over all
// applications: all of them, and the read-write ones.
func (e *Engine) SessionCounts(token keystore.UUID) (all, rw uint64) {
	return e.sessionCounts(token)
}

// Counts returns how many applications are attached and how many sessions
// they hold.
func (e *Engine) Counts() (apps, sessions int) {
	list := e.appList()
	for _, app := range list {
		app.mu.Lock()
		sessions += len(app.sessions)
		app.mu.Unlock()
	}
	return len(list), sessions
}

// Audit appends a record to the audit log (a failure to write it is
// logged; the act it records has happened).
func (e *Engine) Audit(ctx context.Context, who keystore.AuditActor, token keystore.UUID, event string, detail map[string]string) {
	e.audit(ctx, who, token, event, detail)
}

// AuditPINFailure records a wrong PIN and, when it locked the role, the
// lockout.
func (e *Engine) AuditPINFailure(ctx context.Context, who keystore.AuditActor, token keystore.UUID, role keystore.Role, event string) {
	e.auditPINFailure(ctx, who, token, role, event)
}

// Handle returns the session's handle for a token object of its token, as
// C_FindObjects would give it. It is taken as a private object's: it ends
// with the login, which outlasts the administrator's call.
func (u *UserSession) Handle(token keystore.UUID, id keystore.ObjectID) uint64 {
	u.app.mu.Lock()
	defer u.app.mu.Unlock()
	return u.app.tokenHandle(token, id, true)
}

// Sign is C_SignInit and C_Sign with the key behind handle: the key is
// used where it is, under every rule an application's signature meets
// (CKA_SIGN, CKA_ALLOWED_MECHANISMS, the token's tier), and never leaves.
func (u *UserSession) Sign(ctx context.Context, m *wire.Mechanism, key uint64, data []byte) ([]byte, error) {
	if err := u.e.opInit(ctx, u.app, u.h, opSign, m, key); err != nil {
		return nil, err
	}
	var sig []byte
	err := withOp(u.app, u.h, opSign, func(op *operation) (bool, error) {
		if err := op.signer.Update(data); err != nil {
			return true, err
		}
		var err error
		sig, err = op.signer.Sign()
		return true, err
	})
	return sig, err
}
