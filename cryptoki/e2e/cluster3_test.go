package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmemu/daemon/adminapi"
)

// TestCluster3: three daemons, each on a swtpm of its own, serving one
// domain from one PostgreSQL database (startClusterN). One cluster serves
// the subtests in turn, each leaving the token as it found it (the user's
// PIN remotePIN, the key "sig"), so that three TPMs and a server are
// started once:
//
//   - sign: a key generated through node 1's module signs through node
//     3's and node 2's; the signatures verify in Go with the public key
//     read through node 1.
//   - destroy: a key destroyed through node 2 is refused, within the
//     bound, in sessions of other processes that were signing with it
//     through node 1 and node 3.
//   - lockout: ten wrong user PINs, spread over the three nodes, lock the
//     user role on every node: CKR_PIN_LOCKED through each, for the right
//     PIN too; the SO setting the user PIN through node 2 unlocks it
//     on all three.
//   - audit: creates, signatures, a destroy and a PIN change through all
//     three nodes; then `hsmemu audit verify` through each node's socket
//     passes, each reporting the same head, the head before the work
//     still in the log, and each node exports the same records.
func TestCluster3(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	c := startClusterN(t, 3)
	x := cluster3{cluster: c, tool: tool, module: a.module}

	t.Run("sign", x.sign)
	t.Run("destroy", x.destroy)
	// A lockout left half way would fail the rest for its own reason.
	if !t.Run("lockout", x.lockout) {
		return
	}
	t.Run("audit", x.audit)
}

// cluster3 is TestCluster3's cluster and the tools its subtests run.
type cluster3 struct {
	*cluster
	tool, module string
}

// p11 runs pkcs11-tool on the token "pay" through node n as cn:app1.
func (x cluster3) p11(t *testing.T, n int, args ...string) (string, int) {
	t.Helper()
	return toolRun(t, x.env(x.pki.App, n), x.tool, append([]string{"--module", x.module, "--token-label", "pay"}, args...)...)
}

// mustP11 is p11 for a command that must succeed.
func (x cluster3) mustP11(t *testing.T, n int, args ...string) string {
	t.Helper()
	out, code := x.p11(t, n, args...)
	if code != 0 {
		t.Fatalf("pkcs11-tool %s through node %d: exit %d\n%s", strings.Join(args, " "), n, code, out)
	}
	return out
}

// signWith signs msg through node n with the user's PIN and the private
// key of CKA_ID id (hex), and returns the signature (r || s).
func (x cluster3) signWith(t *testing.T, n int, pin, id string, msg []byte) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "msg"), filepath.Join(dir, "sig")
	if err := os.WriteFile(in, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	x.mustP11(t, n, "--login", "--pin", pin, "--sign", "--mechanism", "ECDSA-SHA256", "--id", id,
		"--input-file", in, "--output-file", out)
	sig, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return sig
}

// publicKey reads the EC public key of CKA_ID id (hex) through node n.
func (x cluster3) publicKey(t *testing.T, n int, id string) *ecdsa.PublicKey {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pub.der")
	x.mustP11(t, n, "--read-object", "--type", "pubkey", "--id", id, "--output-file", f)
	der, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	ec, ok := pub.(*ecdsa.PublicKey)
	if err != nil || !ok {
		t.Fatalf("the public key %s read through node %d: %v (%T)", id, n, err, pub)
	}
	return ec
}

