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
	// Where p11-kit looks, by default, whatever the PREFIX; here, told
	// otherwise, so the test writes nothing outside its directories.
	p11kit := filepath.Join(prefix, "p11-kit-modules")
	cmd := exec.Command("make", "-C", a.root, "install", "PREFIX="+prefix, "SYSCONFDIR="+filepath.Join(prefix, "etc"), "USERROOT="+users, "P11KITDIR="+p11kit)
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
	// The version and commit are stamped: the checkout's.
	head, err := exec.Command("git", "-C", a.root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatalf("git rev-parse HEAD: %v", err)
	}
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || strings.Contains(string(out), "hsmemu dev\n") ||
		!strings.Contains(string(out), "commit "+strings.TrimSpace(string(head))) {
		t.Errorf("installed hsmemu version: %v: %s (HEAD %s)", err, out, head)
	}
	if man, err := os.ReadFile(filepath.Join(prefix, "share", "man", "man1", "hsmemu.1")); err != nil ||
		!strings.Contains(string(man), ".TH hsmemu 1") || !strings.Contains(string(man), "generate") {
		t.Errorf("the manual page: %v\n%.300s", err, man)
	}
	// Without P11KITDIR, the registration goes where pkg-config says
	// p11-kit looks, not under the PREFIX.
	if pc, err := exec.Command("pkg-config", "--variable", "p11_module_configs", "p11-kit-1").Output(); err == nil && len(bytes.TrimSpace(pc)) > 0 {
		dry, err := exec.Command("make", "-C", a.root, "-n", "install", "PREFIX="+prefix).CombinedOutput()
		want := "> " + filepath.Join(string(bytes.TrimSpace(pc)), "hsmemu.module")
		if err != nil || !strings.Contains(string(dry), want) {
			t.Errorf("make -n install does not write %q: %v\n%s", want, err, dry)
		}
	}
	mod, err := os.ReadFile(filepath.Join(p11kit, "hsmemu.module"))
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
	// The TLS listener's drop-in, as an administrator enables it.
	dropIn, err := os.ReadFile(filepath.Join(prefix, "share", "doc", "hsmemu", "examples", "remote.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=" + bin + " serve ", "--listen tls://", "--client-ca ", "--policy /etc/hsmemu/policy.json", "AF_INET6", "PrivateNetwork=no"} {
		if !strings.Contains(string(dropIn), want) {
			t.Errorf("the remote drop-in lacks %q", want)
		}
	}
	if !strings.Contains(string(unit), "ExecReload=/bin/kill -HUP $MAINPID") {
		t.Errorf("the unit does not reload with SIGHUP")
	}
	if _, err := os.Stat(filepath.Join(prefix, "share", "doc", "hsmemu", "examples", "policy.json")); err != nil {
		t.Error(err)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		d := unitPath + ".d"
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "remote.conf"), dropIn, 0o644)
		if out, err := exec.Command(sa, "verify", unitPath).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify with the remote drop-in: %v\n%s", err, out)
		}
	}
}

// TestMakeInstallDestdir stages an install with the default PREFIX into a
// DESTDIR, as a package build does, and checks each path against where
// this machine's p11-kit (pkg-config) looks: the registration lands there,
// under DESTDIR, and names the module where it will be once unpacked.
func TestMakeInstallDestdir(t *testing.T) {
	a := need(t)
	pc, err := exec.Command("pkg-config", "--variable", "p11_module_configs", "p11-kit-1").Output()
	p11kit := string(bytes.TrimSpace(pc))
	if err != nil || p11kit == "" {
		t.Fatalf("pkg-config does not say where p11-kit looks for modules: %v", err)
	}
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", a.root, "install", "DESTDIR="+dest).CombinedOutput()
	if err != nil {
		t.Fatalf("make install DESTDIR=%s: %v\n%s", dest, err, out)
	}
	// A staged install creates no accounts; it says who should.
	if !strings.Contains(string(out), "scripts/add-system-user.sh") {
		t.Errorf("a staged install does not say how to create the daemon's user:\n%s", out)
	}
	const prefix = "/usr/local"
	for path, mode := range map[string]os.FileMode{
		prefix + "/bin/hsmemu":                        0o755,
		prefix + "/lib/hsmemu/hsmemu-pkcs11.so":       0o644,
		prefix + "/share/man/man1/hsmemu.1":           0o644,
		prefix + "/lib/systemd/system/hsmemu.service": 0o644,
		"/etc/hsmemu/module.conf":                     0o644,
		filepath.Join(p11kit, "hsmemu.module"):        0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, path))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s in DESTDIR: %v (mode %v, want %v)", path, err, fi, mode)
		}
	}
	// The registration and the unit name the unpacked paths, not DESTDIR's.
	mod, err := os.ReadFile(filepath.Join(dest, p11kit, "hsmemu.module"))
	if err != nil || !strings.Contains(string(mod), "module: "+prefix+"/lib/hsmemu/hsmemu-pkcs11.so\n") || strings.Contains(string(mod), dest) {
		t.Errorf("the staged registration: %v\n%s", err, mod)
	}
	unit, err := os.ReadFile(filepath.Join(dest, prefix, "lib/systemd/system/hsmemu.service"))
	if err != nil || !strings.Contains(string(unit), "ExecStart="+prefix+"/bin/hsmemu serve ") || strings.Contains(string(unit), dest) {
		t.Errorf("the staged unit: %v\n%s", err, unit)
	}
	// Nothing lands under DESTDIR outside those trees.
	entries, _ := os.ReadDir(dest)
	for _, e := range entries {
		if top := "/" + e.Name(); !strings.HasPrefix(prefix, top) && !strings.HasPrefix(p11kit, top) && top != "/etc" {
			t.Errorf("the staged install wrote %s", top)
		}
	}
}
