package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
)

// pfxPassword is a PKCS#12 file's password: from --password-file, else
// HSMEMU_PFX_PASSWORD, else a prompt; never the command line.
var pfxPassword = pinSource{"password", "HSMEMU_PFX_PASSWORD", "PKCS#12 password"}

// certSelectorFlags name a certificate: by label, uuid or CKA_ID.
func certSelectorFlags() []cli.Flag {
	return []cli.Flag{
		tokenFlag(),
		&cli.StringFlag{Name: "cert", Usage: "the certificate's label (CKA_LABEL)"},
		&cli.StringFlag{Name: "uuid", Usage: "the certificate's uuid, as cert list shows it"},
		&cli.StringFlag{Name: "id", Usage: "the certificate's CKA_ID, in hex"},
		userPIN.fileFlag(),
	}
}

// certRef reads the selector and the user PIN.
func certRef(c *cli.Context) (adminapi.CertRef, error) {
	sel := adminapi.CertSelector{Cert: c.String("cert"), UUID: strings.ToLower(c.String("uuid")), ID: strings.ToLower(c.String("id"))}
	if sel == (adminapi.CertSelector{}) {
		return adminapi.CertRef{}, cli.Exit(commandName(c)+": name the certificate with --cert LABEL, --uuid UUID or --id HEX", exitUsage)
	}
	pin, err := readPIN(c, userPIN, false)
	if err != nil {
		return adminapi.CertRef{}, err
	}
	return adminapi.CertRef{Token: c.String("token"), UserPIN: pin, CertSelector: sel}, nil
}

// writeOut writes to --out, or to stdout unless --json prints the result
// there instead.
func writeOut(c *cli.Context, data string) error {
	if out := c.String("out"); out != "" {
		return writeOutFile(c, out, 0o644, []byte(data))
	}
	if c.Bool("json") {
		return nil
	}
	_, err := io.WriteString(c.App.Writer, data)
	return err
}

