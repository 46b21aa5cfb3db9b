package cli

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// bashCompletion asks hsmemu itself (urfave/cli's --generate-bash-completion)
// for the words that may follow what has been typed.
const bashCompletion = `# hsmemu bash completion: eval "$(hsmemu completion bash)"
_hsmemu_complete() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	words=("${COMP_WORDS[@]:0:COMP_CWORD}")
	COMPREPLY=($(compgen -W "$("${words[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o default -F _hsmemu_complete hsmemu
`

const zshCompletion = `# hsmemu zsh completion: eval "$(hsmemu completion zsh)"
autoload -U compinit && compinit
autoload -U bashcompinit && bashcompinit
` + bashCompletion

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:  "completion",
		Usage: "shell completion scripts",
		Description: `Examples:
  eval "$(hsmemu completion bash)"     # in ~/.bashrc
  eval "$(hsmemu completion zsh)"      # in ~/.zshrc`,
		Subcommands: []*cli.Command{
			{Name: "bash", Usage: "bash completion", Description: `Example:
   eval "$(hsmemu completion bash)"`, Action: func(c *cli.Context) error {
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			}},
			{Name: "zsh", Usage: "zsh completion (through bashcompinit)", Description: `Example:
   eval "$(hsmemu completion zsh)"`, Action: func(c *cli.Context) error {
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			}},
		},
	}
}
