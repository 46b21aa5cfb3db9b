package harden

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The checks run in a child process (this test binary again), since
// Process changes the process for good.
func TestMain(m *testing.M) {
	if mode := os.Getenv("HARDEN_CHILD"); mode != "" {
		child(mode)
		return
	}
	os.Exit(m.Run())
}

// child hardens itself as HARDEN_CHILD says, after setting RLIMIT_MEMLOCK
// to HARDEN_MEMLOCK KiB when given, and prints what it finds.
func child(mode string) {
	if os.Getenv("HARDEN_DROP_IPC_LOCK") != "" {
		// As an unprivileged user: the limit binds.
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			fmt.Println("capget:", err)
			os.Exit(3)
		}
		data[0].Effective &^= 1 << unix.CAP_IPC_LOCK
		data[0].Permitted &^= 1 << unix.CAP_IPC_LOCK
		// Capabilities are a thread's: drop it on this one and stay on
		// it, so the checks and the lock below run where it is gone.
		// (syscall.AllThreadsSyscall would drop it everywhere, but not
		// in a binary with cgo, as -race makes it.)
		runtime.LockOSThread()
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			fmt.Println("capset:", err)
			os.Exit(3)
		}
	}
	if v := os.Getenv("HARDEN_MEMLOCK"); v != "" {
		lim := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
		if v != "unlimited" {
			var kib uint64
			fmt.Sscan(v, &kib)
			lim = unix.Rlimit{Cur: kib * 1024, Max: kib * 1024}
		}
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			fmt.Println("setrlimit:", err)
			os.Exit(5)
		}
	}
	m, err := ParseLockMode(mode)
	if err != nil {
		fmt.Println(err)
		os.Exit(3)
	}
	rep, err := Process(m)
	if errors.Is(err, ErrCannotLock) {
		fmt.Println("refused:", err)
		os.Exit(4)
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(3)
	}
	dumpable, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	var core unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_CORE, &core)
	// Touch some memory after the lock: MCL_FUTURE must cover it too.
	buf := make([]byte, 8<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	fmt.Printf("dumpable=%d core=%d/%d locked=%v vmlck=%s rss=%s why=%q\n", dumpable, core.Cur, core.Max, rep.Locked, status("VmLck"), status("VmRSS"), rep.NotLocked)
	_ = buf[len(buf)-1]
}

func status(field string) string {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return "?"
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.Join(strings.Fields(v), "")
		}
	}
	return "?"
}

func run(t *testing.T, mode, memlockKiB string, env ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "HARDEN_CHILD="+mode, "HARDEN_MEMLOCK="+memlockKiB), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out)), code
}

// TestNoDumps: whatever the lock mode, the process is not dumpable and
// has no core limit.
func TestNoDumps(t *testing.T) {
	t.Parallel()
	out, code := run(t, "off", "")
	if code != 0 || !strings.Contains(out, "dumpable=0 core=0/0 locked=false") {
		t.Fatalf("exit %d: %s", code, out)
	}
}

// TestLockWithLowLimit: a finite RLIMIT_MEMLOCK (a user's default is a few
// MiB) leaves memory unlocked under auto, saying how to fix it, and
// refuses under require.
func TestLockWithLowLimit(t *testing.T) {
	t.Parallel()
	out, code := run(t, "auto", "64", "HARDEN_DROP_IPC_LOCK=1")
	if code != 0 || !strings.Contains(out, "dumpable=0") || !strings.Contains(out, "locked=false") ||
		!strings.Contains(out, "RLIMIT_MEMLOCK is 64 KiB") || !strings.Contains(out, "LimitMEMLOCK=infinity") {
		t.Fatalf("auto with a 64 KiB limit: exit %d: %s", code, out)
	}
	out, code = run(t, "require", "64", "HARDEN_DROP_IPC_LOCK=1")
	if code != 4 || !strings.Contains(out, "memory cannot be locked") {
		t.Fatalf("require with a 64 KiB limit: exit %d: %s", code, out)
	}
}

// TestLock: with RLIMIT_MEMLOCK unlimited, or CAP_IPC_LOCK (which root
// has), all memory is locked, later allocations included.
func TestLock(t *testing.T) {
	t.Parallel()
	out, code := run(t, "require", "unlimited")
	if code == 5 {
		// Raising a hard limit takes CAP_SYS_RESOURCE: try under the
		// limit as it is, which CAP_IPC_LOCK lifts.
		out, code = run(t, "require", "")
	}
	if code == 4 && !hasIPCLock() {
		t.Skipf("neither an unlimited RLIMIT_MEMLOCK nor CAP_IPC_LOCK here (%s): the lock is untested on this machine", out)
	}
	if code != 0 || !strings.Contains(out, "locked=true") || strings.Contains(out, "vmlck=0kB") {
		t.Fatalf("require: exit %d: %s", code, out)
	}
	t.Log(out)
}