func certCommand() *cli.Command {
	return &cli.Command{
		Name:  "cert",
		Usage: "a token's X.509 certificates",
		Description: `Certificates are stored as CKO_CERTIFICATE objects beside their private
keys, the leaf's CKA_ID the key's, so PKCS#11 clients find the pair. The
private key of an imported PKCS#12 file is stored as ` + "`hsmemu key import`" + `
stores one: HSM-protected on a premium token (used, never exported)
unless --protection software. A certificate request is signed inside the
token; the issued certificate is imported back and attached to its key.
Commands act as the token's user, with the user PIN (--user-pin-file or
HSMEMU_USER_PIN, else a prompt).`,
		Subcommands: []*cli.Command{
			{
				Name:  "import",
				Usage: "store a PKCS#12 file, or PEM (a key with its certificate and chain, or certificates for a key in the token)",
				Description: `--in is a PKCS#12 file (its password from --password-file, else
HSMEMU_PFX_PASSWORD, else a prompt) or PEM. The private key, if any, is
stored first, labelled --key (default: the certificate's common name);
certificates without a key are attached to the token's private key with
their public key. Chain certificates the token holds already are kept
once.

Examples:
   HSMEMU_PFX_PASSWORD=... hsmemu cert import --token web --in site.pfx
   hsmemu cert import --token web --in site.pfx --password-file pfx.pass --key site
   hsmemu cert import --token web --in signed.pem`,
				Flags: adminFlags(tokenFlag(),
					&cli.StringFlag{Name: "in", Usage: "the PKCS#12 or PEM file, or - for stdin", Required: true},
					&cli.StringFlag{Name: "key", Usage: "the label of the key and certificate (default: the certificate's common name, or the key's label)"},
					&cli.StringFlag{Name: "protection", Usage: "hsm or software, for the private key (default: hsm on a premium token)"},
					allowDuplicateLabelFlag(), pfxPassword.fileFlag(), userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					material, err := readIn(c.String("in"), 1<<20)
					if err != nil {
						return cli.Exit(commandName(c)+": --in: "+err.Error(), exitUsage)
					}
					defer clear(material)
					var password []byte
					if !strings.Contains(string(material), "-----BEGIN ") {
						if password, err = readPIN(c, pfxPassword, false); err != nil {
							return err
						}
						defer clear(password)
					}
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var res adminapi.CertImported
					if err := adminCall(c, adminapi.OpCertImport, adminapi.CertImport{Token: c.String("token"), UserPIN: pin, Material: material,
						Password: password, Label: c.String("key"), Protection: c.String("protection"), AllowDuplicateLabel: c.Bool("allow-duplicate-label")}, &res); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, res)
					}
					if len(res.Keys) > 0 {
						if err := printMade(c, "imported", res.Keys); err != nil {
							return err
						}
					}
					for _, ct := range res.Certs {
						fmt.Fprintf(c.App.Writer, "certificate %q (%s, %s) %s, sha256 %s", ct.Label, ct.Category, ct.UUID, ct.Subject, ct.SHA256)
						if ct.KeyLabel != "" {
							fmt.Fprintf(c.App.Writer, ", key %q", ct.KeyLabel)
						}
						fmt.Fprintln(c.App.Writer)
					}
					return nil
				},
			},
			{
				Name:  "request",
				Usage: "write a PKCS#10 certificate request signed inside the token by one of its keys",
				Description: `--subject is "CN=...,O=...,C=..." (or OpenSSL's "/CN=.../O=..."); --san
adds DNS:name, IP:address, EMAIL:address or URI:uri (repeatable). The
request is signed by the key in the daemon; the key never leaves it.

Example:
   hsmemu cert request --token web --key site --subject 'CN=www.example.com' --san DNS:www.example.com --out site.csr`,
				Flags: adminFlags(append(keySelectorFlags(), userPIN.fileFlag(),
					&cli.StringFlag{Name: "subject", Usage: "the subject, CN=...,O=...", Required: true},
					&cli.StringSliceFlag{Name: "san", Usage: "a subject alternative name: DNS:x, IP:x, EMAIL:x or URI:x (repeatable)"},
					&cli.StringFlag{Name: "out", Usage: "write the request (PEM) to this file (it must not exist) instead of stdout"})...),
				Action: func(c *cli.Context) error {
					if err := checkOut(c, c.String("out")); err != nil {
						return err
					}
					ref, err := keyRef(c)
					if err != nil {
						return err
					}
					defer clear(ref.UserPIN)
					var csr adminapi.CSR
					if err := adminCall(c, adminapi.OpCertRequest, adminapi.CertRequest{Token: ref.Token, UserPIN: ref.UserPIN, KeySelector: ref.KeySelector,
						Subject: c.String("subject"), SANs: c.StringSlice("san")}, &csr); err != nil {
						return err
					}
					// The file first: --json says how the result is printed,
					// not whether --out is written.
					if err := writeOut(c, csr.PEM); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, csr)
					}
					if out := c.String("out"); out != "" {
						fmt.Fprintf(c.App.Writer, "wrote a request for %s, signed by key %q (%s), to %s\n", csr.Subject, csr.Key.Label, csr.Key.UUID, out)
					}
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list the token's certificates, with their keys and expiry",
				Description: `Example:
   hsmemu cert list --token web`,
				Flags: adminFlags(tokenFlag(), userPIN.fileFlag()),
				Action: func(c *cli.Context) error {
					pin, err := readPIN(c, userPIN, false)
					if err != nil {
						return err
					}
					defer clear(pin)
					var certs []adminapi.Cert
					if err := adminCall(c, adminapi.OpCertList, adminapi.CertList{Token: c.String("token"), UserPIN: pin}, &certs); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, certs)
					}
					printCerts(c.App.Writer, certs)
					return nil
				},
			},
			{
				Name:  "show",
				Usage: "show a certificate: subject, issuer, validity, fingerprints, its key, an expiry warning",
				Description: `Example:
   hsmemu cert show --token web --cert site`,
				Flags: adminFlags(certSelectorFlags()...),
				Action: func(c *cli.Context) error {
					ref, err := certRef(c)
					if err != nil {
						return err
					}
					defer clear(ref.UserPIN)
					var ct adminapi.Cert
					if err := adminCall(c, adminapi.OpCertShow, ref, &ct); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, ct)
					}
					printCert(c.App.Writer, ct)
					return nil
				},
			},
			{
				Name:  "export",
				Usage: "write a certificate and its chain (as far as the token holds it) as PEM; never a key",
				Description: `Example:
   hsmemu cert export --token web --cert site --out site-chain.pem`,
				Flags: adminFlags(append(certSelectorFlags(),
					&cli.StringFlag{Name: "out", Usage: "write to this file (it must not exist) instead of stdout"})...),
				Action: func(c *cli.Context) error {
					if err := checkOut(c, c.String("out")); err != nil {
						return err
					}
					ref, err := certRef(c)
					if err != nil {
						return err
					}
					defer clear(ref.UserPIN)
					var ex adminapi.CertExport
					if err := adminCall(c, adminapi.OpCertExport, ref, &ex); err != nil {
						return err
					}
					if err := writeOut(c, ex.PEM); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, ex)
					}
					if out := c.String("out"); out != "" {
						fmt.Fprintf(c.App.Writer, "wrote %d certificates to %s\n", len(ex.Certs), out)
					}
					return nil
				},
			},
		},
	}
}

