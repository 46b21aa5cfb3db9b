package cli

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/admin"
	"hsmemu/daemon/adminapi"
)

// keySelectorFlags name a key: by label, uuid or CKA_ID.
func keySelectorFlags() []cli.Flag {
	return []cli.Flag{
		tokenFlag(),
		&cli.StringFlag{Name: "key", Usage: "the key's label (CKA_LABEL)"},
		&cli.StringFlag{Name: "uuid", Usage: "the key's uuid, as key list shows it"},
		&cli.StringFlag{Name: "id", Usage: "the key's CKA_ID, in hex"},
	}
}

func keySelector(c *cli.Context) (adminapi.KeySelector, error) {
	sel := adminapi.KeySelector{Key: c.String("key"), UUID: strings.ToLower(c.String("uuid")), ID: strings.ToLower(c.String("id")), Class: uriClass(c)}
	if sel == (adminapi.KeySelector{}) {
		return sel, usagef(c, "name the key with --key LABEL, --uuid UUID, --id HEX or a PKCS#11 URI (pkcs11:token=...;object=...)")
	}
	return sel, nil
}

// keyRef reads the selector and the user PIN.
func keyRef(c *cli.Context) (adminapi.KeyRef, error) {
	sel, err := keySelector(c)
	if err != nil {
		return adminapi.KeyRef{}, err
	}
	pin, err := readPIN(c, userPIN, false)
	if err != nil {
		return adminapi.KeyRef{}, err
	}
	return adminapi.KeyRef{Token: c.String("token"), UserPIN: pin, KeySelector: sel}, nil
}

// callWithKeyRef names the key, reads the user PIN, and makes op with
// them, for the key commands that take nothing else.
func callWithKeyRef[T any](c *cli.Context, op string) (T, error) {
	var res T
	ref, err := keyRef(c)
	if err != nil {
		return res, err
	}
	defer clear(ref.UserPIN)
	return res, adminCall(c, op, ref, &res)
}

