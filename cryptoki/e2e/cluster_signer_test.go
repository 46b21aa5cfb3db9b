package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// The signers of the rotation tests (cluster_rotate_test.go): processes
// that sign in a loop through one node each, counting every call, and
// that the test tells when their node is killed and back.

// rotSignerEnv makes the test binary a signer (TestClusterRotSigner): the
// value is "ID:SPKI", the key's CKA_ID and its public key (DER), in hex.
const rotSignerEnv = "HSMEMU_E2E_ROTSIGNER"

// startRotSigner starts a signer with the key id (hex) through node n,
// and waits until it has signed once. pub is the key's public key.
func (c *cluster) startRotSigner(t *testing.T, n int, id string, pub *ecdsa.PublicKey) *holder {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return startChild(t, n, "^TestClusterRotSigner$", append(c.env(c.pki.App, n), rotSignerEnv+"="+id+":"+hex.EncodeToString(der)), "signer")
}

// signerResult is what a signer counted.
type signerResult struct {
	calls, ok, failed, bad, tolerated int
	firstDown                         string // the rv of the first call that failed while its node was down
	out                               string
}

// stopSigner has the signer sign more times more, then end, and returns
// what it counted.
func stopSigner(t *testing.T, h *holder, more int) signerResult {
	t.Helper()
	fmt.Fprintf(h.stdin, "STOP %d\n", more)
	h.stdin.Close()
	done := h.waitFor(t, "SIGNER ", time.Minute)
	for l := range h.lines {
		h.out.WriteString(l + "\n")
	}
	err := h.cmd.Wait()
	r := signerResult{out: h.out.String()}
	m := regexp.MustCompile(`(?m)^SIGNER calls=(\d+) ok=(\d+) failed=(\d+) bad=(\d+) tolerated=(\d+)$`).FindStringSubmatch(r.out)
	if !done || m == nil {
		t.Fatalf("the signer through node %d gave no summary (%v):\n%s", h.node, err, r.out)
	}
	for i, p := range []*int{&r.calls, &r.ok, &r.failed, &r.bad, &r.tolerated} {
		*p, _ = strconv.Atoi(m[i+1])
	}
	if f := regexp.MustCompile(`(?m)^FIRSTDOWN (.*)$`).FindStringSubmatch(r.out); f != nil {
		r.firstDown = f[1]
	}
	if err != nil && r.failed == 0 && r.bad == 0 {
		t.Errorf("the signer through node %d: %v\n%s", h.node, err, r.out)
	}
	return r
}

