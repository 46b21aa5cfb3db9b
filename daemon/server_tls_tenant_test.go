package daemon

import (
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/remote/remotetest"
)

// TestTLSReinitStaysInScope: a tenant that holds its token's SO PIN
// re-initialises it only under a label it sees; a label of another
// tenant's would plant the token, and whatever its SO set up in it, in
// that tenant's slot list.
func TestTLSReinitStaysInScope(t *testing.T) {
	t.Parallel()
	pki := remotetest.New(t)
	p := testPolicy(t)
	if err := p.Allow("cn:app2=hr", false); err != nil {
		t.Fatal(err)
	}
	d := startTLSDaemon(t, pki, p, nil)
	pay := d.dial(t).NewToken("pay")

	app1, app2 := d.dialTLS(t, pki, pki.App), d.dialTLS(t, pki, pki.App2)
	app1.Must(ck.CKR_ARGUMENTS_BAD, "C_InitToken", U(pay), S(SOPIN), Label32("hr"))
	if got := app2.Slots(); len(got) != 0 {
		t.Fatalf("cn:app2 sees slots %v: another tenant's token took its label", got)
	}
	if got := app1.Slots(); !slices.Equal(got, []uint64{pay}) {
		t.Fatalf("cn:app1 sees slots %v, want %v", got, []uint64{pay})
	}
	// A label it sees is its to give.
	app1.Must(ck.CKR_OK, "C_InitToken", U(pay), S(SOPIN), Label32("ops"))
	if got := app1.Slots(); !slices.Equal(got, []uint64{pay}) {
		t.Fatalf("cn:app1 sees slots %v after relabelling its token", got)
	}
}
