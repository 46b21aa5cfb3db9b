package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// writeSome creates n tokens, each a few writes (its row, its audit-free
// PIN records), through the keystore the daemon opened.
func writeSome(t *testing.T, st *State, prefix string, n int) {
	t.Helper()
	for i := range n {
		if _, err := st.Store.CreateToken(context.Background(), keystore.TokenSpec{Label: fmt.Sprintf("%s%d", prefix, i), Tier: keystore.TierStandard,
			SOPIN: []byte("so-pin"), UserPIN: []byte("user-pin")}); err != nil {
			t.Fatal(err)
		}
	}
}

// putBackFile puts the keystore copy at from in place in dir, as someone
// with the state directory would, the daemon stopped.
func putBackFile(t *testing.T, from, dir string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, DatabaseName)
	for _, suffix := range []string{"-wal", "-shm"} {
		os.Remove(db + suffix)
	}
	if err := os.WriteFile(db, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRollbackRefused: a keystore anchored in the TPM, copied aside,
// written to and anchored again (the daemon's clean stop anchors), then
// put back from the copy, is refused at start with the gap named; a
// restore re-anchors it on purpose and records it; the daemon then opens
// it as usual.
func TestRollbackRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Anchor.Created || st.Counter == nil || st.Counter.Handle() != tpmroot.AnchorHandle(st.Root.DomainID()) {
		t.Fatalf("first open: %+v", st.Anchor)
	}
	writeSome(t, st, "before", 2)
	if _, err := st.Store.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old.db")
	if err := keystore.CopyFile(ctx, filepath.Join(dir, DatabaseName), old); err != nil {
		t.Fatal(err)
	}
	writeSome(t, st, "after", 1)
	if _, err := st.Store.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	writeSome(t, st, "last", 1)
	if err := st.Close(); err != nil { // anchors what "last" wrote
		t.Fatal(err)
	}

	putBackFile(t, old, dir)
	_, err = openState(t, dir)
	var re *keystore.RollbackError
	if !errors.As(err, &re) || re.What != "behind" || re.Behind != 2 {
		t.Fatalf("open a rolled-back keystore: %v", err)
	}
	if !strings.Contains(err.Error(), "the keystore is 2 anchor(s) behind the TPM") {
		t.Fatalf("message: %v", err)
	}

	st, err = OpenState(ctx, StateConfig{Dir: dir, TPM: "managed", Reanchor: "restore",
		Store: keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Anchor.Reset || st.Anchor.Behind != 2 {
		t.Fatalf("restore: %+v", st.Anchor)
	}
	recs, err := st.Store.AuditTail(ctx, 1)
	if err != nil || len(recs) != 1 || recs[0].Event != "anchor.reset" || recs[0].Detail["behind"] != "2" || recs[0].Actor.Role != "admin" {
		t.Fatalf("audit: %+v %v", recs, err)
	}
	if _, err := st.Store.TokenByLabel(ctx, "after0"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("the restored keystore has a later token: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = openState(t, dir)
	if err != nil {
		t.Fatalf("open after the restore: %v", err)
	}
	st.Close()
}

// TestAnchorCounterGone: a keystore anchored in a counter the TPM no
// longer holds is refused; the counter deleted and defined again too.
func TestAnchorCounterGone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock, _ := tpmtest.StartSocket(t, filepath.Join(dir, "tpm"))
	cfg := StateConfig{Dir: dir, TPM: "swtpm:unix:" + sock, Store: keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}}}
	st, err := OpenState(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	handle := st.Counter.Handle()
	st.Close()
	// Deleted with the owner's authorisation, as anyone holding it can:
	// a command of the tests', not the daemon's.
	if err := tpmtest.UndefineNV(sock, handle); err != nil {
		t.Fatal(err)
	}
	_, err = OpenState(context.Background(), cfg)
	var re *keystore.RollbackError
	if !errors.As(err, &re) || re.What != "counter" || !strings.Contains(err.Error(), "which this TPM does not hold") {
		t.Fatalf("open without the counter: %v", err)
	}
	// Restore re-anchors it in a new counter, on purpose.
	cfg.Reanchor = "restore"
	st, err = OpenState(context.Background(), cfg)
	if err != nil || !st.Anchor.Reset {
		t.Fatalf("re-anchor: %+v %v", st, err)
	}
	st.Close()
	cfg.Reanchor = ""
	st, err = OpenState(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// The crash test's child: it opens the state directory (its managed
// swtpm a child of its own), and writes and anchors in a loop, saying
// after each round, until it is killed.
const anchorChildEnv = "HSMEMU_TEST_ANCHOR_CHILD"

func TestAnchorCrashChild(t *testing.T) {
	dir := os.Getenv(anchorChildEnv)
	if dir == "" {
		t.Skip("the child of TestAnchorCrash")
	}
	ctx := context.Background()
	st, err := openState(t, dir)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		if _, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: fmt.Sprintf("c%d-%d", os.Getpid(), i), Tier: keystore.TierStandard,
			SOPIN: []byte("so-pin"), UserPIN: []byte("user-pin")}); err != nil {
			fmt.Println("write:", err)
			os.Exit(2)
		}
		if _, err := st.Store.Anchor(ctx); err != nil {
			fmt.Println("anchor:", err)
			os.Exit(2)
		}
		fmt.Println("round", i)
	}
}

// TestAnchorCrash: a daemon killed at any moment (between a write and its
// anchor, or between an anchor's commit and its increment) leaves a
// keystore the next start opens, every time.
func TestAnchorCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	tpmtest.Require(t)
	t.Parallel()
	dir := t.TempDir()
	st, err := openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	for kill := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAnchorCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), anchorChildEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		rounds := 0
		deadline := time.Now().Add(60 * time.Second)
		for rounds < 3+kill*2 && sc.Scan() && time.Now().Before(deadline) {
			if strings.HasPrefix(sc.Text(), "round") {
				rounds++
			} else if !strings.HasPrefix(sc.Text(), "=== RUN") {
				t.Fatalf("child: %s", sc.Text())
			}
		}
		// Mid-round: in a write, an anchor's commit or its increment.
		time.Sleep(time.Duration(kill) * 3 * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		if rounds == 0 {
			t.Fatal("the child never finished a round")
		}
		st, err := openState(t, dir)
		if err != nil {
			t.Fatalf("start after kill %d: %v", kill, err)
		}
		if st.Anchor.Reset || len(st.Anchor.BadTokens) > 0 || st.Anchor.AuditLost != "" {
			t.Fatalf("start after kill %d: %+v", kill, st.Anchor)
		}
		st.Close()
	}
}