func keyCommand() *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "a token's keys",
		Description: `Key commands act as the token's user, with the user PIN (--user-pin-file or
HSMEMU_USER_PIN, else a prompt); purge takes the SO PIN. A key is named by
its label (--key), uuid (--uuid) or CKA_ID (--id), or by a PKCS#11 URI
(RFC 7512) as key list and key show print it, which OpenSSL, p11tool and
ssh take too: pkcs11:token=signing;object=tls;type=private. A key pair, a
private and a public key of one type and CKA_ID, counts as one key; a URI's
type picks one half.

A deleted key is kept, recoverable, for the token's retention period
(default 90 days, ` + "`hsmemu token set --retention`" + `), then purged. Purge
protection (` + "`hsmemu token set --purge-protection`" + `), once on, refuses every
purge before the retention ends and cannot be turned off.`,
		Subcommands: []*cli.Command{
			{
				Name:  "generate",
				Usage: "generate a key in the token",
				Description: `--type is one of ` + strings.Join(admin.KeyTypeNames(), ", ") + `.
On a premium token the key is HSM-protected (never exported in clear)
unless --protection software says otherwise.

Examples:
   hsmemu key generate --token signing --type ec-p256 --key tls
   hsmemu key generate --token signing --type aes-256 --key kek --usage wrap,unwrap`,
				Flags: adminFlags(append(newKeyFlags(), &cli.StringFlag{Name: "type", Usage: "the key's type and size", Required: true})...),
				Action: func(c *cli.Context) error {
					opts, err := keyOptions(c)
					if err != nil {
						return err
					}
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var keys []adminapi.Key
					if err := adminCall(c, adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: c.String("token"), UserPIN: pin, Type: c.String("type"), KeyOptions: opts}, &keys); err != nil {
						return err
					}
					return printMade(c, "generated", keys)
				},
			},
			{
				Name:  "import",
				Usage: "store an existing key in the token",
				Description: `The key is read from --in (a file, or - for stdin): PEM (PKCS#8, PKCS#1,
SEC1, or a public key) or PKCS#8 DER; raw bytes with --type aes (16, 24 or
32 bytes) or --type generic. ML-KEM, ML-DSA and SLH-DSA keys come as a
SubjectPublicKeyInfo or PKCS#8 with NIST's OIDs (an ML-KEM or ML-DSA
private key as its seed, its expanded key, or both). A private key is
stored with its public half.
On a premium token it becomes HSM-protected unless --protection software
says otherwise; either way the token holds it from now on, so destroy the
file if it was the only other copy.

Examples:
   hsmemu key import --token signing --key web --in web.key.pem
   head -c 32 /dev/urandom | hsmemu key import --token signing --key kek --type aes --in -`,
				Flags: adminFlags(append(newKeyFlags(),
					&cli.StringFlag{Name: "in", Usage: "the key file, or - for stdin", Required: true},
					&cli.StringFlag{Name: "type", Usage: "for raw material: aes or generic"})...),
				Action: func(c *cli.Context) error {
					opts, err := keyOptions(c)
					if err != nil {
						return err
					}
					material, err := readIn(c.String("in"), 1<<19)
					if err != nil {
						return cli.Exit(commandName(c)+": --in: "+err.Error(), exitUsage)
					}
					defer clear(material)
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var keys []adminapi.Key
					if err := adminCall(c, adminapi.OpKeyImport, adminapi.KeyImport{Token: c.String("token"), UserPIN: pin, Type: c.String("type"), Material: material, KeyOptions: opts}, &keys); err != nil {
						return err
					}
					return printMade(c, "imported", keys)
				},
			},
			{
				Name:  "list",
				Usage: "list the token's keys (--deleted: the deleted ones, with when they are purged)",
				Description: `Examples:
   hsmemu key list --token signing
   hsmemu key list --token signing --deleted --json`,
				Flags: adminFlags(tokenFlag(),
					&cli.BoolFlag{Name: "deleted", Usage: "list the deleted keys"}, userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var keys []adminapi.Key
					if err := adminCall(c, adminapi.OpKeyList, adminapi.KeyList{Token: c.String("token"), UserPIN: pin, Deleted: c.Bool("deleted")}, &keys); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keys)
					}
					printKeys(c.App.Writer, keys, c.Bool("deleted"))
					return nil
				},
			},
			{
				Name:  "show",
				Usage: "show a key: attributes, protection level, public-key fingerprint",
				Description: `Examples:
   hsmemu key show --token signing --key tls
   hsmemu key show 'pkcs11:token=signing;object=tls;type=private'`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag())...),
				Action: func(c *cli.Context) error {
					keys, err := callWithKeyRef[[]adminapi.Key](c, adminapi.OpKeyShow)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keys)
					}
					for i, k := range keys {
						if i > 0 {
							fmt.Fprintln(c.App.Writer)
						}
						printKey(c.App.Writer, k)
					}
					return nil
				},
			},
			{
				Name:  "export-public",
				Usage: "write a key's public half as PEM (SubjectPublicKeyInfo)",
				Description: `Example:
   hsmemu key export-public --token signing --key tls --out tls.pub.pem`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag(),
					&cli.StringFlag{Name: "out", Usage: "write to this file (it must not exist) instead of stdout"})...),
				Action: func(c *cli.Context) error {
					out := c.String("out")
					if err := checkOut(c, out); err != nil {
						return err
					}
					pub, err := callWithKeyRef[adminapi.PublicKey](c, adminapi.OpKeyExportPublic)
					if err != nil {
						return err
					}
					if out != "" {
						if err := writeOutFile(c, out, 0o644, []byte(pub.PEM)); err != nil {
							return err
						}
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, publicKeyOut{PublicKey: pub, File: out})
					}
					if out != "" {
						fmt.Fprintf(c.App.Writer, "wrote the public key (%s) to %s\n", pub.Fingerprint, out)
						return nil
					}
					fmt.Fprint(c.App.Writer, pub.PEM)
					return nil
				},
			},
			{
				Name:  "delete",
				Usage: "delete a key, kept recoverable for the token's retention period",
				Description: `Example:
   hsmemu key delete --token signing --key old-tls`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag())...),
				Action: func(c *cli.Context) error {
					res, err := callWithKeyRef[adminapi.KeyDeleted](c, adminapi.OpKeyDelete)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keysDone{Keys: res.Keys, Kept: res.Kept, PurgeAfter: res.PurgeAfter})
					}
					for _, k := range res.Keys {
						fmt.Fprintf(c.App.Writer, "deleted %s %s %q (%s)\n", k.KeyType, k.Class, k.Label, k.UUID)
					}
					if res.Kept {
						fmt.Fprintf(c.App.Writer, "recoverable with `hsmemu key recover` until %s\n", res.PurgeAfter.UTC().Format(time.RFC3339))
					} else {
						fmt.Fprintln(c.App.Writer, "the token keeps no deleted keys (retention 0): it is gone")
					}
					return nil
				},
			},
			{
				Name:  "recover",
				Usage: "bring a deleted key back",
				Description: `Example:
   hsmemu key recover --token signing --key old-tls`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag())...),
				Action: func(c *cli.Context) error {
					keys, err := callWithKeyRef[[]adminapi.Key](c, adminapi.OpKeyRecover)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keysDone{Keys: keys})
					}
					return printMade(c, "recovered", keys)
				},
			},
			{
				Name:  "backup",
				Usage: "write a key (a secret key, or both halves of a pair) to a backup only this security domain restores",
				Description: `The backup is opaque and encrypted under a key derived from the TPM-rooted
domain: it restores into this keystore, a restored copy of it, or one
recovered from the custodians' shares, and nowhere else. An HSM-protected
key stays HSM-protected.

Example:
   hsmemu key backup --token signing --key tls --out tls.hsmkey`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag(),
					&cli.StringFlag{Name: "out", Usage: "the backup file to write (mode 0600; it must not exist)", Required: true})...),
				Action: func(c *cli.Context) error {
					out := c.String("out")
					if err := checkOut(c, out); err != nil {
						return err
					}
					res, err := callWithKeyRef[adminapi.KeyBackup](c, adminapi.OpKeyBackup)
					if err != nil {
						return err
					}
					if err := writeOutFile(c, out, 0o600, res.Blob); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keyBackedUp{Keys: res.Keys, File: out})
					}
					for _, k := range res.Keys {
						fmt.Fprintf(c.App.Writer, "backed up %s %s %q (%s)\n", k.KeyType, k.Class, k.Label, k.UUID)
					}
					fmt.Fprintf(c.App.Writer, "to %s\n", out)
					return nil
				},
			},
			{
				Name:  "restore",
				Usage: "bring a key back from its backup, into a keystore of the same security domain",
				Description: `The key comes back with the identity and attributes it had; a key that
still exists (live or deleted) must be recovered or purged first.

Example:
   hsmemu key restore --token signing --in tls.hsmkey`,
				Flags: adminFlags(tokenFlag(),
					&cli.StringFlag{Name: "in", Usage: "the backup file", Required: true}, userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					blob, err := os.ReadFile(c.String("in"))
					if err != nil {
						return cli.Exit(commandName(c)+": --in: "+err.Error(), exitUsage)
					}
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var keys []adminapi.Key
					if err := adminCall(c, adminapi.OpKeyRestore, adminapi.KeyRestore{Token: c.String("token"), UserPIN: pin, Blob: blob}, &keys); err != nil {
						return err
					}
					return printMade(c, "restored", keys)
				},
			},
			{
				Name:  "purge",
				Usage: "remove a deleted key for good, with the SO PIN (refused under purge protection)",
				Description: `Example:
   hsmemu key purge --token signing --uuid 5f0c... --so-pin-file so.pin`,
				Flags: adminFlags(append(keySelectorFlags(), soPIN.fileFlag())...),
				Action: func(c *cli.Context) error {
					sel, err := keySelector(c)
					if err != nil {
						return err
					}
					so, err := readPIN(c, soPIN, false)
					if err != nil {
						return err
					}
					defer clear(so)
					var keys []adminapi.Key
					if err := adminCall(c, adminapi.OpKeyPurge, adminapi.KeyPurge{Token: c.String("token"), SOPIN: so, KeySelector: sel}, &keys); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, keysDone{Keys: keys})
					}
					for _, k := range keys {
						fmt.Fprintf(c.App.Writer, "purged %s %s %q (%s)\n", k.KeyType, k.Class, k.Label, k.UUID)
					}
					return nil
				},
			},
		},
	}
}

