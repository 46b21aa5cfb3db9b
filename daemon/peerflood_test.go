package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/admin"
	"hsmemu/daemon/token"
)

// floodEnv makes the test binary a client run as another user that has
// hellos refused by the socket it names, then opens connections to it and
// sends nothing on them.
const floodEnv = "HSMEMU_TEST_PEER_FLOOD"

// floodHellos is how many hellos the flooding client has refused.
const floodHellos = 20

func floodChild(sock string) int {
	for range floodHellos {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Printf("dial: %v\n", err)
			return 1
		}
		c.Write(wire.Hello{Version: wire.Version, AppID: [16]byte{7}, PID: uint32(os.Getpid())}.Marshal())
		if r, err := wire.ReadHelloReply(c); err != nil || r.Status != wire.StatusRefused {
			fmt.Printf("hello: %+v %v\n", r, err)
			return 1
		}
		c.Close()
	}
	var conns []net.Conn
	for range maxConns + 16 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			fmt.Printf("dial: %v\n", err)
			return 1
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	// Hold them until the test is done with them.
	bufio.NewReader(os.Stdin).ReadString('\n')
	return 0
}

// TestRefusedUserFlood: a user who can reach the socket but is not
// allowed (a member of its group not in --allow-uid) holds at most a few
// connections on their way to be refused, so the users allowed still
// get in (before, it held every connection the daemon takes, each for
// the hello's 10 seconds, and every other connection was refused); and
// its refusals are counted into a line a minute of the daemon's log
// (before, a line each).
func TestRefusedUserFlood(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a client as another user")
	}
	t.Parallel()
	d := startDaemon(t, token.Config{})
	// Not t.TempDir(), whose parent that user cannot enter.
	dir, err := os.MkdirTemp("", "hsp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := copySelf(t, dir)
	sock := filepath.Join(dir, "s")
	cfg := ServerConfig{Group: -1}
	ln, err := Listen(sock, cfg)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o666) // as if the user were in the socket's group
	logs := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewServer(d.eng, admin.New(d.eng, d.st.Store, nil, admin.Config{}), slog.New(slog.NewJSONHandler(logs, nil)), cfg).Serve(ctx, ln)
	}()
	defer func() {
		cancel()
		<-done
	}()

	cmd := exec.Command(bin, "-test.run", "^$")
	cmd.Env = append(os.Environ(), floodEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("the flooding client: %q %v", line, err)
	}
	// The server takes connections in their order: by this one it has
	// taken (or turned away) the whole flood.
	wiretest.DialClient(t, sock).Must(ck.CKR_OK, "C_GetSlotList", wire.Value{Byte: 1}, wiretest.Out(64))
	// One line, or two should the hellos have straddled a minute.
	if n := len(logs.lines(t, "connection refused: user not allowed")); n == 0 || n > 2 {
		t.Fatalf("%d refused hellos logged in %d lines", floodHellos, n)
	}
}

// copySelf copies the test binary into dir, where another user can run
// it as a client.
func copySelf(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}
