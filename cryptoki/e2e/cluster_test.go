package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"hsmemu/daemon/remote/remotetest"
	"hsmemu/internal/pgtest"
	"hsmemu/tpmroot/tpmtest"
)

// A cluster: daemons serving one security domain from one PostgreSQL
// database (docs/cluster.md), each on a managed swtpm of its own, each
// with a TLS listener (docs/remote.md). Node 1's TPM makes the domain
// (`hsmemu init --db ... --custodian ... --threshold 2`); each other
// node's joins it from two of the three custodians' shares (`hsmemu
// domain join`). Applications reach them through `server = tls://node1,
// tls://node2, ...`.

type cluster struct {
	pki   *remotetest.PKI
	db    string // the keystore's connection string
	nodes []*remoteNode
	// keys holds the custodians' keys and shares: NAME.pem (public, for
	// init and rotate master), NAME.key (PKCS#8) and NAME.share, for
	// alice, bob and carol; custodians are init's --custodian flags.
	keys       string
	custodians []string
}

// clusterShares are the two custodians whose shares join node n (from 2):
// each pair of the three in turn, so that every share is used.
var clusterShares = [][2]string{{"alice", "carol"}, {"bob", "carol"}, {"alice", "bob"}}

// startCluster starts a two-node cluster: startClusterN(t, 2, serve...).
func startCluster(t *testing.T, serve ...string) *cluster {
	t.Helper()
	return startClusterN(t, 2, serve...)
}

// startClusterOn is startCluster on the empty database db names, on a
// server (or servers) the caller started.
func startClusterOn(t *testing.T, db string, serve ...string) *cluster {
	t.Helper()
	return startClusterOnN(t, 2, db, serve...)
}

// startClusterN starts a PostgreSQL server and n nodes on a database of
// it (startClusterOnN).
func startClusterN(t *testing.T, n int, serve ...string) *cluster {
	t.Helper()
	need(t)
	db, err := pgtest.StartT(t).NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return startClusterOnN(t, n, db, serve...)
}

// startClusterOnN starts n nodes (2 or 3: one server certificate each in
// remotetest) on the empty database db names, with the token "pay" (its
// SO and user PINs, and the EC key "sig") made through node 1 before the
// others join: each join binds the PIN records there are in the joining
// node's TPM; a PIN record written after it reaches the node as a
// duplication blob to its import key (docs/cluster.md, "PINs across
// nodes"). serve are more flags for every node's `hsmemu serve`. The
// nodes join one after the other and serve once joined.
func startClusterOnN(t *testing.T, n int, db string, serve ...string) *cluster {
	t.Helper()
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	pki := remotetest.New(t)
	certs := []remotetest.Pair{pki.Daemon, pki.Daemon2, pki.Daemon3}
	if n < 2 || n > len(certs) {
		t.Fatalf("a cluster of %d nodes: remotetest has server certificates for 2 to %d", n, len(certs))
	}
	c := &cluster{pki: pki, db: db, nodes: make([]*remoteNode, n), keys: t.TempDir()}
	// Registered before the nodes' own cleanups, so it runs after they
	// have stopped and their logs are complete.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cluster logs (last starts):\n%s", c.lastLog())
		}
	})

	_, private := tpmtest.Custodians(t) // X25519, P-256 and RSA: each kind a custodian may hold
	for _, name := range []string{"alice", "bob", "carol"} {
		pubFile, _ := writeCustodian(t, c.keys, name, private[name])
		c.custodians = append(c.custodians, "--custodian", pubFile)
	}

	c.nodes[0] = newRemote(t, c.pki, certs[0], append([]string{"--db", db}, serve...)...)
	hsmemuCLI(t, append([]string{"init", "--state-dir", c.nodes[0].dir, "--tpm", "managed", "--db", db,
		"--threshold", "2", "--shares-dir", c.keys}, c.custodians...)...)
	c.nodes[0].start()
	provision(t, tool, a.module, remoteEnv(c.pki, c.pki.Admin, c.nodes[0].addr))

	for i := 1; i < n; i++ {
		c.nodes[i] = newRemote(t, c.pki, certs[i], append([]string{"--db", db}, serve...)...)
		args := []string{"domain", "join", "--state-dir", c.nodes[i].dir, "--tpm", "managed", "--db", db, "--json"}
		for _, name := range clusterShares[i-1] {
			args = append(args, "--share", c.share(name))
		}
		out := hsmemuCLI(t, args...)
		var joined struct {
			Node      int64 `json:"node"`
			PINsBound int   `json:"pins_bound"`
		}
		if err := json.Unmarshal([]byte(out), &joined); err != nil || joined.Node != int64(i+1) || joined.PINsBound != 2 {
			t.Fatalf("domain join: node %d, %d PINs bound (want node %d, the SO's and the user's): %v\n%s", joined.Node, joined.PINsBound, i+1, err, out)
		}
		c.nodes[i].start()
	}
	return c
}

