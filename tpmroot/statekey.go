package tpmroot

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"hsmemu/tpmroot/internal/swtpm"
)

// A managed swtpm's state at rest. swtpm keeps the TPM's seeds, and so
// everything under them, in files under the state directory: without
// encryption a copy of the directory is a copy of the TPM. With a state
// key (Spec.StateKey, a file outside the directory) swtpm encrypts those
// files, and a copy of the directory without the key opens nothing.

var (
	// ErrStateEncrypted is Open's answer for an encrypted managed state
	// opened without its key.
	ErrStateEncrypted = swtpm.ErrStateEncrypted
	// ErrStateNotEncrypted is Open's answer for a key given with an
	// unencrypted managed state (EncryptState encrypts it).
	ErrStateNotEncrypted = swtpm.ErrStateNotEncrypted
	// ErrWrongStateKey is Open's answer for a key that does not open the
	// managed state.
	ErrWrongStateKey = swtpm.ErrWrongStateKey
)

// NewStateKey writes a fresh state key to path, which must not exist and
// must be outside stateDir, readable by its owner only.
func NewStateKey(path, stateDir string) error {
	if err := swtpm.CheckKeyPlace(path, stateDir); err != nil {
		return err
	}
	if err := swtpm.NewKeyFile(path, rand.Reader); err != nil {
		return err
	}
	if err := swtpm.CheckKeyFile(path, stateDir); err != nil {
		return errors.Join(err, removeKey(path))
	}
	return nil
}

// RemoveStateKey overwrites a key file and removes it.
func RemoveStateKey(path string) error { return removeKey(path) }

func removeKey(path string) error {
	if err := swtpm.RemoveFile(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// CheckStateKey checks a state key file for use with stateDir.
func CheckStateKey(path, stateDir string) error { return swtpm.CheckKeyFile(path, stateDir) }

// StateEncrypted reports whether spec's managed swtpm state exists and
// whether it is encrypted.
func StateEncrypted(spec Spec) (encrypted, exists bool, err error) {
	if spec.Kind != KindManaged {
		return false, false, fmt.Errorf("tpmroot: only a managed swtpm has a state to encrypt, not %s", spec)
	}
	return swtpm.StateEncrypted(spec.swtpmDir())
}

// EncryptState encrypts spec's unencrypted managed swtpm state under the
// key in spec.StateKey. The TPM is the same afterwards; copies of the
// directory made before stay unencrypted (see docs/keychain.md).
func EncryptState(ctx context.Context, spec Spec) error {
	if spec.Kind != KindManaged {
		return fmt.Errorf("tpmroot: only a managed swtpm has a state to encrypt, not %s", spec)
	}
	return swtpm.EncryptState(ctx, swtpm.Config{Dir: spec.swtpmDir(), KeyFile: spec.StateKey})
}
