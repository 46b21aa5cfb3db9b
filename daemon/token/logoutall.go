package token

import (
	"context"

	"hsmemu/keystore"
)

// The administrator's logout of every daemon (docs/cluster.md, "A logout
// of every daemon"), and the engine's side of any login the keystore
// ends on its own.

// LogoutAll ends every login of the token on every daemon of the
// keystore: the keystore moves the token's login epoch, which ends the
// other daemons' logins within the invalidation bound, and this daemon's
// sessions on the token are in the public state when it returns. It
// returns the token's new login epoch and how many applications here were
// logged in.
func (e *Engine) LogoutAll(ctx context.Context, token keystore.UUID) (uint32, int, error) {
	epoch, err := e.store.LogoutAll(ctx, token)
	if err != nil {
		return 0, 0, err
	}
	return epoch, e.endLogins(token, e.countEnded(token)), nil
}

// countEnded counts an end of every login on the token and returns the
// new count: a login whose PIN check began before it is made again
// (login), and endLogins with the count ends the logins begun before it.
func (e *Engine) countEnded(token keystore.UUID) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	tl := e.loginOf(token)
	tl.ended++
	return tl.ended
}

// endLogin ends app's login on the token if it began before the end of
// every login numbered n. app.mu is released however it ends: the logout
// reaches the keystore, and a panic there left with the lock held would
// stop every later call of the application.
func (e *Engine) endLogin(app *App, token keystore.UUID, n uint64) bool {
	app.mu.Lock()
	defer app.mu.Unlock()
	if _, in := app.login[token]; in && app.loginAfter[token] < n {
		e.noteLogout(app, token)
		return true
	}
	return false
}

// endLogins ends every application's login on the token begun before the
// end of every login numbered n (countEnded), as C_Logout would: their
// operations on private objects end, their private session objects go.
// It returns how many applications were logged in.
func (e *Engine) endLogins(token keystore.UUID, n uint64) int {
	ended := 0
	for _, app := range e.appList() {
		if e.endLogin(app, token, n) {
			ended++
		}
	}
	if ended > 0 {
		e.log.Info("sessions logged out: the token's logins were ended", "token", token.String(), "applications", ended)
	}
	return ended
}
