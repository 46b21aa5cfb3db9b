package tpmroot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot/internal/swtpm"
)

// A TPM lost and found again.
//
// The TPM can go away under a running daemon: a managed swtpm killed (by
// the OOM killer, an administrator, a crash), an external swtpm restarted
// by its supervisor, a TPM device reset. Every command that needs the TPM
// goes through do: when the connection is lost, do reconnects (a managed
// swtpm is started again on its state directory), recreates the SRK,
// checks that it is the same TPM (the SRK's name), reloads every loaded
// master key from its sealed form under the new SRK, and sends the
// command again, once. The caller never sees the loss unless reconnecting
// fails: then the command fails with ErrUnavailable, at once, and the
// next one tries again (at most every reconnectEvery). A managed swtpm
// that exits is also noticed by the goroutine that waits for it (watch),
// which reconnects at once and then with a growing delay until it works,
// so the TPM is back before anything needs it.
//
// Keys already derived from the master key (token KEKs, the audit key)
// live in the keystore's memory: calls that use them do not notice the
// TPM's absence. Only what needs a new derivation (a token seen for the
// first time since the daemon started, a new token, a master key
// rotation) waits for the TPM.

// ErrUnavailable is the error of a command sent while the TPM cannot be
// reached and reconnecting failed; the error says why.
var ErrUnavailable = errors.New("tpmroot: the TPM is unavailable")

// reconnectEvery bounds how often a command tries to reconnect to a TPM
// that is gone; the ones in between fail at once.
const reconnectEvery = time.Second

// health is the connection's state; TPM.mu guards it.
type health struct {
	lost     error     // why the TPM is unreachable; nil while it answers
	since    time.Time // when it was lost
	tried    time.Time // the last attempt to reconnect
	restarts int       // reconnections made
}

// Health is what TPM.Health reports.
type Health struct {
	// OK is true while the TPM answers (as far as the last command knows).
	OK bool
	// Err says why it does not; Since, since when.
	Err   string
	Since time.Time
	// Reconnects counts the times the TPM was lost and reconnected to (a
	// managed swtpm restarted) since Open.
	Reconnects int
}

// Health reports the connection's state without sending anything.
func (t *TPM) Health() Health {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := Health{OK: t.health.lost == nil, Reconnects: t.health.restarts}
	if !h.OK {
		h.Err, h.Since = t.health.lost.Error(), t.health.since
	}
	return h
}

// Probe sends the TPM a command that changes nothing (reading a property)
// and reports its health after it: a TPM lost while nothing used it is
// noticed, and reconnected to, here.
func (t *TPM) Probe() Health {
	t.mu.Lock()
	if !t.closed {
		t.do(func() error {
			_, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTManufacturer), PropertyCount: 1}.Execute(t.tpm)
			return err
		})
	}
	t.mu.Unlock()
	return t.Health()
}

// do runs fn, which sends commands to the TPM, with t.mu held. A
// connection found lost, before or during fn, is reconnected to and fn
// runs once more; if that fails, the error wraps ErrUnavailable.
func (t *TPM) do(fn func() error) error {
	if t.closed {
		return ErrClosed
	}
	if t.health.lost != nil {
		if err := t.reconnect("a command needs it"); err != nil {
			return err
		}
	}
	err := fn()
	if err == nil || !t.isLost(err) {
		return err
	}
	t.lose(err)
	if err := t.reconnect("a command met the loss"); err != nil {
		return err
	}
	return fn()
}

// isLost tells a lost connection from a TPM that answered with an error.
func (t *TPM) isLost(err error) bool {
	if t.spec.Kind == KindDevice {
		var pe *fs.PathError
		return errors.As(err, &pe)
	}
	return errors.Is(err, swtpm.ErrConnLost)
}

// lose records the loss of the connection, once.
func (t *TPM) lose(err error) {
	if t.health.lost != nil {
		return
	}
	t.health.lost, t.health.since = err, time.Now()
	t.log.Error("the TPM stopped answering: calls that need it wait for it to come back", "tpm", t.where(), "err", err)
}

