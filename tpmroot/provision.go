package tpmroot

import (
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot/escrow"
)

// secretSize is the size of the master secret: a 256-bit HMAC-SHA256 key.
const secretSize = 32

// ProvisionOptions says how to escrow a new master key.
type ProvisionOptions struct {
	// Custodians receive one share each of the master secret. None means
	// the master key is not escrowed and dies with this TPM.
	Custodians []escrow.Custodian
	// Threshold is how many custodians' shares recreate the master secret
	// (1 to len(Custodians)). Zero without custodians.
	Threshold int
	// ImportKeys are other nodes' import keys (ImportKey encodings): a
	// duplication blob of the new master key is made for each
	// (masterdup.go), in Provisioned.Duplicates.
	ImportKeys [][]byte
}

// Provisioned is what Provision returns for the caller to persist and hand
// out.
type Provisioned struct {
	Sealed *Sealed
	// Shares are the custodians' encrypted shares, one each; nil without
	// custodians.
	Shares []escrow.EncryptedShare
	// Escrow describes the split; nil without custodians.
	Escrow *escrow.Metadata
	// Duplicates are the master key's duplication blobs for
	// ProvisionOptions.ImportKeys, in their order; nil for an import key
	// that is none (DuplicateErr says why).
	Duplicates   [][]byte
	DuplicateErr []error
}

// Escrowed reports whether the master secret was split to custodians. When
// it was not, the keys die with this TPM: a failed TPM, a TPM2_Clear or a
// lost swtpm state directory makes every key in the keystore unrecoverable.
func (p *Provisioned) Escrowed() bool {
	return p != nil && p.Escrow != nil && len(p.Shares) > 0
}

// masterTemplate is the public area of the master key: an HMAC-SHA256
// keyedhash signing key.
//
//   - fixedTPM | fixedParent: the TPM will never duplicate it to another
//     parent or another TPM, so its only copy outside this TPM is the
//     escrow shares, split when it was made.
//   - sensitiveDataOrigin clear: we supply the key bytes. That is what makes
//     escrow and recovery possible: the same 32 bytes create the same HMAC
//     key in any TPM.
//   - userWithAuth with an empty auth value: possession of the wrapped blob
//     and access to this TPM are the authorisation; noDA because an empty
//     auth value has nothing to guess, and an auth failure (say a session
//     HMAC garbled on the way) must not count towards the TPM's
//     dictionary-attack lockout, which would lock out everyone's keys.
//   - sign: TPM2_HMAC needs it; decrypt and restricted stay clear.
func masterTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: true,
			NoDA:         true,
			SignEncrypt:  true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
	}
}

// checkMasterPublic checks that a stored public area is a master key as
// masterTemplate makes them, so that an edited database cannot hand us a
// key with other properties (duplicable, with a policy, another scheme).
func checkMasterPublic(pub *tpm2.TPMTPublic) error {
	want := masterTemplate()
	if pub.Type != want.Type || pub.NameAlg != want.NameAlg {
		return fmt.Errorf("type %v / name algorithm %v, want keyedhash / SHA-256", pub.Type, pub.NameAlg)
	}
	if pub.ObjectAttributes != want.ObjectAttributes {
		return fmt.Errorf("attributes %#x, want %#x", tpm2.Marshal(pub.ObjectAttributes), tpm2.Marshal(want.ObjectAttributes))
	}
	if len(pub.AuthPolicy.Buffer) != 0 {
		return errors.New("the key has an authorisation policy")
	}
	parms, err := pub.Parameters.KeyedHashDetail()
	if err != nil {
		return err
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgHMAC {
		return fmt.Errorf("scheme %v, want HMAC", parms.Scheme.Scheme)
	}
	hm, err := parms.Scheme.Details.HMAC()
	if err != nil {
		return err
	}
	if hm.HashAlg != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("HMAC hash %v, want SHA-256", hm.HashAlg)
	}
	return nil
}

// Provision generates a new 32-byte master secret, creates the master key
// from it inside the TPM, splits it to opts.Custodians when there are any,
// wipes it, and returns what to persist. Nothing is stored in the TPM's
// non-volatile memory.
func (t *TPM) Provision(opts ProvisionOptions) (*Provisioned, error) {
	return t.provision(opts, nil)
}

