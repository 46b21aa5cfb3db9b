package chaos

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
)

// gatedSwtpm makes a directory holding a "swtpm" that runs the real one
// unless the returned file exists: put first in the daemon's PATH, it is
// the managed swtpm the daemon starts, and one that cannot be started
// again while the test says so.
func gatedSwtpm(t *testing.T) (dir, blockFile string) {
	t.Helper()
	real, err := exec.LookPath("swtpm")
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	blockFile = filepath.Join(dir, "blocked")
	script := fmt.Sprintf("#!/bin/sh\nif [ -e %q ]; then echo 'swtpm start blocked by the chaos test' >&2; exit 1; fi\nexec %q \"$@\"\n", blockFile, real)
	if err := os.WriteFile(filepath.Join(dir, "swtpm"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, blockFile
}

// status runs `hsmemu status --json` against d.
func (d *daemon) status(t *testing.T) adminapi.Status {
	t.Helper()
	out, err := exec.Command(d.bin, "status", "--json", "--socket", d.sock).Output()
	if err != nil {
		t.Fatalf("hsmemu status: %v", err)
	}
	var st adminapi.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("hsmemu status: %v: %s", err, out)
	}
	return st
}

// waitSwtpm waits until the daemon runs a swtpm other than old, and
// returns it: a hang guard, not a measure.
func (d *daemon) waitSwtpm(t *testing.T, old int) int {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if pid, err := d.swtpmPID(); err == nil && pid != old {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not start a new swtpm within 90 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// initToken makes a token on the free slot (slot 0): the call that needs
// the TPM, to derive the new token's KEK. It returns the CK_RV.
func initToken(t *testing.T, sock, label string) uint64 {
	t.Helper()
	c, err := dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rv, _, err := c.Call("C_InitToken", wiretest.U(0), wiretest.S(wiretest.SOPIN), wiretest.Label32(label))
	if err != nil {
		t.Fatalf("C_InitToken: %v", err)
	}
	return rv
}

// TestSwtpmKilled kills the daemon's managed swtpm with SIGKILL while
// eight applications sign with token keys. The daemon restarts it and
// reloads the master key by itself; a call that needs the TPM (a new
// token's KEK) works again, without a restart of the daemon. Then the
// swtpm is killed while it cannot be started again: that call fails
// cleanly (CKR_DEVICE_ERROR, at once), `hsmemu status` says the TPM is
// unavailable and why, and once swtpm can start the daemon brings it back
// by itself. Signatures with keys in use never stop: the token keys
// derived from the master key stay in the daemon's memory.
func TestSwtpmKilled(t *testing.T) {
	chaosOnly(t)
	gate, block := gatedSwtpm(t)
	d := newDaemon(t, "")
	d.env = []string{"PATH=" + gate + string(os.PathListSeparator) + os.Getenv("PATH")}
	d.start()
	slot := newToken(t, d.sock, "signing")

	// The signers: each its own application with its own HMAC key.
	var signed, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		c, err := dial(d.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		h, err := c.session(slot)
		if err != nil {
			t.Fatal(err)
		}
		value := make([]byte, 32)
		rand.Read(value)
		out, err := c.do("C_CreateObject", wiretest.U(h), wiretest.T(secretTmpl(fmt.Sprintf("signer-%d", w), w%2 == 0, value)...), wiretest.None())
		if err != nil {
			t.Fatal(err)
		}
		key := out[2].Ulong
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := []byte(fmt.Sprintf("signer %d", w))
			for {
				select {
				case <-stop:
					return
				default:
				}
				sig, err := c.hmacSign(h, key, data)
				if err == nil && !hmac.Equal(sig, hmacOf(value, data)) {
					err = fmt.Errorf("signer %d: a wrong MAC", w)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				signed.Add(1)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		if n := failed.Load(); n > 0 {
			t.Errorf("%d signers failed; the first: %v", n, firstErr.Load())
		}
	}()

	// 1. Killed, and restarted by the daemon.
	pid, err := d.swtpmPID()
	if err != nil {
		t.Fatal(err)
	}
	before := signed.Load()
	syscall.Kill(pid, syscall.SIGKILL)
	pid = d.waitSwtpm(t, pid)
	if rv := initToken(t, d.sock, "after-restart"); rv != ck.CKR_OK {
		t.Fatalf("C_InitToken after the swtpm was restarted: %v", ck.Error(rv))
	}
	if st := d.status(t); !st.TPM.Available || st.TPM.Reconnects != 1 {
		t.Errorf("status after the swtpm was restarted: %+v", st.TPM)
	}
	t.Logf("killed swtpm, restarted by the daemon: %d signatures meanwhile", signed.Load()-before)

	// 2. Killed while it cannot start again.
	if err := os.WriteFile(block, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before = signed.Load()
	syscall.Kill(pid, syscall.SIGKILL)
	var st adminapi.Status
	for deadline := time.Now().Add(60 * time.Second); ; {
		if st = d.status(t); !st.TPM.Available {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status still says the TPM is available 60 s after its swtpm was killed: %+v", st.TPM)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(st.TPM.Error, "blocked by the chaos test") || st.TPM.DownSince == nil {
		t.Errorf("status with the TPM unavailable: %+v", st.TPM)
	}
	for range 3 {
		if rv := initToken(t, d.sock, "while-down"); rv != ck.CKR_DEVICE_ERROR {
			t.Fatalf("C_InitToken with the TPM unavailable: %v, want CKR_DEVICE_ERROR", ck.Error(rv))
		}
	}
	out, err := exec.Command(d.bin, "status", "--socket", d.sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "UNAVAILABLE since") {
		t.Errorf("hsmemu status with the TPM unavailable: %v\n%s", err, out)
	}
	if lines := d.logLines("level=ERROR", "TPM is unavailable"); len(lines) == 0 {
		t.Error("no log line says the TPM is unavailable")
	}
	time.Sleep(time.Second) // signatures go on meanwhile
	t.Logf("swtpm kept down: %d signatures meanwhile", signed.Load()-before)

	// 3. It can start again: the daemon brings it back by itself.
	if err := os.Remove(block); err != nil {
		t.Fatal(err)
	}
	d.waitSwtpm(t, pid)
	for deadline := time.Now().Add(60 * time.Second); !d.status(t).TPM.Available; {
		if time.Now().After(deadline) {
			t.Fatal("the TPM is not back 60 s after swtpm could start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rv := initToken(t, d.sock, "after-outage"); rv != ck.CKR_OK {
		t.Fatalf("C_InitToken once the TPM is back: %v", ck.Error(rv))
	}
	if st := d.status(t); st.TPM.Reconnects != 2 {
		t.Errorf("status once the TPM is back: %+v", st.TPM)
	}
	if n := signed.Load(); n == 0 {
		t.Error("no signatures")
	} else {
		t.Logf("%d signatures in all", n)
	}
}