// reconnect connects to the TPM again and reloads the master keys, unless
// an attempt failed less than reconnectEvery ago. t.mu is held.
func (t *TPM) reconnect(why string) error {
	if !t.health.tried.IsZero() && time.Since(t.health.tried) < reconnectEvery {
		return fmt.Errorf("%w: %w", ErrUnavailable, t.health.lost)
	}
	t.health.tried = time.Now()
	t.disconnect()
	ctx, cancel := context.WithTimeout(context.Background(), reconnectTimeout)
	defer cancel()
	err := t.connect(ctx)
	if err == nil {
		if err = t.reload(); err != nil {
			t.disconnect()
		}
	}
	if err != nil {
		t.health.lost = err
		t.log.Error("the TPM is unavailable: reconnecting failed; calls that need it fail until it works", "tpm", t.where(), "why", why, "err", err)
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	t.health.restarts++
	t.log.Info("the TPM is back: reconnected, master key reloaded", "tpm", t.where(),
		"restarted_swtpm", t.proc != nil, "down", time.Since(t.health.since).Round(time.Millisecond), "reconnects", t.health.restarts)
	t.health.lost, t.health.tried = nil, time.Time{}
	t.watch(t.proc)
	return nil
}

// where names the TPM in log lines: its spec, and a managed swtpm's
// directory.
func (t *TPM) where() string {
	if t.spec.Kind == KindManaged {
		return "managed swtpm in " + t.spec.swtpmDir()
	}
	return t.spec.String()
}

// reconnectTimeout bounds one reconnection (starting swtpm, the SRK).
const reconnectTimeout = 15 * time.Second

// reload loads every master key that was loaded, from its sealed form,
// under the SRK just created; the SRK must be the one it was sealed
// under (the same TPM, not cleared). t.mu is held.
func (t *TPM) reload() error {
	// Imported master keys first: each needs a slot for its import key
	// while it loads, which the others would fill.
	var order []*Root
	for r := range t.roots {
		if r.sealed.Parent != nil {
			order = append([]*Root{r}, order...)
		} else {
			order = append(order, r)
		}
	}
	for _, r := range order {
		if !bytes.Equal(r.sealed.SRKName, t.srk.name.Buffer) {
			return fmt.Errorf("%w: the TPM came back with another SRK (%x, the master key's is %x): it was cleared or replaced", ErrWrongTPM, t.srk.name.Buffer, r.sealed.SRKName)
		}
		rsp, err := t.loadMasterObject(r.sealed, false)
		if err != nil {
			return fmt.Errorf("tpmroot: reloading the master key (TPM2_Load): %w", err)
		}
		if !bytes.Equal(rsp.Name.Buffer, r.name.Buffer) {
			flush(t.tpm, rsp.ObjectHandle)
			return errors.New("tpmroot: the reloaded master key has another name")
		}
		r.handle = rsp.ObjectHandle
	}
	return nil
}

// watch waits, in a goroutine, for a managed swtpm to exit. If it exits
// while it is still the TPM's (not stopped by Close or replaced by a
// reconnection), the loss is logged at once and the TPM reconnected to,
// then again after 1, 2, 4 ... up to 30 seconds until that works or the
// TPM is closed.
func (t *TPM) watch(p *swtpm.Process) {
	if p == nil {
		return
	}
	go func() {
		<-p.Exited()
		delay := time.Second
		for {
			t.mu.Lock()
			if t.closed || t.proc != p {
				t.mu.Unlock()
				return
			}
			if t.health.lost == nil {
				t.lose(fmt.Errorf("%w: the managed swtpm exited (%s)", swtpm.ErrConnLost, p.ExitStatus()))
			}
			t.health.tried = time.Time{} // the watcher does not wait for the rate limit
			err := t.reconnect("the managed swtpm exited")
			t.mu.Unlock()
			if err == nil {
				return
			}
			time.Sleep(delay)
			delay = min(2*delay, 30*time.Second)
		}
	}()
}