// share is the --share argument (FILE:KEY) of a custodian's share of the
// domain's first master key.
func (c *cluster) share(name string) string {
	return filepath.Join(c.keys, name+".share") + ":" + filepath.Join(c.keys, name+".key")
}

// writeCustodian writes a custodian's public key (NAME.pem, for init) and
// private key (NAME.key, PKCS#8, for join) into dir.
func writeCustodian(t *testing.T, dir, name string, key any) (pubFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	signer, ok := key.(interface{ Public() crypto.PublicKey })
	if !ok {
		t.Fatalf("custodian %s: %T has no public key", name, key)
	}
	pub, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	for f, blk := range map[string]*pem.Block{keyFile: {Type: "PRIVATE KEY", Bytes: der}, pubFile: {Type: "PUBLIC KEY", Bytes: pub}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pubFile, keyFile
}

// hsmemuCLI runs an hsmemu command that must succeed, and returns its
// output.
func hsmemuCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, code := toolRun(t, os.Environ(), need(t).daemon, args...)
	if code != 0 {
		t.Fatalf("hsmemu %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// env is the environment of a client with the pair's certificate that
// reaches the nodes numbered (from 1), in that order.
func (c *cluster) env(pair remotetest.Pair, nodes ...int) []string {
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = c.nodes[n-1].addr
	}
	return remoteEnv(c.pki, pair, addrs...)
}

// programOn is the cluster as the C program's restart section sees it
// when its module's first server is node first: that node is restarted
// while the others serve on, and a kill takes them all down, so that no
// daemon answers until they all start again.
type programOn struct {
	*cluster
	first int
}

func (p programOn) restart() { p.nodes[p.first-1].restart() }

func (p programOn) kill() {
	for _, n := range p.nodes {
		n.kill()
	}
}

func (p programOn) startAgain() {
	for _, n := range p.nodes {
		n.startAgain()
	}
}

func (c *cluster) lastLog() string {
	var b strings.Builder
	for i, n := range c.nodes {
		if n != nil {
			fmt.Fprintf(&b, "--- node %d ---\n%s", i+1, n.lastLog())
		}
	}
	return b.String()
}

// ecPublicKey parses a CKA_EC_POINT (a DER OCTET STRING holding the
// uncompressed point) of a P-256 key, or the point itself.
func ecPublicKey(t *testing.T, ecPoint []byte) *ecdsa.PublicKey {
	t.Helper()
	var point []byte
	if rest, err := asn1.Unmarshal(ecPoint, &point); err != nil || len(rest) != 0 {
		point = ecPoint
	}
	// An uncompressed point is the SubjectPublicKeyInfo's bit string.
	spki, err := asn1.Marshal(struct {
		Alg struct{ Algorithm, Curve asn1.ObjectIdentifier }
		Key asn1.BitString
	}{
		Alg: struct{ Algorithm, Curve asn1.ObjectIdentifier }{asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}},
		Key: asn1.BitString{Bytes: point, BitLength: 8 * len(point)},
	})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(spki)
	if err != nil {
		t.Fatalf("EC point %x: %v", ecPoint, err)
	}
	return pub.(*ecdsa.PublicKey)
}

// verifyRaw checks a PKCS#11 ECDSA signature (r || s) of digest.
func verifyRaw(pub *ecdsa.PublicKey, digest, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, digest, r, s)
}

