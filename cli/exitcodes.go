package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// exitDoc is an exit code a command gives, beyond 0 (done), 1 (failed)
// and 2 (usage), which every command may give, and when.
type exitDoc struct {
	code int
	when string
}

// exitCodes are each command's exit codes beyond 0, 1 and 2, by its path
// under hsmemu: what its --help lists (prepare renders them), and what
// TestExitCodes asserts, one case at least for each.
var exitCodes = map[string][]exitDoc{
	"serve":             {{6, "the keystore is older than its anchor, or failed verification"}},
	"init":              {{3, "the state directory already holds a domain, or a daemon runs on it"}},
	"status":            nil,
	"version":           nil,
	"token create":      {{3, "a token has the label"}},
	"token list":        nil,
	"token show":        {{4, "no such token"}},
	"token set":         {{3, "refused by the policy rules"}, {4, "no such token"}, {5, "the SO PIN is wrong or locked"}},
	"token delete":      {{3, "the token is in use, or under purge protection"}, {4, "no such token"}, {5, "the SO PIN is wrong or locked"}},
	"token logout":      {{4, "no such token"}, {5, "the SO PIN is wrong or locked"}},
	"key generate":      {{3, "a live key has the label"}, {4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"key import":        {{3, "a live key has the label"}, {4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"key list":          {{4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"key show":          {{3, "the name matches several keys, or the key is deleted"}, {4, "no such token or key"}, {5, "the user PIN is wrong or locked"}},
	"key export-public": {{3, "the name matches several keys, or the key is deleted"}, {4, "no such token or key"}, {5, "the user PIN is wrong or locked"}},
	"key delete":        {{3, "the name matches several keys, the key is deleted already, or not destroyable"}, {4, "no such token or key"}, {5, "the user PIN is wrong or locked"}},
	"key recover":       {{3, "the name matches several deleted keys"}, {4, "no such token or deleted key"}, {5, "the user PIN is wrong or locked"}},
	"key backup":        {{3, "the name matches several keys, or the key is deleted"}, {4, "no such token or key"}, {5, "the user PIN is wrong or locked"}},
	"key restore":       {{3, "the key exists (live or deleted), or the backup is of another domain"}, {4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"key purge":         {{3, "purge protection, or the name matches several deleted keys"}, {4, "no such token or deleted key"}, {5, "the SO PIN is wrong or locked"}},
	"cert import":       {{3, "the token holds the certificate or key already, or a live key has the label"}, {4, "no such token, or no key for the certificate"}, {5, "the user PIN is wrong or locked"}},
	"cert request":      {{3, "the name matches several keys, or the key is deleted"}, {4, "no such token or key"}, {5, "the user PIN is wrong or locked"}},
	"cert list":         {{4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"cert show":         {{3, "the name matches several certificates"}, {4, "no such token or certificate"}, {5, "the user PIN is wrong or locked"}},
	"cert export":       {{3, "the name matches several certificates"}, {4, "no such token or certificate"}, {5, "the user PIN is wrong or locked"}},
	"secret set":        {{3, "the secret is deleted (recover or purge it first)"}, {4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"secret get":        {{3, "the version is disabled or expired, or the secret is deleted"}, {4, "no such token, secret or version"}, {5, "the user PIN is wrong or locked"}},
	"secret list":       {{4, "no such token"}, {5, "the user PIN is wrong or locked"}},
	"secret versions":   {{3, "the secret is deleted"}, {4, "no such token or secret"}, {5, "the user PIN is wrong or locked"}},
	"secret delete":     {{3, "the secret is deleted already"}, {4, "no such token or secret"}, {5, "the user PIN is wrong or locked"}},
	"secret recover":    {{3, "a live secret has the name"}, {4, "no such token or deleted secret"}, {5, "the user PIN is wrong or locked"}},
	"secret purge":      {{3, "purge protection"}, {4, "no such token or deleted secret"}, {5, "the SO PIN is wrong or locked"}},
	"pin change":        {{4, "no such token"}, {5, "the PIN is wrong or locked"}},
	"pin reset":         {{4, "no such token"}, {5, "the SO PIN is wrong or locked"}},
	"pin unlock":        {{4, "no such token"}, {5, "the SO PIN is wrong or locked"}},
	"rotate master":     {{3, "a rotation is under way (finish it with --resume) or cannot be aborted"}, {4, "no rotation to resume or abort"}},
	"rotate token":      {{4, "no such token"}, {5, "a PIN is wrong or locked"}},
	"audit tail":        nil,
	"audit show":        {{4, "no such record"}},
	"audit verify":      {{6, "the log failed verification"}},
	"audit export":      nil,
	"domain recover":    {{3, "the new state directory already holds a keystore; with --db, this TPM is a node already, or the domain's nodes look alive (without --replace-live-nodes)"}},
	"domain join":       nil,
	"domain leave":      {{3, "refused: the node the daemon runs on, or the domain's last"}, {4, "no such node"}},
	"backup":            nil,
	"restore":           {{3, "the daemon is running (with --db, any daemon holds the database), or the backup is of another domain"}, {6, "a token row in the backup failed its integrity check (the state directory is as it was)"}},
	"tpm encrypt-state": {{3, "the daemon is running"}},
	"bench":             nil,
	"bench hotpath":     nil,
	"completion bash":   nil,
	"completion zsh":    nil,
	"completion fish":   nil,
}

// exitCodesHelp is the paragraph a command's --help ends with.
func exitCodesHelp(path []string, cmd *cli.Command) string {
	name := strings.Join(path[1:], " ")
	one := "1 failed"
	if hasFlag(cmd.Flags, "socket") && cmd.Name != "restore" && name != "tpm encrypt-state" {
		one = "1 the daemon failed or is not running"
	}
	parts := []string{"0 done", one, "2 usage"}
	if len(cmd.Subcommands) > 0 && cmd.Action == nil {
		// A command that holds others: the codes of any of them.
		codes := map[int]bool{}
		for _, sub := range cmd.Subcommands {
			for _, d := range exitCodes[name+" "+sub.Name] {
				codes[d.code] = true
			}
		}
		for _, code := range []int{3, 4, 5, 6} {
			if codes[code] {
				parts = append(parts, fmt.Sprintf("%d %s", code, exitCodeWords[code]))
			}
		}
		return "Exit codes: " + strings.Join(parts, ", ") + "; each command's --help says when."
	}
	docs, ok := exitCodes[name]
	if !ok {
		return ""
	}
	for _, d := range docs {
		parts = append(parts, fmt.Sprintf("%d %s", d.code, d.when))
	}
	s := "Exit codes: " + strings.Join(parts, "; ") + "."
	if hasFlag(cmd.Flags, "socket") && !slices.ContainsFunc(docs, func(d exitDoc) bool { return d.code == 6 }) && name != "status" && name != "version" {
		s += " Like every command on the daemon, 6 when what it touches failed its integrity check."
	}
	return s
}

// exitCodeWords say what each exit code means, in general.
var exitCodeWords = map[int]string{3: "conflict", 4: "not found", 5: "a PIN is wrong or locked", 6: "verification failed"}

// withExitCodes ends a command's description with its exit codes.
func withExitCodes(path []string, cmd *cli.Command) {
	p := exitCodesHelp(path, cmd)
	if p == "" {
		return
	}
	if d := strings.TrimRight(cmd.Description, "\n"); d != "" {
		cmd.Description = d + "\n\n" + wrap(p, 76)
	} else {
		cmd.Description = wrap(p, 76)
	}
}

// wrap breaks a paragraph into lines of at most width.
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for i, w := range strings.Fields(s) {
		if i > 0 && n+1+len(w) > width {
			b.WriteByte('\n')
			n = 0
		} else if i > 0 {
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}
