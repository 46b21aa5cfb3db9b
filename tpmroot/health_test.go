package tpmroot_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/internal/swtpm"
	"hsmemu/tpmroot/tpmtest"
)

// logBuffer collects a TPM's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// waitHealthy waits until the TPM reports itself healthy: a hang guard,
// not a measure.
func waitHealthy(t *testing.T, tpm *tpmroot.TPM) tpmroot.Health {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		h := tpm.Health()
		if h.OK {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("the TPM did not come back within 60 s: %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gatedSwtpm makes a directory holding a "swtpm" that runs the real one
// unless the returned file exists: a managed swtpm that cannot be
// started again while the test says so.
func gatedSwtpm(t *testing.T) (searchPath, blockFile string) {
	t.Helper()
	real, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skip("swtpm not installed")
	}
	dir := t.TempDir()
	block := filepath.Join(dir, "blocked")
	script := fmt.Sprintf("#!/bin/sh\nif [ -e %q ]; then echo 'swtpm start blocked by the test' >&2; exit 1; fi\nexec %q \"$@\"\n", block, real)
	if err := os.WriteFile(filepath.Join(dir, "swtpm"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, block
}

// TestManagedSwtpmKilled: a managed swtpm killed under a loaded master
// key is started again, the key reloaded, and the KEKs are the same; the
// caller sees nothing but the log does.
func TestManagedSwtpmKilled(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	var log logBuffer
	tpm, err := tpmroot.OpenWith(context.Background(), tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()}, tpmroot.Options{Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	before := mustKEK(t, root, kekLabel)

	for i := 1; i <= 3; i++ {
		old := tpm.KillSwtpm()
		// The next command finds it gone (or finds it restarted by the
		// watcher): either way it is answered, the same.
		if got := mustKEK(t, root, kekLabel); !bytes.Equal(got, before) {
			t.Fatalf("after kill %d: another KEK", i)
		}
		h := waitHealthy(t, tpm)
		if h.Reconnects != i {
			t.Errorf("after kill %d: %d reconnects", i, h.Reconnects)
		}
		if pid := tpm.SwtpmPID(); pid == old {
			t.Errorf("after kill %d: the same swtpm process %d", i, pid)
		}
	}
	out := log.String()
	for _, want := range []string{"level=ERROR msg=\"the TPM stopped answering", "level=INFO msg=\"the TPM is back"} {
		if strings.Count(out, want) != 3 {
			t.Errorf("want three lines %q in the log:\n%s", want, out)
		}
	}
	if err := root.Close(); err != nil {
		t.Error(err)
	}
	if err := tpm.Close(); err != nil {
		t.Errorf("Close after restarts: %v", err)
	}
}

// TestManagedSwtpmCannotRestart: while a killed managed swtpm cannot be
// started again, commands fail at once with ErrUnavailable and the
// health says why; once it can, the TPM comes back by itself.
func TestManagedSwtpmCannotRestart(t *testing.T) {
	t.Parallel()
	searchPath, block := gatedSwtpm(t)
	var log logBuffer
	tpm, err := tpmroot.OpenWithOptions(context.Background(), tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()},
		tpmroot.Options{Logger: log.logger()}, searchPath)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	before := mustKEK(t, root, kekLabel)

	if err := os.WriteFile(block, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tpm.KillSwtpm()
	for range 5 {
		if _, err := root.DeriveKEK([]byte(kekLabel)); !errors.Is(err, tpmroot.ErrUnavailable) {
			t.Fatalf("DeriveKEK while swtpm cannot start: %v, want ErrUnavailable", err)
		}
	}
	if _, err := tpm.Provision(tpmroot.ProvisionOptions{}); !errors.Is(err, tpmroot.ErrUnavailable) {
		t.Fatalf("Provision while swtpm cannot start: %v, want ErrUnavailable", err)
	}
	if h := tpm.Health(); h.OK || !strings.Contains(h.Err, "blocked by the test") || h.Since.IsZero() {
		t.Errorf("health while swtpm cannot start: %+v", h)
	}

	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, tpm)
	if got := mustKEK(t, root, kekLabel); !bytes.Equal(got, before) {
		t.Fatal("another KEK once swtpm started again")
	}
	if out := log.String(); !strings.Contains(out, "reconnecting failed") || !strings.Contains(out, "the TPM is back") {
		t.Errorf("the log:\n%s", out)
	}
}

// TestExternalSwtpmGone: a swtpm someone else runs, stopped under a
// loaded master key: commands fail with ErrUnavailable, the health and
// the log say so, and once it runs again the TPM is reconnected to and
// the master key reloaded.
func TestExternalSwtpmGone(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	dir := t.TempDir()
	start := func() *swtpm.Process {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p, c, err := swtpm.Start(ctx, swtpm.Config{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		t.Cleanup(func() { p.Stop(5 * time.Second) })
		return p
	}
	p := start()
	var log logBuffer
	tpm, err := tpmroot.OpenWith(context.Background(), tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: p.SocketPath}, tpmroot.Options{Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	prov, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(prov.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	before := mustKEK(t, root, kekLabel)

	p.Kill()
	p.Stop(time.Second) // waits for it, and lets go of the state directory's lock
	if _, err := root.DeriveKEK([]byte(kekLabel)); !errors.Is(err, tpmroot.ErrUnavailable) {
		t.Fatalf("DeriveKEK with the swtpm gone: %v, want ErrUnavailable", err)
	}
	if h := tpm.Probe(); h.OK {
		t.Errorf("health with the swtpm gone: %+v", h)
	}
	if out := log.String(); !strings.Contains(out, "the TPM stopped answering") || !strings.Contains(out, "swtpm:unix:") {
		t.Errorf("the log does not say the TPM is gone:\n%s", out)
	}

	start()
	deadline := time.Now().Add(60 * time.Second)
	for {
		got, err := root.DeriveKEK([]byte(kekLabel))
		if err == nil {
			if !bytes.Equal(got, before) {
				t.Fatal("another KEK once the swtpm is back")
			}
			break
		}
		if !errors.Is(err, tpmroot.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("DeriveKEK with the swtpm back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h := tpm.Health(); !h.OK || h.Reconnects != 1 {
		t.Errorf("health once the swtpm is back: %+v", h)
	}
}