// certStatus says when a certificate expires, loudly when soon or past.
func certStatus(ct adminapi.Cert) string {
	switch {
	case ct.Expired:
		return "EXPIRED"
	case ct.ExpiresSoon:
		return fmt.Sprintf("expires in %d days", int(time.Until(ct.NotAfter).Hours()/24))
	}
	return "valid"
}

func printCerts(w io.Writer, certs []adminapi.Cert) {
	if len(certs) == 0 {
		fmt.Fprintln(w, "no certificates")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UUID\tLABEL\tCATEGORY\tSUBJECT\tNOT AFTER\tSTATUS\tKEY")
	for _, ct := range certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ct.UUID, printable(orDash(ct.Label)), ct.Category, printable(ct.Subject),
			ct.NotAfter.Format(time.RFC3339), certStatus(ct), printable(orDash(ct.KeyLabel)))
	}
	tw.Flush()
}

func printCert(w io.Writer, ct adminapi.Cert) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "uuid:\t%s\n", ct.UUID)
	fmt.Fprintf(tw, "label:\t%s\n", printable(ct.Label))
	fmt.Fprintf(tw, "id:\t%s\n", ct.ID)
	fmt.Fprintf(tw, "category:\t%s\n", ct.Category)
	fmt.Fprintf(tw, "subject:\t%s\n", printable(ct.Subject))
	fmt.Fprintf(tw, "issuer:\t%s\n", printable(ct.Issuer))
	fmt.Fprintf(tw, "serial:\t%s\n", ct.Serial)
	fmt.Fprintf(tw, "not before:\t%s\n", ct.NotBefore.Format(time.RFC3339))
	fmt.Fprintf(tw, "not after:\t%s\n", ct.NotAfter.Format(time.RFC3339))
	if len(ct.SANs) > 0 {
		fmt.Fprintf(tw, "names:\t%s\n", printable(strings.Join(ct.SANs, ", ")))
	}
	fmt.Fprintf(tw, "sha256:\t%s\n", ct.SHA256)
	fmt.Fprintf(tw, "sha1:\t%s\n", ct.SHA1)
	if ct.Key != "" {
		fmt.Fprintf(tw, "key:\t%q (%s)\n", ct.KeyLabel, ct.Key)
	} else {
		fmt.Fprintf(tw, "key:\tnone in this token\n")
	}
	tw.Flush()
	switch {
	case ct.Expired:
		fmt.Fprintf(w, "WARNING: the certificate EXPIRED on %s\n", ct.NotAfter.Format(time.RFC3339))
	case ct.ExpiresSoon:
		fmt.Fprintf(w, "WARNING: the certificate expires in %d days, on %s\n", int(time.Until(ct.NotAfter).Hours()/24), ct.NotAfter.Format(time.RFC3339))
	}
	fmt.Fprint(w, ct.PEM)
}
