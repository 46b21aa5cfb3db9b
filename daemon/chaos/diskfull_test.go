package chaos

import (
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory, unmounted
// when the test ends. Mounting needs CAP_SYS_ADMIN: without it, it
// returns the error.
func mountTmpfs(t *testing.T, size int) (string, error) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hsf")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		os.Remove(dir)
		return "", err
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir, nil
}

// fillFS writes path until the filesystem has no block left, and returns
// how many bytes it wrote.
func fillFS(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4096, 1} {
		buf := make([]byte, chunk)
		for {
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	return n
}

// secretTmpl is a token HMAC key's template, its value given.
func secretTmpl(label string, private bool, value []byte) []wire.Attribute {
	return []wire.Attribute{
		wiretest.AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), wiretest.AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_PRIVATE, private), wiretest.AB(ck.CKA_SIGN, true),
		wiretest.A(ck.CKA_LABEL, []byte(label)), wiretest.A(ck.CKA_VALUE, value),
	}
}

// genTmpl is a generated token HMAC key's template.
func genTmpl(label string) []wire.Attribute {
	return []wire.Attribute{
		wiretest.AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), wiretest.AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_SIGN, true), wiretest.AU(ck.CKA_VALUE_LEN, 32),
		wiretest.A(ck.CKA_LABEL, []byte(label)),
	}
}

