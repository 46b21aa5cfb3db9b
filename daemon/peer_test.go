package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
		sock := filepath.Join(dir, fmt.Sprintf("s%d", len(allow)))
		cfg := ServerConfig{Group: -1, AllowUIDs: allow}
		ln, err := Listen(sock, cfg)
		if err != nil {
			t.Fatal(err)
		}
		// As if the user were in the socket's group.
		os.Chmod(sock, 0o666)
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
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(nil); got != fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusRefused, wire.StatusRefused) {
		t.Fatalf("a user not allowed: %s", got)
	}
	if got := run([]uint32{65534}); got != fmt.Sprintf("pkcs11=%d admin=%d", wire.StatusOK, wire.StatusRefused) {
		t.Fatalf("a user allowed to use tokens: %s", got)
	}
}
