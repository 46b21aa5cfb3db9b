// Command p11gen writes the C side of hsmemu's PKCS#11 module from the one
// call table, hsmemu/cryptoki/calls: a stub per forwarded call with its
// exact PKCS#11 prototype, the 2.40, 3.0 and 3.2 function lists, the mechanism
// parameter serialisers, the structure decoders and the attribute kinds;
// and, for the module's C tests, the argument checks of every stub.
//
// The stubs' runtime (connections, encoding primitives, state) is written
// by hand in cryptoki/module; p11gen writes only what the table decides, so
// the module and the daemon's codec (cryptoki/wire) cannot drift apart.
//
// Usage:
//
//	p11gen -o build/p11
//
// The files are rewritten only when their content changes, so make's
// timestamps stay meaningful. The output is deterministic.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "p11gen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("p11gen", flag.ContinueOnError)
	out := fs.String("o", "build/p11", "directory to write the generated C into")
	if err := fs.Parse(args); err != nil {
		return err
	}
	files, err := Generate()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := writeIfChanged(filepath.Join(*out, name), files[name]); err != nil {
			return err
		}
	}
	return nil
}

// writeIfChanged replaces path with data, atomically, unless it already
// holds exactly data.
func writeIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".p11gen-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
