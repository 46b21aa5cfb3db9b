package remote

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestPolicy(t *testing.T) {
	t.Parallel()
	p, err := ParsePolicy([]byte(`{
	  "limits": {"connections": 8},
	  "identities": {
	    "uri:spiffe://example.org/pay": {"tokens": ["pay"], "limits": {"sessions": 10}},
	    "cn:pay-host": {"tokens": ["other"]},
	    "cn:ops": {"tokens": ["*"], "admin": true}
	  }
	}`))
	if err != nil {
		t.Fatal(err)
	}
	// The URI SAN comes before the common name.
	u, _ := url.Parse("spiffe://example.org/pay")
	ids := Identities(&x509.Certificate{Subject: pkix.Name{CommonName: "pay-host"}, URIs: []*url.URL{u}})
	if !slices.Equal(ids, []string{"uri:spiffe://example.org/pay", "cn:pay-host"}) {
		t.Fatalf("identities %v", ids)
	}
	g := p.Lookup(ids)
	if !g.Listed || g.Identity != ids[0] || !slices.Equal(g.Entry.Tokens, []string{"pay"}) || g.Entry.Admin {
		t.Errorf("grant %+v", g)
	}
	if l := g.Entry.Limits; l.Connections != 8 || l.Sessions != 10 || l.BytesInFlight != DefaultLimits.BytesInFlight {
		t.Errorf("limits %+v", l)
	}
	if g := p.Lookup([]string{"cn:nobody"}); g.Listed || g.Identity != "cn:nobody" || len(g.Entry.Tokens) != 0 || g.Entry.Admin {
		t.Errorf("an identity with no entry: %+v", g)
	}
	if g := p.Lookup([]string{"cn:ops"}); !g.Entry.Admin {
		t.Errorf("cn:ops: %+v", g)
	}

	for name, bad := range map[string]string{
		"unknown field":  `{"identities": {"cn:a": {"tokens": ["x"], "admn": true}}}`,
		"bad identity":   `{"identities": {"dns:a": {"tokens": ["x"]}}}`,
		"empty label":    `{"identities": {"cn:a": {"tokens": [""]}}}`,
		"negative limit": `{"limits": {"sessions": -1}, "identities": {}}`,
		"trailing data":  `{"identities": {}} {}`,
		"long label":     `{"identities": {"cn:a": {"tokens": ["` + strings.Repeat("x", 33) + `"]}}}`,
	} {
		if _, err := ParsePolicy([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAllow(t *testing.T) {
	t.Parallel()
	p := &Policy{}
	for _, ok := range []string{"cn:a=x,y", "cn:a=z"} {
		if err := p.Allow(ok, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Allow("uri:spiffe://x/admin", true); err != nil {
		t.Fatal(err)
	}
	if e := p.Identities["cn:a"]; !slices.Equal(e.Tokens, []string{"x", "y", "z"}) || e.Admin {
		t.Errorf("cn:a: %+v", e)
	}
	if e := p.Identities["uri:spiffe://x/admin"]; !e.Admin || len(e.Tokens) != 0 {
		t.Errorf("admin: %+v", e)
	}
	for _, bad := range []string{"a=x", "cn:=x", "cn:a", "cn:a=", "cn:a=x,,y"} {
		if err := p.Allow(bad, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestExamplePolicy: the policy `make install` ships as an example parses.
func TestExamplePolicy(t *testing.T) {
	t.Parallel()
	p, err := LoadPolicy("../../packaging/policy.json")
	if err != nil {
		t.Fatal(err)
	}
	if g := p.Lookup([]string{"cn:hsm-admin"}); !g.Entry.Admin {
		t.Errorf("cn:hsm-admin: %+v", g)
	}
}
