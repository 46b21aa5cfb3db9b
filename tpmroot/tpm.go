package tpmroot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"hsmemu/tpmroot/internal/swtpm"
)

// ErrSwtpmMissing is returned (wrapped, with the install hint "swtpm not
// found: install the Debian packages swtpm and swtpm-tools (apt-get install
// swtpm swtpm-tools)") when a managed TPM is asked for and swtpm is not
// installed.
var ErrSwtpmMissing = swtpm.ErrMissing

// ErrTPMInUse is returned when a managed TPM's state directory is already
// served by a running swtpm, ours or anyone's. Nothing is started or
// changed.
var ErrTPMInUse = swtpm.ErrInUse

// ManagedInUse reports whether spec is a managed swtpm that something
// serves already: a daemon on the state directory, or a command that
// opened it. A command that replaces the keystore asks first, whatever
// socket the daemon listens on. For a TPM hsmemu does not start it says
// false: nothing shows who else uses a device or a swtpm socket.
func ManagedInUse(spec Spec) bool {
	return spec.Kind == KindManaged && swtpm.InUse(spec.swtpmDir())
}

// ErrClosed is returned by operations on a TPM or Root after Close.
var ErrClosed = errors.New("tpmroot: TPM closed")

// stopTimeout is how long Close waits for a managed swtpm to exit after
// SIGTERM before killing it.
const stopTimeout = 5 * time.Second

// A TPM is an open connection to a TPM with the SRK loaded. All methods are
// safe for concurrent use; commands are serialised on the one connection.
//
// A TPM that stops answering (a managed swtpm killed, an external swtpm
// restarted, a device gone) is reconnected to, with the SRK recreated and
// every loaded master key reloaded from its sealed form, and the command
// that met the loss is sent again (health.go). Until that works, commands
// fail with ErrUnavailable.
type TPM struct {
	spec Spec
	opts openOptions
	log  *slog.Logger

	mu     sync.Mutex // guards everything below, and the TPM itself
	tpm    transport.TPM
	conn   io.Closer
	proc   *swtpm.Process // managed only
	closed bool
	info   Info
	srk    srk
	roots  map[*Root]struct{} // loaded master keys, flushed on Close
	health health
}

// Info describes the TPM.
type Info struct {
	Kind            string // "device", "swtpm" or "managed swtpm"
	Path            string // device, socket, or managed state directory
	Manufacturer    string // TPM_PT_MANUFACTURER as 4 characters, e.g. "IBM", "INTC", "IFX"
	VendorString    string // TPM_PT_VENDOR_STRING_1..4
	FirmwareVersion string // TPM_PT_FIRMWARE_VERSION_1 and _2 as four 16-bit numbers
}

// Options tune Open. The zero value is the default.
type Options struct {
	// Logger hears of the TPM lost and found again: a managed swtpm that
	// exited and was restarted, an external TPM that stopped answering.
	// Nil discards.
	Logger *slog.Logger
}

// openOptions are Options and the knobs that only tests turn.
type openOptions struct {
	Options
	swtpmSearchPath string // PATH-style; empty means $PATH
}