// sign: a key generated through node 1 signs through node 3 (and node
// 2); each signature verifies with the public key read through node 1.
func (x cluster3) sign(t *testing.T) {
	x.mustP11(t, 1, "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "from1", "--id", "31")
	pub := x.publicKey(t, 1, "31")
	for _, n := range []int{3, 2} {
		msg := []byte(fmt.Sprintf("signed through node %d with a key made through node 1", n))
		digest := sha256.Sum256(msg)
		if sig := x.signWith(t, n, remotePIN, "31", msg); !verifyRaw(pub, digest[:], sig) {
			t.Errorf("the signature made through node %d (%x) does not verify with the key made through node 1", n, sig)
		}
	}
	// A signature with another key made through node 1 does not verify
	// with it: the check above can fail.
	msg := []byte("signed with sig")
	digest := sha256.Sum256(msg)
	if sig := x.signWith(t, 3, remotePIN, "51", msg); verifyRaw(pub, digest[:], sig) {
		t.Errorf("a signature by the key sig verifies with from1's public key")
	}
}

// holderEnv makes the test binary a holder (TestCluster3Holder): the
// value is the CKA_ID, in hex, of the key it signs with.
const holderEnv = "HSMEMU_E2E_HOLDER"

// holder is a running TestCluster3Holder.
type holder struct {
	node  int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its output, line by line; closed at its end
	out   strings.Builder
}

// startHolder starts a holder of the key id through node n, and waits
// until it has signed once.
func (x cluster3) startHolder(t *testing.T, n int, id string) *holder {
	t.Helper()
	return startChild(t, n, "^TestCluster3Holder$", append(x.env(x.pki.App, n), holderEnv+"="+id), "holder")
}

// startChild runs the test binary as the child test run (a holder, a
// signer) that signs through node n, with env, and waits until it has
// signed once (its line READY); what names it in a failure.
func startChild(t *testing.T, n int, run string, env []string, what string) *holder {
	t.Helper()
	h := &holder{node: n, lines: make(chan string, 64)}
	h.cmd = exec.Command(os.Args[0], "-test.run="+run, "-test.count=1", "-test.v")
	h.cmd.Env = env
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.cmd.Stderr = h.cmd.Stdout
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if h.cmd.ProcessState == nil {
			h.cmd.Process.Kill()
			h.cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	if !h.waitFor(t, "READY", time.Minute) {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		t.Fatalf("the %s through node %d did not sign:\n%s", what, n, h.out.String())
	}
	return h
}

// waitFor reads the holder's output until a line starting with prefix,
// its end or the timeout, and returns whether the line came.
func (h *holder) waitFor(t *testing.T, prefix string, timeout time.Duration) bool {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-h.lines:
			if !ok {
				return false
			}
			h.out.WriteString(l + "\n")
			if strings.HasPrefix(l, prefix) {
				return true
			}
		case <-timer.C:
			return false
		}
	}
}

// destroy: processes hold sessions through node 1 and node 3 that sign
// with a key; the key is destroyed through node 2; each holder polls its
// signature until it is refused (CKR_KEY_HANDLE_INVALID), failing if it
// still signs past the bound plus a margin for a loaded machine, then
// checks that it stays refused and is found no more. The holders time
// from the destroy's acknowledgement, which the test hands them.
func (x cluster3) destroy(t *testing.T) {
	x.mustP11(t, 1, "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "doomed", "--id", "33")
	holders := []*holder{x.startHolder(t, 1, "33"), x.startHolder(t, 3, "33")}

	x.mustP11(t, 2, "--login", "--pin", remotePIN, "--delete-object", "--type", "privkey", "--id", "33")
	acked := time.Now()
	for _, h := range holders {
		fmt.Fprintf(h.stdin, "GO %d\n", acked.UnixNano())
		h.stdin.Close()
	}
	for _, h := range holders {
		refused := h.waitFor(t, "REFUSED", clusterBound+time.Minute)
		// The rest of its output, to its end.
		for l := range h.lines {
			h.out.WriteString(l + "\n")
		}
		err := h.cmd.Wait()
		if !refused || err != nil || !strings.Contains(h.out.String(), "\nPASS") {
			t.Errorf("the holder through node %d: %v\n%s", h.node, err, h.out.String())
			continue
		}
		m := regexp.MustCompile(`(?m)^REFUSED .*$`).FindString(h.out.String())
		t.Logf("node %d: %s (bound %v)", h.node, m, clusterBound)
	}
	// Through node 2 itself the private key is gone; its public key,
	// not destroyed, stays.
	for typ, want := range map[string]bool{"privkey": false, "pubkey": true} {
		out, code := x.p11(t, 2, "--login", "--pin", remotePIN, "--list-objects", "--type", typ)
		if has := strings.Contains(out, "label:      doomed\n"); code != 0 || has != want {
			t.Errorf("node 2's %s objects list doomed: %v, want %v (exit %d)\n%s", typ, has, want, code, out)
		}
	}
}

// TestCluster3Holder is a holder of TestCluster3's destroy: through the
// node its environment names, it logs in, finds the private key of the
// CKA_ID $HSMEMU_E2E_HOLDER, signs with it and says READY; then reads
// "GO T" (T the destroy's acknowledgement, Unix nanoseconds) and signs
// until the key is refused.
func TestCluster3Holder(t *testing.T) {
	idHex := os.Getenv(holderEnv)
	if idHex == "" {
		t.Skip("only as TestCluster3's holder")
	}
	id, err := hex.DecodeString(idHex)
	if err != nil {
		t.Fatal(err)
	}
	p := pkcs11.New(need(t).module)
	if p == nil {
		t.Fatal("the module does not load")
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer p.Destroy()
	defer p.Finalize()
	s, err := p.OpenSession(slotOf(t, p, "pay"), pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, remotePIN); err != nil {
		t.Fatal(err)
	}
	find := func() []pkcs11.ObjectHandle {
		t.Helper()
		if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
			t.Fatal(err)
		}
		defer p.FindObjectsFinal(s)
		found, _, err := p.FindObjects(s, 4)
		if err != nil {
			t.Fatal(err)
		}
		return found
	}
	keys := find()
	if len(keys) != 1 {
		t.Fatalf("%d keys of CKA_ID %s", len(keys), idHex)
	}
	sign := func() error {
		if err := p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, keys[0]); err != nil {
			return err
		}
		_, err := p.Sign(s, signloopDigest[:])
		return err
	}
	if err := sign(); err != nil {
		t.Fatalf("sign: %v", err)
	}
	fmt.Println("READY")

	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	var ns int64
	if _, perr := fmt.Sscanf(line, "GO %d", &ns); err != nil || perr != nil {
		t.Fatalf("from the test: %q %v %v", line, err, perr)
	}
	acked := time.Unix(0, ns)
	// Polled: the bound is the daemons' promise; the margin is for a
	// loaded machine's scheduling, not a measure of the fast path.
	deadline := acked.Add(clusterBound + 4*time.Second)
	signed := 0
	for err = sign(); err == nil; err = sign() {
		signed++
		if time.Now().After(deadline) {
			t.Fatalf("still signing with the key %v after its destroy was acknowledged (%d signatures)", time.Since(acked), signed)
		}
		time.Sleep(2 * time.Millisecond)
	}
	fmt.Printf("REFUSED %v after the destroy, %d signatures meanwhile: %v\n", time.Since(acked).Round(100*time.Microsecond), signed, err)
	if !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
		t.Errorf("the destroyed key refused with %v, want CKR_KEY_HANDLE_INVALID", err)
	}
	for i := 0; i < 5; i++ {
		time.Sleep(20 * time.Millisecond)
		if err := sign(); !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
			t.Errorf("sign %d after the refusal: %v", i, err)
		}
	}
	if found := find(); len(found) != 0 {
		t.Errorf("the destroyed key is still found: %v", found)
	}
}

