// Command hsmemu is the hsmemu daemon and its administrator's tool.
package main

import (
	"os"

	"hsmemu/bench"
	"hsmemu/cli"
)

func main() {
	// The same binary is the far end of `hsmemu bench hotpath`'s socket
	// round trip; this returns at once unless started as that.
	bench.MaybeServeEcho()
	os.Exit(cli.Main(os.Args))
}
