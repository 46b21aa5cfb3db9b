package cli

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"
)

// versionInfo is what `hsmemu version --json` prints.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"` // null when unknown
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print this command's version and the commit it was built from",
		Description: `The version is git describe's at build time (the Makefile stamps it), the
commit the one built; ` + "`hsmemu status`" + ` reports the running daemon's.

Examples:
   hsmemu version
   hsmemu version --json`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"}},
		Action: func(c *cli.Context) error {
			v := versionInfo{Version: Version, Commit: Commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
			if c.Bool("json") {
				return printJSON(c.App.Writer, v)
			}
			fmt.Fprintf(c.App.Writer, "hsmemu %s\ncommit %s\n%s %s\n", v.Version, orUnknown(v.Commit), v.GoVersion, v.Platform)
			return nil
		},
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// manCommand prints hsmemu's manual page, made from these very
// definitions; the Makefile writes it at build time and installs it.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the manual page (roff), made from the commands' own help",
		Hidden: true,
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}