// userFlags is the token flags line of "pay" through node n, as
// pkcs11-tool -L prints it.
func (x cluster3) userFlags(t *testing.T, n int) string {
	t.Helper()
	out, _ := toolRun(t, x.env(x.pki.App, n), x.tool, "--module", x.module, "-L")
	_, block, ok := p11Slot(out, "pay")
	if !ok {
		t.Fatalf("through node %d, no token pay:\n%s", n, out)
	}
	return regexp.MustCompile(`(?m)^\s+token flags\s+: (.*)$`).FindString(block)
}

// maxPINFailures is the daemons' --pin-max-failures, left at its default.
const maxPINFailures = 10

// lockout: wrong user PINs through nodes 1, 2, 3, 1, ... each counted in
// the one count the nodes share, until the last locks the role on all
// three; the SO then sets the user PIN through node 2 (a new record,
// which reaches nodes 1 and 3 as duplication blobs), and it logs in
// through every node.
func (x cluster3) lockout(t *testing.T) {
	const wrong = "wrong-pin-0000"
	login := func(n int, pin string) (string, int) {
		t.Helper()
		return x.p11(t, n, "--login", "--pin", pin, "--list-objects", "--type", "privkey")
	}
	for i := 0; i < maxPINFailures; i++ {
		n := i%3 + 1
		if out, code := login(n, wrong); code == 0 || !strings.Contains(out, "CKR_PIN_INCORRECT") {
			t.Fatalf("wrong PIN %d through node %d: exit %d, want CKR_PIN_INCORRECT\n%s", i+1, n, code, out)
		}
		if i == maxPINFailures-2 {
			// One try left, whichever node it is given to.
			for m := 1; m <= 3; m++ {
				if f := x.userFlags(t, m); !strings.Contains(f, "final user PIN try") || strings.Contains(f, "user PIN locked") {
					t.Errorf("after %d wrong PINs, node %d's flags: %s", i+1, m, f)
				}
			}
		}
	}
	for n := 1; n <= 3; n++ {
		if f := x.userFlags(t, n); !strings.Contains(f, "user PIN locked") {
			t.Errorf("node %d's flags after %d wrong PINs: %s", n, maxPINFailures, f)
		}
		for _, pin := range []string{remotePIN, wrong} {
			if out, code := login(n, pin); code == 0 || !strings.Contains(out, "CKR_PIN_LOCKED") {
				t.Errorf("PIN %q through node %d after the lockout: exit %d, want CKR_PIN_LOCKED\n%s", pin, n, code, out)
			}
		}
	}

	// The SO sets the user PIN through node 2: the role is unlocked on
	// every node, and the PIN logs in and signs through each.
	if out, code := toolRun(t, x.env(x.pki.Admin, 2), x.tool, "--module", x.module, "--token-label", "pay",
		"--login", "--login-type", "so", "--so-pin", remoteSOPIN, "--init-pin", "--pin", remotePIN); code != 0 {
		t.Fatalf("the SO sets the user PIN through node 2: exit %d\n%s", code, out)
	}
	for _, n := range []int{1, 3, 2} {
		if f := x.userFlags(t, n); strings.Contains(f, "user PIN locked") || strings.Contains(f, "count low") {
			t.Errorf("node %d's flags after the SO set the PIN: %s", n, f)
		}
		x.signWith(t, n, remotePIN, "51", []byte("unlocked"))
	}
}

