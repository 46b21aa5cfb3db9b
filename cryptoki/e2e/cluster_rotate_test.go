package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hsmemu/daemon/adminapi"
)

// Master key rotations through the serving daemons of a three-node
// cluster (docs/cluster.md, "Master key rotation across nodes"): one made
// on node 1 while clients sign through all three, which the other nodes
// follow while they serve; and one whose node is killed in the middle,
// finished on another node, as is a token's data key rotation.

// hsmemuCmd is an hsmemu command through node n's socket, with the
// token's PINs in its environment, to start.
func (c *cluster) hsmemuCmd(t *testing.T, n int, args ...string) (*exec.Cmd, *lockedBuffer) {
	cmd := exec.Command(need(t).daemon, args...)
	cmd.Env = []string{"HSMEMU_SOCKET=" + c.nodes[n-1].sock, "HSMEMU_SO_PIN=" + remoteSOPIN, "HSMEMU_USER_PIN=" + remotePIN,
		"HSMEMU_CONFIG=/nonexistent", "HSMEMU_SYSTEM_CONFIG=/nonexistent"}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HSMEMU_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, out
}

// holdToken locks the row of the token labelled label, as a transaction
// that updates it would, until the returned function is called (at the
// latest when the test ends): a rotation that comes to the row waits
// there, in the middle of its work. The transaction has a connection of
// its own: one that reads pg_stat_activity in it would see the activity
// of its first read there for as long as it lasts.
func (c *cluster) holdToken(t *testing.T, label string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		conn.Close(ctx)
		t.Fatal(err)
	}
	var id int64
	if err := tx.QueryRow(ctx, "SELECT id FROM tokens WHERE label = $1 FOR UPDATE", label).Scan(&id); err != nil {
		conn.Close(ctx)
		t.Fatalf("lock the row of token %s: %v", label, err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := tx.Rollback(ctx); err != nil {
				t.Errorf("release the row of token %s: %v", label, err)
			}
			conn.Close(ctx)
		})
	}
	t.Cleanup(release)
	return release
}

// waitBlocked waits until a read of a token row for update waits for
// its lock, and holds returns true: a rotation stopped in the
// middle, at a row holdToken locked.
func waitBlocked(t *testing.T, db *pgx.Conn, what string, holds func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		var waiting int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE '%FROM tokens%FOR UPDATE%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 && holds() {
			return
		}
		if time.Now().After(deadline) {
			rows, err := db.Query(context.Background(), `SELECT coalesce(wait_event_type, '') || '/' || coalesce(wait_event, '') || ' ' || state || ': ' || query
				FROM pg_stat_activity WHERE datname = current_database()`)
			var activity []string
			if err == nil {
				activity, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			t.Fatalf("%s: not stopped at the locked row (%d waiting); the database's connections (%v):\n%s", what, waiting, err, strings.Join(activity, "\n"))
		}
	}
}

// tokenGens are the master key and data key generations of the token
// labelled label, read from the database.
func tokenGens(t *testing.T, db *pgx.Conn, label string) (master, data int64) {
	t.Helper()
	if err := db.QueryRow(context.Background(), "SELECT master_generation, dk_generation FROM tokens WHERE label = $1", label).Scan(&master, &data); err != nil {
		t.Fatal(err)
	}
	return master, data
}

// initToken makes a token labelled label through node 1, with its SO PIN
// and no user PIN.
func (x cluster3) initToken(t *testing.T, label string) {
	t.Helper()
	if out, code := toolRun(t, x.env(x.pki.Admin, 1), x.tool, "--module", x.module, "--init-token", "--slot", "0",
		"--label", label, "--so-pin", remoteSOPIN); code != 0 {
		t.Fatalf("init token %s: exit %d\n%s", label, code, out)
	}
}

// status is `hsmemu status --json` through node n's socket.
func (c *cluster) status(t *testing.T, n int) adminapi.Status {
	t.Helper()
	var st adminapi.Status
	out := hsmemuOn(t, c.nodes[n-1], "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status through node %d: %v\n%s", n, err, out)
	}
	return st
}

// waitMaster waits until node n holds the domain's master key of
// generation gen, the domain being on it with no rotation under way.
func (c *cluster) waitMaster(t *testing.T, n int, gen uint32) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := c.status(t, n)
		if st.MasterGeneration == gen && st.NodeMasterGeneration == gen && !st.RotationPending {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d: domain on master generation %d (pending %v), the node on %d; want both on %d",
				n, st.MasterGeneration, st.RotationPending, st.NodeMasterGeneration, gen)
		}
	}
}

