// Command hsmemu is the hsmemu daemon and its administrator's tool.
package main

import (
	"fmt"
	"os"

	"hsmemu/cli"
)

func main() {
	if err := run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	return cli.New().Run(args)
}
