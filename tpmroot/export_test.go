package tpmroot

import "context"

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
