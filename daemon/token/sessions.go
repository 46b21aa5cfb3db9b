package token

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// session is one PKCS#11 session. Its own lock guards the operation in
// progress; the App's lock guards the tables.
type session struct {
	handle uint64
	slot   uint64
	token  keystore.UUID
	rw     bool

	tier atomic.Uint32 // the token's keystore.Tier once read; 0 before
	mem  sessCharge    // where its search is charged (sessmem.go)

	mu   sync.Mutex
	find *findOp
	ops  [opKinds]*operation
	msgs *[msgKinds]*msgOp // message-based processes; nil until the first
	auth authClock         // orders the waits for a context-specific login
}

// SessionIdle says whether session h of app exists and has no
// operation in progress (the reply's idle flag, docs/protocol.md).
func (app *App) SessionIdle(h uint64) bool { return app.SessionIdleBut(h, 0) }

// SessionIdleBut is SessionIdle not counting the operations of kinds but,
// whose output the reply hands to the module in full: the module holds it
// and ends them itself (docs/protocol.md, "Results ahead of the follow-up
// call").
func (app *App) SessionIdleBut(h uint64, but calls.OpKinds) bool {
	s, err := app.session(h)
	if err != nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, op := range s.ops {
		// opKind i is calls.OpKinds bit i (opKindsMatch checks it).
		if op != nil && but&(1<<i) == 0 {
			return false
		}
	}
	return true
}

// session looks up a session handle of app.
func (app *App) session(h uint64) (*session, error) {
	app.mu.Lock()
	defer app.mu.Unlock()
	s, ok := app.sessions[h]
	if !ok {
		return nil, ck.Error(ck.CKR_SESSION_HANDLE_INVALID)
	}
	return s, nil
}

// role returns who app is logged in as on s's token, if anyone.
func (app *App) role(s *session) (keystore.Role, bool) {
	app.mu.Lock()
	defer app.mu.Unlock()
	r, ok := app.login[s.token]
	return r, ok
}

// isSO reports whether app is logged in as the security officer on s's
// token.
func (app *App) isSO(s *session) bool {
	r, in := app.role(s)
	return in && r == keystore.RoleSO
}

// openSession opens a session on the token in slot.
func (e *Engine) openSession(ctx context.Context, app *App, slot, flags uint64) (uint64, error) {
	if flags&ck.CKF_SERIAL_SESSION == 0 {
		return 0, ck.Error(ck.CKR_SESSION_PARALLEL_NOT_SUPPORTED)
	}
	ti, err := e.token(ctx, app, slot)
	if err != nil {
		return 0, err
	}
	rw := flags&ck.CKF_RW_SESSION != 0
	app.mu.Lock()
	defer app.mu.Unlock()
	if r, ok := app.login[ti.UUID]; ok && r == keystore.RoleSO && !rw {
		return 0, ck.Error(ck.CKR_SESSION_READ_WRITE_SO_EXISTS)
	}
	if len(app.sessions) >= e.cfg.MaxSessions {
		return 0, ck.Error(ck.CKR_SESSION_COUNT)
	}
	// A remote identity's applications share its session limit.
	if err := app.Scope.takeSession(); err != nil {
		return 0, err
	}
	// All applications together: each may open MaxSessions, and a
	// local account may run a thousand of them.
	if n := e.allSessions.Add(1); n > int64(e.cfg.MaxAllSessions) {
		e.allSessions.Add(-1)
		app.Scope.dropSession()
		return 0, ck.Error(ck.CKR_SESSION_COUNT)
	}
	app.nextSession++
	h := app.nextSession
	app.sessions[h] = &session{handle: h, slot: slot, token: ti.UUID, rw: rw, mem: e.sessCharge(app)}
	return h, nil
}