// TestClusterRotSigner is a signer of the rotation tests: through the node
// its environment names it opens a session on "pay", logs in as the user,
// finds the private key of the CKA_ID $HSMEMU_E2E_ROTSIGNER names and
// signs with it in a loop, a new message each time, every signature
// verified with the public key given; it says READY after its first.
// Every call counts, and every failure is one, except while the test has
// said its node is down: stdin's "DEAD" (answered "ACK DEAD" before the
// next call) to "ALIVE" and the first signature after; then the session
// is opened again. "STOP N" has it sign N times more and end with its
// counts; "WAIT N" has it say "SIGNED" once it has signed N times more.
func TestClusterRotSigner(t *testing.T) {
	spec := os.Getenv(rotSignerEnv)
	if spec == "" {
		t.Skip("only as a signer of the rotation tests")
	}
	idHex, pubHex, _ := strings.Cut(spec, ":")
	id, err := hex.DecodeString(idHex)
	if err != nil {
		t.Fatal(err)
	}
	der, err := hex.DecodeString(pubHex)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParsePKIXPublicKey(der)
	pub, ok := parsed.(*ecdsa.PublicKey)
	if err != nil || !ok {
		t.Fatalf("public key: %v (%T)", err, parsed)
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

	var s pkcs11.SessionHandle
	var key pkcs11.ObjectHandle
	open := func() error {
		slots, err := p.GetSlotList(true)
		if err != nil {
			return err
		}
		for _, sl := range slots {
			info, err := p.GetTokenInfo(sl)
			if err != nil || strings.TrimRight(info.Label, " ") != "pay" {
				continue
			}
			if s, err = p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION); err != nil {
				return err
			}
			if err := p.Login(s, pkcs11.CKU_USER, remotePIN); err != nil && !is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
				p.CloseSession(s)
				return err
			}
			if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
				p.CloseSession(s)
				return err
			}
			keys, _, err := p.FindObjects(s, 2)
			p.FindObjectsFinal(s)
			if err == nil && len(keys) != 1 {
				err = fmt.Errorf("%d keys of CKA_ID %s", len(keys), idHex)
			}
			if err != nil {
				p.CloseSession(s)
				return err
			}
			key = keys[0]
			return nil
		}
		return fmt.Errorf("no token pay in slots %v", slots)
	}

	cmds := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
	}()
	const up, down, recovering = 0, 1, 2
	state, opened := up, false
	var calls, signed, failed, bad, tolerated int
	stopAt, waitAt := -1, -1
	for stopAt < 0 || signed < stopAt {
		select {
		case cmd := <-cmds:
			switch {
			case cmd == "DEAD":
				state = down
				fmt.Println("ACK DEAD")
			case cmd == "ALIVE":
				state = recovering
			case strings.HasPrefix(cmd, "STOP "):
				n, _ := strconv.Atoi(strings.TrimPrefix(cmd, "STOP "))
				stopAt = signed + n
			case strings.HasPrefix(cmd, "WAIT "):
				n, _ := strconv.Atoi(strings.TrimPrefix(cmd, "WAIT "))
				waitAt = signed + n
			}
		default:
		}
		calls++
		fail := func(what string, err error) {
			if state == up {
				failed++
				fmt.Printf("FAIL call %d: %s: %v\n", calls, what, err)
				return
			}
			if tolerated == 0 {
				fmt.Printf("FIRSTDOWN %v\n", err)
			}
			tolerated++
			time.Sleep(10 * time.Millisecond)
		}
		if !opened {
			if err := open(); err != nil {
				fail("open a session", err)
				continue
			}
			opened = true
		}
		msg := []byte(fmt.Sprintf("rotation signature %d", calls))
		digest := sha256.Sum256(msg)
		err := p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, key)
		var sig []byte
		if err == nil {
			sig, err = p.Sign(s, digest[:])
		}
		if err != nil {
			fail("sign", err)
			if state != up {
				p.CloseSession(s)
				opened = false
			}
			continue
		}
		if !verifyRaw(pub, digest[:], sig) {
			bad++
			fmt.Printf("BADSIG call %d: %x\n", calls, sig)
		}
		signed++
		if signed == 1 {
			fmt.Println("READY")
		}
		if signed == waitAt {
			fmt.Printf("SIGNED %d\n", signed)
		}
		if state == recovering {
			state = up
			fmt.Printf("RECOVERED after %d failed calls\n", tolerated)
		}
		time.Sleep(2 * time.Millisecond)
	}
	fmt.Printf("SIGNER calls=%d ok=%d failed=%d bad=%d tolerated=%d\n", calls, signed, failed, bad, tolerated)
	if failed > 0 || bad > 0 {
		t.Errorf("%d calls failed and %d signatures did not verify, of %d", failed, bad, calls)
	}
}

// signMore waits until the signer has signed n times more.
func signMore(t *testing.T, h *holder, n int) {
	t.Helper()
	fmt.Fprintf(h.stdin, "WAIT %d\n", n)
	if !h.waitFor(t, "SIGNED ", time.Minute) {
		t.Fatalf("the signer through node %d did not sign %d times more:\n%s", h.node, n, h.out.String())
	}
}

// nodeDown tells the signer its node is about to be killed, and waits for
// it to take it in: its calls fail from then on without counting.
func nodeDown(t *testing.T, h *holder) {
	t.Helper()
	fmt.Fprintln(h.stdin, "DEAD")
	if !h.waitFor(t, "ACK DEAD", time.Minute) {
		t.Fatalf("the signer through node %d did not take the kill in:\n%s", h.node, h.out.String())
	}
}
