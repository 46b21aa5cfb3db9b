// Package harden makes the daemon's process a poor place to look for keys:
// no core dumps, no ptrace or /proc/PID/mem by other processes of the
// same user, and memory locked out of swap where the limits allow.
//
// The daemon does this itself at start, whatever started it: a unit
// file's LimitCORE=0 is a second line, not the only one.
package harden

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"golang.org/x/sys/unix"
)

// LockMode says what to do about locking memory.
type LockMode int

const (
	// LockAuto locks all memory when RLIMIT_MEMLOCK is unlimited, and
	// otherwise goes on unlocked, saying why.
	LockAuto LockMode = iota
	// LockRequire refuses to go on unlocked.
	LockRequire
	// LockOff leaves memory as it is.
	LockOff
)

// ParseLockMode reads --lock-memory's value.
func ParseLockMode(s string) (LockMode, error) {
	switch s {
	case "auto", "":
		return LockAuto, nil
	case "require":
		return LockRequire, nil
	case "off":
		return LockOff, nil
	}
	return 0, fmt.Errorf("%q is not auto, require or off", s)
}

// Report says what Process did.
type Report struct {
	// Locked is true when all the process's memory, now and to come, is
	// locked (mlockall).
	Locked bool
	// NotLocked says why memory is not locked, for the log; empty when
	// it is, or when locking was turned off.
	NotLocked string
}

// ErrCannotLock is Process's answer, under LockRequire, when memory cannot
// be locked.
var ErrCannotLock = errors.New("memory cannot be locked")

// Process hardens the calling process: RLIMIT_CORE 0 (no core file, soft
// and hard), PR_SET_DUMPABLE 0 (no core, no ptrace attach or /proc/PID/mem
// by the same user; children that exec are dumpable again), and memory
// locked as mode says. Locking needs RLIMIT_MEMLOCK unlimited: with a
// finite limit the Go runtime's heap would outgrow it and allocation would
// fail mid-call, so a finite limit means no lock, with a message that says
// how to raise it (the systemd unit sets LimitMEMLOCK=infinity), unless the
// process has CAP_IPC_LOCK, which no limit binds.
func Process(mode LockMode) (Report, error) {
	var rep Report
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return rep, fmt.Errorf("set RLIMIT_CORE to 0: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return rep, fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	if mode == LockOff {
		return rep, nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return rep, fmt.Errorf("read RLIMIT_MEMLOCK: %w", err)
	}
	if lim.Cur != unix.RLIM_INFINITY && lim.Max == unix.RLIM_INFINITY {
		// The soft limit is ours to raise.
		lim.Cur = unix.RLIM_INFINITY
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			return rep, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
		}
	}
	switch {
	case lim.Cur != unix.RLIM_INFINITY && !hasIPCLock():
		rep.NotLocked = fmt.Sprintf("RLIMIT_MEMLOCK is %s, not unlimited, so key material may be written to swap: "+
			"run with LimitMEMLOCK=infinity (the systemd unit does) or `ulimit -l unlimited`", kib(lim.Cur))
	default:
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
			rep.NotLocked = fmt.Sprintf("mlockall failed (%v), so key material may be written to swap", err)
		} else {
			rep.Locked = true
		}
	}
	if !rep.Locked && mode == LockRequire {
		return rep, fmt.Errorf("%w: %s", ErrCannotLock, rep.NotLocked)
	}
	return rep, nil
}

// hasIPCLock reports whether the process may lock memory past its limit.
func hasIPCLock() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_IPC_LOCK/32].Effective&(1<<(unix.CAP_IPC_LOCK%32)) != 0
}

func kib(v uint64) string {
	if v == math.MaxUint64 {
		return "unlimited"
	}
	return strconv.FormatUint(v/1024, 10) + " KiB"
}