// closeSession closes a session: its session objects go with it, and the
// application's login on the token ends with its last session there.
func (e *Engine) closeSession(ctx context.Context, app *App, h uint64) error {
	// Unlocked however it ends: the logout below reaches the keystore,
	// and a panic there left with the lock held would stop every later
	// call of the application.
	app.mu.Lock()
	defer app.mu.Unlock()
	s, ok := app.sessions[h]
	if !ok {
		return ck.Error(ck.CKR_SESSION_HANDLE_INVALID)
	}
	delete(app.sessions, h)
	app.Scope.dropSession()
	e.allSessions.Add(-1)
	s.endOps()
	for oh, ref := range app.memHandles {
		if ref.mem.owner == h {
			app.dropHandle(oh)
		}
	}
	last := true
	for _, other := range app.sessions {
		if other.token == s.token {
			last = false
		}
	}
	if last {
		e.noteLogout(app, s.token)
	}
	return nil
}

// closeAllSessions closes every session of app on the token in slot.
func (e *Engine) closeAllSessions(ctx context.Context, app *App, slot uint64) error {
	ti, err := e.token(ctx, app, slot)
	if err != nil {
		return err
	}
	app.mu.Lock()
	var hs []uint64
	for h, s := range app.sessions {
		if s.token == ti.UUID {
			hs = append(hs, h)
		}
	}
	app.mu.Unlock()
	for _, h := range hs {
		e.closeSession(ctx, app, h)
	}
	return nil
}

// sessionInfo describes a session; its state follows the application's
// login on the token.
func (e *Engine) sessionInfo(ctx context.Context, app *App, h uint64) (*wire.SessionInfo, error) {
	s, err := app.session(h)
	if err != nil {
		return nil, err
	}
	info := &wire.SessionInfo{SlotID: s.slot, Flags: ck.CKF_SERIAL_SESSION}
	if s.rw {
		info.Flags |= ck.CKF_RW_SESSION
	}
	role, in := app.role(s)
	switch {
	case in && role == keystore.RoleSO:
		info.State = ck.CKS_RW_SO_FUNCTIONS
	case in && s.rw:
		info.State = ck.CKS_RW_USER_FUNCTIONS
	case in:
		info.State = ck.CKS_RO_USER_FUNCTIONS
	case s.rw:
		info.State = ck.CKS_RW_PUBLIC_SESSION
	default:
		info.State = ck.CKS_RO_PUBLIC_SESSION
	}
	return info, nil
}

