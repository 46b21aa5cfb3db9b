package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall installs under a scratch PREFIX and checks what a machine
// gets: the binary, the module, a p11-kit registration naming the installed
// module, and a systemd unit with the hardening the daemon relies on, which
// systemd-analyze accepts where it is installed.
func TestMakeInstall(t *testing.T) {
	a := need(t)
	prefix := t.TempDir()
	// The accounts go into a scratch root's /etc, never this machine's.
	users := t.TempDir()
	os.MkdirAll(filepath.Join(users, "etc"), 0o755)
	for name, content := range map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/bash\n", "group": "root:x:0:\ntss:x:901:\n",
		"shadow": "root:*:19000:0:99999:7:::\n", "gshadow": "root:*::\ntss:!::\n",
	} {
		if err := os.WriteFile(filepath.Join(users, "etc", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("make", "-C", a.root, "install", "PREFIX="+prefix, "SYSCONFDIR="+filepath.Join(prefix, "etc"), "USERROOT="+users)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	if os.Geteuid() == 0 {
		passwd, _ := os.ReadFile(filepath.Join(users, "etc", "passwd"))
		group, _ := os.ReadFile(filepath.Join(users, "etc", "group"))
		if !strings.Contains(string(passwd), "\nhsmemu:x:") || !strings.Contains(string(passwd), ":/var/lib/hsmemu:/usr/sbin/nologin") ||
			!strings.Contains(string(group), "\nhsmemu:x:") || !strings.Contains(string(group), "tss:x:901:hsmemu") {
			t.Errorf("make install's accounts:\n%s\n%s", passwd, group)
		}
	} else if !strings.Contains(string(out), "scripts/add-system-user.sh") {
		t.Errorf("make install as a user does not say how to create the daemon's user:\n%s", out)
	}
	bin := filepath.Join(prefix, "bin", "hsmemu")
	if out, err := exec.Command(bin, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "hsmemu") {
		t.Fatalf("installed hsmemu --version: %v: %s", err, out)
	}
	mod, err := os.ReadFile(filepath.Join(prefix, "share", "p11-kit", "modules", "hsmemu.module"))
	if err != nil {
		t.Fatal(err)
	}
	var modulePath string
	for sc := bufio.NewScanner(bytes.NewReader(mod)); sc.Scan(); {
		if v, ok := strings.CutPrefix(sc.Text(), "module:"); ok {
			modulePath = strings.TrimSpace(v)
		}
	}
	if modulePath != filepath.Join(prefix, "lib", "hsmemu", "hsmemu-pkcs11.so") {
		t.Fatalf("the p11-kit file names module %q", modulePath)
	}
	if fi, err := os.Stat(modulePath); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("installed module: %v, %v", fi, err)
	}
	conf, err := os.ReadFile(filepath.Join(prefix, "etc", "hsmemu", "module.conf"))
	if err != nil || !strings.Contains(string(conf), "socket = /run/hsmemu/hsmemu.sock") {
		t.Fatalf("the module's system config: %v\n%s", err, conf)
	}
	unitPath := filepath.Join(prefix, "lib", "systemd", "system", "hsmemu.service")
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ExecStart=" + bin + " serve ",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "LimitCORE=0",
		"MemoryDenyWriteExecute=yes", "StateDirectory=hsmemu", "RuntimeDirectory=hsmemu",
		"User=hsmemu", "Group=hsmemu", "--socket-group hsmemu", "LimitMEMLOCK=infinity",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command(sa, "verify", unitPath).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
}
