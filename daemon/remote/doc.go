// Package remote is what the daemon knows of clients on other hosts
// (docs/remote.md): the certificates of its TLS listener, reloaded on
// SIGHUP; a client certificate's identities ("cn:NAME", "uri:URI"); and
// the policy that maps an identity to the tokens it sees, whether it may
// administer the daemon, and how much of the daemon it may hold.
//
// It imports nothing of the daemon: the daemon's server asks it who a
// client is and what it may do, and enforces the answer.
package remote
