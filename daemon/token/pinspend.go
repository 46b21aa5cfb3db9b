package token

import (
	"time"

	"hsmemu/cryptoki/ck"
)

// Wrong PINs of remote identities. Every wrong PIN the daemon checks is
// counted by the TPM's dictionary-attack protection, one counter for the
// whole TPM; past its maximum every PIN check of every token waits
// (docs/keychain.md, "Sizing the TPM's dictionary-attack parameters").
// The daemon's lockout stops a role after MaxPINFailures in a row, but
// an SO may unlock its user again and again (C_InitPIN), so a client
// holding one token's SO PIN could spend the TPM's count alone and lock
// every other tenant's logins out. So each remote identity (its Scope's
// name) may have remotePINTries wrong PINs checked, and gets one more
// back every remotePINRefill, the managed TPM's rate of forgiving them:
// with none left, its PIN checks are refused with CKR_PIN_LOCKED before
// they reach the keystore. The count outlives the identity's
// connections. Local clients, whom the daemon trusts by uid, are not
// held to it.
const (
	remotePINTries  = 10
	remotePINRefill = time.Minute
)

// pinSpend is an identity's wrong PINs not yet given back.
type pinSpend struct {
	spent float64
	at    time.Time // when spent was last brought up to date
}

// errRemotePINs is the answer to a PIN check of an identity with no
// wrong PIN left.
var errRemotePINs = ck.Errorf(ck.CKR_PIN_LOCKED, "the client's identity has spent its wrong PINs; one comes back a minute")

// refresh gives back what the time since at forgives. Engine.mu is held.
func (p *pinSpend) refresh(now time.Time) {
	p.spent -= float64(now.Sub(p.at)) / float64(remotePINRefill)
	p.at = now
}

// mayTryPIN says whether sc's identity may have a PIN checked now.
func (e *Engine) mayTryPIN(sc *Scope) error {
	if sc == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pinSpent[sc.Identity]
	if !ok {
		return nil
	}
	p.refresh(time.Now())
	if p.spent <= 0 {
		delete(e.pinSpent, sc.Identity)
		return nil
	}
	if p.spent > remotePINTries-1 {
		e.log.Info("PIN check refused: the remote identity has spent its wrong PINs", "remote", sc.Identity)
		return errRemotePINs
	}
	return nil
}

// spentPIN counts a wrong PIN of sc's identity.
func (e *Engine) spentPIN(sc *Scope) {
	if sc == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	p, ok := e.pinSpent[sc.Identity]
	if !ok {
		p = &pinSpend{at: now}
		e.pinSpent[sc.Identity] = p
	}
	p.refresh(now)
	p.spent = max(p.spent, 0) + 1
}
