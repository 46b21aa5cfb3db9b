package keystore

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

const (
	childEnv     = "HSMEMU_KEYSTORE_DURABILITY_CHILD"
	childSockEnv = "HSMEMU_KEYSTORE_DURABILITY_SOCK"
)

// durableSecret is what the child stores as object i, so the parent can
// check every acknowledged object without talking to the child.
func durableSecret(i int) []byte {
	return bytes.Repeat([]byte{byte(i), byte(i >> 8), 0xd0}, 11)
}

// durabilityChild runs in a child process: it writes objects in a loop and
// prints each one's id once Put has returned, until it is killed.
func durabilityChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	ctx := context.Background()
	tpm, err := tpmroot.Open(ctx, tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: os.Getenv(childSockEnv)})
	if err != nil {
		return fail(err)
	}
	s, err := openAt(ctx, os.Getenv(childEnv), Options{Argon2: cheapArgon})
	if err != nil {
		return fail(err)
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return fail(err)
	}
	var sealed tpmroot.Sealed
	if err := sealed.UnmarshalBinary(rec.Sealed); err != nil {
		return fail(err)
	}
	root, err := tpm.Load(&sealed)
	if err != nil {
		return fail(err)
	}
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		return fail(err)
	}
	toks, err := s.Tokens(ctx)
	if err != nil || len(toks) != 1 {
		return fail(fmt.Errorf("tokens: %v %v", toks, err))
	}
	tok := toks[0].UUID
	if err := s.Login(ctx, tok, RoleUser, userPIN); err != nil {
		return fail(err)
	}
	for i := 0; ; i++ {
		attrs, err := NewAttributes(
			Attribute{Type: AttrClass, Value: Ulong(4)},
			Attribute{Type: AttrPrivate, Value: Bool(i%2 == 0)},
			Attribute{Type: AttrLabel, Value: []byte(strconv.Itoa(i))},
		)
		if err != nil {
			return fail(err)
		}
		obj, err := s.Put(ctx, tok, attrs, durableSecret(i))
		if err != nil {
			return fail(err)
		}
		// Unbuffered: the line leaves the process only after Put returned.
		fmt.Fprintf(os.Stdout, "%d %d\n", i, obj.ID)
	}
}

func TestDurabilityUnderSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a child process")
	}
	dir := t.TempDir()
	sock, stop := tpmtest.StartSocket(t, filepath.Join(dir, "tpm"))
	defer stop()
	path := newLocation(t)

	// Provision, create the token, and let go of the TPM for the child.
	tpm, err := tpmroot.Open(ctx, tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: sock})
	needSwtpm(t, err)
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := p.Sealed.MarshalBinary()
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	s, err := openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealed, DomainID: root.DomainID()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	newToken(t, s, "durable")
	s.Close()
	root.Close()
	tpm.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path, childSockEnv+"="+sock)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[int]ObjectID{}
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			i, _ := strconv.Atoi(f[0])
			id, _ := strconv.ParseInt(f[1], 10, 64)
			mu.Lock()
			acked[i] = ObjectID(id)
			mu.Unlock()
		}
	}()
	// Kill it mid-stream, after it has acknowledged a good number of writes.
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 150 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	<-done
	if len(acked) < 150 {
		t.Fatalf("child acknowledged only %d writes; stderr: %s", len(acked), stderr.String())
	}

	tpm, err = tpmroot.Open(ctx, tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	s, err = openAt(ctx, path, Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	root, err = tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	toks, _ := s.Tokens(ctx)
	if err := s.Login(ctx, toks[0].UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	for i, id := range acked {
		obj, err := s.Open(ctx, id)
		if err != nil {
			t.Fatalf("acknowledged object %d (id %d) lost: %v", i, id, err)
		}
		if !bytes.Equal(obj.Secret, durableSecret(i)) {
			t.Fatalf("object %d holds the wrong secret", i)
		}
	}
	t.Logf("%d acknowledged writes survived SIGKILL", len(acked))
}