// logTime is the time of the first line of a daemon's log that holds
// msg (its text handler's time=...), or the zero time.
func logTime(log, msg string) time.Time {
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, msg) {
			continue
		}
		if m := regexp.MustCompile(`time=(\S+)`).FindStringSubmatch(l); m != nil {
			if ts, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				return ts
			}
		}
	}
	return time.Time{}
}

// waitLog waits for node n's log to hold msg, and returns the time of its
// line.
func (c *cluster) waitLog(t *testing.T, n int, msg string) time.Time {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if ts := logTime(c.nodes[n-1].lastLog(), msg); !ts.IsZero() {
			return ts
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d's log does not say %q:\n%s", n, msg, c.nodes[n-1].lastLog())
		}
	}
}

// followedMsg is what a node logs when it takes the master key a rotation
// made on another node switched the domain to, while it serves
// (daemon/follow.go); caughtUpMsg what it logs when, at its start, it
// imports its copy of it (daemon/nodes.go).
const (
	followedMsg = "took the master key a rotation on another node switched the domain to"
	caughtUpMsg = "took the master key a rotation on another node left for this node"
)

// rotateMasterArgs are the arguments of `hsmemu rotate master` with the
// custodians, their new shares written into dir.
func (c *cluster) rotateMasterArgs(dir string, extra ...string) []string {
	args := append([]string{"rotate", "master", "--json", "--threshold", "2", "--shares-dir", dir}, c.custodians...)
	return append(args, extra...)
}

// TestClusterRotateWhileSigning: three processes sign in a loop, each
// through one node, each in a session logged in before, with the key
// "sig"; `hsmemu rotate master` (with the custodians: new shares) runs
// through node 1 meanwhile, held once it has moved "pay" (the test locks
// the row of the token after it) until every process has signed 20 times
// more, nodes 2 and 3 having taken the next master key, then let go.
// No signature fails on any node and every one
// verifies with the public key; the rotation completes and every node
// holds the new master key (`status`: node_master_generation), taken
// while it served: nodes 2 and 3 each record node.master. Node 2,
// restarted, starts from its row alone (it imports no copy at its start)
// and signs; a key generated through node 3 after the rotation signs
// through node 1; the audit log verifies through every node.
func TestClusterRotateWhileSigning(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	c := startClusterN(t, 3)
	x := cluster3{cluster: c, tool: tool, module: a.module}
	pub := x.publicKey(t, 1, "51")
	var signers []*holder
	for n := 1; n <= 3; n++ {
		signers = append(signers, c.startRotSigner(t, n, "51", pub))
	}
	before := x.auditVerify(t, 1, "")
	ctx := context.Background()
	db, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)

	// The rotation is held in the middle, "pay" moved to the new master
	// key and the domain not yet switched (the token "spare", after it,
	// locked), while every signer signs some more; then let go.
	x.initToken(t, "spare")
	release := c.holdToken(t, "spare")
	shares := t.TempDir()
	rot, out := c.hsmemuCmd(t, 1, c.rotateMasterArgs(shares)...)
	if err := rot.Start(); err != nil {
		t.Fatal(err)
	}
	waitBlocked(t, db, "the rotation", func() bool { m, _ := tokenGens(t, db, "pay"); return m == 2 })
	for n := 1; n <= 3; n++ {
		if st := c.status(t, n); st.MasterGeneration != 1 || st.NodeMasterGeneration != 1 || !st.RotationPending {
			t.Errorf("node %d in the middle of the rotation: domain on %d (pending %v), the node on %d; want 1, pending, and 1",
				n, st.MasterGeneration, st.RotationPending, st.NodeMasterGeneration)
		}
	}
	for _, h := range signers {
		signMore(t, h, 20)
	}
	for n := 2; n <= 3; n++ {
		if log := c.nodes[n-1].lastLog(); !strings.Contains(log, "took the next master key of a rotation begun on another node") {
			t.Errorf("node %d's log does not say it took the next master key when the rotation began:\n%s", n, log)
		}
	}
	release()
	if err := rot.Wait(); err != nil {
		t.Fatalf("rotate master through node 1: %v\n%s", err, out)
	}
	var res struct {
		Generation uint32 `json:"generation"`
		Shares     []struct {
			Custodian string `json:"custodian"`
			File      string `json:"file"`
		} `json:"shares"`
	}
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil || res.Generation != 2 || len(res.Shares) != 3 {
		t.Fatalf("rotate master through node 1: generation %d, %d shares, want 2 and 3: %v\n%s", res.Generation, len(res.Shares), err, out)
	}
	for _, sh := range res.Shares {
		if _, err := os.Stat(sh.File); err != nil || filepath.Dir(sh.File) != shares {
			t.Errorf("the new share of %s: %v", sh.Custodian, err)
		}
	}
	for n := 1; n <= 3; n++ {
		c.waitMaster(t, n, 2)
	}
	// When each node took the key, by the nodes' logs, from node 1's
	// "master key rotated" (logged once its own switch is done).
	done := logTime(c.nodes[0].lastLog(), "msg=\"master key rotated\"")
	for n := 2; n <= 3; n++ {
		took := c.waitLog(t, n, followedMsg)
		t.Logf("node %d took the new master key %v after node 1 logged the rotation done", n, took.Sub(done).Round(100*time.Microsecond))
	}
	// The signers go on under the new key, then end.
	for _, h := range signers {
		r := stopSigner(t, h, 20)
		t.Logf("node %d: %d signatures, %d failed, %d not verifying", h.node, r.ok, r.failed, r.bad)
		if r.failed != 0 || r.bad != 0 || r.tolerated != 0 {
			t.Errorf("the signer through node %d: %d calls failed, %d signatures did not verify:\n%s", h.node, r.failed, r.bad, r.out)
		}
	}

	// Nodes 2 and 3 took their copies while serving, and said so.
	taken := map[string]bool{}
	for _, r := range c.auditRecords(t, 3) {
		if r.Seq > before.HeadSeq && r.Event == "node.master" && r.Detail["generation"] == "2" {
			taken[r.Detail["node"]] = true
		}
	}
	if !taken["2"] || !taken["3"] || taken["1"] {
		t.Errorf("node.master records of generation 2 by nodes %v, want nodes 2 and 3", taken)
	}

	// Node 2 starts again from its row alone.
	c.nodes[1].restart()
	if log := c.nodes[1].lastLog(); strings.Contains(log, caughtUpMsg) {
		t.Errorf("node 2 imported a copy of the master key at its start: its row was not rewritten:\n%s", log)
	}
	c.waitMaster(t, 2, 2)
	msg := []byte("signed through node 2 after its restart")
	digest := sha256.Sum256(msg)
	if sig := x.signWith(t, 2, remotePIN, "51", msg); !verifyRaw(pub, digest[:], sig) {
		t.Errorf("the signature through node 2 after its restart (%x) does not verify", sig)
	}
	// A key made through node 3 after the rotation signs through node 1.
	x.mustP11(t, 3, "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "after", "--id", "62")
	pub3 := x.publicKey(t, 3, "62")
	msg = []byte("signed through node 1 with a key made through node 3 after the rotation")
	digest = sha256.Sum256(msg)
	if sig := x.signWith(t, 1, remotePIN, "62", msg); !verifyRaw(pub3, digest[:], sig) {
		t.Errorf("the signature through node 1 (%x) does not verify with the key made through node 3", sig)
	}
	for n := 1; n <= 3; n++ {
		if r := x.auditVerify(t, n, fmt.Sprintf("%d:%x", before.HeadSeq, before.Head)); !r.OK {
			t.Errorf("audit verify through node %d: %+v", n, r)
		}
	}
}