// login logs app in to the session's token.
func (e *Engine) login(ctx context.Context, app *App, h, userType uint64, pin []byte, pinNull bool) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	var role keystore.Role
	switch userType {
	case ck.CKU_SO:
		role = keystore.RoleSO
	case ck.CKU_USER:
		role = keystore.RoleUser
	case ck.CKU_CONTEXT_SPECIFIC:
		// The user, logged in, gives the PIN again for an operation on a
		// key with CKA_ALWAYS_AUTHENTICATE.
		if r, in := app.role(s); !in || r != keystore.RoleUser {
			return ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
		}
		if pinNull {
			return ck.Error(ck.CKR_ARGUMENTS_BAD)
		}
		return contextLogin(s, func() error {
			err := e.pinAttempt(ctx, app.Scope, s.token, keystore.RoleUser, func() error {
				return e.store.Login(ctx, s.token, keystore.RoleUser, pin)
			})
			if errors.Is(err, keystore.ErrPINIncorrect) {
				e.auditPINFailure(ctx, actor(app, "user"), s.token, keystore.RoleUser, "login.failure")
			}
			return err
		})
	default:
		return ck.Error(ck.CKR_USER_TYPE_INVALID)
	}
	if pinNull {
		// No protected authentication path.
		return ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	app.mu.Lock()
	if cur, in := app.login[s.token]; in {
		app.mu.Unlock()
		if cur == role {
			return ck.Error(ck.CKR_USER_ALREADY_LOGGED_IN)
		}
		return ck.Error(ck.CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
	}
	if role == keystore.RoleSO {
		for _, o := range app.sessions {
			if o.token == s.token && !o.rw {
				app.mu.Unlock()
				return ck.Error(ck.CKR_SESSION_READ_ONLY_EXISTS)
			}
		}
	}
	app.mu.Unlock()

	tl := e.tokenLogin(s.token)
	tl.attempt.Lock()
	defer tl.attempt.Unlock()
	if err := e.waitAfterFailures(ctx, tl, role, s.token); err != nil {
		return err
	}
	if err := e.mayTryPIN(app.Scope); err != nil {
		return err
	}
	for try := 0; ; try++ {
		ended := e.reserveLogin(s.token)
		again, err := e.login1(ctx, app, s, h, role, pin, tl, ended)
		if !again {
			return err
		}
		// Every login on the token was ended (a logout of every daemon)
		// between the PIN check and this login's taking effect, which it
		// would not survive: made again, it comes after the logout.
		e.releaseLogin(s.token)
		if try >= loginRetries {
			e.log.Warn("login refused: every login on the token was ended while it was made, again and again", "token", s.token.String(), "pid", app.PID)
			return ck.Error(ck.CKR_FUNCTION_FAILED)
		}
	}
}

// loginRetries bounds how often a login is made again because every
// login on its token was ended while it was made.
const loginRetries = 3

// login1 checks the PIN and, when it is right, records app's login on
// the session's token: once, unless every login on the token was ended
// meanwhile (again: the caller releases the login and makes it again).
// reserveLogin was called; on an error, the reservation is released.
func (e *Engine) login1(ctx context.Context, app *App, s *session, h uint64, role keystore.Role, pin []byte, tl *tokenLogin, ended uint64) (again bool, err error) {
	// A panic before the login is recorded (in the PIN check, a library's
	// on what the keystore holds) releases the reservation, as an error
	// does: kept, it would count an application in on the token for
	// ever, and the last logout would never close the data key.
	reserved := true
	defer func() {
		if p := recover(); p != nil {
			if reserved {
				e.releaseLogin(s.token)
			}
			panic(p)
		}
	}()
	err = e.store.Login(ctx, s.token, role, pin)
	who := actor(app, RoleName(role))
	if errors.Is(err, keystore.ErrPINIncorrect) {
		e.afterFailure(tl, role, s.token)
		e.spentPIN(app.Scope)
		e.auditPINFailure(ctx, who, s.token, role, "login.failure")
	}
	// Refusals that need no PIN are recorded, and logged, at most once
	// a while (refusals.go).
	if errors.Is(err, keystore.ErrPINLocked) && e.auditRefusal(ctx, who, s.token, "login.locked") {
		e.log.Warn("login refused: PIN locked", "token", s.token.String(), "role", role.String(), "pid", app.PID)
	}
	if errors.Is(err, keystore.ErrTPMLockout) && e.auditRefusal(ctx, who, s.token, "login.tpm-lockout") {
		e.log.Warn("login refused: the TPM's dictionary-attack lockout is active (too many wrong PINs, over every token)",
			"token", s.token.String(), "role", role.String(), "pid", app.PID, "err", err)
	}
	if errors.Is(err, keystore.ErrNotLoggedIn) {
		// The keystore's own retries ran out the same way.
		e.log.Warn("login refused: every login on the token was ended while it was made, again and again", "token", s.token.String(), "pid", app.PID)
		err = ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	if err != nil {
		e.releaseLogin(s.token)
		return false, err
	}
	app.mu.Lock()
	if _, ok := app.sessions[h]; !ok {
		// The session closed while the PIN was checked.
		app.mu.Unlock()
		e.releaseLogin(s.token)
		return false, ck.Error(ck.CKR_SESSION_CLOSED)
	}
	if _, in := app.login[s.token]; in {
		app.mu.Unlock()
		e.releaseLogin(s.token)
		return false, ck.Error(ck.CKR_USER_ALREADY_LOGGED_IN)
	}
	if e.loginsEnded(s.token) != ended {
		app.mu.Unlock()
		return true, nil
	}
	app.login[s.token] = role
	app.loginAfter[s.token] = ended
	reserved = false // the login's now
	app.mu.Unlock()
	e.audit(ctx, who, s.token, "login.success", nil)
	return false, nil
}

// waitAfterFailures holds a PIN check back until the delay that the role's
// failures so far have earned has passed.
func (e *Engine) waitAfterFailures(ctx context.Context, tl *tokenLogin, role keystore.Role, token keystore.UUID) error {
	ti, err := e.store.Token(ctx, token)
	if err != nil {
		return err
	}
	n := ti.UserFailures
	if role == keystore.RoleSO {
		n = ti.SOFailures
	}
	wait := time.Until(tl.lastFail[role].Add(e.failureDelay(n)))
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-e.quit:
		return ck.Error(ck.CKR_FUNCTION_CANCELED)
	}
}

// pinAttempt runs check, a check of role's PIN on the token, under the
// token's attempt lock and after the delay earned by earlier failures, and
// starts the next delay when the PIN was wrong. sc is the scope of the
// client whose PIN it is (nil for a local one, or the administrator).
func (e *Engine) pinAttempt(ctx context.Context, sc *Scope, token keystore.UUID, role keystore.Role, check func() error) error {
	tl := e.tokenLogin(token)
	tl.attempt.Lock()
	defer tl.attempt.Unlock()
	if err := e.waitAfterFailures(ctx, tl, role, token); err != nil {
		return err
	}
	if err := e.mayTryPIN(sc); err != nil {
		return err
	}
	err := check()
	if errors.Is(err, keystore.ErrPINIncorrect) {
		e.afterFailure(tl, role, token)
		e.spentPIN(sc)
	}
	return err
}

// afterFailure records a failed PIN check. tl.attempt is held.
func (e *Engine) afterFailure(tl *tokenLogin, role keystore.Role, token keystore.UUID) {
	tl.lastFail[role] = time.Now()
	e.log.Warn("PIN incorrect", "token", token.String(), "role", role.String())
}

// logout ends app's login on the session's token.
func (e *Engine) logout(ctx context.Context, app *App, h uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	app.mu.Lock()
	defer app.mu.Unlock()
	if _, in := app.login[s.token]; !in {
		return ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
	}
	e.noteLogout(app, s.token)
	return nil
}

// initPIN sets the user PIN; the SO must be logged in, in a R/W session.
func (e *Engine) initPIN(ctx context.Context, app *App, h uint64, pin []byte) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	if role, in := app.role(s); !in || role != keystore.RoleSO || !s.rw {
		return ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
	}
	if len(pin) < MinPINLen || len(pin) > MaxPINLen {
		return ck.Error(ck.CKR_PIN_LEN_RANGE)
	}
	if err := e.store.InitPIN(ctx, s.token, pin); err != nil {
		return err
	}
	e.log.Info("user PIN set by the SO", "token", s.token.String())
	e.audit(ctx, actor(app, "so"), s.token, "pin.init", map[string]string{"role": "user"})
	return nil
}

// setPIN changes the PIN of whoever is logged in (the user's when no one
// is), in a R/W session.
func (e *Engine) setPIN(ctx context.Context, app *App, h uint64, oldPIN, newPIN []byte) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	if !s.rw {
		return ck.Error(ck.CKR_SESSION_READ_ONLY)
	}
	if len(newPIN) < MinPINLen || len(newPIN) > MaxPINLen {
		return ck.Error(ck.CKR_PIN_LEN_RANGE)
	}
	role := keystore.RoleUser
	if r, in := app.role(s); in {
		role = r
	}
	err = e.pinAttempt(ctx, app.Scope, s.token, role, func() error {
		return e.store.SetPIN(ctx, s.token, role, oldPIN, newPIN)
	})
	who := actor(app, sessionRole(app, s))
	if errors.Is(err, keystore.ErrPINIncorrect) {
		e.auditPINFailure(ctx, who, s.token, role, "pin.change.failure")
	}
	if err == nil {
		e.log.Info("PIN changed", "token", s.token.String(), "role", role.String())
		e.audit(ctx, who, s.token, "pin.change", map[string]string{"role": RoleName(role)})
	}
	return err
}