// TestClusterPkcs11Tool: OpenSC's pkcs11-tool and GnuTLS's p11tool through
// the two nodes. There is one token: listed through either node and
// through the list of both; a key made through one node's module signs
// through the other's, and the signature verifies with the public key
// read through the first; the policy holds on both.
func TestClusterPkcs11Tool(t *testing.T) {
	a := need(t)
	tool := needTool(t, "pkcs11-tool", "opensc")
	p11tool := needTool(t, "p11tool", "gnutls-bin")
	c := startCluster(t)
	pki := c.pki
	run := func(env []string, args ...string) string {
		t.Helper()
		out, code := toolRun(t, env, tool, append([]string{"--module", a.module, "--token-label", "pay"}, args...)...)
		if code != 0 {
			t.Fatalf("pkcs11-tool %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}

	var serials []string
	for _, nodes := range [][]int{{1}, {2}, {1, 2}} {
		out, _ := toolRun(t, c.env(pki.App, nodes...), tool, "--module", a.module, "-L")
		_, block, ok := p11Slot(out, "pay")
		if !ok {
			t.Fatalf("through node(s) %v, no token pay:\n%s", nodes, out)
		}
		serials = append(serials, regexp.MustCompile(`(?m)^\s+serial num\s+: (\S+)$`).FindString(block))
	}
	if serials[0] == "" || serials[0] != serials[1] || serials[1] != serials[2] {
		t.Errorf("the token's serial differs between nodes: %q", serials)
	}

	// Each way: a key generated through one node, signing through the
	// other (the module there reaches only that node), the signature
	// checked with the public key read back through the first. The keys
	// are named by CKA_ID: pkcs11-tool's --sign takes the first private
	// key whatever --label says.
	msg := filepath.Join(t.TempDir(), "msg")
	os.WriteFile(msg, []byte("signed through the other node"), 0o600)
	digest := sha256.Sum256([]byte("signed through the other node"))
	for _, way := range []struct {
		label, id string
		made, by  int
	}{{"from1", "f1", 1, 2}, {"from2", "f2", 2, 1}} {
		made, by := c.env(pki.App, way.made), c.env(pki.App, way.by)
		run(made, "--login", "--pin", remotePIN, "--keypairgen", "--key-type", "EC:prime256v1", "--label", way.label, "--id", way.id)
		sigFile := filepath.Join(t.TempDir(), "sig")
		run(by, "--login", "--pin", remotePIN, "--sign", "--mechanism", "ECDSA-SHA256", "--id", way.id,
			"--input-file", msg, "--output-file", sigFile)
		pubFile := filepath.Join(t.TempDir(), "pub.der")
		run(made, "--read-object", "--type", "pubkey", "--id", way.id, "--output-file", pubFile)
		sig, _ := os.ReadFile(sigFile)
		der, _ := os.ReadFile(pubFile)
		pub, err := x509.ParsePKIXPublicKey(der)
		ec, ok := pub.(*ecdsa.PublicKey)
		if err != nil || !ok {
			t.Fatalf("%s: the public key read through node %d: %v (%T)", way.label, way.made, err, pub)
		}
		if !verifyRaw(ec, digest[:], sig) {
			t.Errorf("%s: the signature made through node %d (%x) does not verify with the key made through node %d", way.label, way.by, sig, way.made)
		}
	}

	// A signature through the list of both nodes.
	run(c.env(pki.App, 1, 2), "--login", "--pin", remotePIN, "--sign", "--mechanism", "ECDSA", "--label", "sig",
		"--input-file", "/dev/null", "--output-file", "/dev/null")

	// p11tool: the token through the list, and every key through node 2
	// with the user's PIN.
	out, code := toolRun(t, c.env(pki.App, 1, 2), p11tool, "--provider", a.module, "--list-tokens")
	if code != 0 || !regexp.MustCompile(`(?m)^\s+Label: pay$`).MatchString(out) {
		t.Errorf("p11tool --list-tokens: exit %d\n%s", code, out)
	}
	out, code = toolRun(t, append(c.env(pki.App, 2), "GNUTLS_PIN="+remotePIN), p11tool, "--provider", a.module,
		"--login", "--list-privkeys", "pkcs11:token=pay")
	for _, k := range []string{"sig", "from1", "from2"} {
		if code != 0 || !strings.Contains(out, "object="+k+";") {
			t.Errorf("p11tool --list-privkeys through node 2 lacks %s: exit %d\n%s", k, code, out)
		}
	}

	// The policy holds on each node: cn:app2, with no entry, sees nothing.
	for _, n := range []int{1, 2} {
		if out, _ := toolRun(t, c.env(pki.App2, n), tool, "--module", a.module, "-L"); strings.Contains(out, "token label") {
			t.Errorf("cn:app2 lists tokens through node %d:\n%s", n, out)
		}
	}

	// A PIN changed through node 1 after node 2 joined logs in through
	// node 2 (node 1 wrote a duplication blob to node 2's import key);
	// the old PIN no longer does, there or through node 1.
	const newPIN = "user-pin-5678"
	run(c.env(pki.App, 1), "--login", "--pin", remotePIN, "--change-pin", "--new-pin", newPIN)
	run(c.env(pki.App, 2), "--login", "--pin", newPIN, "--sign", "--mechanism", "ECDSA", "--label", "sig",
		"--input-file", "/dev/null", "--output-file", "/dev/null")
	for _, n := range []int{2, 1} {
		if out, code := toolRun(t, c.env(pki.App, n), tool, "--module", a.module, "--token-label", "pay", "--login", "--pin", remotePIN,
			"--list-objects"); code == 0 || !strings.Contains(out, "CKR_PIN_INCORRECT") {
			t.Errorf("the old PIN through node %d after the change: exit %d\n%s", n, code, out)
		}
	}
	run(c.env(pki.App, 2), "--login", "--pin", newPIN, "--change-pin", "--new-pin", remotePIN)
	run(c.env(pki.App, 1), "--login", "--pin", remotePIN, "--sign", "--mechanism", "ECDSA", "--label", "sig",
		"--input-file", "/dev/null", "--output-file", "/dev/null")
}

// TestClusterCProgram runs the C end-to-end program (setup, fork, threads,
// bad arguments, daemon restarts, a fork and a C_Finalize during the
// first dial's reading of tls_ca) through `server = tls://node1,
// tls://node2`, then through `server = tls://node2, tls://node1`; the
// token each run made through its first node is the other node's too,
// with its public objects.
func TestClusterCProgram(t *testing.T) {
	a := need(t)
	prog := ctestNeedBuilt(t, "build/e2e")
	tool := needTool(t, "pkcs11-tool", "opensc")
	c := startCluster(t)
	for _, order := range [][]int{{1, 2}, {2, 1}} {
		t.Run(fmt.Sprintf("node%d-first", order[0]), func(t *testing.T) {
			runCProgramOn(t, programOn{c, order[0]}, prog, a.module, c.env(c.pki.Admin, order...), ctestSections, 250)
		})
	}

	tokens := regexp.MustCompile(`(?m)^\s+token label\s+: (e2e-\d+-\d+)$`)
	var labels [2][]string
	for i := range labels {
		out, _ := toolRun(t, c.env(c.pki.Admin, i+1), tool, "--module", a.module, "-L")
		for _, m := range tokens.FindAllStringSubmatch(out, -1) {
			labels[i] = append(labels[i], m[1])
		}
		if len(labels[i]) != 2 {
			t.Fatalf("node %d lists %d tokens of the program, want 2:\n%s", i+1, len(labels[i]), out)
		}
	}
	if !slices.Equal(labels[0], labels[1]) {
		t.Errorf("the nodes list %q and %q", labels[0], labels[1])
	}
	for _, label := range labels[0] {
		for n := 1; n <= 2; n++ {
			out, code := toolRun(t, c.env(c.pki.Admin, n), tool, "--module", a.module, "--token-label", label, "--list-objects", "--type", "data")
			if k := len(regexp.MustCompile(`(?m)^\s+label:\s+'tok-pub-\d'$`).FindAllString(out, -1)); code != 0 || k != 3 || strings.Contains(out, "tok-priv") {
				t.Errorf("node %d lists %d of %s's 3 public token objects (and no private one, without a login): exit %d\n%s", n, k, label, code, out)
			}
		}
	}
}
