package cli

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"hsmemu/tpmroot/escrow"
	"hsmemu/tpmroot/tpmtest"
)

// TestMain lets the scripts run hsmemu as a command of this test binary.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"hsmemu": func() {
			if err := New().Run(os.Args); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		},
	})
}

// TestScripts runs testdata/script/*.txtar against the real command, a
// real managed swtpm included.
func TestScripts(t *testing.T) {
	tpmtest.Require(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"genkey":    cmdGenkey,
			"openshare": cmdOpenshare,
		},
	})
}

// genkey NAME writes a custodian's X25519 key pair: NAME.key (PKCS#8) and
// NAME.pem (the public key, as `openssl pkey -pubout` writes it).
func cmdGenkey(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: genkey NAME")
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	ts.Check(err)
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	ts.Check(err)
	pub, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600))
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644))
}

// openshare SHARE KEY opens a share with a custodian's private key and
// prints what it holds, never its value.
func cmdOpenshare(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: openshare SHARE KEY")
	}
	file, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	keyPEM, err := os.ReadFile(ts.MkAbs(args[1]))
	ts.Check(err)
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		ts.Fatalf("%s: no PEM", args[1])
	}
	priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	ts.Check(err)
	sh, err := escrow.DecryptShare(file, priv)
	if neg {
		if err == nil {
			ts.Fatalf("%s opened with %s", args[0], args[1])
		}
		return
	}
	ts.Check(err)
	defer sh.Wipe()
	fmt.Fprintf(ts.Stdout(), "index %d threshold %d domain %x\n", sh.Index, sh.Threshold, sh.DomainID)
}
