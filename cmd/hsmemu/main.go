// Command hsmemu is the hsmemu daemon and its administrator's tool.
package main

import (
	"fmt"
	"os"

	"hsmemu/bench"
	"hsmemu/cli"
)

func main() {
	// The same binary is the far end of `hsmemu bench hotpath`'s socket
	// round trip; this returns at once unless started as that.
	bench.MaybeServeEcho()
	if err := run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	return cli.New().Run(args)
}