// TestRunAnchor: the daemon anchors at its interval when the keystore
// changed; a second copy of it anchoring on the same TPM stops it.
func TestRunAnchor(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := openState(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- st.RunAnchor(ctx, 20*time.Millisecond) }()
	before, _, _ := st.Counter.Value()
	writeSome(t, st, "run", 1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := st.Store.AnchorStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Anchored > before && s.Generation == s.AnchoredGen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not anchored: %+v", s)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Another copy of the keystore, anchoring in the same counter.
	fork := t.TempDir()
	if err := keystore.CopyFile(ctx, filepath.Join(dir, DatabaseName), filepath.Join(fork, DatabaseName)); err != nil {
		t.Fatal(err)
	}
	other, err := keystore.Open(ctx, filepath.Join(fork, DatabaseName), keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Attach(ctx, st.Root, st.Root.DomainID()); err != nil {
		t.Fatal(err)
	}
	if _, err := other.AttachAnchor(ctx, st.Counter, keystore.AnchorOptions{Handle: st.Counter.Handle()}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.CreateToken(ctx, keystore.TokenSpec{Label: "fork", Tier: keystore.TierStandard, SOPIN: []byte("so-pin")}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Anchor(ctx); err != nil {
		t.Fatal(err)
	}
	// The daemon's next anchor, written to or not, finds the counter
	// ahead of its record: it stops, and writes fail from then on.
	select {
	case err := <-done:
		if !errors.Is(err, keystore.ErrRolledBack) {
			t.Fatalf("RunAnchor: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("RunAnchor did not stop")
	}
	if _, err := st.Store.Audit(ctx, keystore.AuditActor{Role: "admin"}, "test", nil); !errors.Is(err, keystore.ErrRolledBack) {
		t.Fatalf("a write after the refusal: %v", err)
	}
}
