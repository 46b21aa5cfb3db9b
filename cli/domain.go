package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

func domainCommand() *cli.Command {
	return &cli.Command{
		Name:  "domain",
		Usage: "the security domain",
		Subcommands: []*cli.Command{{
			Name:  "recover",
			Usage: "recreate the domain's master key in a new TPM from custodians' shares (a keystore file, or one in PostgreSQL whose nodes are lost)",
			Description: `From a keystore file: copies the keystore --from (a keystore.db,
consistently, even while a daemon uses it) into the new --state-dir and
recreates its master key in that state directory's TPM from at least the
threshold of custodians' shares, each given as SHARE:KEY, the share file
and its custodian's private key (PEM, PKCS#8). The shares must belong to
the keystore's domain, at least the threshold of its current master
key's. 'hsmemu serve' on the new state directory then opens every key the
old keystore held.

In PostgreSQL (--db): the keystore is not copied; this machine's TPM
(--tpm, its state under --state-dir) takes the domain over in place and
becomes its only node. Where 'domain join' adds a node beside live ones,
recovery is for when every node's TPM is lost: it removes every node's
row (with its PIN bindings), adds this TPM's, records node.recover, and
anchors the keystore in a counter of this TPM. It is refused, nothing
written, while a daemon holds the database or while a node has recorded
its heartbeat within the last 90 seconds (three heartbeats), unless
--replace-live-nodes says those nodes are lost anyway: a node still
serving is cut off, and does not start again. 'hsmemu serve --db ...'
then serves the domain here; other machines join it again with shares.

PIN records are bound to the old TPM; each carries a copy of what the
new TPM needs, encrypted to a key of the master key current when it was
written, and is brought into the new TPM with the same PIN. A record not
rewritten since a master key rotation (its role has not logged in since)
needs the shares of that earlier master key: give them too, beside the
current one's. Records that cannot be brought over are listed; their
role cannot log in on the new TPM until its PIN is set anew.

Examples:
  hsmemu domain recover --state-dir /var/lib/hsmemu-new --from /backup/keystore.db \
    --share alice.share:alice.key --share bob.share:bob.key
  hsmemu domain recover --state-dir /var/lib/hsmemu --db 'postgres://hsm@db1/keys' \
    --share alice.share:alice.key --share bob.share:bob.key`,
			Flags: append([]cli.Flag{
				stateDirFlag("the new state directory (with --db: this machine's, its TPM's state)"),
				tpmFlag(),
				tpmStateKeyFlag(),
				&cli.StringFlag{Name: "from", Usage: "the keystore to recover (a keystore.db); or --db"},
				&cli.StringSliceFlag{Name: "share", Usage: "SHARE:KEY, a custodian's share file and private key (repeat for each)"},
				&cli.BoolFlag{Name: "replace-live-nodes", Usage: "with --db: replace the domain's nodes even if a daemon holds the database or a node's heartbeat is recent (their TPMs are lost)"},
				&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			}, dbFlags()...),
			Action: runRecover,
		}, {
			Name:  "join",
			Usage: "add this machine's TPM to a domain in PostgreSQL, from custodians' shares",
			Description: `Makes this machine's TPM (--tpm, its state under --state-dir) a node of the
security domain in the PostgreSQL keystore --db: the master key is
recreated in this TPM from at least the threshold of custodians' shares of
the current master key, each given as SHARE:KEY (the share file and its
custodian's private key, PEM, PKCS#8), and sealed there; the node's row
records it with the node's TPM-resident import key. Every PIN record gets
a binding in this TPM, from its recovery copy, so the same PINs log in
here, each wrong one counted by this TPM. A record not rewritten since a
master key rotation needs the shares of that earlier master key, beside
the current one's. 'hsmemu serve --db ...' on this machine then serves
the domain's tokens. The daemon serving the database is stopped
meanwhile (one daemon per database, for now: docs/cluster.md).

Example:
  hsmemu domain join --state-dir /var/lib/hsmemu --db 'postgres://hsm@db1/keys' \
    --share alice.share:alice.key --share bob.share:bob.key`,
			Flags: append([]cli.Flag{
				stateDirFlag("this machine's state directory (its TPM's state)"),
				tpmFlag(),
				tpmStateKeyFlag(),
				&cli.StringSliceFlag{Name: "share", Usage: "SHARE:KEY, a custodian's share file and private key (repeat for each)"},
				&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			}, dbFlags()...),
			Action: runJoin,
		}, {
			Name:      "leave",
			Usage:     "remove a node from the domain (through a daemon serving it on another node)",
			ArgsUsage: "NODE",
			Description: `Removes node NODE (its id, as 'hsmemu status' lists them) from the domain:
its row, with its sealed master key, and its PIN bindings. The daemon
asked must run on another node; the last node cannot leave. Audited
(node.leave). The node's TPM still holds the master key it loaded until
the TPM is cleared: a master key rotation is what retires the key itself.

Example:
  hsmemu domain leave 2`,
			Flags:  adminFlags(),
			Action: runLeave,
		}},
	}
}

