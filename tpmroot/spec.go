package tpmroot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Kind says how hsmemu reaches its TPM.
type Kind int

const (
	// KindDevice is a TPM character device, normally the kernel's resource
	// manager /dev/tpmrm0.
	KindDevice Kind = iota + 1
	// KindSwtpmSocket is a swtpm that someone else runs, reached through
	// its Unix socket. hsmemu assumes it is the swtpm's only client: a bare
	// swtpm has no resource manager, so at open hsmemu flushes transient
	// objects and sessions that a client which died left behind.
	KindSwtpmSocket
	// KindManaged is a swtpm that hsmemu starts itself, with its state
	// under the state directory, and stops on Close.
	KindManaged
)

// String returns the name used in Info.Kind.
func (k Kind) String() string {
	switch k {
	case KindDevice:
		return "device"
	case KindSwtpmSocket:
		return "swtpm"
	case KindManaged:
		return "managed swtpm"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// DefaultDevice is the TPM used when the spec is empty and it exists.
const DefaultDevice = "/dev/tpmrm0"

// Spec says which TPM to open.
type Spec struct {
	Kind Kind
	// Path is the device path (KindDevice) or the swtpm socket
	// (KindSwtpmSocket).
	Path string
	// StateDir is the daemon's state directory; a managed swtpm keeps its
	// state, socket and log in StateDir/swtpm.
	StateDir string
	// StateKey, for a managed swtpm, is the file of the key its state is
	// encrypted under (outside StateDir); empty for an unencrypted state.
	StateKey string
}

// String returns the spec in ParseSpec's syntax.
func (s Spec) String() string {
	switch s.Kind {
	case KindDevice:
		return s.Path
	case KindSwtpmSocket:
		return "swtpm:unix:" + s.Path
	case KindManaged:
		return "managed"
	}
	return s.Kind.String()
}

// swtpmDir is where a managed swtpm keeps its state.
func (s Spec) swtpmDir() string { return filepath.Join(s.StateDir, "swtpm") }

// ParseSpec parses a --tpm value:
//
//	managed            a swtpm started and stopped by hsmemu, state in stateDir/swtpm
//	/dev/tpmrm0        a TPM character device (any absolute path to one)
//	swtpm:unix:PATH    a running swtpm's data socket
//	""                 /dev/tpmrm0 if it exists, else managed
//
// A device path must name an existing character device; a socket path is
// only checked when it is opened, since the swtpm may start later.
func ParseSpec(s, stateDir string) (Spec, error) {
	switch {
	case s == "":
		if isCharDevice(DefaultDevice) {
			return Spec{Kind: KindDevice, Path: DefaultDevice}, nil
		}
		return managedSpec(stateDir)
	case s == "managed":
		return managedSpec(stateDir)
	case strings.HasPrefix(s, "swtpm:"):
		path, ok := strings.CutPrefix(s, "swtpm:unix:")
		if !ok {
			return Spec{}, fmt.Errorf("tpm %q: only swtpm:unix:PATH is supported", s)
		}
		if path == "" {
			return Spec{}, fmt.Errorf("tpm %q: missing socket path", s)
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return Spec{}, fmt.Errorf("tpm %q: %w", s, err)
		}
		return Spec{Kind: KindSwtpmSocket, Path: abs}, nil
	case filepath.IsAbs(s):
		fi, err := os.Stat(s)
		if err != nil {
			return Spec{}, fmt.Errorf("tpm %q: %w", s, err)
		}
		if fi.Mode()&os.ModeCharDevice == 0 {
			return Spec{}, fmt.Errorf("tpm %q: not a character device (for a swtpm socket write swtpm:unix:%s)", s, s)
		}
		return Spec{Kind: KindDevice, Path: filepath.Clean(s)}, nil
	}
	return Spec{}, fmt.Errorf("tpm %q: want managed, a device path such as %s, or swtpm:unix:PATH", s, DefaultDevice)
}

func managedSpec(stateDir string) (Spec, error) {
	if stateDir == "" {
		return Spec{}, errors.New("tpm managed: no state directory given for the swtpm state")
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return Spec{}, fmt.Errorf("tpm managed: %w", err)
	}
	return Spec{Kind: KindManaged, StateDir: abs}, nil
}

func isCharDevice(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
