package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "what the running daemon holds: its TPM, its domain, its tokens",
		Description: `Examples:
   hsmemu status
   hsmemu status --json`,
		Flags: adminFlags(),
		Action: func(c *cli.Context) error {
			var st adminapi.Status
			if err := adminCall(c, adminapi.OpStatus, nil, &st); err != nil {
				return err
			}
			// The daemon redacts it; one older than that may not have.
			st.Keystore.Location = keystore.RedactDB(st.Keystore.Location)
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			w := c.App.Writer
			fmt.Fprintf(w, "hsmemu %s (commit %s), up %s (since %s)\n", st.Version, orUnknown(st.Commit), (time.Duration(st.UptimeSec) * time.Second).String(), st.Started.UTC().Format(time.RFC3339))
			if st.Version != Version || st.Commit != Commit {
				fmt.Fprintf(w, "this command: hsmemu %s (commit %s)\n", Version, orUnknown(Commit))
			}
			tpm := st.TPM.Kind
			if st.TPM.Path != "" {
				tpm += " " + st.TPM.Path
			}
			fmt.Fprintf(w, "TPM:       %s, manufacturer %s", tpm, st.TPM.Manufacturer)
			if st.TPM.Firmware != "" {
				fmt.Fprintf(w, ", firmware %s", st.TPM.Firmware)
			}
			if st.TPM.Reconnects > 0 {
				fmt.Fprintf(w, ", lost and reconnected %d times", st.TPM.Reconnects)
			}
			fmt.Fprintln(w)
			if !st.TPM.Available {
				since := ""
				if st.TPM.DownSince != nil {
					since = " since " + st.TPM.DownSince.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "           UNAVAILABLE%s: %s\n", since, st.TPM.Error)
				fmt.Fprintln(w, "           keys in use go on; PIN checks not in the PIN cache, and new tokens, fail until it answers")
			}
			if da := st.TPM.DA; da != nil {
				fmt.Fprintf(w, "TPM DA:    %d of %d wrong PINs counted, one forgiven every %s", da.Counter, da.MaxTries, time.Duration(da.RecoverySec)*time.Second)
				switch {
				case da.RecoverySec == 0:
					fmt.Fprint(w, "; dictionary-attack protection is OFF")
				case da.InLockout:
					fmt.Fprintf(w, "; IN LOCKOUT: every PIN check waits, up to %s", time.Duration(da.LockoutLeftSec)*time.Second)
				}
				if da.LockoutAuthSet {
					fmt.Fprintln(w, "; lockout authorisation set")
				} else {
					fmt.Fprintln(w, "; lockout authorisation NOT set: anyone with root can reset the counter")
				}
			}
			pins := fmt.Sprintf("counted by the TPM; %d records bound", st.PINs.BoundRecords)
			if !st.PINs.Recoverable {
				pins = fmt.Sprintf("counted by the TPM, without recovery copies; %d records bound", st.PINs.BoundRecords)
			}
			if st.PINs.UnboundRecords > 0 {
				pins += fmt.Sprintf(", %d not yet (rewritten at their role's next login)", st.PINs.UnboundRecords)
			}
			if !st.PINs.Bound {
				pins = "NOT counted by the TPM: " + st.PINs.Why
			}
			fmt.Fprintf(w, "PINs:      %s\n", pins)
			fp := st.Domain
			if len(fp) > 8 {
				fp = fp[:8]
			}
			escrow := "not escrowed: the keys die with this TPM"
			if st.Escrowed {
				escrow = "escrowed to custodians"
			}
			fmt.Fprintf(w, "root:      fingerprint %x (domain %x), %s\n", fp, st.Domain, escrow)
			pending := ""
			if st.RotationPending {
				pending = ", a rotation under way (`hsmemu rotate master --resume` finishes it)"
			}
			if st.NodeMasterGeneration != 0 && st.NodeMasterGeneration != st.MasterGeneration {
				pending += fmt.Sprintf("; this node still holds generation %d", st.NodeMasterGeneration)
			}
			fmt.Fprintf(w, "master:    generation %d%s\n", st.MasterGeneration, pending)
			fmt.Fprintf(w, "clients:   %d applications, %d sessions\n", st.Apps, st.Sessions)
			switch st.Keystore.Engine {
			case "postgres":
				fmt.Fprintf(w, "keystore:  PostgreSQL %s\n", st.Keystore.Location)
			case "sqlite":
				fmt.Fprintf(w, "keystore:  SQLite %s\n", st.Keystore.Location)
			}
			fmt.Fprintf(w, "audit log: %d records\n", st.Audit.Records)
			if an := st.Anchor; an != nil {
				fmt.Fprintf(w, "anchor:    TPM NV counter 0x%08x at %d, %d of %d row changes not anchored yet\n", an.NVIndex, an.Counter, an.Unanchored, an.Generation)
			} else {
				fmt.Fprintln(w, "anchor:    none yet: a rolled-back keystore would not be noticed")
			}
			printNodes(w, st.Nodes)
			if st.TamperDetected > 0 {
				fmt.Fprintf(w, "integrity: %d failures detected; the audit log's tamper.detected records name them\n", st.TamperDetected)
			} else {
				fmt.Fprintln(w, "integrity: no failures detected")
			}
			fmt.Fprintln(w)
			printTokens(w, st.Tokens)
			return nil
		},
	}
}

// printNodes lists the domain's nodes, this one marked.
func printNodes(w io.Writer, nodes []adminapi.Node) {
	for i, n := range nodes {
		head := "nodes:    "
		if i > 0 {
			head = "          "
		}
		this := ""
		if n.This {
			this = " (this node)"
		}
		if n.Tampered != "" {
			fmt.Fprintf(w, "%s %d TAMPERED (%s): down%s\n", head, n.ID, n.Tampered, this)
			continue
		}
		fmt.Fprintf(w, "%s %d TPM %s, joined %s, last seen %s%s\n", head, n.ID, n.TPM,
			n.Joined.UTC().Format(time.RFC3339), n.LastSeen.UTC().Format(time.RFC3339), this)
	}
}