// openShares opens each --share SHARE:KEY; the caller wipes them.
func openShares(c *cli.Context, cmd string) ([]*escrow.Share, error) {
	var shares []*escrow.Share
	for _, arg := range c.StringSlice("share") {
		file, key, ok := strings.Cut(arg, ":")
		if !ok {
			wipeShares(shares)
			return nil, cli.Exit(fmt.Sprintf("hsmemu %s: --share %s: give SHARE:KEY, the share file and its custodian's private key", cmd, arg), 2)
		}
		sh, err := openShare(file, key)
		if err != nil {
			wipeShares(shares)
			return nil, cli.Exit(fmt.Sprintf("hsmemu %s: --share %s: %v", cmd, file, err), 2)
		}
		shares = append(shares, sh)
	}
	if len(shares) == 0 {
		return nil, cli.Exit(fmt.Sprintf("hsmemu %s: no --share: give the threshold of custodians' shares as SHARE:KEY", cmd), 2)
	}
	return shares, nil
}

func wipeShares(shares []*escrow.Share) {
	for _, s := range shares {
		s.Wipe()
	}
}

func runJoin(c *cli.Context) error {
	if c.String("db") == "" {
		return cli.Exit("hsmemu domain join: no --db: give the PostgreSQL keystore of the domain to join", 2)
	}
	dir := c.String("state-dir")
	var res *daemon.JoinResult
	shares, err := withShares(c, "domain join", func(ctx context.Context, shares []*escrow.Share, key string) (err error) {
		res, err = daemon.JoinState(ctx, daemon.StateConfig{Dir: dir, DB: c.String("db"), TPM: c.String("tpm"), TPMStateKey: key,
			Store: keystore.Options{PasswordFile: c.String("db-password-file")}, Logger: slog.New(slog.DiscardHandler)}, shares)
		return err
	})
	if err != nil {
		return err
	}
	left := unboundPINs(res.UnboundPINs)
	if c.Bool("json") {
		return printJSON(c.App.Writer, domainJoined{Domain: fmt.Sprintf("%x", res.Domain), Node: res.Node, TPM: keystore.ShortTPMID(res.TPM),
			StateDir: dir, Shares: shares, PINsBound: res.BoundPINs, PINsUnbound: left})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "joined security domain %x as node %d (TPM %s) from %d shares; 'hsmemu serve --db ...' serves it here\n", res.Domain, res.Node, keystore.ShortTPMID(res.TPM), shares)
	fmt.Fprintf(w, "PIN records bound in this TPM: %d\n", res.BoundPINs)
	for _, u := range left {
		fmt.Fprintf(c.App.ErrWriter, "WARNING: token %q's %s PIN cannot log in on this node: %s\n", u.Token, u.Role, u.Why)
	}
	return nil
}

