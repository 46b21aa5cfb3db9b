package remote

import (
	"crypto/x509"
	"fmt"
	"strings"
)

// Identities names the client a verified certificate stands for, most
// specific first: each URI SAN ("uri:spiffe://example.org/app"), then the
// subject's common name ("cn:app1"). The policy takes the first it has an
// entry for; a certificate with neither has no identity (nil).
func Identities(cert *x509.Certificate) []string {
	var ids []string
	for _, u := range cert.URIs {
		ids = append(ids, "uri:"+u.String())
	}
	if cn := cert.Subject.CommonName; cn != "" {
		ids = append(ids, "cn:"+cn)
	}
	return ids
}

// CheckIdentity says whether s is an identity as the flags and the
// policy file write it: "cn:NAME" or "uri:URI", neither part empty.
func CheckIdentity(s string) error {
	kind, name, ok := strings.Cut(s, ":")
	if !ok || (kind != "cn" && kind != "uri") || name == "" {
		return fmt.Errorf("identity %q: want cn:NAME or uri:URI", s)
	}
	return nil
}