func printKeys(w io.Writer, keys []adminapi.Key, deleted bool) {
	if len(keys) == 0 {
		if deleted {
			fmt.Fprintln(w, "no deleted keys")
		} else {
			fmt.Fprintln(w, "no keys")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if deleted {
		fmt.Fprintln(tw, "UUID\tCLASS\tTYPE\tLABEL\tID\tDELETED\tPURGED AFTER")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.UUID, k.Class, k.KeyType, printable(k.Label), k.ID,
				k.DeletedAt.UTC().Format(time.RFC3339), k.PurgeAfter.UTC().Format(time.RFC3339))
		}
	} else {
		fmt.Fprintln(tw, "UUID\tCLASS\tTYPE\tBITS\tLABEL\tID\tPROTECTION\tUSAGE\tURI")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", k.UUID, k.Class, k.KeyType, k.Bits, printable(k.Label), k.ID,
				cmp.Or(k.Protection, "-"), cmp.Or(strings.Join(k.Usage, ","), "-"), k.URI)
		}
	}
	tw.Flush()
}

func printKey(w io.Writer, k adminapi.Key) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "uuid:\t%s\n", k.UUID)
	fmt.Fprintf(tw, "class:\t%s\n", k.Class)
	fmt.Fprintf(tw, "type:\t%s\n", k.KeyType)
	if k.Bits > 0 {
		fmt.Fprintf(tw, "bits:\t%d\n", k.Bits)
	}
	if k.ParameterSet != "" {
		fmt.Fprintf(tw, "parameter set:\t%s\n", k.ParameterSet)
		if z := k.Sizes; z != nil {
			fmt.Fprintf(tw, "public key bytes:\t%d\n", z.PublicKey)
			fmt.Fprintf(tw, "private key bytes:\t%d\n", z.PrivateKey)
			if z.Signature > 0 {
				fmt.Fprintf(tw, "signature bytes:\t%d\n", z.Signature)
			}
			if z.Ciphertext > 0 {
				fmt.Fprintf(tw, "ciphertext bytes:\t%d\n", z.Ciphertext)
			}
		}
	}
	fmt.Fprintf(tw, "label:\t%s\n", printable(k.Label))
	fmt.Fprintf(tw, "id:\t%s\n", k.ID)
	fmt.Fprintf(tw, "uri:\t%s\n", k.URI)
	if k.Protection != "" {
		fmt.Fprintf(tw, "protection:\t%s\n", k.Protection)
	}
	if k.Fingerprint != "" {
		fmt.Fprintf(tw, "fingerprint:\t%s\n", k.Fingerprint)
	}
	if a := k.Attributes; a != nil {
		for _, f := range a.Flags() {
			fmt.Fprintf(tw, "%s:\t%t\n", strings.ReplaceAll(f.Name, "_", "-"), f.Value)
		}
		if a.KeyGenMechanism != nil {
			fmt.Fprintf(tw, "key-gen-mechanism:\t%s\n", a.KeyGenMechanism.Name)
		}
		if len(a.AllowedMechanisms) > 0 {
			var ms []string
			for _, m := range a.AllowedMechanisms {
				ms = append(ms, m.Name)
			}
			fmt.Fprintf(tw, "allowed-mechanisms:\t%s\n", strings.Join(ms, ","))
		}
	}
	tw.Flush()
	if k.PublicPEM != "" {
		fmt.Fprint(w, k.PublicPEM)
	}
}