// Open connects to the TPM spec names (starting swtpm for KindManaged) and
// recreates the SRK. ctx bounds the opening only; the returned TPM lives
// until Close.
func Open(ctx context.Context, spec Spec) (*TPM, error) {
	return open(ctx, spec, openOptions{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, spec Spec, opts Options) (*TPM, error) {
	return open(ctx, spec, openOptions{Options: opts})
}

func open(ctx context.Context, spec Spec, opts openOptions) (_ *TPM, err error) {
	t := &TPM{spec: spec, opts: opts, log: opts.Logger, roots: make(map[*Root]struct{})}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if spec.Kind == KindManaged && spec.StateDir == "" {
		return nil, errors.New("tpmroot: managed TPM without a state directory")
	}
	if err := t.connect(ctx); err != nil {
		return nil, err
	}
	t.watch(t.proc)
	return t, nil
}

// connect reaches the TPM (starting a managed swtpm), reads its identity
// and creates the SRK. t.mu is held, or t is not yet shared. On error
// nothing is left open.
func (t *TPM) connect(ctx context.Context) (err error) {
	switch t.spec.Kind {
	case KindDevice:
		// A TPM device returns a whole response per read, which is what
		// go-tpm's device transport relies on.
		dev, err := linuxtpm.Open(t.spec.Path)
		if err != nil {
			return fmt.Errorf("tpmroot: opening TPM device %s: %w", t.spec.Path, err)
		}
		t.tpm, t.conn, t.proc = dev, dev, nil
	case KindSwtpmSocket:
		c, err := swtpm.Dial(ctx, t.spec.Path)
		if err != nil {
			return fmt.Errorf("tpmroot: %w", err)
		}
		t.tpm, t.conn, t.proc = c, c, nil
	case KindManaged:
		p, c, err := swtpm.Start(ctx, swtpm.Config{
			Dir:              t.spec.swtpmDir(),
			SearchPath:       t.opts.swtpmSearchPath,
			ExitOnDisconnect: true,
			KeyFile:          t.spec.StateKey,
		})
		if err != nil {
			return fmt.Errorf("tpmroot: managed swtpm: %w", err)
		}
		t.tpm, t.conn, t.proc = c, c, p
	default:
		return fmt.Errorf("tpmroot: unknown TPM kind %v", t.spec.Kind)
	}
	defer func() {
		if err != nil {
			t.disconnect()
		}
	}()
	if err := t.readInfo(); err != nil {
		if t.proc != nil {
			// swtpm listens before it reads its state: a state it could
			// not read shows here, as its exit.
			if why := t.proc.ExitReason(time.Second); why != nil {
				return fmt.Errorf("tpmroot: managed swtpm: %w", why)
			}
		}
		return err
	}
	if t.spec.Kind == KindSwtpmSocket {
		if err := t.flushLeftovers(); err != nil {
			return err
		}
	}
	if t.srk, err = createSRK(t.tpm); err != nil {
		return err
	}
	return nil
}

// Close flushes the SRK and any master key still loaded. For a managed TPM
// it then sends TPM2_Shutdown(CLEAR), so swtpm saves its state cleanly, and
// stops swtpm, waiting for it to exit. Close is idempotent.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	if t.health.lost != nil {
		// Nothing to flush in a TPM that is gone (or restarted, which
		// flushed everything).
		return t.shutdown()
	}
	var errs []error
	for r := range t.roots {
		errs = append(errs, r.flushLocked())
	}
	if t.srk.handle != 0 {
		if err := flush(t.tpm, t.srk.handle); err != nil {
			errs = append(errs, fmt.Errorf("tpmroot: flushing the SRK: %w", err))
		}
	}
	if t.proc != nil {
		if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUClear}).Execute(t.tpm); err != nil {
			errs = append(errs, fmt.Errorf("tpmroot: TPM2_Shutdown: %w", err))
		}
	}
	errs = append(errs, t.shutdown())
	return errors.Join(errs...)
}

// shutdown closes the connection and stops a managed swtpm for good. t.mu
// is held.
func (t *TPM) shutdown() error {
	t.closed = true
	return t.disconnect()
}

