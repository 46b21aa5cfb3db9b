package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
)

// printRecordTable prints audit records as an aligned table: who acted in
// columns of their own, the request id that ties a record to the daemon's
// log lines, and the detail with its numbers decoded (key_type=AES, not
// 0x1f).
func printRecordTable(w io.Writer, recs []adminapi.AuditRecord) {
	if len(recs) == 0 {
		fmt.Fprintln(w, "no records")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tEVENT\tTOKEN\tROLE\tUID\tPID\tREQUEST\tDETAIL")
	for _, r := range recs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Seq, r.Time.UTC().Format(time.RFC3339), printable(r.Event),
			printable(orDash(r.Actor.Token)), printable(orDash(r.Actor.Role)), printable(actorUser(r.Actor)), r.Actor.PID,
			printable(orDash(r.Detail["request_id"])), detailString(r.Detail))
	}
	tw.Flush()
}

// printable is s, quoted when it holds a character that does not print
// (a newline, a tab, an escape sequence): labels and names in records and
// listings are the applications' to choose, and printed raw they could
// forge lines of the listing or drive the administrator's terminal.
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// detailString is a record's detail as key=value pairs, sorted, values
// decoded, quoted only where they hold a space or a quote; the request id
// has its own column.
func detailString(d map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(d) {
		if k == "request_id" {
			continue
		}
		v := decodeDetail(k, d[k])
		if v == "" || strings.ContainsAny(v, " \t\"=") || !strconv.CanBackquote(v) {
			v = strconv.Quote(v)
		}
		parts = append(parts, k+"="+v)
	}
	return orDash(strings.Join(parts, " "))
}

// decodeDetail names the numbers the daemon records in hex: key types and
// mechanisms, by their PKCS#11 names less the prefix.
func decodeDetail(key, v string) string {
	var name func(uint64) string
	var prefix string
	switch key {
	case "key_type":
		name, prefix = ck.KeyTypeName, "CKK_"
	case "mechanism", "key_gen_mechanism":
		name, prefix = ck.MechanismName, "CKM_"
	default:
		return v
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 64)
	if err != nil || !strings.HasPrefix(v, "0x") {
		return v
	}
	return strings.TrimPrefix(name(n), prefix)
}

// actorUser is the UID column: a remote client's certificate identity,
// else its uid.
func actorUser(a adminapi.AuditActor) string {
	if a.Remote != "" {
		return a.Remote
	}
	return fmt.Sprint(a.UID)
}