// TestClusterRotationKilled: node 1 killed with SIGKILL in the middle of a
// master key rotation, then of a token's data key rotation, each begun
// through it, while processes sign through all three nodes.
//
// The master key rotation is held once it has moved "pay" to the new key
// (the token "spare", after it, locked by the test), with a session
// creating objects through node 1 until then; node 1 is killed there.
// Objects are created through node 2, the rotation half done; it is
// finished through node 2 (`rotate master --resume`), and nodes 2 and 3
// take the key; every object whose creation node 1 or node 2
// acknowledged is there, whole, through node 3; node 1, started again,
// is on the new key too and finds them all.
//
// The data key rotation of "pay" through node 1 is held once it has
// resealed the token's objects, before it writes the token's row (locked
// by the test); node 1 is killed there. Its transaction dies with it: the
// token keeps its data key, its objects open through node 2, and the
// rotation, made again through node 2, moves every object to a new one;
// the objects and the keys then open through every node.
//
// No signature fails through nodes 2 and 3; through node 1, calls fail
// only from its kill until it serves again, the first with
// CKR_DEVICE_REMOVED or CKR_DEVICE_ERROR. The audit log verifies through
// every node.
func TestClusterRotationKilled(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	c := startClusterN(t, 3)
	x := cluster3{cluster: c, tool: tool, module: a.module}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	x.initToken(t, "spare")
	pub := x.publicKey(t, 1, "51")
	m := c.loadModule(t, a.module, 1)

	// checkSigners stops the signers and checks what they counted: node
	// 1's killed once, the others never failing.
	checkSigners := func(signers []*holder) {
		t.Helper()
		for _, h := range signers {
			r := stopSigner(t, h, 20)
			t.Logf("node %d: %d signatures, %d failed while it served, %d while it was down (the first: %s)", h.node, r.ok, r.failed, r.tolerated, r.firstDown)
			if r.failed != 0 || r.bad != 0 {
				t.Errorf("the signer through node %d: %d calls failed, %d signatures did not verify:\n%s", h.node, r.failed, r.bad, r.out)
			}
			switch {
			case h.node != 1 && r.tolerated != 0:
				t.Errorf("the signer through node %d failed while node 1 was down:\n%s", h.node, r.out)
			case h.node == 1 && !regexp.MustCompile(`CKR_DEVICE_(REMOVED|ERROR)$`).MatchString(r.firstDown):
				t.Errorf("the signer through node 1, killed: first failure %q, want CKR_DEVICE_REMOVED or CKR_DEVICE_ERROR:\n%s", r.firstDown, r.out)
			}
		}
	}
	startSigners := func() []*holder {
		t.Helper()
		var hs []*holder
		for n := 1; n <= 3; n++ {
			hs = append(hs, c.startRotSigner(t, n, "51", pub))
		}
		return hs
	}
	// killNode1 kills node 1 once its signer knows.
	killNode1 := func(signer *holder) {
		t.Helper()
		nodeDown(t, signer)
		c.nodes[0].kill()
	}
	node1Back := func(signer *holder) {
		t.Helper()
		c.nodes[0].startAgain()
		fmt.Fprintln(signer.stdin, "ALIVE")
	}

	// 1. The master key rotation.
	signers := startSigners()
	var (
		amu             sync.Mutex
		acked, inflight []string
		writesMayFail   atomic.Bool
		made            atomic.Int64
		wg              sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, err := m.session("pay")
		if err != nil {
			t.Errorf("the writer: %v", err)
			return
		}
		for i := 0; ; i++ {
			label := fmt.Sprintf("rk-%05d", i)
			_, err := m.p.CreateObject(s, killTemplate(label, "rotkill"))
			amu.Lock()
			if err != nil {
				inflight = append(inflight, label)
			} else {
				acked = append(acked, label)
			}
			amu.Unlock()
			if err != nil {
				if !writesMayFail.Load() {
					t.Errorf("the writer, before the rotation: %v", err)
				}
				return // this call's fate is unknown
			}
			made.Add(1)
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); made.Load() < 20; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the writer made %d objects through node 1 in 30 s", made.Load())
		}
	}
	release := c.holdToken(t, "spare")
	rot, out := c.hsmemuCmd(t, 1, c.rotateMasterArgs(t.TempDir())...)
	// From here the writer's call may wait for the rotation past the
	// module's call timeout, and fail not acknowledged.
	writesMayFail.Store(true)
	if err := rot.Start(); err != nil {
		t.Fatal(err)
	}
	waitBlocked(t, db, "the master key rotation", func() bool { m, _ := tokenGens(t, db, "pay"); return m == 2 })
	// Signatures through every node while it is held. (Writes through
	// node 1 wait for its rotation to end: the writer's call in flight
	// at the kill is one of them.)
	for _, h := range signers {
		signMore(t, h, 10)
	}
	killNode1(signers[0])
	release()
	if err := rot.Wait(); err == nil {
		t.Fatalf("rotate master through node 1, killed in the middle, succeeded:\n%s", out)
	}
	wg.Wait()
	if st := c.status(t, 2); st.MasterGeneration != 1 || !st.RotationPending {
		t.Fatalf("after node 1's kill: domain on master generation %d (pending %v), want 1 and a rotation under way", st.MasterGeneration, st.RotationPending)
	}
	if mg, _ := tokenGens(t, db, "spare"); mg != 1 {
		t.Fatalf("the token spare, held, on master generation %d before the rotation's end", mg)
	}
	// Signatures and writes through nodes 2 and 3 go on with node 1 dead
	// and the rotation half done.
	for _, h := range signers[1:] {
		signMore(t, h, 10)
	}
	m.reach(2)
	if s, err := m.session("pay"); err != nil {
		t.Fatal(err)
	} else {
		for i := range 10 {
			label := fmt.Sprintf("rk2-%02d", i)
			if _, err := m.p.CreateObject(s, killTemplate(label, "rotkill")); err != nil {
				t.Fatalf("create %s through node 2 with the rotation half done: %v", label, err)
			}
			acked = append(acked, label)
		}
		m.p.CloseSession(s)
	}
	out2 := hsmemuOn(t, c.nodes[1], "rotate", "master", "--resume", "--json")
	var res struct {
		Generation uint32 `json:"generation"`
	}
	if err := json.Unmarshal([]byte(out2), &res); err != nil || res.Generation != 2 {
		t.Fatalf("rotate master --resume through node 2: %v\n%s", err, out2)
	}
	for n := 2; n <= 3; n++ {
		c.waitMaster(t, n, 2)
	}
	for _, label := range []string{"pay", "spare"} {
		if mg, _ := tokenGens(t, db, label); mg != 2 {
			t.Errorf("token %s on master generation %d after the rotation, want 2", label, mg)
		}
	}
	m.reach(3)
	found := m.dataObjects("pay", "rotkill")
	for _, l := range acked {
		if !found[l] {
			t.Errorf("object %s, acknowledged, is not there through node 3", l)
		}
	}
	for l := range found {
		if !slices.Contains(acked, l) && !slices.Contains(inflight, l) {
			t.Errorf("object %s through node 3 was never made", l)
		}
	}
	t.Logf("master key rotation: %d objects acknowledged through node 1 and then 2, all there through node 3; %d in flight at the kill", len(acked), len(inflight))
	node1Back(signers[0])
	c.waitMaster(t, 1, 2)
	checkSigners(signers)
	m.reach(1)
	if again := m.dataObjects("pay", "rotkill"); !maps.Equal(again, found) {
		t.Errorf("node 1 started again finds %d objects, node 2 %d", len(again), len(found))
	}

	// 2. The data key rotation of "pay".
	_, dgen := tokenGens(t, db, "pay")
	signers = startSigners()
	release = c.holdToken(t, "pay")
	rot, out = c.hsmemuCmd(t, 1, "rotate", "token", "--token", "pay", "--json")
	if err := rot.Start(); err != nil {
		t.Fatal(err)
	}
	waitBlocked(t, db, "the data key rotation", func() bool { return true })
	for _, h := range signers {
		signMore(t, h, 10)
	}
	killNode1(signers[0])
	release()
	if err := rot.Wait(); err == nil {
		t.Fatalf("rotate token through node 1, killed in the middle, succeeded:\n%s", out)
	}
	if _, g := tokenGens(t, db, "pay"); g != dgen {
		t.Fatalf("the data key generation of pay is %d after the killed rotation, want %d still", g, dgen)
	}
	for _, h := range signers[1:] {
		signMore(t, h, 10)
	}
	m.reach(2)
	if again := m.dataObjects("pay", "rotkill"); !maps.Equal(again, found) {
		t.Errorf("after the killed data key rotation, node 2 finds %d objects, want %d", len(again), len(found))
	}
	node1Back(signers[0])
	// A rotation through node 2 ends the logins of the other nodes
	// (docs/cluster.md): the signers end before it.
	checkSigners(signers)
	cmd, out := c.hsmemuCmd(t, 2, "rotate", "token", "--token", "pay", "--json")
	var rotated struct {
		Resealed       int    `json:"resealed"`
		DataGeneration uint32 `json:"data_generation"`
	}
	if err := cmd.Run(); err != nil || json.Unmarshal([]byte(out.String()), &rotated) != nil || int64(rotated.DataGeneration) != dgen+1 || rotated.Resealed < len(found) {
		t.Fatalf("rotate token through node 2: %v: %+v, want data key generation %d and at least %d objects resealed\n%s", err, rotated, dgen+1, len(found), out)
	}
	if _, g := tokenGens(t, db, "pay"); g != dgen+1 {
		t.Errorf("the data key generation of pay is %d after the rotation through node 2, want %d", g, dgen+1)
	}
	t.Logf("data key rotation: %d objects resealed through node 2 after node 1 was killed in it", rotated.Resealed)
	for _, n := range []int{3, 1} {
		m.reach(n)
		if again := m.dataObjects("pay", "rotkill"); !maps.Equal(again, found) {
			t.Errorf("after the data key rotation, node %d finds %d objects, want %d", n, len(again), len(found))
		}
	}
	for n := 1; n <= 3; n++ {
		msg := []byte(fmt.Sprintf("signed through node %d after both rotations", n))
		digest := sha256.Sum256(msg)
		if sig := x.signWith(t, n, remotePIN, "51", msg); !verifyRaw(pub, digest[:], sig) {
			t.Errorf("the signature through node %d after both rotations (%x) does not verify", n, sig)
		}
		if r := x.auditVerify(t, n, ""); !r.OK {
			t.Errorf("audit verify through node %d: %+v", n, r)
		}
	}
}
