package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmemu/internal/pgtest"
)

// A PostgreSQL failover under serving daemons (docs/cluster.md,
// "Failover, as far as it goes"): the two nodes' keystore is on a primary
// with a synchronous streaming replica, the connection string naming both
// hosts with target_session_attrs=read-write. While a client writes
// through each node, the primary is crashed and, a moment later, the
// replica promoted; nothing restarts the daemons.

// pgClientEnv makes TestClusterPGFailoverClient run, as the client whose
// labels start with its value.
const pgClientEnv = "HSMEMU_E2E_PGFAILOVER_CLIENT"

// pgFailoverApp is the CKA_APPLICATION of the clients' objects.
const pgFailoverApp = "pgfailover"

// pgOutage is how long, at least, the domain has no primary.
const pgOutage = 1500 * time.Millisecond

// pgCall is one call a client reported.
type pgCall struct {
	op, label string
	rv        uint64
	at        time.Time     // when it returned
	took      time.Duration // how long it took
}

// pgClient is a running TestClusterPGFailoverClient, reaching one node.
type pgClient struct {
	node  int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan error
	out   strings.Builder // every line it wrote

	mu     sync.Mutex
	calls  []pgCall
	exited bool
}

var pgCallLine = regexp.MustCompile(`^(CREATE|SIGN|SESSION) (\S+) rv=0x([0-9a-f]+) at=(\d+) took=(\d+)$`)

// startPGClient starts a client writing through node n alone. Its module
// waits for every reply as long as it takes (timeout = 0): a call that
// fails is the daemon's answer, never the module giving up on it, and a
// call that hangs holds the client.
func (c *cluster) startPGClient(t *testing.T, n int) *pgClient {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "module.conf")
	if err := os.WriteFile(conf, []byte("timeout = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := &pgClient{node: n, done: make(chan error, 1)}
	cl.cmd = exec.Command(os.Args[0], "-test.run=^TestClusterPGFailoverClient$")
	cl.cmd.Env = append(c.env(c.pki.App, n), "HSMEMU_CONFIG="+conf, fmt.Sprintf("%s=n%d", pgClientEnv, n))
	var err error
	if cl.stdin, err = cl.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cl.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cl.cmd.Stderr = cl.cmd.Stdout
	if err := cl.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-cl.done:
		default:
			cl.cmd.Process.Kill()
			<-cl.done
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			cl.mu.Lock()
			cl.out.WriteString(line + "\n")
			if m := pgCallLine.FindStringSubmatch(line); m != nil {
				rv, _ := strconv.ParseUint(m[3], 16, 64)
				at, _ := strconv.ParseInt(m[4], 10, 64)
				took, _ := strconv.ParseInt(m[5], 10, 64)
				cl.calls = append(cl.calls, pgCall{op: m[1], label: m[2], rv: rv, at: time.UnixMicro(at), took: time.Duration(took) * time.Microsecond})
			}
			cl.mu.Unlock()
		}
		err := cl.cmd.Wait()
		cl.mu.Lock()
		cl.exited = true
		cl.mu.Unlock()
		cl.done <- err
	}()
	return cl
}

// count is how many calls of op (any, if "") returned rv (any failure,
// if failed) at or after since.
func (cl *pgClient) count(op string, failed bool, since time.Time) int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	k := 0
	for _, c := range cl.calls {
		if (op == "" || c.op == op) && (c.rv != pkcs11.CKR_OK) == failed && !c.at.Before(since) {
			k++
		}
	}
	return k
}

func (cl *pgClient) output() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.out.String()
}