// auditVerify runs `hsmemu audit verify --json` (with expect, SEQ:HASH,
// as --expect-head unless empty) through node n's socket.
func (x cluster3) auditVerify(t *testing.T, n int, expect string) adminapi.AuditVerify {
	t.Helper()
	args := []string{"audit", "verify", "--json"}
	if expect != "" {
		args = append(args, "--expect-head", expect)
	}
	var rep adminapi.AuditVerify
	out := hsmemuOn(t, x.nodes[n-1], args...)
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("audit verify through node %d: %v\n%s", n, err, out)
	}
	return rep
}

// audit: mixed work through all three nodes, then the audit log verified
// through each.
func (x cluster3) audit(t *testing.T) {
	before := x.auditVerify(t, 1, "")
	if !before.OK || before.HeadSeq < 1 {
		t.Fatalf("audit verify before the work: %+v", before)
	}
	beforeHead := strconv.FormatInt(before.HeadSeq, 10) + ":" + hex.EncodeToString(before.Head)

	data := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(data, []byte("made through one node"), 0o600); err != nil {
		t.Fatal(err)
	}
	const newPIN = "user-pin-3579"
	x.mustP11(t, 1, "--login", "--pin", remotePIN, "--write-object", data, "--type", "data", "--label", "mix-1")
	x.mustP11(t, 2, "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "mix-2", "--id", "35")
	x.mustP11(t, 3, "--login", "--pin", remotePIN, "--write-object", data, "--type", "data", "--label", "mix-3")
	x.signWith(t, 3, remotePIN, "35", []byte("mixed"))
	x.signWith(t, 1, remotePIN, "35", []byte("mixed"))
	x.mustP11(t, 2, "--login", "--pin", remotePIN, "--delete-object", "--type", "data", "--label", "mix-1")
	// The user's PIN changed through node 3, used through node 1, and
	// put back through node 2.
	x.mustP11(t, 3, "--login", "--pin", remotePIN, "--change-pin", "--new-pin", newPIN)
	x.signWith(t, 1, newPIN, "35", []byte("mixed"))
	x.mustP11(t, 2, "--login", "--pin", newPIN, "--change-pin", "--new-pin", remotePIN)
	x.signWith(t, 3, remotePIN, "51", []byte("mixed"))

	var reps [3]adminapi.AuditVerify
	for n := 1; n <= 3; n++ {
		reps[n-1] = x.auditVerify(t, n, beforeHead)
		if r := reps[n-1]; !r.OK || r.HeadSeq <= before.HeadSeq {
			t.Errorf("audit verify through node %d (the head before the work %s expected in the log): %+v", n, beforeHead, r)
		}
	}
	for n := 2; n <= 3; n++ {
		if r := reps[n-1]; r.HeadSeq != reps[0].HeadSeq || hex.EncodeToString(r.Head) != hex.EncodeToString(reps[0].Head) || r.Records != reps[0].Records {
			t.Errorf("node %d verifies %d records to head %d:%x, node 1 %d records to %d:%x", n, r.Records, r.HeadSeq, r.Head,
				reps[0].Records, reps[0].HeadSeq, reps[0].Head)
		}
	}
	t.Logf("audit log: %d records, %d of them the mixed work's; head %d:%x on every node", reps[0].Records, reps[0].HeadSeq-before.HeadSeq,
		reps[0].HeadSeq, reps[0].Head)

	// The work is in the log each node exports, the same records.
	var exports [3]string
	for n := 1; n <= 3; n++ {
		exports[n-1] = hsmemuOn(t, x.nodes[n-1], "audit", "export", "--json", "--after", strconv.FormatInt(before.HeadSeq, 10))
	}
	if exports[1] != exports[0] || exports[2] != exports[0] {
		t.Errorf("the nodes export different records after %d", before.HeadSeq)
	}
	seen := map[string]int{}
	for _, r := range x.auditRecords(t, 3) {
		if r.Seq <= before.HeadSeq {
			continue
		}
		seen[r.Event+" "+r.Detail["label"]+r.Detail["role"]]++
	}
	for what, want := range map[string]int{
		"object.create mix-1": 1, "object.create mix-3": 1, "key.generate mix-2": 2,
		"object.destroy mix-1": 1, "pin.change user": 2,
	} {
		if seen[what] != want {
			t.Errorf("%d records %q after the work, want %d (%v)", seen[what], what, want, seen)
		}
	}
}
