package daemon

import (
	"context"
	"testing"

	"hsmemu/internal/pgtest"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// nodeDomain is what the tests of several nodes start from: a database
// on a PostgreSQL server of their own, and node A's state provisioned in
// it and open, with three custodians, any two of whom rebuild the master
// key.
type nodeDomain struct {
	srv *pgtest.Server
	dsn string
	a   StateConfig // node A's, without its escrow: opening it again
	stA *State
	esc tpmroot.ProvisionOptions // the custodians, for a rotation's new shares
}

// cheapPINs makes the tests' PIN hashing cheap.
var cheapPINs = keystore.Options{Argon2: keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}}

// newNodeDomain provisions node A; shares are the custodians (of 0, 1
// and 2) whose shares the test joins other nodes with.
func newNodeDomain(t *testing.T, shares ...int) (*nodeDomain, []*escrow.Share) {
	t.Helper()
	tpmtest.Require(t)
	d := &nodeDomain{srv: pgtest.StartT(t)}
	dsn, err := d.srv.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d.dsn = dsn
	custodians, privs := tpmtest.Custodians(t)
	d.a = d.node(t)
	a := d.a
	d.esc = tpmroot.ProvisionOptions{Custodians: custodians, Threshold: 2}
	a.Escrow = d.esc
	if d.stA, err = OpenState(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	var got []*escrow.Share
	for _, i := range shares {
		sh, err := escrow.DecryptShare(d.stA.Shares[i].File, privs[d.stA.Shares[i].Custodian])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, sh)
	}
	return d, got
}

// node is a new node's configuration on the domain's database: a state
// directory and a managed swtpm of its own.
func (d *nodeDomain) node(t *testing.T) StateConfig {
	return StateConfig{Dir: t.TempDir(), DB: d.dsn, TPM: "managed", Store: cheapPINs}
}
