package e2e

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/internal/testenv"
)

// TestModuleSaysWhyNoDaemon: a module that does not reach its daemon says
// why, once, on stderr (or syslog, or nowhere, as module.conf says): no
// daemon at the socket, or a daemon that refused this process. The slot
// just shows no token, so this line is how a user learns to start the
// daemon or to join its group.
func TestModuleSaysWhyNoDaemon(t *testing.T) {
	a := need(t)
	tool, err := exec.LookPath("pkcs11-tool")
	if err != nil {
		testenv.Missing(t, "pkcs11-tool (Debian opensc) is not installed")
	}
	dir, err := os.MkdirTemp("", "hsu")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	list := func(sock, conf string) string {
		t.Helper()
		cmd := exec.Command(tool, "--module", a.module, "-L")
		cmd.Env = append(os.Environ(), "HSMEMU_SOCKET="+sock, "HSMEMU_CONFIG="+conf, "HSMEMU_SYSTEM_CONFIG=/nonexistent")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	noConf := filepath.Join(dir, "none.conf")

	missing := filepath.Join(dir, "missing.sock")
	out := list(missing, noConf)
	if want := "hsmemu-pkcs11: no daemon at " + missing + " (No such file or directory): start it"; strings.Count(out, want) != 1 {
		t.Errorf("no daemon: want %q once in:\n%s", want, out)
	}

	// A daemon that refuses every hello, as hsmemu serve refuses a user
	// it does not let in.
	refusing := filepath.Join(dir, "refusing.sock")
	ln, err := net.Listen("unix", refusing)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				hello := make([]byte, 32)
				if _, err := io.ReadFull(c, hello); err != nil {
					return
				}
				c.Write([]byte{'H', 'S', 'M', 'U', 0, hello[5], 0, 2}) // status 2: refused
			}()
		}
	}()
	out = list(refusing, noConf)
	if want := "hsmemu-pkcs11: the daemon at " + refusing + " refused this process (uid "; strings.Count(out, want) != 1 {
		t.Errorf("refused: want %q once in:\n%s", want, out)
	}
	if strings.Contains(out, "no daemon") {
		t.Errorf("refused, and said no daemon:\n%s", out)
	}

	// A socket this user may not open: only a user who is not root sees it.
	if os.Geteuid() != 0 {
		closed := filepath.Join(dir, "closed")
		os.Mkdir(closed, 0o700)
		l2, err := net.Listen("unix", filepath.Join(closed, "s"))
		if err != nil {
			t.Fatal(err)
		}
		defer l2.Close()
		os.Chmod(filepath.Join(closed, "s"), 0)
		out = list(filepath.Join(closed, "s"), noConf)
		if want := "refused this user (Permission denied): add the user to the socket's group"; !strings.Contains(out, want) {
			t.Errorf("no permission: want %q in:\n%s", want, out)
		}
	}

	// log = none in module.conf: nothing said.
	quiet := filepath.Join(dir, "quiet.conf")
	if err := os.WriteFile(quiet, []byte("log = none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := list(missing, quiet); strings.Contains(out, "hsmemu-pkcs11:") {
		t.Errorf("log = none, and the module said:\n%s", out)
	}
}
