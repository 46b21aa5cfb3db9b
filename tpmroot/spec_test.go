package tpmroot_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

func TestParseSpec(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	def := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state}
	if _, err := os.Stat(tpmroot.DefaultDevice); err == nil {
		def = tpmroot.Spec{Kind: tpmroot.KindDevice, Path: tpmroot.DefaultDevice}
	}
	regular := filepath.Join(state, "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in, state string
		want            tpmroot.Spec
		err             string // substring; empty means success
	}{
		{name: "default", in: "", state: state, want: def},
		{name: "managed", in: "managed", state: state, want: tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state}},
		{name: "managed without state", in: "managed", err: "no state directory"},
		{name: "device", in: "/dev/null", want: tpmroot.Spec{Kind: tpmroot.KindDevice, Path: "/dev/null"}},
		{name: "device unclean", in: "/dev//null", want: tpmroot.Spec{Kind: tpmroot.KindDevice, Path: "/dev/null"}},
		{name: "missing device", in: "/dev/tpm-does-not-exist", err: "no such file"},
		{name: "regular file", in: regular, err: "not a character device"},
		{name: "socket", in: "swtpm:unix:/run/swtpm/sock", want: tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: "/run/swtpm/sock"}},
		{name: "socket without path", in: "swtpm:unix:", err: "missing socket path"},
		{name: "tcp", in: "swtpm:tcp:localhost:2321", err: "only swtpm:unix:PATH"},
		{name: "relative", in: "tpmrm0", err: "want managed"},
		{name: "typo", in: "Managed", err: "want managed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tpmroot.ParseSpec(tc.in, tc.state)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseSpec(%q) = %+v, %v; want an error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseSpec(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
	// A relative socket path is made absolute.
	got, err := tpmroot.ParseSpec("swtpm:unix:rel/sock", "")
	if err != nil || !filepath.IsAbs(got.Path) {
		t.Errorf("ParseSpec(swtpm:unix:rel/sock) = %+v, %v; want an absolute path", got, err)
	}
}

func TestMissingSwtpm(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()}
	tpm, err := tpmroot.OpenWithSwtpmSearchPath(context.Background(), spec, empty)
	if err == nil {
		tpm.Close()
		t.Fatal("Open found a swtpm in an empty directory")
	}
	if !errors.Is(err, tpmroot.ErrSwtpmMissing) || !strings.Contains(err.Error(), "apt-get install swtpm swtpm-tools") {
		t.Errorf("err = %v; want ErrSwtpmMissing saying apt-get install swtpm swtpm-tools", err)
	}
}

// TestManagedInUse: a second managed Open on the same state fails at once
// and leaves the first one working.
func TestManagedInUse(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	state := t.TempDir()
	spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: state}
	first := tpmtest.Open(t, spec)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	second, err := tpmroot.Open(ctx, spec)
	if err == nil {
		second.Close()
		t.Fatal("a second managed Open on the same state directory succeeded")
	}
	// Not a hang: at most the two seconds' grace given to a swtpm on its
	// way out, and then the error.
	if !errors.Is(err, tpmroot.ErrTPMInUse) || time.Since(start) > 5*time.Second {
		t.Errorf("second Open: err = %v after %v; want ErrTPMInUse within seconds", err, time.Since(start))
	}
	t.Logf("second Open: %v", err)
	if _, err := first.Provision(tpmroot.ProvisionOptions{}); err != nil {
		t.Errorf("the first TPM stopped working: %v", err)
	}
}

// TestManagedInUseReported: ManagedInUse says whether a managed swtpm's
// state directory is served, without taking it: false before and after,
// true while a TPM is open on it; false for a TPM hsmemu does not start.
func TestManagedInUseReported(t *testing.T) {
	t.Parallel()
	tpmtest.Require(t)
	spec := tpmroot.Spec{Kind: tpmroot.KindManaged, StateDir: t.TempDir()}
	if tpmroot.ManagedInUse(spec) {
		t.Fatal("in use before anything opened it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tpm, err := tpmroot.Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	inUse := tpmroot.ManagedInUse(spec)
	// Asking took nothing: the open TPM still answers.
	_, perr := tpm.Provision(tpmroot.ProvisionOptions{})
	tpm.Close()
	if !inUse || perr != nil {
		t.Errorf("while open: in use %v, the TPM after asking: %v; want true, working", inUse, perr)
	}
	if tpmroot.ManagedInUse(spec) {
		t.Error("in use after Close")
	}
	if tpmroot.ManagedInUse(tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: "/nonexistent"}) {
		t.Error("a swtpm socket reported in use")
	}
}
