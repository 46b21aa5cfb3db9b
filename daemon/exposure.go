package daemon

import (
	"context"
	"fmt"
	"time"

	"hsmemu/tpmroot"
)

// What a stolen state directory gives away depends on the TPM: the
// daemon says it at start, one line per case (docs/keychain.md, "What a
// copy of the state directory gives").

// Notice is one line for the daemon's log.
type Notice struct {
	Warn bool // a warning, not news
	Msg  string
}

// Exposure says what a copy of the state directory gives whoever takes
// it, with this TPM, its dictionary-attack state and the keystore's PIN
// records, and what weakens PIN checks.
func (s *State) Exposure(ctx context.Context) []Notice {
	var out []Notice
	add := func(warn bool, format string, args ...any) {
		out = append(out, Notice{Warn: warn, Msg: fmt.Sprintf(format, args...)})
	}
	da, err := s.TPM.DAInfo()
	if err != nil {
		add(true, "the TPM's dictionary-attack state could not be read: %v", err)
	}
	switch s.Spec.Kind {
	case tpmroot.KindManaged:
		copies := "whoever copies the state directory"
		if s.Spec.StateKey != "" {
			add(false, "the managed swtpm's state is encrypted under %s: a copy of the state directory without that file opens nothing", s.Spec.StateKey)
			copies += " and the state key file"
		} else {
			add(true, "the managed swtpm's state is not encrypted: a copy of the state directory is a copy of the TPM; `hsmemu tpm encrypt-state --tpm-state-key FILE` encrypts it")
		}
		add(true, "the managed TPM is a file: %s can copy and roll back the swtpm state, so the TPM's lockout does not bind them: each PIN guess costs them Argon2id, and every %d guesses a swtpm restart from the copy", copies, max(da.MaxTries, 1))
	default:
		switch {
		case err != nil:
		case da.Recovery == 0:
			add(true, "the TPM's dictionary-attack protection is off (its recovery time is 0): PIN guesses with this TPM are bounded only by Argon2id; set it with tpm2_dictionarylockout")
		case !da.LockoutAuthSet:
			add(true, "the TPM's lockout authorisation is not set: anyone with root can reset the TPM's dictionary-attack counter (TPM2_DictionaryAttackLockReset with the empty lockout authorisation) and PIN guesses are then bounded only by Argon2id: set it with tpm2_changeauth -c lockout")
		default:
			add(false, "a copy of the state directory opens nothing without this TPM; with it, %d PIN guesses (over every token and role, %d counted now) then one per %s", da.MaxTries, da.Counter, da.Recovery)
		}
		if err == nil && da.Recovery > 0 && da.MaxTries < 32 {
			add(true, "the TPM locks every PIN check after %d wrong PINs, over every token, and forgives one per %s: honest mistakes on several tokens can lock it (docs/keychain.md, \"Sizing the TPM's dictionary-attack parameters\")", da.MaxTries, da.Recovery)
		}
	}
	if err == nil && da.InLockout {
		add(true, "the TPM's dictionary-attack lockout is active: every PIN check waits, up to %s", da.LockoutLeft().Round(time.Second))
	}
	b := s.Store.PINBinding()
	if !b.Bound {
		add(true, "PIN guesses are not counted by the TPM: %s", b.Why)
	} else if _, unbound, err := s.Store.PINRecords(ctx); err == nil && unbound > 0 {
		add(true, "%d PIN records are not yet bound to the TPM (written before this version): each is rewritten bound at its role's next login; until then it is guessed offline at Argon2id's cost", unbound)
	}
	return out
}
