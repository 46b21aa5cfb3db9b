package cli

import (
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon/adminapi"
)

func auditCommand() *cli.Command {
	return &cli.Command{
		Name:  "audit",
		Usage: "the daemon's hash-chained audit log",
		Description: `Every security-relevant event (logins and failed ones, lockouts, token and
key creation and destruction, PIN changes, refused exports, tampering
found, administrator commands) is a record in the keystore, chained to the
one before by an HMAC under a key that only the TPM can derive. No record
holds a secret.`,
		Subcommands: []*cli.Command{
			{
				Name:  "tail",
				Usage: "print the newest records",
				Description: `Example:
   hsmemu audit tail -n 50`,
				ArgsUsage: " ",
				Flags:     adminFlags(&cli.IntFlag{Name: "n", Usage: "how many records", Value: 20}),
				Action: func(c *cli.Context) error {
					n := c.Int("n")
					if n < 1 || n > 1000 {
						return cli.Exit("hsmemu audit tail: -n must be 1 to 1000", exitUsage)
					}
					var recs []adminapi.AuditRecord
					if err := adminCall(c, adminapi.OpAuditTail, adminapi.AuditTail{N: n}, &recs); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, recs)
					}
					printRecordTable(c.App.Writer, recs)
					return nil
				},
			},
			{
				Name:      "show",
				Usage:     "print one record in full",
				ArgsUsage: "SEQ",
				Description: `Example:
   hsmemu audit show 42`,
				Flags: adminFlags(),
				Action: func(c *cli.Context) error {
					seq, err := strconv.ParseInt(c.Args().First(), 10, 64)
					if c.NArg() < 1 || err != nil || seq < 1 { // more are flags (prepare)
						return cli.Exit("hsmemu audit show: give one record number (SEQ, from 1)", exitUsage)
					}
					var recs []adminapi.AuditRecord
					if err := adminCall(c, adminapi.OpAuditRange, adminapi.AuditRange{After: seq - 1, Limit: 1}, &recs); err != nil {
						return err
					}
					if len(recs) == 0 || recs[0].Seq != seq {
						return cli.Exit(fmt.Sprintf("hsmemu audit show: there is no record %d", seq), exitNotFound)
					}
					if c.Bool("json") {
						return printJSON(c.App.Writer, recs[0])
					}
					printRecord(c.App.Writer, recs[0])
					return nil
				},
			},
			{
				Name:  "verify",
				Usage: "walk the chain and report the first edited, deleted or reordered record",
				Description: `The chain shows an edited, a deleted or a moved record by itself. Records
lost from the end (the table rolled back to an earlier state) show only
against a head kept elsewhere: verify prints the head, and --expect-head
checks that a head printed earlier is still in the log.

Examples:
   hsmemu audit verify
   hsmemu audit verify --expect-head 1234:9f2c...`,
				Flags:  adminFlags(&cli.StringFlag{Name: "expect-head", Usage: "SEQ:HASH from an earlier verify, which must still be in the log"}),
				Action: runAuditVerify,
			},
			{
				Name:  "export",
				Usage: "write records as JSON, one per line",
				Description: `Example:
   hsmemu audit export --json --after 1000 > audit.jsonl`,
				Flags: adminFlags(&cli.Int64Flag{Name: "after", Usage: "only records after this sequence number"}),
				Action: func(c *cli.Context) error {
					if c.Int64("after") < 0 {
						return usagef(c, "--after is a record number (0: from the first), not %d", c.Int64("after"))
					}
					cl, err := dialAdmin(c)
					if err != nil {
						return err
					}
					defer cl.Close()
					after := c.Int64("after")
					for {
						var recs []adminapi.AuditRecord
						if err := cl.Call(adminapi.OpAuditRange, adminapi.AuditRange{After: after}, &recs); err != nil {
							return adminExit(c, err)
						}
						if len(recs) == 0 {
							return nil
						}
						for _, r := range recs {
							if err := writeJSONLine(c.App.Writer, r); err != nil {
								return cli.Exit("hsmemu audit export: "+err.Error(), exitError)
							}
						}
						after = recs[len(recs)-1].Seq
					}
				},
			},
		},
	}
}

func runAuditVerify(c *cli.Context) error {
	var expSeq int64
	var expHash []byte
	if h := c.String("expect-head"); h != "" {
		s, x, ok := strings.Cut(h, ":")
		var err1, err2 error
		expSeq, err1 = strconv.ParseInt(s, 10, 64)
		expHash, err2 = hex.DecodeString(x)
		if !ok || err1 != nil || err2 != nil || expSeq < 1 || len(expHash) != 32 {
			return cli.Exit("hsmemu audit verify: --expect-head takes SEQ:HASH as verify printed it", exitUsage)
		}
	}
	cl, err := dialAdmin(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	var rep adminapi.AuditVerify
	if err := cl.Call(adminapi.OpAuditVerify, nil, &rep); err != nil {
		return adminExit(c, err)
	}
	if rep.OK && expHash != nil {
		var recs []adminapi.AuditRecord
		if err := cl.Call(adminapi.OpAuditRange, adminapi.AuditRange{After: expSeq - 1, Limit: 1}, &recs); err != nil {
			return adminExit(c, err)
		}
		if len(recs) == 0 || recs[0].Seq != expSeq || hex.EncodeToString(recs[0].Hash) != hex.EncodeToString(expHash) {
			rep.OK, rep.BadSeq = false, rep.HeadSeq
			rep.Problem = fmt.Sprintf("the head expected, record %d with that hash, is not in the log: records were lost from the end or the log was replaced", expSeq)
		}
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else if rep.OK {
		fmt.Fprintf(c.App.Writer, "audit log intact: %d records\nhead %d:%x\n", rep.Records, rep.HeadSeq, rep.Head)
	} else {
		fmt.Fprintf(c.App.Writer, "audit log BROKEN at record %d: %s\n", rep.BadSeq, rep.Problem)
	}
	if !rep.OK {
		if c.Bool("json") {
			// The JSON error's message is a sentence too, not empty.
			return failf(c, exitTampered, "integrity", "the audit log is BROKEN at record %d: %s", rep.BadSeq, rep.Problem)
		}
		return cli.Exit("", exitTampered) // stdout said why
	}
	return nil
}

// actorString is "uid 1000 pid 42 so@signing".
func actorString(a adminapi.AuditActor) string {
	s := fmt.Sprintf("uid %d pid %d", a.UID, a.PID)
	switch {
	case a.Role != "" && a.Token != "":
		s += " " + a.Role + "@" + a.Token
	case a.Token != "":
		s += " @" + a.Token
	case a.Role != "":
		s += " " + a.Role
	}
	return s
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }

func printRecord(w io.Writer, r adminapi.AuditRecord) {
	fmt.Fprintf(w, "record:    %d\n", r.Seq)
	fmt.Fprintf(w, "time:      %s\n", r.Time.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "event:     %s\n", printable(r.Event))
	fmt.Fprintf(w, "actor:     %s\n", printable(actorString(r.Actor)))
	for _, k := range sortedKeys(r.Detail) {
		fmt.Fprintf(w, "  %s: %s\n", printable(k), printable(decodeDetail(k, r.Detail[k])))
	}
	fmt.Fprintf(w, "prev hash: %x\n", r.PrevHash)
	fmt.Fprintf(w, "hash:      %x\n", r.Hash)
}