// withShares is the prologue and epilogue domain join and recover share:
// the custodians' shares opened (and wiped after), a context that SIGINT
// and SIGTERM cancel, and --tpm-state-key made for a new state directory
// (and removed again if the command fails). It returns how many shares
// were given, or the command's error as its exit (run's own exit, if it
// chose one).
func withShares(c *cli.Context, cmd string, run func(ctx context.Context, shares []*escrow.Share, tpmStateKey string) error) (int, error) {
	shares, err := openShares(c, cmd)
	if err != nil {
		return 0, err
	}
	defer wipeShares(shares)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	key := tpmStateKey(c)
	newKey := false
	if key != "" && !fileExists(key) {
		// A new state directory's swtpm, encrypted from its first write.
		if err := tpmroot.NewStateKey(key, c.String("state-dir")); err != nil {
			return 0, cli.Exit("hsmemu "+cmd+": --tpm-state-key: "+err.Error(), 2)
		}
		newKey = true
	}
	err = run(ctx, shares, key)
	if err != nil && newKey {
		tpmroot.RemoveStateKey(key)
	}
	var exit cli.ExitCoder
	switch {
	case errors.As(err, &exit):
		return 0, err
	case errors.Is(err, escrow.ErrNotEnoughShares):
		return 0, cli.Exit(fmt.Sprintf("hsmemu %s: %v: give more custodians' shares", cmd, err), 1)
	case err != nil:
		return 0, cli.Exit("hsmemu "+cmd+": "+err.Error(), 1)
	}
	return len(shares), nil
}

// unboundPINs is the PIN records a new TPM could not take, as reported.
func unboundPINs(pins []keystore.UnboundPIN) []unbound {
	var left []unbound
	for _, u := range pins {
		left = append(left, unbound{Token: u.Label, Role: strings.ToLower(u.Role.String()), MasterGeneration: u.MasterGeneration, Why: u.Why})
	}
	return left
}

// domainJoined is `domain join --json`.
type domainJoined struct {
	Domain      string    `json:"domain"`
	Node        int64     `json:"node"`
	TPM         string    `json:"tpm"`
	StateDir    string    `json:"state_dir"`
	Shares      int       `json:"shares"`
	PINsBound   int       `json:"pins_bound"`
	PINsUnbound []unbound `json:"pins_unbound,omitempty"`
}

func runLeave(c *cli.Context) error {
	if c.NArg() < 1 { // more are flags (prepare)
		return cli.Exit("hsmemu domain leave: give the node's id (as 'hsmemu status' lists them)", 2)
	}
	id, err := strconv.ParseInt(c.Args().First(), 10, 64)
	if err != nil || id < 1 {
		return cli.Exit(fmt.Sprintf("hsmemu domain leave: %q is not a node id (1, 2, ...)", c.Args().First()), 2)
	}
	if err := adminCall(c, adminapi.OpNodeLeave, adminapi.NodeLeave{Node: id}, nil); err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, map[string]int64{"removed": id})
	}
	fmt.Fprintf(c.App.Writer, "node %d removed from the domain\n", id)
	return nil
}

