package token

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/internal/testenv"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// needOpenSSL returns the openssl binary, or skips (fails under CI=true).
func needOpenSSL(t *testing.T) string {
	t.Helper()
	return testenv.Command(t, "openssl", "openssl")
}

// TestOpenSSLCrossCheck: what openssl encrypts the token decrypts, and the
// reverse, with AES-256-CBC (PKCS#7 padding) and RSA-OAEP-SHA256.
func TestOpenSSLCrossCheck(t *testing.T) {
	t.Parallel()
	openssl := needOpenSSL(t)
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("openssl")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	dir := t.TempDir()
	run := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(openssl, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	copyOut := func(b []byte) []byte { return append([]byte(nil), b...) }
	msg := []byte("thirty-three bytes of plain text!")

	// AES-256-CBC with PKCS#7 padding is CKM_AES_CBC_PAD.
	key := bytes.Repeat([]byte{0x5c}, 32)
	iv := bytes.Repeat([]byte{0xa7}, 16)
	aes := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), A(ck.CKA_VALUE, key))
	cbcPad := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_AES_CBC_PAD, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: iv}}}
	sslCT := run(msg, "enc", "-aes-256-cbc", "-K", hex.EncodeToString(key), "-iv", hex.EncodeToString(iv))
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), cbcPad, U(aes))
	if got := copyOut(cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(sslCT), Out(256))[2].Bytes); !bytes.Equal(got, msg) {
		t.Fatalf("the token decrypts openssl's AES-CBC as %q", got)
	}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), cbcPad, U(aes))
	tokCT := copyOut(cl.Must(ck.CKR_OK, "C_Encrypt", U(h), B(msg), Out(256))[2].Bytes)
	if got := run(tokCT, "enc", "-d", "-aes-256-cbc", "-K", hex.EncodeToString(key), "-iv", hex.EncodeToString(iv)); !bytes.Equal(got, msg) {
		t.Fatalf("openssl decrypts the token's AES-CBC as %q", got)
	}

	// RSA-OAEP with SHA-256: a software key, readable, so openssl can hold
	// its private half too.
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN),
		T(AU(ck.CKA_MODULUS_BITS, 2048)), T(AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true)), None(), None())
	pubH, privH := out[4].Ulong, out[5].Ulong
	types := []uint64{ck.CKA_MODULUS, ck.CKA_PUBLIC_EXPONENT, ck.CKA_PRIVATE_EXPONENT, ck.CKA_PRIME_1, ck.CKA_PRIME_2}
	rvc, ans := cl.Get(h, privH, types...)
	if rvc != ck.CKR_OK {
		t.Fatalf("reading the RSA key: %#x", rvc)
	}
	ints := make([]*big.Int, len(ans))
	for i, a := range ans {
		ints[i] = new(big.Int).SetBytes(a.Value)
	}
	priv := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: ints[0], E: int(ints[1].Int64())}, D: ints[2], Primes: []*big.Int{ints[3], ints[4]}}
	priv.Precompute()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := filepath.Join(dir, "rsa.pem")
	os.WriteFile(keyPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pubDER, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	pubPEM := filepath.Join(dir, "rsa.pub.pem")
	os.WriteFile(pubPEM, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600)
	oaepOpts := []string{"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"}
	oaep := wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_RSA_PKCS_OAEP, Present: true,
		Param: wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256, Source: ck.CKZ_DATA_SPECIFIED}.Param()}}

	sslRSA := run(msg, append([]string{"pkeyutl", "-encrypt", "-pubin", "-inkey", pubPEM}, oaepOpts...)...)
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), oaep, U(privH))
	if got := copyOut(cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(sslRSA), Out(512))[2].Bytes); !bytes.Equal(got, msg) {
		t.Fatalf("the token decrypts openssl's OAEP as %q", got)
	}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), oaep, U(pubH))
	tokRSA := copyOut(cl.Must(ck.CKR_OK, "C_Encrypt", U(h), B(msg), Out(512))[2].Bytes)
	if got := run(tokRSA, append([]string{"pkeyutl", "-decrypt", "-inkey", keyPEM}, oaepOpts...)...); !bytes.Equal(got, msg) {
		t.Fatalf("openssl decrypts the token's OAEP as %q", got)
	}
}
