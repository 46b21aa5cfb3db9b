package escrow

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func pemOf(t *testing.T, typ string, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkixPEM(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pemOf(t, "PUBLIC KEY", der)
}

func TestParseCustodianPEM(t *testing.T) {
	t.Parallel()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := testRSAKey()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		custom  string // custodian name; "" means "test"
		pem     []byte
		curve   ecdh.Curve
		rsa     bool
		wantErr string // substring of the error; "" means success
	}{
		// Files written by `openssl pkey -pubout`.
		{name: "rsa-2048", pem: readTestdata(t, "rsa2048.pub"), rsa: true},
		{name: "ecdsa-p256", pem: readTestdata(t, "p256.pub"), curve: ecdh.P256()},
		{name: "x25519", pem: readTestdata(t, "x25519.pub"), curve: ecdh.X25519()},
		{name: "ecdsa-p384", pem: pkixPEM(t, &p384.PublicKey), curve: ecdh.P384()},
		{name: "leading text", pem: append([]byte("Alice's key\n"), readTestdata(t, "x25519.pub")...), curve: ecdh.X25519()},

		{name: "ed25519", pem: readTestdata(t, "ed25519.pub"), wantErr: "Ed25519 keys can only sign"},
		{name: "rsa-1024", pem: readTestdata(t, "rsa1024.pub"), wantErr: "RSA key of 1024 bits"},
		{name: "ecdsa-p224", pem: pkixPEM(t, &p224.PublicKey), wantErr: "cannot be used for key agreement"},
		{name: "garbage", pem: []byte("not a key at all"), wantErr: "no PEM block"},
		{name: "empty", pem: nil, wantErr: "no PEM block"},
		{name: "bad DER", pem: pemOf(t, "PUBLIC KEY", []byte{0x30, 0x03, 0x01}), wantErr: "parsing public key"},
		{name: "pkcs1", pem: pemOf(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)), wantErr: "PKCS#1"},
		{name: "private key", pem: readTestdata(t, "x25519.key"), wantErr: "this is a private key"},
		{name: "certificate", pem: pemOf(t, "CERTIFICATE", []byte{1}), wantErr: "certificate"},
		{name: "two keys", pem: append(readTestdata(t, "x25519.pub"), readTestdata(t, "p256.pub")...), wantErr: "exactly one"},
		{name: "empty name", custom: "-", pem: readTestdata(t, "x25519.pub"), wantErr: "empty custodian name"},
		{name: "control in name", custom: "a\tb", pem: readTestdata(t, "x25519.pub"), wantErr: "non-printable"},
		{name: "space around name", custom: " a", pem: readTestdata(t, "x25519.pub"), wantErr: "white space"},
		{name: "long name", custom: strings.Repeat("n", maxNameLen+1), pem: readTestdata(t, "x25519.pub"), wantErr: "longer than"},
		{name: "huge", pem: make([]byte, maxCustodianPEM+1), wantErr: "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := tt.custom
			switch name {
			case "":
				name = "test"
			case "-":
				name = ""
			}
			c, err := ParseCustodianPEM(name, tt.pem)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseCustodianPEM succeeded with %T", c.Key)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %q, want it to mention %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "MC4CAQAw") { // the start of the private key
					t.Errorf("error echoes the private key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Name != name {
				t.Errorf("Name = %q", c.Name)
			}
			switch k := c.Key.(type) {
			case *rsa.PublicKey:
				if !tt.rsa {
					t.Errorf("got an RSA key")
				}
			case *ecdh.PublicKey:
				if k.Curve() != tt.curve {
					t.Errorf("curve = %v, want %v", k.Curve(), tt.curve)
				}
			default:
				t.Errorf("unexpected key type %T", c.Key)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	// openssl pkey -pubin -in K.pub -outform DER | openssl dgst -sha256 -binary | base64
	tests := []struct {
		name string
		want string
	}{
		{name: "x25519", want: "SHA256:fCMCgzEPYYWiZIRaf3/zFcLw8kukCtY3IYGChD+fmpQ"},
		{name: "p256", want: "SHA256:2ZxQqZQ+sOvQBTy0ws7RiAawdacv4D3pCo55ot+dRU8"},
		{name: "rsa2048", want: "SHA256:wbtxgjwpP+bye9cYzFe9hL+vMI+pVRPNqFODQMphYcY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := fixtureCustodian(t, tt.name)
			if got := c.Fingerprint(); got != tt.want {
				t.Errorf("Fingerprint = %s, want %s", got, tt.want)
			}
			if err := checkFingerprint(tt.want); err != nil {
				t.Error(err)
			}
			// The private key's public half has the same fingerprint,
			// whichever type it comes as.
			if got := fingerprint(publicOf(t, fixtureKey(t, tt.name))); got != tt.want {
				t.Errorf("private key fingerprint = %s, want %s", got, tt.want)
			}
		})
	}
	if got := (Custodian{Name: "none"}).Fingerprint(); got != "" {
		t.Errorf("Fingerprint of no key = %q, want empty", got)
	}
}

func TestCheckFingerprint(t *testing.T) {
	t.Parallel()
	good := "SHA256:" + strings.Repeat("A", 43)
	tests := []struct {
		name string
		fp   string
		ok   bool
	}{
		{name: "good", fp: good, ok: true},
		{name: "empty", fp: "", ok: false},
		{name: "no prefix", fp: strings.Repeat("A", 50), ok: false},
		{name: "padded", fp: good + "=", ok: false},
		{name: "short", fp: good[:len(good)-1], ok: false},
		{name: "bad alphabet", fp: good[:len(good)-1] + "_", ok: false},
		{name: "non-zero trailing bits", fp: good[:len(good)-1] + "B", ok: false},
		{name: "md5", fp: "MD5:" + strings.Repeat("A", 46), ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := checkFingerprint(tt.fp); (err == nil) != tt.ok {
				t.Errorf("checkFingerprint(%q) = %v", tt.fp, err)
			}
		})
	}
}
