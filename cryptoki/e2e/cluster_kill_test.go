package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/miekg/pkcs11"

	"hsmemu/keystore"
)

// A node killed with SIGKILL in the middle of the domain's work, the
// other going on (docs/cluster.md, "Killed in the middle"): in a purge of
// expired deleted objects, which the other node takes over and finishes;
// and in the middle of a client's writes, none of which, acknowledged,
// is lost or found half written through the other node.

const (
	killExpired = 800 // deleted objects of "pay" whose retention is ended
	killKept    = 50  // deleted objects of "keep", within their retention
	killLive    = 20  // live objects of "pay"
	killWorkers = 4
)

// killValue is the CKA_VALUE of the data object labelled label: 64 bytes
// that say which object they belong to.
func killValue(label string) []byte {
	a := sha256.Sum256([]byte(label))
	b := sha256.Sum256(a[:])
	return append(a[:], b[:]...)
}

func killTemplate(label, app string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, app),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, killValue(label)),
	}
}

// killModule is the module loaded in this process, reaching the nodes it
// was last initialised for, as the administrator (who sees every token).
type killModule struct {
	t *testing.T
	c *cluster
	p *pkcs11.Ctx
}

func (c *cluster) loadModule(t *testing.T, module string, nodes ...int) *killModule {
	t.Helper()
	m := &killModule{t: t, c: c, p: pkcs11.New(module)}
	if m.p == nil {
		t.Fatal("the module does not load")
	}
	m.setNodes(nodes...)
	if err := m.p.Initialize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.p.Finalize()
		m.p.Destroy()
	})
	return m
}

func (m *killModule) setNodes(nodes ...int) {
	for _, e := range m.c.env(m.c.pki.Admin, nodes...) {
		if k, v, _ := strings.Cut(e, "="); strings.HasPrefix(k, "HSMEMU_") {
			m.t.Setenv(k, v)
		}
	}
}

// reach finalises the module and initialises it again for nodes: the
// module reads its server list at C_Initialize.
func (m *killModule) reach(nodes ...int) {
	m.t.Helper()
	if err := m.p.Finalize(); err != nil {
		m.t.Fatal(err)
	}
	m.setNodes(nodes...)
	if err := m.p.Initialize(); err != nil {
		m.t.Fatal(err)
	}
}

// session opens a read-write session on the token labelled label, logged
// in as its user.
func (m *killModule) session(label string) (pkcs11.SessionHandle, error) {
	slots, err := m.p.GetSlotList(true)
	if err != nil {
		return 0, err
	}
	for _, sl := range slots {
		info, err := m.p.GetTokenInfo(sl)
		if err != nil || strings.TrimRight(info.Label, " ") != label {
			continue
		}
		s, err := m.p.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return 0, err
		}
		if err := m.p.Login(s, pkcs11.CKU_USER, remotePIN); err != nil && !is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
			m.p.CloseSession(s)
			return 0, err
		}
		return s, nil
	}
	return 0, fmt.Errorf("no token %q in slots %v", label, slots)
}

// dataObjects reads back every data object of the application app on the
// token labelled label, by label, each attribute checked whole: its
// class, token, private, application, and the value its label says.
func (m *killModule) dataObjects(label, app string) map[string]bool {
	t := m.t
	t.Helper()
	s, err := m.session(label)
	if err != nil {
		t.Fatal(err)
	}
	defer m.p.CloseSession(s)
	if err := m.p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
		pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, app)}); err != nil {
		t.Fatal(err)
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := m.p.FindObjects(s, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	m.p.FindObjectsFinal(s)
	found := map[string]bool{}
	for _, h := range all {
		attrs, err := m.p.GetAttributeValue(s, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil), pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, nil), pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			t.Errorf("object %d: %v", h, err)
			continue
		}
		l := string(attrs[3].Value)
		if !bytes.Equal(attrs[0].Value, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA).Value) ||
			!bytes.Equal(attrs[1].Value, []byte{1}) || !bytes.Equal(attrs[2].Value, []byte{1}) ||
			string(attrs[4].Value) != app || !bytes.Equal(attrs[5].Value, killValue(l)) {
			vals := make([][]byte, len(attrs))
			for i, a := range attrs {
				vals[i] = a.Value
			}
			t.Errorf("object %q is not whole: %x", l, vals)
		}
		if found[l] {
			t.Errorf("two objects labelled %q", l)
		}
		found[l] = true
	}
	return found
}

