package tpmroot

import "github.com/google/go-tpm/tpm2/transport"

// Raw runs f on the TPM's connection, under its lock: tests send the
// commands this package has no method for, as another program would.
func (t *TPM) Raw(f func(transport.TPM) error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return f(t.tpm)
}
