package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/bench"
	"hsmemu/daemon/admin"
	"hsmemu/daemon/adminapi"
)

// Completion: each shell's script calls hsmemu itself with the words typed
// so far and --generate-bash-completion (urfave/cli's convention); hsmemu
// answers with the words that may come next, one a line: subcommands,
// flags, or the values of the flag just typed, asked of the running daemon
// where they live there (token labels; key labels, uuids and ids; secret
// names; certificate labels) and it answers. filesWanted asks the shell
// for file names instead.

const filesWanted = "::files::"

const bashCompletion = `# hsmemu bash completion: eval "$(hsmemu completion bash)"
_hsmemu_complete() {
	local cur out IFS=$'\n'
	cur="${COMP_WORDS[COMP_CWORD]}"
	out="$("${COMP_WORDS[0]}" "${COMP_WORDS[@]:1:COMP_CWORD-1}" --generate-bash-completion 2>/dev/null)"
	if [ "$out" = "` + filesWanted + `" ]; then
		COMPREPLY=($(compgen -f -- "$cur"))
	else
		COMPREPLY=($(compgen -W "$out" -- "$cur"))
	fi
}
complete -o default -o nospace -F _hsmemu_complete hsmemu 2>/dev/null || complete -o default -F _hsmemu_complete hsmemu
`

const zshCompletion = `#compdef hsmemu
# hsmemu zsh completion: eval "$(hsmemu completion zsh)", or save as _hsmemu
# in a directory of $fpath.
_hsmemu() {
	local -a opts
	local out
	out="$(${words[1]} ${(@)words[2,CURRENT-1]} --generate-bash-completion 2>/dev/null)"
	if [[ "$out" == "` + filesWanted + `" ]]; then
		_files
		return
	fi
	opts=("${(@f)out}")
	compadd -a opts
}
if [[ "$funcstack[1]" == "_hsmemu" ]]; then
	_hsmemu "$@"
else
	(( $+functions[compdef] )) || { autoload -U compinit && compinit; }
	compdef _hsmemu hsmemu
fi
`

const fishCompletion = `# hsmemu fish completion: hsmemu completion fish | source, or save it as
# ~/.config/fish/completions/hsmemu.fish
function __hsmemu_complete
	set -l words (commandline -opc)
	set -l out ($words[1] $words[2..-1] --generate-bash-completion 2>/dev/null)
	if test "$out" = "` + filesWanted + `"
		__fish_complete_path (commandline -ct)
	else
		printf '%s\n' $out
	end
end
complete -c hsmemu -f -a '(__hsmemu_complete)'
`

func completionCommand() *cli.Command {
	script := func(s string) cli.ActionFunc {
		return func(c *cli.Context) error {
			_, err := fmt.Fprint(c.App.Writer, s)
			return err
		}
	}
	return &cli.Command{
		Name:  "completion",
		Usage: "shell completion scripts",
		Description: `Commands, flags and flag values complete; token labels come from the
running daemon, and key labels, uuids and ids, secret names and
certificate labels too when the user PIN is in HSMEMU_USER_PIN or a
--user-pin-file given before (completion never asks for a PIN).`,
		Subcommands: []*cli.Command{
			{Name: "bash", Usage: "bash completion", Action: script(bashCompletion), Description: `Example:
   eval "$(hsmemu completion bash)"`},
			{Name: "zsh", Usage: "zsh completion", Action: script(zshCompletion), Description: `Examples:
   eval "$(hsmemu completion zsh)"
   hsmemu completion zsh > "${fpath[1]}/_hsmemu"`},
			{Name: "fish", Usage: "fish completion", Action: script(fishCompletion), Description: `Examples:
   hsmemu completion fish | source
   hsmemu completion fish > ~/.config/fish/completions/hsmemu.fish`},
		},
	}
}

// completer answers --generate-bash-completion for a command.
func completer(st *runState, cmd *cli.Command, flags []cli.Flag) cli.BashCompleteFunc {
	return func(c *cli.Context) {
		w := c.App.Writer
		words := st.args
		if n := len(words); n > 0 && words[n-1] == "--generate-bash-completion" {
			words = words[:n-1]
		}
		if len(words) > 1 {
			if f := valueFlag(flags, words[len(words)-1]); f != nil {
				for _, v := range flagValues(c, st, cmd, f.Names()[0], words) {
					fmt.Fprintln(w, v)
				}
				return
			}
		}
		if cmd != nil && len(visibleNames(cmd.Subcommands)) > 0 {
			for _, name := range visibleNames(cmd.Subcommands) {
				fmt.Fprintln(w, name)
			}
			return
		}
		if cmd == nil {
			for _, name := range visibleNames(c.App.Commands) {
				fmt.Fprintln(w, name)
			}
		}
		for _, f := range flags {
			if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
				continue
			}
			if f.Names()[0] == "help" {
				continue
			}
			fmt.Fprintln(w, "--"+f.Names()[0])
		}
	}
}

// valueFlag is the flag word names when the flag takes a value.
func valueFlag(flags []cli.Flag, word string) cli.Flag {
	name, ok := strings.CutPrefix(word, "-")
	if !ok || strings.Contains(name, "=") {
		return nil
	}
	name = strings.TrimPrefix(name, "-")
	for _, f := range flags {
		if !containsString(f.Names(), name) {
			continue
		}
		if _, isBool := f.(*cli.BoolFlag); isBool {
			return nil
		}
		return f
	}
	return nil
}

