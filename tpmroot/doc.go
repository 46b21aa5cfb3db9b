// Package tpmroot is the root of hsmemu's key chain: it opens a TPM 2.0
// (a device, a running swtpm, or a swtpm it manages itself), holds the
// master key inside it, and derives key-encryption keys from it.
//
// # The chain at this level
//
//	TPM owner hierarchy
//	 └─ SRK: ECC P-256 storage key, standard template, recreated at every Open
//	     └─ master key: keyedhash HMAC-SHA256, fixedTPM | fixedParent,
//	        created from a 32-byte secret we supply, stored outside as Sealed
//	     │   ├─ domain id = TPM2_HMAC(master key, "hsmemu/domain/v1")
//	     │   └─ KEK(label) = TPM2_HMAC(master key, label)
//	     ├─ PIN-bound secrets: sealed data objects, one per PIN record,
//	     │  not noDA, authorised by a value derived from the PIN (pinseal.go)
//	     └─ import key (importkey.go)
//	         └─ a master key imported from another node's duplication
//	            blob, fixedTPM | fixedParent clear (masterdup.go)
//
// Beside the master key, Sealed (version 2) records its PIN recovery public
// key, an X25519 key whose private half is derived from the master secret
// in software, never by the TPM (pinrecovery.go).
//
// # Why each choice
//
// No persistent handles. The SRK is recreated with TPM2_CreatePrimary from
// the TCG's standard ECC template every time a TPM is opened. The owner
// seed makes it the same key each time, so there is nothing to store in the
// TPM's NV memory, no handle to collide with other software, nothing to
// clean up, and no owner password needed on a stock TPM. The SRK's name is
// the TPM's identity: Sealed records it, and a keystore brought to another
// TPM (or to this one after TPM2_Clear) fails with ErrWrongTPM before
// anything is sent to the TPM.
//
// One NV index: the anchor counter (counter.go). The keystore is a file,
// and a file can be put back as it was; a TPM NV counter only goes up. Each
// domain's keystore is anchored in one counter, at an owner-range handle
// derived from the domain id, that only the daemon's authorisation
// increments. It is the one thing hsmemu keeps in the TPM's NV memory, and
// this package can define, read and increment it, never write, decrement
// or delete it.
//
// A supplied secret, so escrow is possible. Provision generates the master
// secret itself and creates the master key from it with TPM2_Create
// (sensitiveDataOrigin clear). At that moment, and only then, the secret
// can be split to custodians (package escrow); then it is wiped. The key is
// fixedTPM | fixedParent: the TPM will never duplicate or export it, so the
// escrow shares are its only copy outside this TPM, and Recover uses a
// quorum of them to create the very same HMAC key in a new TPM. Without
// custodians (Provisioned.Escrowed false) the keys die with this TPM.
//
// Salted sessions. The two commands that carry a secret, TPM2_Create with
// the master secret going in and TPM2_HMAC with a KEK coming out, run in a
// one-use HMAC session salted with the SRK, with AES-128-CFB parameter
// encryption in the direction of the secret. Someone who can read the bus
// to a discrete TPM, or the socket to swtpm, sees ciphertext only. (The
// salt is encrypted to the SRK as the TPM reports it; defeating an active
// impostor TPM would need SRK attestation, which is not done here.)
//
// PINs counted by the TPM. The master key is noDA: it has no authorisation
// value to guess. PIN checks are what an attacker guesses, so each one
// goes through an object that is DA-protected: the TPM counts every wrong
// authorisation and, past its maximum, refuses them all until the counter
// drains (DAInfo, ConfigureDA).
//
// Derived keys only. The master key never leaves the TPM; the daemon holds
// KEKs derived from it, each a TPM2_HMAC over a label. The domain id is the
// same HMAC over escrow.DomainLabel: it names the domain without revealing
// anything, and Load recomputes it through the TPM to make sure the key it
// loaded is the one the keystore was made with.
//
// # Talking to the TPM
//
// A device uses go-tpm's linuxtpm transport: a TPM character device returns
// a whole response per read. swtpm's socket is a byte stream, so it gets a
// transport that reads the 10-byte response header and then exactly the
// size the header declares, capped and under a deadline. Nothing sends
// simulator power-on or NV-on commands: swtpm is run with
// --flags not-need-init,startup-clear. A managed swtpm also runs with
// --terminate, so it exits when its one client's connection closes, even if
// the daemon is killed; Close sends TPM2_Shutdown(CLEAR) first so swtpm's
// state is saved cleanly.
//
// One connection, one mutex: every command of a TPM and its Roots is
// serialised, and all methods are safe for concurrent use.
//
// A TPM that goes away under a running daemon is reconnected to, a
// managed swtpm started again, and the master keys reloaded from their
// sealed forms (health.go says how); meanwhile commands fail with
// ErrUnavailable, and TPM.Health says why.
package tpmroot