// waitFor polls cond until it holds; past the deadline the test fails,
// saying what, with the clients' last lines: a generous bound on a
// hang, not a measure.
func waitFor(t *testing.T, deadline time.Time, what string, clients []*pgClient, cond func(cl *pgClient) bool) {
	t.Helper()
	for {
		all, exited := true, false
		for _, cl := range clients {
			if !cond(cl) {
				all = false
				cl.mu.Lock()
				exited = exited || cl.exited
				cl.mu.Unlock()
			}
		}
		if all {
			return
		}
		if exited || time.Now().After(deadline) {
			var b strings.Builder
			for _, cl := range clients {
				out := cl.output()
				if len(out) > 3000 {
					out = "..." + out[len(out)-3000:]
				}
				fmt.Fprintf(&b, "--- client of node %d ---\n%s", cl.node, out)
			}
			t.Fatalf("%s: not by the deadline, or a client ended\n%s", what, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestClusterPGFailover: a client creates token objects and signs
// through each node; the primary is crashed (immediate shutdown: no
// checkpoint, connections cut) and, once each client has seen its calls
// fail, the replica is promoted. The calls with no primary fail with
// CKR_DEVICE_ERROR and none hangs (the clients' modules wait for ever,
// so a hang would hold a client past the test's deadlines); the daemons,
// never restarted, find the new primary by themselves and both serve
// again; every object whose creation was acknowledged, before, during or
// after the switch, is there through both nodes, whole, with its one
// creation record; the only others are calls that failed (committed
// before the primary went, unacknowledged); and the audit log verifies
// through both nodes. Measured, not asserted: how long and how many calls
// failed, and the slowest call.
func TestClusterPGFailover(t *testing.T) {
	if os.Getenv(pgClientEnv) != "" {
		t.Skip("runs in the parent")
	}
	a := need(t)
	primary := pgtest.StartT(t)
	replica, err := pgtest.StartReplica(primary)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { replica.Stop() })
	if err := primary.Psql("postgres", "CREATE DATABASE keys"); err != nil {
		t.Fatal(err)
	}
	db := fmt.Sprintf("host=%s,%s dbname=keys user=%s sslmode=disable target_session_attrs=read-write",
		primary.Dir, replica.Dir, pgtest.Superuser)
	c := startClusterOn(t, db)
	pids := [2]int{c.nodes[0].cmd.Process.Pid, c.nodes[1].cmd.Process.Pid}

	clients := []*pgClient{c.startPGClient(t, 1), c.startPGClient(t, 2)}
	began := time.Now()
	waitFor(t, began.Add(30*time.Second), "30 objects made through each node", clients, func(cl *pgClient) bool {
		return cl.count("CREATE", false, began) >= 30
	})

	crashed := time.Now()
	if err := primary.Crash(); err != nil {
		t.Fatal(err)
	}
	down := time.Now() // the primary's processes are gone
	// With no primary: each client's creations fail, several times over
	// (a client fails a call, waits 10 ms and goes on), for at least
	// pgOutage: longer than the cache's lease (docs/cluster.md, B), so
	// that signatures, which read the database again past it, meet the
	// outage too; and than the second after which database/sql pings an
	// idle connection before it hands it out.
	waitFor(t, crashed.Add(30*time.Second), "creations failing with no primary", clients, func(cl *pgClient) bool {
		return cl.count("CREATE", true, crashed) >= 5 && time.Since(crashed) > pgOutage
	})
	promoted := time.Now()
	if err := replica.Promote(); err != nil {
		t.Fatal(err)
	}
	primaryAgain := time.Now() // pg_ctl promote has seen the replica promoted
	waitFor(t, promoted.Add(45*time.Second), "30 objects made through each node after the promotion", clients, func(cl *pgClient) bool {
		return cl.count("CREATE", false, promoted) >= 30
	})
	for _, cl := range clients {
		cl.stdin.Close()
	}
	for _, cl := range clients {
		select {
		case err := <-cl.done:
			cl.done <- err // for the cleanup
			if err != nil || !strings.Contains(cl.output(), "\nDONE\n") {
				t.Fatalf("the client of node %d: %v\n%s", cl.node, err, cl.output())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("the client of node %d did not finish: a call hangs\n%s", cl.node, cl.output())
		}
	}
	// The same daemons serve on: neither exited.
	for i, n := range c.nodes {
		select {
		case err := <-n.done:
			n.done <- err // for its stop
			t.Fatalf("node %d exited during the failover: %v\n%s", i+1, err, n.lastLog())
		default:
		}
		if n.cmd == nil || n.cmd.Process.Pid != pids[i] {
			t.Fatalf("node %d was restarted", i+1)
		}
	}

	// What the clients were told.
	acked := map[string]bool{}
	failed := map[string]time.Time{} // when the failed creation began
	for _, cl := range clients {
		var nOK, nFailed, nSignFailed int
		var firstFail, lastFail time.Time
		var slowest time.Duration
		for _, call := range cl.calls {
			slowest = max(slowest, call.took)
			if call.rv == pkcs11.CKR_OK {
				// Nothing is acknowledged with no primary: a call begun
				// once it was gone and ended before the promotion.
				if call.at.Add(-call.took).After(down) && call.at.Before(promoted) && call.op == "CREATE" {
					t.Errorf("client of node %d: %s %s acknowledged with no primary", cl.node, call.op, call.label)
				}
				if call.op == "CREATE" {
					acked[call.label] = true
					nOK++
				}
				continue
			}
			if call.rv != pkcs11.CKR_DEVICE_ERROR {
				t.Errorf("client of node %d: %s %s returned 0x%x, want CKR_DEVICE_ERROR (0x30)", cl.node, call.op, call.label, call.rv)
			}
			if call.at.Before(crashed) {
				t.Errorf("client of node %d: %s %s failed before the primary was stopped: 0x%x", cl.node, call.op, call.label, call.rv)
			}
			switch call.op {
			case "CREATE":
				failed[call.label] = call.at.Add(-call.took)
				nFailed++
			case "SIGN":
				nSignFailed++
			}
			if firstFail.IsZero() {
				firstFail = call.at
			}
			lastFail = call.at
		}
		t.Logf("client of node %d: %d objects acknowledged; %d creations and %d signatures failed, from %v to %v after the crash; slowest call %v",
			cl.node, nOK, nFailed, nSignFailed, firstFail.Sub(crashed).Round(time.Millisecond), lastFail.Sub(crashed).Round(time.Millisecond),
			slowest.Round(time.Millisecond))
	}
	t.Logf("the promotion began %v after the crash; pg_ctl promote returned %v after it",
		promoted.Sub(crashed).Round(time.Millisecond), primaryAgain.Sub(crashed).Round(time.Millisecond))

	// Every acknowledged object, whole, through either node; nothing but
	// the calls made.
	m := c.loadModule(t, a.module, 1)
	var found [2]map[string]bool
	for i := range found {
		if i > 0 {
			m.reach(i + 1)
		}
		found[i] = m.dataObjects("pay", pgFailoverApp)
		for l := range acked {
			if !found[i][l] {
				t.Errorf("object %s, acknowledged, is not there through node %d", l, i+1)
			}
		}
		for l := range found[i] {
			began, f := failed[l]
			switch {
			case acked[l]:
			case !f:
				t.Errorf("object %s found through node %d was never made", l, i+1)
			case began.After(down):
				// Only a call in flight when the primary went may have
				// committed unacknowledged.
				t.Errorf("object %s, whose creation failed, begun %v after the primary was gone, is there through node %d",
					l, began.Sub(down), i+1)
			}
		}
	}
	if len(found[0]) != len(found[1]) {
		t.Errorf("node 1 lists %d objects, node 2 %d", len(found[0]), len(found[1]))
	}
	committed := 0
	for l := range failed {
		if found[1][l] {
			committed++
		}
	}
	t.Logf("%d objects acknowledged, all there through both nodes; of %d failed creations, %d committed", len(acked), len(failed), committed)

	// One creation record each, and a chain that verifies from either
	// node.
	created := map[string]int{}
	for _, r := range c.auditRecords(t, 2) {
		if l := r.Detail["label"]; r.Event == "object.create" && (strings.HasPrefix(l, "n1-") || strings.HasPrefix(l, "n2-")) {
			created[r.Detail["label"]]++
		}
	}
	for l := range found[1] {
		if created[l] != 1 {
			t.Errorf("object %s: %d creation records", l, created[l])
		}
	}
	if len(created) != len(found[1]) {
		t.Errorf("%d objects have creation records, %d are there", len(created), len(found[1]))
	}
	for _, n := range c.nodes {
		hsmemuOn(t, n, "audit", "verify")
	}
}

// TestClusterPGFailoverClient is a client of TestClusterPGFailover: it
// opens a session on the token "pay" through the node its module reaches,
// logs in, and until its standard input closes creates a token object
// and signs with the key "sig", one after the other, writing a line for
// each call: "CREATE|SIGN LABEL rv=0x.. at=UNIX-MICROSECONDS
// took=MICROSECONDS". A failed call is followed by a pause of 10 ms. A
// failure that leaves the session unusable (anything but CKR_DEVICE_ERROR)
// makes it open a new one ("SESSION" lines).
func TestClusterPGFailoverClient(t *testing.T) {
	prefix := os.Getenv(pgClientEnv)
	if prefix == "" {
		t.Skip("only as TestClusterPGFailover's client")
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
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	report := func(op, label string, start time.Time, err error) {
		rv := uint64(pkcs11.CKR_OK)
		if err != nil {
			rv = ^uint64(0) // not a CK_RV: the parent reports the line before
			if e, ok := err.(pkcs11.Error); ok {
				rv = uint64(e)
			} else {
				fmt.Printf("NOT-RV %s %s: %v\n", op, label, err)
			}
		}
		end := time.Now()
		fmt.Printf("%s %s rv=0x%x at=%d took=%d\n", op, label, rv, end.UnixMicro(), end.Sub(start).Microseconds())
	}
	var s pkcs11.SessionHandle
	var key pkcs11.ObjectHandle
	open := func() error {
		var err error
		if s, err = (&killModule{t: t, p: p}).session("pay"); err != nil {
			return err
		}
		if err := p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{0x51})}); err != nil {
			return err
		}
		keys, _, err := p.FindObjects(s, 2)
		p.FindObjectsFinal(s)
		if err == nil && len(keys) != 1 {
			t.Fatalf("%d keys of CKA_ID 51", len(keys))
		}
		if err == nil {
			key = keys[0]
		}
		return err
	}
	if err := open(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			fmt.Println("DONE")
			return
		default:
		}
		label := fmt.Sprintf("%s-%05d", prefix, i)
		start := time.Now()
		_, err := p.CreateObject(s, killTemplate(label, pgFailoverApp))
		report("CREATE", label, start, err)
		failed := err
		start = time.Now()
		if err = p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, key); err == nil {
			_, err = p.Sign(s, signloopDigest[:])
		}
		report("SIGN", label, start, err)
		if err != nil {
			failed = err
		}
		if failed == nil {
			continue
		}
		time.Sleep(10 * time.Millisecond)
		if !is(failed, pkcs11.CKR_DEVICE_ERROR) {
			p.CloseSession(s)
			for {
				start := time.Now()
				err := open()
				report("SESSION", label, start, err)
				if err == nil {
					break
				}
				select {
				case <-stop:
					fmt.Println("DONE")
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
}
