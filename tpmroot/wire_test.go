package tpmroot

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"hsmemu/internal/testenv"

	"github.com/google/go-tpm/tpm2/transport"
)

// tap records every command and response that crosses the transport.
type tap struct {
	inner transport.TPM
	mu    sync.Mutex
	cmds  [][]byte
	rsps  [][]byte
}

func (w *tap) Send(cmd []byte) ([]byte, error) {
	rsp, err := w.inner.Send(cmd)
	w.mu.Lock()
	w.cmds = append(w.cmds, bytes.Clone(cmd))
	w.rsps = append(w.rsps, bytes.Clone(rsp))
	w.mu.Unlock()
	return rsp, err
}

func (w *tap) seen(secret []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range append(append([][]byte(nil), w.cmds...), w.rsps...) {
		if bytes.Contains(m, secret) {
			return true
		}
	}
	return false
}

// TestNothingSecretOnTheWire watches the bytes exchanged with swtpm: the
// master secret (going in with TPM2_Create), the KEKs and domain id (coming
// out of TPM2_HMAC) and the KEK labels never appear in clear.
func TestNothingSecretOnTheWire(t *testing.T) {
	t.Parallel()
	testenv.Command(t, "swtpm", "swtpm and swtpm-tools")
	tpm, err := Open(context.Background(), Spec{Kind: KindManaged, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	w := &tap{inner: tpm.tpm}
	tpm.mu.Lock()
	tpm.tpm = w
	tpm.mu.Unlock()

	p, secret, err := tpm.ProvisionWithSecret(ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	label := []byte("hsmemu/kek/v1 a label worth hiding")
	kek, err := root.DeriveKEK(label)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.cmds) < 4 {
		t.Fatalf("only %d commands seen; the tap is not in the path", len(w.cmds))
	}
	for name, v := range map[string][]byte{"master secret": secret, "KEK": kek, "domain id": root.DomainID(), "KEK label": label} {
		if w.seen(v) {
			t.Errorf("the %s crossed the wire in clear", name)
		}
	}
	// Control: the tap does see what is not encrypted, such as the
	// sealed key's public area.
	if !w.seen(p.Sealed.Public) {
		t.Error("the tap did not see the public area: the test proves nothing")
	}
}
