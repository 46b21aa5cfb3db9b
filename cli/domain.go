package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

func domainCommand() *cli.Command {
	return &cli.Command{
		Name:  "domain",
		Usage: "the security domain",
		Subcommands: []*cli.Command{{
			Name:  "recover",
			Usage: "recreate a keystore's master key in the TPM of a new state directory from custodians' shares",
			Description: `Copies the keystore --from (a keystore.db, consistently, even while a daemon
uses it) into the new --state-dir and recreates its master key in that state
directory's TPM from at least the threshold of custodians' shares, each
given as SHARE:KEY, the share file and its custodian's private key (PEM,
PKCS#8). The shares must belong to the keystore's domain, at least the
threshold of its current master key's. 'hsmemu serve' on the new state
directory then opens every key the old keystore held.

PIN records are bound to the old TPM; each carries a copy of what the
new TPM needs, encrypted to a key of the master key current when it was
written, and is brought into the new TPM with the same PIN. A record not
rewritten since a master key rotation (its role has not logged in since)
needs the shares of that earlier master key: give them too, beside the
current one's. Records that cannot be brought over are listed; their
role cannot log in on the new TPM until its PIN is set anew.

Example:
  hsmemu domain recover --state-dir /var/lib/hsmemu-new --from /backup/keystore.db \
    --share alice.share:alice.key --share bob.share:bob.key`,
			Flags: []cli.Flag{
				stateDirFlag("the new state directory"),
				tpmFlag(),
				tpmStateKeyFlag(),
				&cli.StringFlag{Name: "from", Usage: "the keystore to recover (a keystore.db)", Required: true},
				&cli.StringSliceFlag{Name: "share", Usage: "SHARE:KEY, a custodian's share file and private key (repeat for each)"},
				&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			},
			Action: runRecover,
		}},
	}
}

func runRecover(c *cli.Context) error {
	var shares []*escrow.Share
	defer func() {
		for _, s := range shares {
			s.Wipe()
		}
	}()
	for _, arg := range c.StringSlice("share") {
		file, key, ok := strings.Cut(arg, ":")
		if !ok {
			return cli.Exit(fmt.Sprintf("hsmemu domain recover: --share %s: give SHARE:KEY, the share file and its custodian's private key", arg), 2)
		}
		sh, err := openShare(file, key)
		if err != nil {
			return cli.Exit(fmt.Sprintf("hsmemu domain recover: --share %s: %v", file, err), 2)
		}
		shares = append(shares, sh)
	}
	if len(shares) == 0 {
		return cli.Exit("hsmemu domain recover: no --share: give the threshold of custodians' shares as SHARE:KEY", 2)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dir := c.String("state-dir")
	key := tpmStateKey(c)
	newKey := false
	if key != "" && !fileExists(key) {
		// A new state directory's swtpm, encrypted from its first write.
		if err := tpmroot.NewStateKey(key, dir); err != nil {
			return cli.Exit("hsmemu domain recover: --tpm-state-key: "+err.Error(), 2)
		}
		newKey = true
	}
	res, err := daemon.RecoverState(ctx, daemon.StateConfig{Dir: dir, TPM: c.String("tpm"), TPMStateKey: key, Logger: slog.New(slog.DiscardHandler)},
		c.String("from"), shares)
	if err != nil && newKey {
		tpmroot.RemoveStateKey(key)
	}
	switch {
	case errors.Is(err, daemon.ErrAlreadyProvisioned):
		return cli.Exit(fmt.Sprintf("hsmemu domain recover: %s already holds a keystore; recover into a new state directory", dir), 3)
	case errors.Is(err, escrow.ErrNotEnoughShares):
		return cli.Exit(fmt.Sprintf("hsmemu domain recover: %v: give more custodians' shares", err), 1)
	case err != nil:
		return cli.Exit("hsmemu domain recover: "+err.Error(), 1)
	}
	var left []unbound
	for _, u := range res.UnboundPINs {
		left = append(left, unbound{Token: u.Label, Role: strings.ToLower(u.Role.String()), MasterGeneration: u.MasterGeneration, Why: u.Why})
	}
	var unused []string
	for _, id := range res.UnusedShares {
		unused = append(unused, fmt.Sprintf("%x", id[:8]))
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, domainRecovered{Domain: fmt.Sprintf("%x", res.Domain), StateDir: dir, Shares: len(shares),
			PINsRebound: res.ReboundPINs, PINsUnbound: left, UnusedShares: unused})
	}
	w := c.App.Writer
	fmt.Fprintf(w, "recovered security domain %x into %s from %d shares; 'hsmemu serve --state-dir %s' opens it\n", res.Domain, dir, len(shares), dir)
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