// newKeyFlags describe a key to make.
func newKeyFlags() []cli.Flag {
	return []cli.Flag{
		tokenFlag(),
		&cli.StringFlag{Name: "key", Usage: "the new key's label (CKA_LABEL)", Required: true},
		&cli.StringFlag{Name: "id", Usage: "its CKA_ID in hex (default: random, shared by a pair's halves)"},
		&cli.StringFlag{Name: "usage", Usage: "comma-separated: encrypt, decrypt, sign, verify, wrap, unwrap, derive; an ML-KEM key's: encapsulate, decapsulate (default by type)"},
		&cli.StringFlag{Name: "protection", Usage: "hsm or software (default: hsm on a premium token, software on a standard one)"},
		&cli.BoolFlag{Name: "extractable", Usage: "let the key be wrapped out (software protection only)"},
		allowDuplicateLabelFlag(),
		userPIN.fileFlag(),
	}
}

// allowDuplicateLabelFlag lets a new key share a live key's label.
func allowDuplicateLabelFlag() cli.Flag {
	return &cli.BoolFlag{Name: "allow-duplicate-label", Usage: "store the key even though a live key has its label (then name each by --uuid or --id)"}
}

func keyOptions(c *cli.Context) (adminapi.KeyOptions, error) {
	opts := adminapi.KeyOptions{Label: c.String("key"), ID: strings.ToLower(c.String("id")), Protection: c.String("protection"), Extractable: c.Bool("extractable"),
		AllowDuplicateLabel: c.Bool("allow-duplicate-label")}
	if u := c.String("usage"); u != "" {
		for _, p := range strings.Split(u, ",") {
			opts.Usage = append(opts.Usage, strings.TrimSpace(p))
		}
	}
	if opts.Extractable && opts.Protection == "hsm" {
		return opts, cli.Exit(commandName(c)+": an HSM-protected key is never extractable", exitUsage)
	}
	return opts, nil
}

// printMade reports new keys.
func printMade(c *cli.Context, verb string, keys []adminapi.Key) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, keys)
	}
	for _, k := range keys {
		fmt.Fprintf(c.App.Writer, "%s %s %s %q (%s)", verb, k.KeyType, k.Class, k.Label, k.UUID)
		if k.Protection != "" {
			fmt.Fprintf(c.App.Writer, ", %s-protected", k.Protection)
		}
		if k.Fingerprint != "" {
			fmt.Fprintf(c.App.Writer, ", %s", k.Fingerprint)
		}
		fmt.Fprintln(c.App.Writer)
	}
	return nil
}
