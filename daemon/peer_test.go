package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/admin"
	"hsmemu/daemon/token"
)

// peerEnv makes the test binary a client run as another user: it says
// which hellos the daemon at that socket accepts from it.
const peerEnv = "HSMEMU_TEST_PEER_CHILD"

func TestMain(m *testing.M) {
	if sock := os.Getenv(peerEnv); sock != "" {
		os.Exit(peerChild(sock))
	}
	if sock := os.Getenv(floodEnv); sock != "" {
		os.Exit(floodChild(sock))
	}
	os.Exit(m.Run())
}

func peerChild(sock string) int {
	for _, h := range []struct {
		name  string
		flags uint16
	}{{name: "pkcs11", flags: 0}, {name: "admin", flags: wire.FlagAdmin}} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Printf("%s=dial-failed ", h.name)
			continue
		}
		c.Write(wire.Hello{Version: wire.Version, Flags: h.flags, AppID: [16]byte{7, 7}, PID: uint32(os.Getpid())}.Marshal())
		r, err := wire.ReadHelloReply(c)
		c.Close()
		if err != nil {
			fmt.Printf("%s=read-failed ", h.name)
			continue
		}
		fmt.Printf("%s=%d ", h.name, r.Status)
	}
	return 0
}

// TestAdminPeerCredentials: a user allowed to use the tokens (--allow-uid)
// is not an administrator. Run as root, the test serves the daemon's
// engine on a socket such a user can reach and connects as uid 65534.
func TestAdminPeerCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	d := startDaemon(t, token.Config{})
	dir, err := os.MkdirTemp("", "hsp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := copySelf(t, dir)

	run := func(allow []uint32) string {
		t.Helper()
		// As if the user were in the socket's group.
		return helloAs(t, d, dir, bin, ServerConfig{Group: -1, AllowUIDs: allow}, 0o666,
			&syscall.Credential{Uid: 65534, Gid: 65534})
	}
	if got := run(nil); got != fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusRefused, wire.StatusRefused) {
		t.Fatalf("a user not allowed: %s", got)
	}
	if got := run([]uint32{65534}); got != fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusOK, wire.StatusRefused) {
		t.Fatalf("a user allowed to use tokens: %s", got)
	}
}

// TestSocketGroupMembers: with --socket-group, the group's members use
// the tokens (as the packaged unit and the README say), by their primary
// group or a supplementary one, and are not administrators; a user
// outside it who reaches the socket all the same is refused.
func TestSocketGroupMembers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	d := startDaemon(t, token.Config{})
	dir, err := os.MkdirTemp("", "hsp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := copySelf(t, dir)
	const group = 4242 // no name needed: the kernel's credentials carry it
	cfg := ServerConfig{Group: group}
	member := fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusOK, wire.StatusRefused)
	for _, c := range []struct {
		name string
		mode os.FileMode // 0: the socket as Listen made it
		cred *syscall.Credential
		want string
	}{
		{"primary group", 0, &syscall.Credential{Uid: 65534, Gid: group}, member},
		{"supplementary group", 0, &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{100, group}}, member},
		// More than peerGroups' first buffer holds.
		{"supplementary group, among many", 0, &syscall.Credential{Uid: 65534, Gid: 65534, Groups: manyGroups(group)}, member},
		{"outside the group", 0o666, &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{100}},
			fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusRefused, wire.StatusRefused)},
	} {
		if got := helloAs(t, d, dir, bin, cfg, c.mode, c.cred); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
}

// manyGroups is 40 supplementary groups, the last one g.
func manyGroups(g uint32) []uint32 {
	var gs []uint32
	for i := range uint32(39) {
		gs = append(gs, 1000+i)
	}
	return append(gs, g)
}

// helloAs serves d's engine on a new socket under dir with cfg (its mode
// changed to mode unless 0) and says which hellos a client run with cred
// had accepted.
func helloAs(t *testing.T, d *testDaemon, dir, bin string, cfg ServerConfig, mode os.FileMode, cred *syscall.Credential) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "s")
	if err != nil {
		t.Fatal(err)
	}
	sock := f.Name()
	f.Close()
	os.Remove(sock)
	ln, err := Listen(sock, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if mode != 0 {
		os.Chmod(sock, mode)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewServer(d.eng, admin.New(d.eng, d.st.Store, nil, admin.Config{}), nil, cfg).Serve(ctx, ln)
	}()
	defer func() {
		cancel()
		<-done
	}()
	cmd := exec.Command(bin, "-test.run", "^$")
	cmd.Env = append(os.Environ(), peerEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as uid %d: %v: %s", cred.Uid, err, out)
	}
	return strings.TrimSpace(string(out))
}