// auditRecords reads the audit log through node n's socket.
func (c *cluster) auditRecords(t *testing.T, n int) []keystore.AuditRecord {
	t.Helper()
	out := hsmemuOn(t, c.nodes[n-1], "audit", "export", "--json")
	var recs []keystore.AuditRecord
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r keystore.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit export: %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// hsmemuOn runs an hsmemu command on node n's socket, with the token's SO
// PIN, that must succeed.
func hsmemuOn(t *testing.T, n *remoteNode, args ...string) string {
	t.Helper()
	env := []string{"HSMEMU_SOCKET=" + n.sock, "HSMEMU_SO_PIN=" + remoteSOPIN, "HSMEMU_CONFIG=/nonexistent", "HSMEMU_SYSTEM_CONFIG=/nonexistent"}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "HSMEMU_") {
			env = append(env, e)
		}
	}
	out, code := toolRun(t, env, need(t).daemon, args...)
	if code != 0 {
		t.Fatalf("hsmemu %s through %s: exit %d\n%s", strings.Join(args, " "), n.addr, code, out)
	}
	return out
}

// deletedUUIDs are the deleted objects of the token labelled label, read
// from the database.
func deletedUUIDs(t *testing.T, db *pgx.Conn, label string) map[string]bool {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT o.uuid FROM objects o JOIN tokens t ON t.id = o.token_id
		WHERE t.label = $1 AND o.deleted_at IS NOT NULL`, label)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, id := range ids {
		var u keystore.UUID
		copy(u[:], id)
		out[u.String()] = true
	}
	return out
}

// TestClusterKill: SIGKILL in the middle of a purge, then of writes.
//
// The purge: "pay" holds killExpired deleted objects; its retention is
// set to 0 days, which ends theirs, and node 1 takes the domain's purge
// job (its purger runs every 100 ms; node 2 is held off, below). Once
// the database shows a tenth of the objects gone and the rest left,
// node 1 is killed; a client signing and creating objects through
// `tls://node1, tls://node2` goes on through node 2. Node 2's purger
// gets the job once node 1's connection, and the advisory lock with it,
// are gone, and purges the rest: every expired object gone, each with
// one purge record (node 1's or node 2's), the deleted objects of
// "keep", within their retention, untouched, the live objects and those
// the client made meanwhile whole, and the audit log verifying.
//
// The writes: four sessions create objects through node 1 until it is
// killed; through node 2, every object whose creation was acknowledged is
// there, whole, with its creation record, and nothing else but the calls
// in flight at the kill.
//
// Node 1 is killed in both (as TestClusterFailover kills it): module
// clients reach node 1 first.
func TestClusterKill(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	c := startCluster(t, "--purge-interval", "100ms")
	ctx := context.Background()
	for _, args := range [][]string{
		{"--init-token", "--slot", "0", "--label", "keep", "--so-pin", remoteSOPIN},
		{"--token-label", "keep", "--login", "--login-type", "so", "--so-pin", remoteSOPIN, "--init-pin", "--pin", remotePIN},
	} {
		if out, code := toolRun(t, c.env(c.pki.Admin, 1), tool, append([]string{"--module", a.module}, args...)...); code != 0 {
			t.Fatalf("pkcs11-tool %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	db, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	m := c.loadModule(t, a.module, 1, 2)

	// The objects, made through node 1 by several sessions at once.
	type job struct {
		token, label string
		destroy      bool
	}
	var jobs []job
	for i := range killExpired {
		jobs = append(jobs, job{"pay", fmt.Sprintf("exp-%05d", i), true})
	}
	for i := range killKept {
		jobs = append(jobs, job{"keep", fmt.Sprintf("kept-%04d", i), true})
	}
	for i := range killLive {
		jobs = append(jobs, job{"pay", fmt.Sprintf("live-%03d", i), false})
	}
	made := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, killWorkers)
	for w := range killWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sessions := map[string]pkcs11.SessionHandle{}
			for i := w; i < len(jobs); i += killWorkers {
				j := jobs[i]
				s, ok := sessions[j.token]
				if !ok {
					var err error
					if s, err = m.session(j.token); err != nil {
						errs <- err
						return
					}
					sessions[j.token] = s
				}
				h, err := m.p.CreateObject(s, killTemplate(j.label, "purge"))
				if err == nil && j.destroy {
					err = m.p.DestroyObject(s, h)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", j.label, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d objects made (and %d of them deleted) in %v", len(jobs), killExpired+killKept, time.Since(made).Round(time.Millisecond))
	expired, kept := deletedUUIDs(t, db, "pay"), deletedUUIDs(t, db, "keep")
	if len(expired) != killExpired || len(kept) != killKept {
		t.Fatalf("%d and %d deleted objects in the database, want %d and %d", len(expired), len(kept), killExpired, killKept)
	}

	// The client: signs with "sig" and makes an object, over and over,
	// on a session it opens again (on whichever node answers) when a
	// call fails.
	var (
		cmu      sync.Mutex
		madeMid  []string // acknowledged
		tried    []string // made, not acknowledged
		killedAt atomic.Int64
		afterOps atomic.Int64 // signatures and creations after the kill
		stop     = make(chan struct{})
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		var s pkcs11.SessionHandle
		open := false
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if !open {
				var err error
				if s, err = m.session("pay"); err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				open = true
			}
			err := m.p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_ID, []byte{0x51})})
			var keys []pkcs11.ObjectHandle
			if err == nil {
				keys, _, err = m.p.FindObjects(s, 2)
				m.p.FindObjectsFinal(s)
			}
			if err == nil && len(keys) != 1 {
				err = fmt.Errorf("%d keys sig", len(keys))
			}
			if err == nil {
				err = m.p.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, keys[0])
			}
			if err == nil {
				_, err = m.p.Sign(s, signloopDigest[:])
			}
			label := fmt.Sprintf("mid-%05d", i)
			if err == nil {
				_, err = m.p.CreateObject(s, killTemplate(label, "purge"))
				cmu.Lock()
				if err == nil {
					madeMid = append(madeMid, label)
				} else {
					tried = append(tried, label)
				}
				cmu.Unlock()
			}
			if err != nil {
				if killedAt.Load() == 0 {
					t.Errorf("the client, before any kill: %v", err)
				}
				m.p.CloseSession(s)
				open = false
				continue
			}
			if killedAt.Load() != 0 {
				afterOps.Add(1)
			}
		}
	}()
	defer func() {
		select {
		case <-done:
		default:
			close(stop)
			<-done
		}
	}()

	// The purge: retention 0 ends every deleted object's of "pay". Which
	// node's purger runs first is not for a test to choose, so node 2 is
	// held off while node 1 takes the job: the test holds the job's lock
	// while it stops node 2's process (SIGSTOP) and ends the retention,
	// and node 2 goes on once node 1 is purging.
	held, err := pgx.Connect(ctx, c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(ctx)
	const jobLock = "SELECT pg_advisory_%s(hashtextextended('hsmemu/job/purge', 0))"
	if _, err := held.Exec(ctx, fmt.Sprintf(jobLock, "lock")); err != nil {
		t.Fatal(err)
	}
	resume := c.freeze(t, db, 2)
	hsmemuOn(t, c.nodes[0], "token", "set", "--token", "pay", "--retention", "0d")
	if _, err := held.Exec(ctx, fmt.Sprintf(jobLock, "unlock")); err != nil {
		t.Fatal(err)
	}
	left := func() int {
		t.Helper()
		var n int
		if err := db.QueryRow(ctx, `SELECT count(*) FROM objects o JOIN tokens t ON t.id = o.token_id
			WHERE t.label = 'pay' AND o.deleted_at IS NOT NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// purgedBy counts the purge records of each daemon process so far.
	purgedBy := func() map[int32]int {
		t.Helper()
		rows, err := db.Query(ctx, "SELECT actor FROM audit_log WHERE event = 'object.purge'")
		if err != nil {
			t.Fatal(err)
		}
		actors, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		out := map[int32]int{}
		for _, s := range actors {
			var a keystore.AuditActor
			if err := json.Unmarshal([]byte(s), &a); err != nil {
				t.Fatalf("actor %q: %v", s, err)
			}
			out[a.PID]++
		}
		return out
	}
	deadline := time.Now().Add(30 * time.Second)
	// Killed once a tenth is purged: well in the middle.
	for left() > killExpired-killExpired/10 {
		if time.Now().After(deadline) {
			t.Fatal("node 1 did not purge a tenth of the expired objects")
		}
		time.Sleep(5 * time.Millisecond)
	}
	const purger, survivor = 0, 1
	pids := [2]int32{int32(c.nodes[0].cmd.Process.Pid), int32(c.nodes[1].cmd.Process.Pid)}
	if by := purgedBy(); len(by) != 1 || by[pids[purger]] == 0 {
		t.Fatalf("purge records by processes %v, want node 1's (%d)", by, pids[purger])
	}
	resume()
	killed := time.Now()
	killedAt.Store(killed.UnixNano()) // before: the client's call fails as the process dies
	c.nodes[purger].kill()
	atKill := left()
	if atKill == 0 {
		t.Fatalf("node 1 purged all %d objects before it was killed: the purge must take longer", killExpired)
	}
	t.Logf("node 1 killed with %d of %d expired objects purged", killExpired-atKill, killExpired)

	var takeover time.Duration
	for left() > 0 {
		if takeover == 0 && purgedBy()[pids[survivor]] > 0 {
			takeover = time.Since(killed)
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("node 2 did not finish the purge: %d objects left", left())
		}
		time.Sleep(5 * time.Millisecond)
	}
	finished := time.Since(killed)
	if takeover == 0 {
		takeover = finished
	}
	t.Logf("node 2 took the purge over %v after the kill and finished it %v after",
		takeover.Round(time.Millisecond), finished.Round(time.Millisecond))
	for afterOps.Load() < 5 {
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatal("the client did not go on through node 2")
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	<-done
	t.Logf("the client signed and made %d objects, %d after the kill, %d calls not acknowledged", len(madeMid), afterOps.Load(), len(tried))

	if got := deletedUUIDs(t, db, "keep"); !maps.Equal(got, kept) {
		t.Errorf("the deleted objects of keep, within their retention: %d of %d left", len(got), len(kept))
	}
	// Every expired object has one purge record, by the killed node or
	// the survivor, and nothing else has one.
	m.reach(survivor + 1)
	recs := c.auditRecords(t, survivor+1)
	purgeRecs := map[string]int{}
	for _, r := range recs {
		if r.Event != "object.purge" {
			continue
		}
		purgeRecs[r.Detail["object"]]++
		if r.Detail["why"] != "retention ended" || r.Actor.Role != "daemon" || r.Actor.Token != "pay" ||
			(r.Actor.PID != pids[purger] && r.Actor.PID != pids[survivor]) || !strings.HasPrefix(r.Detail["label"], "exp-") {
			t.Errorf("purge record %d: %+v", r.Seq, r)
		}
	}
	for u := range expired {
		if purgeRecs[u] != 1 {
			t.Errorf("expired object %s: %d purge records", u, purgeRecs[u])
		}
	}
	if len(purgeRecs) != len(expired) {
		t.Errorf("%d objects have purge records, %d were purged", len(purgeRecs), len(expired))
	}
	by := purgedBy()
	t.Logf("purge records: %d by the killed node, %d by the survivor", by[pids[purger]], by[pids[survivor]])
	if by[pids[purger]] == 0 || by[pids[survivor]] == 0 {
		t.Errorf("purge records by %v: want both nodes' (%v)", by, pids)
	}
	hsmemuOn(t, c.nodes[survivor], "audit", "verify")
	// The live objects, and those the client made meanwhile, through the
	// survivor: all there, whole; of the calls not acknowledged, any made
	// whole too.
	found := m.dataObjects("pay", "purge")
	for i := range killLive {
		if l := fmt.Sprintf("live-%03d", i); !found[l] {
			t.Errorf("live object %s lost", l)
		}
	}
	for _, l := range madeMid {
		if !found[l] {
			t.Errorf("object %s, acknowledged meanwhile, lost", l)
		}
	}
	for l := range found {
		if !strings.HasPrefix(l, "live-") && !slices.Contains(madeMid, l) && !slices.Contains(tried, l) {
			t.Errorf("object %s found, never made", l)
		}
	}

	// The writes: node 1 killed under four sessions creating objects.
	c.nodes[purger].startAgain()
	m.reach(1)
	var acked, inflight sync.Map
	var n atomic.Int64
	var writesKilled atomic.Bool
	wg = sync.WaitGroup{}
	for w := range killWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := m.session("pay")
			if err != nil {
				t.Errorf("worker %d: %v", w, err)
				return
			}
			for i := 0; ; i++ {
				label := fmt.Sprintf("w%d-%05d", w, i)
				inflight.Store(label, true)
				if _, err := m.p.CreateObject(s, killTemplate(label, "writes")); err != nil {
					if !writesKilled.Load() {
						t.Errorf("worker %d, before the kill: %v", w, err)
					}
					return // the node is gone: this call's fate is unknown
				}
				inflight.Delete(label)
				acked.Store(label, true)
				n.Add(1)
			}
		}()
	}
	for deadline := time.Now().Add(30 * time.Second); n.Load() < 300; {
		if time.Now().After(deadline) {
			t.Fatalf("%d objects made through node 1 in 30 s", n.Load())
		}
		time.Sleep(2 * time.Millisecond)
	}
	writesKilled.Store(true)
	c.nodes[0].kill()
	wg.Wait()
	m.reach(2)
	found = m.dataObjects("pay", "writes")
	var nAcked, nFlight, nFound int
	acked.Range(func(k, _ any) bool {
		nAcked++
		if !found[k.(string)] {
			t.Errorf("object %s, acknowledged through node 1, is not on node 2", k)
		}
		return true
	})
	inflight.Range(func(k, _ any) bool {
		nFlight++
		if found[k.(string)] {
			nFound++
		}
		return true
	})
	for l := range found {
		_, a := acked.Load(l)
		_, f := inflight.Load(l)
		if !a && !f {
			t.Errorf("object %s on node 2 was never made", l)
		}
	}
	t.Logf("writes: %d acknowledged by node 1 before its kill, all on node 2; of the %d in flight, %d committed", nAcked, nFlight, nFound)
	// Each object there has its creation record, once.
	created := map[string]int{}
	for _, r := range c.auditRecords(t, 2) {
		if r.Event == "object.create" && strings.HasPrefix(r.Detail["label"], "w") {
			created[r.Detail["label"]]++
		}
	}
	for l := range found {
		if created[l] != 1 {
			t.Errorf("object %s: %d creation records", l, created[l])
		}
	}
	if len(created) != len(found) {
		t.Errorf("%d creation records of the writes, %d objects", len(created), len(found))
	}
	hsmemuOn(t, c.nodes[1], "audit", "verify")
}

// freeze stops node n's process (SIGSTOP) at a moment it holds nothing in
// the database: with no transaction of its left open, which would hold
// its row locks while it is stopped. It returns the function that lets
// the node go on (SIGCONT), called at the latest when the test ends.
func (c *cluster) freeze(t *testing.T, db *pgx.Conn, n int) (resume func()) {
	t.Helper()
	pid := c.nodes[n-1].cmd.Process.Pid
	var once sync.Once
	resume = func() { once.Do(func() { syscall.Kill(pid, syscall.SIGCONT) }) }
	t.Cleanup(resume)
	for try := 0; try < 20; try++ {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// A transaction left open, by the stopped node (the other's
		// are short), shows as one idle in it since before the stop.
		time.Sleep(200 * time.Millisecond)
		var open int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND state LIKE 'idle in transaction%' AND state_change < now() - interval '150 milliseconds'`).Scan(&open); err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			return resume
		}
		syscall.Kill(pid, syscall.SIGCONT)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("node %d always stopped with a transaction open", n)
	return nil
}
