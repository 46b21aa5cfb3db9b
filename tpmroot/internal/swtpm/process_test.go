package swtpm

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmemu/internal/testenv"
)

func requireSwtpm(t *testing.T) string {
	t.Helper()
	bin := testenv.Command(t, "swtpm", "swtpm and swtpm-tools")
	return bin
}

func TestStartMissing(t *testing.T) {
	t.Parallel()
	_, _, err := Start(context.Background(), Config{Dir: t.TempDir(), SearchPath: t.TempDir()})
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "apt-get install swtpm swtpm-tools") {
		t.Fatalf("err = %v, want ErrMissing with the install hint", err)
	}
}

func TestStartRefusesLongPath(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	_, _, err := Start(context.Background(), Config{Dir: dir, SearchPath: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("err = %v, want a path-too-long error", err)
	}
}

// TestStartBesideForeignSwtpm: a swtpm that hsmemu did not start (so holds
// only swtpm's own lock) already serves the directory. Start must refuse
// before running a second swtpm, which would remove the first one's
// sockets on its way out.
func TestStartBesideForeignSwtpm(t *testing.T) {
	t.Parallel()
	bin := requireSwtpm(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, SocketName)
	foreign := exec.Command(bin, "socket", "--tpm2", "--tpmstate", "dir="+dir,
		"--server", "type=unixio,path="+sock, "--flags", "not-need-init,startup-clear")
	if err := foreign.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		foreign.Process.Kill()
		foreign.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// swtpm listens before it takes its lock: wait for both, as a swtpm
	// that has been serving for a while has them.
	for {
		_, err := os.Stat(sock)
		if _, held := swtpmLockHolder(dir); held && err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the foreign swtpm did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}

	_, _, err := Start(ctx, Config{Dir: dir})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "swtpm process") {
		t.Fatalf("err = %v, want ErrInUse naming the swtpm process", err)
	}
	t.Logf("Start beside a foreign swtpm: %v", err)
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("the foreign swtpm's socket is gone: %v", err)
	}
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatalf("the foreign swtpm is unreachable: %v", err)
	}
	c.Close()
}

// TestExitOnDisconnect: a managed swtpm exits when its client's connection
// closes, so it never outlives a killed daemon.
func TestExitOnDisconnect(t *testing.T) {
	t.Parallel()
	requireSwtpm(t)
	p, c, err := Start(context.Background(), Config{Dir: t.TempDir(), ExitOnDisconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	c.Close()
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("swtpm still running 10 s after its client hung up")
	}
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("Stop after exit: %v", err)
	}
}