// provision is Provision with a hook for tests, which see the secret before
// it is wiped. There is no exported way to read it.
func (t *TPM) provision(opts ProvisionOptions, inspect func(secret []byte)) (*Provisioned, error) {
	if len(opts.Custodians) == 0 && opts.Threshold != 0 {
		return nil, fmt.Errorf("tpmroot: threshold %d without custodians", opts.Threshold)
	}
	secret := make([]byte, secretSize)
	defer clear(secret)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("tpmroot: generating the master secret: %w", err)
	}

	p := new(Provisioned)
	if len(opts.Custodians) > 0 {
		// Split first: a custodian key that escrow refuses should fail the
		// provisioning before anything is created.
		shares, meta, err := escrow.Split(secret, opts.Threshold, opts.Custodians, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("tpmroot: escrow: %w", err)
		}
		if !hmac.Equal(meta.DomainID, escrow.DomainID(secret)) {
			return nil, errors.New("tpmroot: internal error: escrow metadata names another domain")
		}
		p.Shares, p.Escrow = shares, &meta
	}
	sealed, err := t.seal(secret)
	if err != nil {
		return nil, err
	}
	for _, ik := range opts.ImportKeys {
		b, err := duplicateMaster(ik, secret)
		p.Duplicates, p.DuplicateErr = append(p.Duplicates, b), append(p.DuplicateErr, err)
	}
	if inspect != nil {
		inspect(secret)
	}
	p.Sealed = sealed
	return p, nil
}

// Recover creates, in this TPM, the master key that the given decrypted
// custodian shares recreate (at least their threshold of them, all of one
// domain), wipes the recombined secret, and returns the new Sealed for this
// TPM. Every key the old TPM's keystore held is then readable here. The
// caller wipes the shares. Errors from recombination wrap
// escrow.ErrNotEnoughShares or escrow.ErrShareMismatch.
func (t *TPM) Recover(shares []*escrow.Share) (*Sealed, error) {
	secret, err := escrow.Combine(shares)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: recovering the master secret: %w", err)
	}
	defer clear(secret)
	if len(secret) != secretSize {
		return nil, fmt.Errorf("tpmroot: recovered a %d-byte master secret, want %d", len(secret), secretSize)
	}
	return t.seal(secret)
}

// seal creates the master key from secret under the SRK, with the secret's
// PIN recovery public key beside it, loads it once to check through the
// TPM that it computes the domain id and the recovery key's MAC the secret
// has, and returns the wrapped key. The caller wipes secret.
func (t *TPM) seal(secret []byte) (*Sealed, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var sealed *Sealed
	err := t.do(func() (err error) {
		sealed, err = t.sealLocked(secret)
		return err
	})
	return sealed, err
}

// sealLocked is seal with t.mu held.
func (t *TPM) sealLocked(secret []byte) (*Sealed, error) {
	public, private, err := t.createMaster(secret)
	if err != nil {
		return nil, err
	}
	domain := escrow.DomainID(secret)
	rk, err := recoveryKey(secret)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: deriving the PIN recovery key: %w", err)
	}
	rpub := rk.PublicKey().Bytes()
	s := &Sealed{
		Version:        SealedVersion,
		SRKName:        append([]byte(nil), t.srk.name.Buffer...),
		Public:         public,
		Private:        private,
		DomainID:       domain,
		RecoveryPublic: rpub,
		RecoveryMAC:    recoveryMAC(secret, rpub),
	}
	r, err := t.loadLocked(s)
	if err != nil {
		return nil, fmt.Errorf("tpmroot: loading the new master key: %w", err)
	}
	if err := r.flushLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// createMaster runs TPM2_Create for the master key with secret as its
// sensitive data, in a session salted with the SRK that encrypts the
// command's first parameter (the sensitive area) on the wire. t.mu is held.
//
// go-tpm marshals the sensitive area into buffers of its own before
// encrypting it; those are garbage we cannot wipe, which is the limit of
// wiping in Go. The secret is never written anywhere but the TPM.
func (t *TPM) createMaster(secret []byte) (public, private []byte, err error) {
	if len(secret) != secretSize {
		return nil, nil, fmt.Errorf("tpmroot: internal error: %d-byte master secret", len(secret))
	}
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: t.srk.secretIn()},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
		}},
		InPublic: tpm2.New2B(masterTemplate()),
	}.Execute(t.tpm)
	if err != nil {
		return nil, nil, fmt.Errorf("tpmroot: creating the master key (TPM2_Create): %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, nil, fmt.Errorf("tpmroot: parsing the master key's public area: %w", err)
	}
	if err := checkMasterPublic(pub); err != nil {
		return nil, nil, fmt.Errorf("tpmroot: the TPM created a master key unlike the template: %w", err)
	}
	return append([]byte(nil), rsp.OutPublic.Bytes()...), append([]byte(nil), rsp.OutPrivate.Buffer...), nil
}