// ecP256 is the DER of the P-256 curve's OID, CKA_EC_PARAMS.
var ecP256 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// TestDiskFull fills the daemon's keystore up. Every write
// (C_CreateObject and C_GenerateKey of token objects, C_DestroyObject,
// the administrator's key generate) then either succeeds, and is kept, or
// fails with CKR_DEVICE_MEMORY, and at least one fails; the daemon says
// why in its log; reads, finds, signatures, session objects and logins go
// on; once space returns, writes succeed again; and nothing acknowledged
// is lost or corrupted, the keystore passing SQLite's integrity check and
// every object its audit record.
//
// Two ways to fill it. tmpfs: the state directory on a 16 MiB tmpfs,
// filled with a file until no block is left (SQLite meets ENOSPC and says
// SQLITE_FULL); this needs CAP_SYS_ADMIN to mount, and is skipped without
// it. fsize: the daemon's RLIMIT_FSIZE lowered to the size of its largest
// file, so no file of its may grow (SQLite meets EFBIG); this needs
// nothing, and always runs.
func TestDiskFull(t *testing.T) {
	chaosOnly(t)
	t.Run("tmpfs", func(t *testing.T) {
		mnt, err := mountTmpfs(t, 16<<20)
		if err != nil {
			t.Skipf("mounting a tmpfs needs CAP_SYS_ADMIN (%v): the fsize variant fills the keystore instead", err)
		}
		d := newDaemon(t, filepath.Join(mnt, "st"))
		filler := filepath.Join(mnt, "fill")
		diskFull(t, d, func() {
			t.Logf("filled the filesystem with %d bytes", fillFS(t, filler))
		}, func() {
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("fsize", func(t *testing.T) {
		d := newDaemon(t, "")
		diskFull(t, d, func() {
			var largest int64
			for _, name := range []string{"keystore.db", "keystore.db-wal", "keystore.db-shm"} {
				if fi, err := os.Stat(filepath.Join(d.dir, name)); err == nil {
					largest = max(largest, fi.Size())
				}
			}
			setFsize(t, d.pid(), uint64(largest))
			t.Logf("the daemon's RLIMIT_FSIZE is now %d bytes", largest)
		}, func() {
			setFsize(t, d.pid(), unix.RLIM_INFINITY)
		})
	})
}

// setFsize sets a process's soft RLIMIT_FSIZE, its hard limit unchanged.
func setFsize(t *testing.T, pid int, soft uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = min(soft, lim.Max)
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatal(err)
	}
}

// diskFull is TestDiskFull on d, which fill fills and free frees.
func diskFull(t *testing.T, d *daemon, fill, free func()) {
	d.start()
	slot := newToken(t, d.sock, "full")
	c, err := dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h, err := c.session(slot)
	if err != nil {
		t.Fatal(err)
	}

	// What the clients were told was kept: label -> value.
	kept := map[string][]byte{}
	create := func(label string, private bool) (uint64, error) {
		value := make([]byte, 32)
		rand.Read(value)
		out, err := c.do("C_CreateObject", wiretest.U(h), wiretest.T(secretTmpl(label, private, value)...), wiretest.None())
		if err == nil {
			kept[label] = value
			return out[2].Ulong, nil
		}
		return 0, err
	}
	for i := range 8 {
		if _, err := create(fmt.Sprintf("before-%d", i), i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	out, err := c.do("C_GenerateKeyPair", wiretest.U(h), wiretest.M(ck.CKM_EC_KEY_PAIR_GEN),
		wiretest.T(wiretest.A(ck.CKA_EC_PARAMS, ecP256), wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_VERIFY, true)),
		wiretest.T(wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_SIGN, true), wiretest.A(ck.CKA_LABEL, []byte("ec"))),
		wiretest.None(), wiretest.None())
	if err != nil {
		t.Fatal(err)
	}
	ecPub, ecPriv := out[4].Ulong, out[5].Ulong

	fill()

	// Writes: each succeeds or is CKR_DEVICE_MEMORY. The WAL may hold
	// room for a few more commits after the disk is full; go on until a
	// run of refusals.
	var refused, okAfterFull int
	for i := 0; refused < 30; i++ {
		if i > 100000 {
			t.Fatalf("100,000 writes on a full filesystem, %d refused", refused)
		}
		var err error
		switch i % 3 {
		case 0:
			_, err = create(fmt.Sprintf("full-%d", i), i%2 == 0)
		case 1:
			label := fmt.Sprintf("gen-%d", i)
			_, err = c.do("C_GenerateKey", wiretest.U(h), wiretest.M(ck.CKM_GENERIC_SECRET_KEY_GEN), wiretest.T(genTmpl(label)...), wiretest.None())
			if err == nil {
				kept[label] = nil
			}
		case 2:
			err = nil
			if refused == 0 {
				continue
			}
			// A destroy on a full disk: refused or done, never half.
			var hs []uint64
			label := fmt.Sprintf("before-%d", i%8)
			if hs, err = c.find(h, wiretest.A(ck.CKA_LABEL, []byte(label))); err == nil && len(hs) == 1 {
				if _, err = c.do("C_DestroyObject", wiretest.U(h), wiretest.U(hs[0])); err == nil {
					delete(kept, label)
				}
			}
		}
		switch {
		case err == nil:
			if refused > 0 {
				okAfterFull++
			}
		case isRV(err, ck.CKR_DEVICE_MEMORY):
			refused++
		default:
			t.Fatalf("a write on a full filesystem: %v, want CKR_OK or CKR_DEVICE_MEMORY", err)
		}
	}
	t.Logf("refused %d writes; %d more succeeded among them", refused, okAfterFull)
	if lines := d.logLines("level=WARN", "filesystem is full"); len(lines) == 0 {
		t.Errorf("no log line says the filesystem is full")
	} else {
		t.Logf("the log says: %s", lines[0])
	}

	// Reads, finds, signatures, session objects, another application's
	// login: all go on.
	checkReads := func(when string) {
		t.Helper()
		all, err := c.find(h)
		if err != nil {
			t.Fatalf("%s: find: %v", when, err)
		}
		labels := map[string]uint64{}
		for _, o := range all {
			v, err := c.get(h, o, ck.CKA_LABEL)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			labels[string(v[0])] = o
		}
		for label, value := range kept {
			o, ok := labels[label]
			if !ok {
				t.Fatalf("%s: %s lost", when, label)
			}
			sig, err := c.hmacSign(h, o, []byte(label))
			if err != nil {
				t.Fatalf("%s: sign with %s: %v", when, label, err)
			}
			if value != nil && !hmac.Equal(sig, hmacOf(value, []byte(label))) {
				t.Fatalf("%s: %s signs with another value", when, label)
			}
		}
		digest := make([]byte, 32)
		if _, err := c.do("C_SignInit", wiretest.U(h), wiretest.M(ck.CKM_ECDSA), wiretest.U(ecPriv)); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		out, err := c.do("C_Sign", wiretest.U(h), wiretest.B(digest), wiretest.Out(64))
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		sig := append([]byte(nil), out[2].Bytes...)
		if _, err := c.do("C_VerifyInit", wiretest.U(h), wiretest.M(ck.CKM_ECDSA), wiretest.U(ecPub)); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if _, err := c.do("C_Verify", wiretest.U(h), wiretest.B(digest), wiretest.B(sig)); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if _, err := c.do("C_CreateObject", wiretest.U(h), wiretest.T(
			wiretest.AU(ck.CKA_CLASS, ck.CKO_DATA), wiretest.AB(ck.CKA_TOKEN, false), wiretest.A(ck.CKA_VALUE, []byte("session"))), wiretest.None()); err != nil {
			t.Fatalf("%s: a session object: %v", when, err)
		}
		other, err := dial(d.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if _, err := other.session(slot); err != nil {
			t.Fatalf("%s: another application's login: %v", when, err)
		}
	}
	checkReads("on a full filesystem")

	// The administrator's writes are refused the same way, and say so.
	adm := exec.Command(d.bin, "key", "generate", "--socket", d.sock, "--token", "full", "--type", "aes-256", "--key", "admin-full")
	adm.Env = append(os.Environ(), "HSMEMU_USER_PIN="+wiretest.UserPIN)
	msg, err := adm.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(msg), "filesystem is full") {
		t.Errorf("hsmemu key generate on a full filesystem: %v: %s", err, msg)
	}

	// Space returns: writes succeed again.
	free()
	for i := range 20 {
		if _, err := create(fmt.Sprintf("after-%d", i), i%2 == 0); err != nil {
			t.Fatalf("a write once space returned: %v", err)
		}
	}
	label := "gen-after"
	if _, err := c.do("C_GenerateKey", wiretest.U(h), wiretest.M(ck.CKM_GENERIC_SECRET_KEY_GEN), wiretest.T(genTmpl(label)...), wiretest.None()); err != nil {
		t.Fatalf("a generate once space returned: %v", err)
	}
	kept[label] = nil
	checkReads("once space returned")

	// And after a restart, the same, with the file whole.
	d.stop()
	db := filepath.Join(d.dir, "keystore.db")
	if err := integrityCheck(db); err != nil {
		t.Fatal(err)
	}
	if missing, err := unaudited(db); err != nil {
		t.Fatal(err)
	} else if len(missing) > 0 {
		t.Errorf("objects without the audit record of their creation: %s", strings.Join(missing, ", "))
	}
	d.start()
	c.Close()
	if c, err = dial(d.sock); err != nil {
		t.Fatal(err)
	}
	if h, err = c.session(slot); err != nil {
		t.Fatal(err)
	}
	checkReads("after a restart")
}
