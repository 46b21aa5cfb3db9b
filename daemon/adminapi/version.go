package adminapi

import "runtime/debug"

// The build's version and commit, stamped by the Makefile:
//
//	go build -ldflags "-X hsmemu/daemon/adminapi.version=v1.2.0 -X hsmemu/daemon/adminapi.commit=0123abcd..."
//
// They live here because both ends of the admin protocol report them:
// `hsmemu version` the command's, `hsmemu status` the daemon's.
var (
	version = ""
	commit  = ""
)

// Build is this binary's version and commit. Without the Makefile's
// stamp, the version is "dev" and the commit is Go's own record of the
// checkout it was built in (go build -buildvcs), when it has one; a
// build from a tree with uncommitted changes ends in "-dirty".
func Build() (ver, com string) {
	ver, com = version, commit
	if ver == "" {
		ver = "dev"
	}
	if com == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			var rev, dirty string
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					rev = s.Value
				case "vcs.modified":
					if s.Value == "true" {
						dirty = "-dirty"
					}
				}
			}
			if rev != "" {
				com = rev + dirty
			}
		}
	}
	return ver, com
}