// disconnect closes the connection and stops a managed swtpm. t.mu is
// held, or t is not yet shared.
func (t *TPM) disconnect() error {
	var errs []error
	if err := t.conn.Close(); err != nil {
		errs = append(errs, fmt.Errorf("tpmroot: closing the TPM connection: %w", err))
	}
	if t.proc != nil {
		if err := t.proc.Stop(stopTimeout); err != nil {
			errs = append(errs, fmt.Errorf("tpmroot: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Info describes the TPM, as read at Open.
func (t *TPM) Info() Info { return t.info }

// SRKName returns the TPM name of the SRK. It identifies the TPM's owner
// hierarchy: it changes only when the TPM is cleared.
func (t *TPM) SRKName() []byte {
	return append([]byte(nil), t.srk.name.Buffer...)
}

// readInfo reads the TPM's identity. It is the first command sent, so it
// also meets a swtpm that was started without startup-clear: for that one
// it sends TPM2_Startup(CLEAR), which is an ordinary TPM command, not a
// simulator power command.
func (t *TPM) readInfo() error {
	cmd := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(tpm2.TPMPTManufacturer),
		PropertyCount: uint32(tpm2.TPMPTFirmwareVersion2-tpm2.TPMPTManufacturer) + 1,
	}
	rsp, err := cmd.Execute(t.tpm)
	if errors.Is(err, tpm2.TPMRCInitialize) && t.spec.Kind != KindDevice {
		if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(t.tpm); err != nil {
			return fmt.Errorf("tpmroot: TPM2_Startup: %w", err)
		}
		rsp, err = cmd.Execute(t.tpm)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) && t.spec.Kind == KindSwtpmSocket {
		return fmt.Errorf("tpmroot: %s does not answer (a swtpm serves one client at a time: is another one connected?): %w", t.spec, err)
	}
	if err != nil {
		return fmt.Errorf("tpmroot: reading TPM properties from %s: %w", t.spec, err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return fmt.Errorf("tpmroot: reading TPM properties: %w", err)
	}
	val := make(map[tpm2.TPMPT]uint32)
	for _, p := range props.TPMProperty {
		val[p.Property] = p.Value
	}
	t.info = Info{
		Kind:         t.spec.Kind.String(),
		Path:         t.spec.Path,
		Manufacturer: fourChars(val[tpm2.TPMPTManufacturer]),
		VendorString: fourChars(val[tpm2.TPMPTVendorString1]) + fourChars(val[tpm2.TPMPTVendorString2]) +
			fourChars(val[tpm2.TPMPTVendorString3]) + fourChars(val[tpm2.TPMPTVendorString4]),
	}
	if t.spec.Kind == KindManaged {
		t.info.Path = t.spec.swtpmDir()
	}
	fw1, fw2 := val[tpm2.TPMPTFirmwareVersion1], val[tpm2.TPMPTFirmwareVersion2]
	t.info.FirmwareVersion = fmt.Sprintf("%d.%d.%d.%d", fw1>>16, fw1&0xffff, fw2>>16, fw2&0xffff)
	t.info.VendorString = strings.TrimSpace(t.info.VendorString)
	return nil
}

// fourChars decodes a TPM property that packs up to four ASCII characters
// big-endian, dropping NULs and anything unprintable.
func fourChars(v uint32) string {
	var b strings.Builder
	for _, c := range []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} {
		if c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

// flushLeftovers flushes transient objects and sessions a previous client
// left in a bare swtpm. swtpm keeps them across connections and has no
// resource manager, so a client that died without flushing would leave the
// TPM's few object slots full for everyone after it.
func (t *TPM) flushLeftovers() error {
	for _, first := range []tpm2.TPMHandle{tpm2.TPMHandle(tpm2.TPMHTTransient) << 24, tpm2.TPMHandle(tpm2.TPMHTHMACSession) << 24, tpm2.TPMHandle(tpm2.TPMHTPolicySession) << 24} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(t.tpm)
		if err != nil {
			return fmt.Errorf("tpmroot: listing handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return fmt.Errorf("tpmroot: listing handles: %w", err)
		}
		for _, h := range hs.Handle {
			if h>>24 != first>>24 {
				continue
			}
			if err := flush(t.tpm, h); err != nil {
				return fmt.Errorf("tpmroot: flushing leftover handle 0x%08x: %w", uint32(h), err)
			}
		}
	}
	return nil
}

// flush flushes a transient handle.
func flush(t transport.TPM, h tpm2.TPMHandle) error {
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(t)
	return err
}

// transientHandles lists the transient objects loaded in the TPM.
func transientHandles(t transport.TPM) ([]uint32, error) {
	first := tpm2.TPMHandle(tpm2.TPMHTTransient) << 24
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(t)
	if err != nil {
		return nil, err
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, h := range hs.Handle {
		if h>>24 == first>>24 {
			out = append(out, uint32(h))
		}
	}
	return out, nil
}
