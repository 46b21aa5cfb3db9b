package escrow

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// testRSAKey is generated once per test binary: RSA-2048 generation takes a
// noticeable fraction of a second, more under the race detector.
var testRSAKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
	return rsa.GenerateKey(rand.Reader, 2048)
})

// A keyPair is a custodian's public key and the private key that opens
// shares encrypted to it.
type keyPair struct {
	custodian Custodian
	priv      crypto.PrivateKey
}

func rsaPair(t testing.TB, name string) keyPair {
	t.Helper()
	k, err := testRSAKey()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{custodian: Custodian{Name: name, Key: &k.PublicKey}, priv: k}
}

func ecdhPair(t testing.TB, name string, curve ecdh.Curve) keyPair {
	t.Helper()
	k, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{custodian: Custodian{Name: name, Key: k.PublicKey()}, priv: k}
}

// ecdsaPair returns a custodian whose private key is an *ecdsa.PrivateKey, as
// openssl writes for a P-256 key, to exercise the conversion to ECDH.
func ecdsaPair(t testing.TB, name string) keyPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicKey.ECDH()
	if err != nil {
		t.Fatal(err)
	}
	return keyPair{custodian: Custodian{Name: name, Key: pub}, priv: k}
}

// opaqueECDH hides an *ecdh.PrivateKey behind the ecdh.KeyExchanger
// interface, the way a hardware key would present itself.
type opaqueECDH struct{ ecdh.KeyExchanger }

// opaqueRSA hides an *rsa.PrivateKey behind crypto.Decrypter.
type opaqueRSA struct{ crypto.Decrypter }

func custodians(pairs []keyPair) []Custodian {
	cs := make([]Custodian, len(pairs))
	for i, p := range pairs {
		cs[i] = p.custodian
	}
	return cs
}

func testSecret(t testing.TB) []byte {
	t.Helper()
	s := make([]byte, secretLen)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtureKey loads one of the testdata private keys, written by
// `openssl genpkey`. They are test keys and protect nothing.
func fixtureKey(t testing.TB, name string) crypto.PrivateKey {
	t.Helper()
	block, _ := pem.Decode(readTestdata(t, name+".key"))
	if block == nil {
		t.Fatalf("testdata/%s.key: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("testdata/%s.key: %v", name, err)
	}
	return k
}

func fixtureCustodian(t testing.TB, name string) Custodian {
	t.Helper()
	c, err := ParseCustodianPEM(name, readTestdata(t, name+".pub"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// editHeader rewrites one header of a share file and re-encodes it in
// canonical form, so that the edit gets past parsing and reaches the
// cryptography.
func editHeader(t testing.TB, file []byte, key, value string) []byte {
	t.Helper()
	block, _ := pem.Decode(file)
	if block == nil {
		t.Fatal("no PEM block")
	}
	if value == "" {
		delete(block.Headers, key)
	} else {
		block.Headers[key] = value
	}
	return pem.EncodeToMemory(block)
}

// editBody applies f to the ciphertext of a share file and re-encodes it.
func editBody(t testing.TB, file []byte, f func([]byte) []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(file)
	if block == nil {
		t.Fatal("no PEM block")
	}
	block.Bytes = f(append([]byte(nil), block.Bytes...))
	return pem.EncodeToMemory(block)
}

func mustParsePKIX(t testing.TB, pemBytes []byte) crypto.PublicKey {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM block")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