// fileFlags are the flags whose values are files.
var fileFlags = map[string]bool{"in": true, "out": true, "custodian": true, "from": true, "share": true, "shares-dir": true,
	"chart": true, "state-dir": true, "socket": true, "tpm-state-key": true, "scratch-dir": true, "pprof": true, "module": true}

// flagValues are the values a flag may take, as far as hsmemu knows them.
func flagValues(c *cli.Context, st *runState, cmd *cli.Command, flag string, words []string) []string {
	if fileFlags[flag] || strings.HasSuffix(flag, "-file") {
		return []string{filesWanted}
	}
	path := ""
	if cmd != nil {
		path = cmd.FullName()
	}
	switch flag {
	case "tier", "default-tier":
		return []string{"standard", "premium"}
	case "role":
		return []string{"user", "so"}
	case "protection":
		return []string{"hsm", "software"}
	case "usage":
		return []string{"encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive", "encapsulate", "decapsulate"}
	case "log-level":
		return []string{"debug", "info", "warn", "error"}
	case "log-format":
		return []string{"text", "json"}
	case "lock-memory":
		return []string{"auto", "require", "off"}
	case "tpm":
		return []string{"managed", "/dev/tpmrm0", "swtpm:unix:"}
	case "op":
		return bench.OpNames()
	case "expires", "retention":
		return []string{"30d", "90d", "365d"}
	case "type":
		if strings.HasSuffix(path, "import") {
			return []string{"aes", "generic"}
		}
		return admin.KeyTypeNames()
	case "token":
		if strings.HasPrefix(path, "bench") {
			return nil
		}
		var ts []adminapi.Token
		if completionCall(c, words, adminapi.OpTokenList, nil, &ts) != nil {
			return nil
		}
		var out []string
		for _, t := range ts {
			out = append(out, t.Label)
		}
		return out
	case "key", "uuid", "id":
		if cmd == nil || !hasFlag(cmd.Flags, "uuid") && !strings.HasSuffix(path, "cert request") {
			return nil // a new key's label
		}
		return keyValues(c, words, flag, strings.HasSuffix(path, "recover") || strings.HasSuffix(path, "purge"))
	case "name":
		var ss []adminapi.Secret
		if pin := completionPIN(c, words); pin != nil && completionCall(c, words, adminapi.OpSecretList,
			adminapi.SecretList{Token: wordAfter(words, "token"), UserPIN: pin, Deleted: strings.HasSuffix(path, "recover") || strings.HasSuffix(path, "purge")}, &ss) == nil {
			var out []string
			for _, s := range ss {
				out = append(out, s.Name)
			}
			return out
		}
	case "cert":
		var cs []adminapi.Cert
		if pin := completionPIN(c, words); pin != nil && completionCall(c, words, adminapi.OpCertList,
			adminapi.CertList{Token: wordAfter(words, "token"), UserPIN: pin}, &cs) == nil {
			var out []string
			for _, ct := range cs {
				out = append(out, ct.Label)
			}
			return out
		}
	}
	return nil
}

// keyValues are the labels, uuids or ids of the token's keys.
func keyValues(c *cli.Context, words []string, flag string, deleted bool) []string {
	pin := completionPIN(c, words)
	if pin == nil {
		return nil
	}
	var keys []adminapi.Key
	if completionCall(c, words, adminapi.OpKeyList, adminapi.KeyList{Token: wordAfter(words, "token"), UserPIN: pin, Deleted: deleted}, &keys) != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		v := map[string]string{"key": k.Label, "uuid": k.UUID, "id": k.ID}[flag]
		if v != "" && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// wordAfter is the value given to a flag among the words, or "".
func wordAfter(words []string, flag string) string {
	for i, w := range words {
		if w == "--"+flag || w == "-"+flag {
			if i+1 < len(words) {
				return words[i+1]
			}
		}
		if v, ok := strings.CutPrefix(w, "--"+flag+"="); ok {
			return v
		}
	}
	return ""
}

// completionPIN is the user PIN from a --user-pin-file on the line or
// HSMEMU_USER_PIN; never a prompt.
func completionPIN(c *cli.Context, words []string) []byte {
	if f := wordAfter(words, "user-pin-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil
		}
		line, _, _ := strings.Cut(string(b), "\n")
		clear(b)
		if line = strings.TrimSuffix(line, "\r"); line == "" {
			return nil // sent, an empty PIN would count as a wrong one at every Tab
		}
		return []byte(line)
	}
	if v := os.Getenv("HSMEMU_USER_PIN"); v != "" {
		return []byte(v)
	}
	return nil
}

// completionCall makes an admin call for completion: the socket as the
// words (or the environment, or the default) give it, and soon given up.
func completionCall(c *cli.Context, words []string, op string, args, result any) error {
	sock := wordAfter(words, "socket")
	if sock == "" {
		sock = os.Getenv("HSMEMU_SOCKET")
	}
	if sock == "" {
		dir := wordAfter(words, "state-dir")
		if dir == "" {
			dir = os.Getenv("HSMEMU_STATE_DIR")
		}
		if dir == "" {
			dir = defaultStateDir()
		}
		sock = dir + "/hsmemu.sock"
	}
	done := make(chan error, 1)
	go func() {
		cl, err := adminapi.Dial(sock)
		if err != nil {
			done <- err
			return
		}
		defer cl.Close()
		done <- cl.Call(op, args, result)
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Second):
		return fmt.Errorf("the daemon did not answer in time")
	}
}
