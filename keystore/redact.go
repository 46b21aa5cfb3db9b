package keystore

import "regexp"

// Redacted is what stands for a password RedactDB takes out.
const Redacted = "xxxxx"

var (
	// userinfoPassword is the password of a URL's userinfo
	// (scheme://user:PASSWORD@host, or //user:PASSWORD@host with no
	// scheme, as sqlite://... would be), wherever it stands in a text.
	userinfoPassword = regexp.MustCompile(`((?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^/:@\s"'` + "`" + `]*:)[^@\s/"'` + "`" + `]*@`)
	// secretParam is the value of a parameter that holds a password: a
	// URL's query (?password=, &sslpassword=, _auth_pass=) or a libpq
	// keyword string's (password=..., quoted or not; a quote never closed
	// runs to the end, as libpq would read it, spaces and all).
	secretParam = regexp.MustCompile(`(?i)((?:^|[?&;\s"'(])[a-z0-9_]*(?:pass|pwd|secret)[a-z0-9_]*\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|[^&;\s"'` + "`" + `)]*)`)
)

// RedactDB is a --db value, a --server address, or any text that may
// quote one (an error message), fit to print: the password of a URL's
// userinfo and the value of every parameter that holds a password are
// replaced by Redacted, whatever the engine or scheme, so that a SQLite
// path or URI, a URL hsmemu does not take and a remote address are
// redacted as a PostgreSQL connection string is. The rest is kept: it is
// what the reader needs to see which database was meant.
func RedactDB(s string) string {
	s = userinfoPassword.ReplaceAllString(s, "${1}"+Redacted+"@")
	return secretParam.ReplaceAllString(s, "${1}"+Redacted)
}