func runRecover(c *cli.Context) error {
	dir := c.String("state-dir")
	from, db := c.String("from"), c.String("db")
	switch {
	case from != "" && db != "":
		return cli.Exit("hsmemu domain recover: give --from (a keystore file) or --db (a keystore in PostgreSQL), not both", 2)
	case from == "" && db == "":
		return cli.Exit("hsmemu domain recover: give --from (a keystore file) or --db (a keystore in PostgreSQL)", 2)
	case from != "" && c.Bool("replace-live-nodes"):
		return cli.Exit("hsmemu domain recover: --replace-live-nodes is for a keystore in PostgreSQL (--db); a keystore file is copied, and its nodes left as they are", 2)
	case db != "":
		if kind, _, err := keystore.ParseDB(db); err != nil {
			return cli.Exit("hsmemu domain recover: --db: "+err.Error(), 2)
		} else if kind != keystore.EnginePostgres {
			return cli.Exit("hsmemu domain recover: --db takes a keystore in PostgreSQL; a keystore in SQLite is recovered from its file (--from PATH)", 2)
		}
	}
	var res *daemon.RecoverResult
	shares, err := withShares(c, "domain recover", func(ctx context.Context, shares []*escrow.Share, key string) (err error) {
		cfg := daemon.StateConfig{Dir: dir, TPM: c.String("tpm"), TPMStateKey: key, Logger: slog.New(slog.DiscardHandler)}
		if db == "" {
			res, err = daemon.RecoverState(ctx, cfg, from, shares)
			if errors.Is(err, daemon.ErrAlreadyProvisioned) {
				return cli.Exit(fmt.Sprintf("hsmemu domain recover: %s already holds a keystore; recover into a new state directory", dir), 3)
			}
			return err
		}
		cfg.DB, cfg.Store = db, keystore.Options{PasswordFile: c.String("db-password-file")}
		res, err = daemon.RecoverPostgres(ctx, cfg, shares, daemon.RecoverOptions{ReplaceLive: c.Bool("replace-live-nodes")})
		switch {
		case errors.Is(err, daemon.ErrNodesAlive):
			return cli.Exit("hsmemu domain recover: "+err.Error()+" (--replace-live-nodes); nothing was changed", 3)
		case errors.Is(err, daemon.ErrAlreadyProvisioned):
			return cli.Exit("hsmemu domain recover: "+err.Error()+": 'hsmemu serve --db ...' opens the domain on it", 3)
		}
		return err
	})
	if err != nil {
		return err
	}
	left := unboundPINs(res.UnboundPINs)
	var unused []string
	for _, id := range res.UnusedShares {
		unused = append(unused, fmt.Sprintf("%x", id[:8]))
	}
	if c.Bool("json") {
		// Lists, even empty, as the schema has them (docs/json.md).
		if left == nil {
			left = []unbound{}
		}
		if unused == nil {
			unused = []string{}
		}
		return printJSON(c.App.Writer, domainRecovered{Domain: fmt.Sprintf("%x", res.Domain), Node: res.Node, TPM: keystore.ShortTPMID(res.TPM),
			StateDir: dir, Shares: shares, Replaced: res.Replaced, PINsRebound: res.ReboundPINs, PINsUnbound: left, UnusedShares: unused})
	}
	w := c.App.Writer
	if db == "" {
		fmt.Fprintf(w, "recovered security domain %x into %s from %d shares; 'hsmemu serve --state-dir %s' opens it\n", res.Domain, dir, shares, dir)
	} else {
		var ids []string
		for _, id := range res.Replaced {
			ids = append(ids, strconv.FormatInt(id, 10))
		}
		if len(ids) == 0 {
			ids = []string{"none"}
		}
		fmt.Fprintf(w, "recovered security domain %x in PostgreSQL from %d shares: this machine's TPM %s is its only node, node %d (replaced: %s); 'hsmemu serve --db ...' serves it here\n",
			res.Domain, shares, keystore.ShortTPMID(res.TPM), res.Node, strings.Join(ids, ", "))
	}
	fmt.Fprintf(w, "PIN records brought into the new TPM: %d\n", res.ReboundPINs)
	for _, u := range left {
		fmt.Fprintf(c.App.ErrWriter, "WARNING: token %q's %s PIN cannot log in on the new TPM: %s; ", u.Token, u.Role, u.Why)
		if u.Role == "user" {
			fmt.Fprintln(c.App.ErrWriter, "the SO can set a new user PIN (hsmemu pin reset), or recover again giving those shares too")
		} else {
			fmt.Fprintln(c.App.ErrWriter, "recover again giving those shares beside the current ones")
		}
	}
	for _, id := range unused {
		fmt.Fprintf(c.App.ErrWriter, "note: the shares of master key %s opened no PIN record\n", id)
	}
	return nil
}

// openShare decrypts a share file with its custodian's PKCS#8 private key.
func openShare(file, keyFile string) (*escrow.Share, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	defer clear(kb)
	block, _ := pem.Decode(kb)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM private key", keyFile)
	}
	defer clear(block.Bytes)
	priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return escrow.DecryptShare(b, priv)
}
