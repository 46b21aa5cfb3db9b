package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/internal/newfile"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "provision a state directory: a new master key in the TPM, escrowed M-of-N to custodians",
		Description: `Creates the security domain of a new state directory: a master key inside
the TPM and an empty keystore. With custodians, the master key is split so
that any --threshold of them can recreate it in another TPM; one encrypted
share per custodian is written to --shares-dir as NAME.share, where NAME is
the custodian's key file name without its extension. A share opens only
with its custodian's private key, so it may be stored and sent in clear.

Without custodians the master key is not escrowed: if this TPM is lost,
cleared or (for swtpm) its state directory deleted, every key in the
keystore is lost with it. 'hsmemu serve' on an empty state directory
provisions the same way, without custodians.

Custodian keys are public keys in PEM (openssl pkey -pubout): RSA of 2048
bits or more, EC P-256, P-384 or P-521, or X25519.

With a managed swtpm, --tpm-state-key FILE keeps the swtpm's state (the
TPM's seeds, and so the master key) encrypted under the key in FILE, which
init creates if it does not exist (32 random bytes in hex, mode 0600). Keep
FILE outside the state directory: a copy of the directory without it opens
nothing. Every later command on the state directory needs the same FILE.

Examples:
  hsmemu init --state-dir /var/lib/hsmemu --custodian alice.pem --custodian bob.pem --custodian carol.pem --threshold 2
  hsmemu init --state-dir /tmp/try --tpm managed`,
		Flags: []cli.Flag{
			stateDirFlag("state directory"),
			dbFlags()[0], dbFlags()[1],
			tpmFlag(),
			tpmStateKeyFlag(),
			&cli.StringSliceFlag{Name: "custodian", Usage: "a custodian's public key, PEM (repeat for each)"},
			&cli.IntFlag{Name: "threshold", Usage: "how many custodians' shares recreate the master key"},
			&cli.StringFlag{Name: "shares-dir", Value: ".", Usage: "where to write the custodians' shares"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		},
		Action: runInit,
	}
}

