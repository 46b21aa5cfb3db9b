package tpmroot

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"

	"hsmemu/tpmroot/escrow"
)

// PIN recovery keys. A PIN record's secret is sealed in one TPM
// (fixedTPM), and recovering the domain into a new TPM must bring it
// along: so each record also carries a recovery copy of the secret and its
// authorisation, encrypted to an X25519 public key of the domain's current
// master key. The private key is
//
//	X25519 scalar = HKDF-Extract(salt "hsmemu/pin-recovery/v1", IKM = master secret)
//	             = HMAC-SHA256(key "hsmemu/pin-recovery/v1", message = master secret)
//
// which the TPM cannot compute: TPM2_HMAC is an HMAC keyed by the master
// secret, over a message we choose; this is an HMAC keyed by a constant
// over the master secret, which only someone holding the secret itself
// computes. The secret exists outside the TPM only at provisioning, at a
// rotation (a new one) and at recovery, from the custodians' shares: so
// whoever holds the database and the TPM, root included, cannot open a
// recovery copy, and the PIN stays behind the TPM's dictionary-attack
// protection. A quorum of custodians can open them, as they can recreate
// the master key.

const (
	pinRecoveryLabel    = "hsmemu/pin-recovery/v1"
	pinRecoveryMACLabel = "hsmemu/pin-recovery-public/v1"
)

// recoveryKey derives the PIN recovery key from a master secret.
func recoveryKey(secret []byte) (*ecdh.PrivateKey, error) {
	seed, err := hkdf.Extract(sha256.New, secret, []byte(pinRecoveryLabel))
	if err != nil {
		return nil, err
	}
	defer clear(seed)
	return ecdh.X25519().NewPrivateKey(seed)
}

// recoveryMAC is the MAC Sealed carries over the recovery public key:
// TPM2_HMAC(master, label ‖ public), here computed from the secret.
func recoveryMAC(secret, public []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(recoveryMACInput(public))
	return m.Sum(nil)
}

func recoveryMACInput(public []byte) []byte {
	return append([]byte(pinRecoveryMACLabel), public...)
}

// RecoveryKey recombines custodians' decrypted shares (at least their
// threshold, of one master key) and derives that master key's PIN recovery
// private key, wiping the secret. Errors wrap escrow.ErrNotEnoughShares or
// escrow.ErrShareMismatch as Combine's do. Domain recovery uses it to open
// PIN records' recovery copies; it makes nothing in any TPM.
func RecoveryKey(shares []*escrow.Share) (*ecdh.PrivateKey, error) {
	secret, err := escrow.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: recovering a master secret: %w", err)
	}
	defer clear(secret)
	if len(secret) != secretSize {
		return nil, fmt.Errorf("tpmroot: recovered a %d-byte master secret, want %d", len(secret), secretSize)
	}
	return recoveryKey(secret)
}

// PINRecoveryKey returns the master key's PIN recovery public key, checked
// through the TPM at Load; nil for a master key sealed before there were
// any (Sealed version 1).
func (r *Root) PINRecoveryKey() *ecdh.PublicKey { return r.recovery }
