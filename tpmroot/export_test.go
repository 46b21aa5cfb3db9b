package tpmroot

import (
	"context"
	"crypto/rand"
	"errors"

	"github.com/google/go-tpm/tpm2"
)

// ProvisionWithSecret is Provision that also returns a copy of the master
// secret, so tests can check the TPM's HMAC against software. Test builds
// only.
func (t *TPM) ProvisionWithSecret(opts ProvisionOptions) (*Provisioned, []byte, error) {
	var secret []byte
	p, err := t.provision(opts, func(s []byte) { secret = append([]byte(nil), s...) })
	return p, secret, err
}

// OpenWithSwtpmSearchPath is Open looking for swtpm in searchPath instead
// of $PATH.
func OpenWithSwtpmSearchPath(ctx context.Context, spec Spec, searchPath string) (*TPM, error) {
	return open(ctx, spec, openOptions{swtpmSearchPath: searchPath})
}

// DropConnection closes the connection without flushing anything, as a
// client that dies does.
func (t *TPM) DropConnection() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return t.conn.Close()
}

// TransientHandles lists the transient objects loaded in the TPM.
func (t *TPM) TransientHandles() ([]uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return transientHandles(t.tpm)
}

// DictionaryAttackLockReset sends TPM2_DictionaryAttackLockReset with the
// empty lockout authorisation, as anyone who can reach the TPM could.
func (t *TPM) DictionaryAttackLockReset() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return passwordCommand(t, tpm2.TPMCCDictionaryAttackLockReset, tpm2.TPMRHLockout, nil)
}

// UnsealWithPassword loads a PIN seal under the SRK and unseals it with
// auth as a plain password: what an attacker holding the database and
// this TPM would do, with none of the daemon's checks.
func (t *TPM) UnsealWithPassword(seal, auth []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := parsePINSeal(seal)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: t.srk.handle, Name: t.srk.name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: s.private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](s.public),
	}.Execute(t.tpm)
	if err != nil {
		return nil, err
	}
	defer flush(t.tpm, rsp.ObjectHandle)
	var out *tpm2.UnsealResponse
	for try := 0; try < 3; try++ {
		out, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(authValue(auth))}}.Execute(t.tpm)
		if !errors.Is(err, tpm2.TPMRCRetry) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return out.OutData.Buffer, nil
}

// RecoveryKeyForTest returns a PIN recovery public key of a random secret.
func RecoveryKeyForTest() ([]byte, error) {
	secret := make([]byte, secretSize)
	rand.Read(secret)
	k, err := recoveryKey(secret)
	if err != nil {
		return nil, err
	}
	return k.PublicKey().Bytes(), nil
}

// KillSwtpm kills a managed swtpm with SIGKILL, as the OOM killer would,
// and waits until it has exited. It returns the process id it killed.
func (t *TPM) KillSwtpm() int {
	t.mu.Lock()
	p := t.proc
	t.mu.Unlock()
	pid := p.Pid()
	p.Kill()
	<-p.Exited()
	return pid
}

// SwtpmPID is the managed swtpm's process id.
func (t *TPM) SwtpmPID() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.proc.Pid()
}

// OpenWithOptions is OpenWith looking for swtpm in searchPath.
func OpenWithOptions(ctx context.Context, spec Spec, opts Options, searchPath string) (*TPM, error) {
	return open(ctx, spec, openOptions{Options: opts, swtpmSearchPath: searchPath})
}

// Unseal sends TPM2_Unseal for the loaded master key, which the TPM must
// refuse (a signing key's sensitive data does not come out).
func (r *Root) Unseal() error {
	r.t.mu.Lock()
	defer r.t.mu.Unlock()
	_, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: r.handle, Name: r.name, Auth: tpm2.PasswordAuth(nil)}}.Execute(r.t.tpm)
	return err
}