// initResult is what init reports.
type initResult struct {
	StateDir     string       `json:"state_dir"`
	TPM          string       `json:"tpm"`
	Manufacturer string       `json:"manufacturer"`
	Domain       string       `json:"domain"`
	Escrowed     bool         `json:"escrowed"`
	Threshold    int          `json:"threshold,omitempty"`
	Shares       []shareWrite `json:"shares,omitempty"`
	// DA is the TPM's dictionary-attack protection, which counts every
	// wrong PIN; Warnings say what a copy of the state directory gives.
	DA       *initDA  `json:"dictionary_attack,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

type initDA struct {
	MaxTries       uint32 `json:"max_tries"`
	RecoverySec    uint32 `json:"recovery_seconds"`
	LockoutAuthSet bool   `json:"lockout_auth_set"`
}

type shareWrite struct {
	Custodian   string `json:"custodian"`
	Fingerprint string `json:"fingerprint"`
	Index       int    `json:"index"`
	File        string `json:"file"`
}

func runInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return cli.Exit("hsmemu init: unexpected arguments "+strings.Join(c.Args().Slice(), " ")+" (custodians go with --custodian)", 2)
	}
	var custodians []escrow.Custodian
	for _, path := range c.StringSlice("custodian") {
		b, err := os.ReadFile(path)
		if err != nil {
			return cli.Exit("hsmemu init: --custodian: "+err.Error(), 2)
		}
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		cu, err := escrow.ParseCustodianPEM(name, b)
		if err != nil {
			return cli.Exit(fmt.Sprintf("hsmemu init: --custodian %s: %v", path, err), 2)
		}
		custodians = append(custodians, cu)
	}
	threshold := c.Int("threshold")
	switch {
	case len(custodians) == 0 && threshold != 0:
		return cli.Exit("hsmemu init: --threshold without --custodian: name the custodians whose shares it counts", 2)
	case len(custodians) > 0 && (threshold < 1 || threshold > len(custodians)):
		return cli.Exit(fmt.Sprintf("hsmemu init: --threshold must be 1 to %d: how many of the %d custodians' shares recreate the master key", len(custodians), len(custodians)), 2)
	}
	// Where the shares go is checked before anything is provisioned: a
	// domain whose shares could not be written would be escrowed to no one.
	dir := c.String("shares-dir")
	paths := make([]string, len(custodians))
	for i, cu := range custodians {
		paths[i] = filepath.Join(dir, cu.Name+".share")
		if _, err := os.Stat(paths[i]); err == nil {
			return cli.Exit(fmt.Sprintf("hsmemu init: %s exists; move it away or choose another --shares-dir", paths[i]), 2)
		}
	}
	if len(custodians) > 0 {
		if err := checkWritable(dir); err != nil {
			return cli.Exit("hsmemu init: --shares-dir: "+err.Error(), 2)
		}
	}

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stateDir := c.String("state-dir")
	key := tpmStateKey(c)
	newKey := false
	if key != "" && !fileExists(key) {
		if err := tpmroot.NewStateKey(key, stateDir); err != nil {
			return cli.Exit("hsmemu init: --tpm-state-key: "+err.Error(), 2)
		}
		newKey = true
	}
	st, err := daemon.OpenState(ctx, daemon.StateConfig{Dir: stateDir, DB: c.String("db"), Store: keystore.Options{PasswordFile: c.String("db-password-file")}, TPM: c.String("tpm"), Logger: slog.New(slog.DiscardHandler), // init says what matters itself
		Escrow: tpmroot.ProvisionOptions{Custodians: custodians, Threshold: threshold}, ProvisionOnly: true, TPMStateKey: key})
	if err != nil && newKey {
		tpmroot.RemoveStateKey(key) // it encrypts nothing
	}
	if errors.Is(err, tpmroot.ErrTPMInUse) {
		// A daemon (or another command) holds the state directory: a
		// conflict, as a running daemon is for restore.
		return cli.Exit(fmt.Sprintf("hsmemu init: %s is in use: %v; nothing was changed", stateDir, err), 3)
	}
	if errors.Is(err, daemon.ErrAlreadyProvisioned) {
		return cli.Exit(fmt.Sprintf("hsmemu init: %s already holds a security domain; nothing was changed ('hsmemu serve' opens it)", stateDir), 3)
	}
	if err != nil {
		code := 1
		if bad := (*keystore.BadDBError)(nil); errors.As(err, &bad) {
			code = 2 // the --db is written wrong
		}
		return cli.Exit("hsmemu init: "+err.Error(), code)
	}
	defer st.Close()
	info := st.TPM.Info()
	res := initResult{StateDir: stateDir, TPM: info.Kind, Manufacturer: info.Manufacturer,
		Domain: fmt.Sprintf("%x", st.Root.DomainID()), Escrowed: len(st.Shares) > 0}
	if res.Escrowed {
		res.Threshold = threshold
	}
	for i, sh := range st.Shares {
		if err := writeDurably(paths[i], sh.File); err != nil {
			return cli.Exit(fmt.Sprintf("hsmemu init: the domain is provisioned, but writing %s failed: %v; the shares not written are lost, so start again on a new state directory", paths[i], err), 1)
		}
		res.Shares = append(res.Shares, shareWrite{Custodian: sh.Custodian, Fingerprint: sh.Fingerprint, Index: int(sh.Index), File: paths[i]})
	}
	if da, err := st.TPM.DAInfo(); err == nil {
		res.DA = &initDA{MaxTries: da.MaxTries, RecoverySec: uint32(da.Recovery / time.Second), LockoutAuthSet: da.LockoutAuthSet}
	}
	for _, n := range st.Exposure(ctx) {
		if n.Warn {
			res.Warnings = append(res.Warnings, n.Msg)
		}
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, res)
	}
	w := c.App.Writer
	where := stateDir
	if kind, _, err := keystore.ParseDB(c.String("db")); err == nil && kind == keystore.EnginePostgres {
		where = "PostgreSQL, with this machine's TPM state in " + stateDir
	}
	fmt.Fprintf(w, "provisioned security domain %s in %s (TPM %s, %s)\n", res.Domain, where, info.Kind, info.Manufacturer)
	if da := res.DA; da != nil {
		lockout := "set"
		if !da.LockoutAuthSet {
			lockout = "NOT set"
		}
		fmt.Fprintf(w, "the TPM counts every wrong PIN: %d, over every token, lock it; one is forgiven every %s; its lockout authorisation is %s\n",
			da.MaxTries, time.Duration(da.RecoverySec)*time.Second, lockout)
	}
	for _, m := range res.Warnings {
		fmt.Fprintln(c.App.ErrWriter, "WARNING: "+m)
	}
	if !res.Escrowed {
		fmt.Fprintln(c.App.ErrWriter, "WARNING: the master key is not escrowed to any custodian: if this TPM is lost, every key in this keystore is lost with it. Use --custodian and --threshold to escrow it.")
		return nil
	}
	fmt.Fprintf(w, "escrowed: any %d of these %d custodians' shares recreate it:\n", threshold, len(res.Shares))
	for _, s := range res.Shares {
		fmt.Fprintf(w, "  share %d for %s (key %s): %s\n", s.Index, s.Custodian, s.Fingerprint, s.File)
	}
	fmt.Fprintln(w, "give each share to its custodian; a share opens only with that custodian's private key")
	return nil
}

// checkWritable makes sure a file can be created in dir.
func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".hsmemu-write-check-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// writeDurably writes a new file (0600), whole and durable before it
// returns, or not at all: a share is the custodians' only copy of a
// master key.
func writeDurably(path string, data []byte) error {
	return newfile.Write(path, 0o600, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}
