package daemon

import (
	"bytes"
	"crypto/mlkem"
	"encoding/asn1"
	"encoding/pem"
	"slices"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
)

// spki is a SubjectPublicKeyInfo as the post-quantum keys have it: an
// OID without parameters and the FIPS-encoded key.
type spki struct {
	Algorithm struct{ OID asn1.ObjectIdentifier }
	PublicKey asn1.BitString
}

func parseSPKI(t *testing.T, pemText string) spki {
	t.Helper()
	b, _ := pem.Decode([]byte(pemText))
	if b == nil || b.Type != "PUBLIC KEY" {
		t.Fatalf("not a PUBLIC KEY PEM: %q", pemText)
	}
	var s spki
	if rest, err := asn1.Unmarshal(b.Bytes, &s); err != nil || len(rest) > 0 {
		t.Fatalf("SubjectPublicKeyInfo: %v", err)
	}
	return s
}

// TestAdminPQCKeys: `key generate` makes every post-quantum type, `key
// show` gives the parameter set and sizes, `key export-public` a PEM
// SubjectPublicKeyInfo with NIST's OID that crypto/mlkem and circl take:
// crypto/mlkem encapsulates to the exported ML-KEM key and the token
// decapsulates to the same secret; the token's ML-DSA signature verifies
// with circl against the exported key. A premium ML-DSA key's backup
// does not restore into a standard token.
func TestAdminPQCKeys(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("pq-so-1234"), []byte("pq-user-1234")
	for _, tk := range []adminapi.TokenCreate{{Label: "prem", Tier: "premium"}, {Label: "std", Tier: "standard"}} {
		tk.SOPIN, tk.UserPIN = so, user
		if err := a.Call(adminapi.OpTokenCreate, tk, nil); err != nil {
			t.Fatal(err)
		}
	}
	gen := func(tok, typ, label string) []adminapi.Key {
		t.Helper()
		var keys []adminapi.Key
		err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: tok, UserPIN: user, Type: typ, KeyOptions: adminapi.KeyOptions{Label: label}}, &keys)
		if err != nil || len(keys) != 2 || keys[0].Fingerprint == "" || keys[0].Fingerprint != keys[1].Fingerprint {
			t.Fatalf("generate %s: %+v %v", typ, keys, err)
		}
		return keys
	}
	for _, tc := range []struct {
		typ, set string
		oid      asn1.ObjectIdentifier
		pub      int
	}{
		{"ml-kem-512", "ML-KEM-512", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 1}, 800},
		{"ml-kem-768", "ML-KEM-768", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 2}, 1184},
		{"ml-kem-1024", "ML-KEM-1024", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 3}, 1568},
		{"ml-dsa-44", "ML-DSA-44", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 17}, 1312},
		{"ml-dsa-65", "ML-DSA-65", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 18}, 1952},
		{"ml-dsa-87", "ML-DSA-87", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 19}, 2592},
		{"slh-dsa-sha2-128s", "SLH-DSA-SHA2-128s", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 20}, 32},
		{"slh-dsa-shake-256f", "SLH-DSA-SHAKE-256f", asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 31}, 64},
	} {
		keys := gen("prem", tc.typ, tc.typ)
		if keys[0].ParameterSet != tc.set || keys[0].Sizes == nil || keys[0].Sizes.PublicKey != tc.pub || keys[0].Protection != "hsm" {
			t.Errorf("%s: %+v", tc.typ, keys[0])
		}
		var pub adminapi.PublicKey
		if err := a.Call(adminapi.OpKeyExportPublic, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: tc.typ}}, &pub); err != nil {
			t.Fatal(err)
		}
		s := parseSPKI(t, pub.PEM)
		if !s.Algorithm.OID.Equal(tc.oid) || len(s.PublicKey.Bytes) != tc.pub || pub.Fingerprint != keys[0].Fingerprint {
			t.Errorf("%s: exported %v, %d bytes, %s", tc.typ, s.Algorithm.OID, len(s.PublicKey.Bytes), pub.Fingerprint)
		}
	}
	// An ML-KEM pair's usage is encapsulate (the public key) and
	// decapsulate (the private key), which --usage sets like any other;
	// a usage of another kind of key is refused, either way.
	if kem := gen("std", "ml-kem-512", "kem-usage"); !slices.Equal(kem[0].Usage, []string{"decapsulate"}) || !slices.Equal(kem[1].Usage, []string{"encapsulate"}) {
		t.Errorf("ML-KEM usage: private %v, public %v", kem[0].Usage, kem[1].Usage)
	}
	var decOnly []adminapi.Key
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "std", UserPIN: user, Type: "ml-kem-768",
		KeyOptions: adminapi.KeyOptions{Label: "dec-only", Usage: []string{"decapsulate"}}}, &decOnly); err != nil || len(decOnly) != 2 ||
		!slices.Equal(decOnly[0].Usage, []string{"decapsulate"}) || len(decOnly[1].Usage) != 0 {
		t.Errorf("ML-KEM --usage decapsulate: %+v %v", decOnly, err)
	}
	for _, tc := range []struct{ typ, usage string }{{"ml-kem-768", "sign"}, {"ml-kem-768", "encrypt"}, {"ml-dsa-44", "encapsulate"}, {"aes-256", "decapsulate"}} {
		err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "std", UserPIN: user, Type: tc.typ,
			KeyOptions: adminapi.KeyOptions{Label: "bad-usage", Usage: []string{tc.usage}}}, nil)
		if code(t, err) != adminapi.CodeBadRequest {
			t.Errorf("%s --usage %s: %v", tc.typ, tc.usage, err)
		}
	}

	// Every SLH-DSA set, by its name.
	for _, alg := range []string{"sha2", "shake"} {
		for _, size := range []string{"128", "192", "256"} {
			for _, v := range []string{"s", "f"} {
				typ := "slh-dsa-" + alg + "-" + size + v
				if k := gen("std", typ, typ); k[0].Sizes == nil || k[0].Sizes.Signature == 0 {
					t.Errorf("%s: %+v", typ, k[0])
				}
			}
		}
	}

	// Interop through the exported PEM.
	var tok adminapi.Token
	if err := a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: "prem"}, &tok); err != nil {
		t.Fatal(err)
	}
	cl := d.dial(t)
	h := cl.Open(uint64(tok.Slot), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	privOf := func(label string) uint64 {
		for _, o := range cl.Find(h, A(ck.CKA_LABEL, []byte(label))) {
			if rv, ans := cl.Get(h, o, ck.CKA_CLASS); rv == ck.CKR_OK && UlongOf(ans[0].Value) == ck.CKO_PRIVATE_KEY {
				return o
			}
		}
		t.Fatalf("no private key %s", label)
		return 0
	}
	exported := func(label string) []byte {
		var pub adminapi.PublicKey
		if err := a.Call(adminapi.OpKeyExportPublic, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: label}}, &pub); err != nil {
			t.Fatal(err)
		}
		return parseSPKI(t, pub.PEM).PublicKey.Bytes
	}
	ek, err := mlkem.NewEncapsulationKey768(exported("ml-kem-768"))
	if err != nil {
		t.Fatal(err)
	}
	secret, ct := ek.Encapsulate()
	aes := T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true))
	k := cl.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(privOf("ml-kem-768")), aes, B(ct), None())[5].Ulong
	if rv, ans := cl.Get(h, k, ck.CKA_VALUE); rv != ck.CKR_OK || !bytes.Equal(ans[0].Value, secret) {
		t.Fatalf("the token's secret differs from crypto/mlkem's: %#x", rv)
	}
	var cpub mldsa65.PublicKey
	if err := cpub.UnmarshalBinary(exported("ml-dsa-65")); err != nil {
		t.Fatal(err)
	}
	ctx := wire.SignContext{Context: []byte("admin")}
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), MP(ck.CKM_ML_DSA, ctx.Param()), U(privOf("ml-dsa-65")))
	sig := cl.Must(ck.CKR_OK, "C_Sign", U(h), S("exported"), Out(8192))[2].Bytes
	if !mldsa65.Verify(&cpub, []byte("exported"), []byte("admin"), sig) {
		t.Fatal("circl refuses the token's signature under the exported key")
	}

	// The tier rules: the premium key never leaves, a backup does not
	// restore into a standard token; a software key on a standard token
	// restores there.
	for _, a2 := range []uint64{ck.CKA_VALUE, ck.CKA_SEED} {
		if rv, _ := cl.Get(h, privOf("ml-dsa-65"), a2); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("premium ML-DSA %#x: %#x", a2, rv)
		}
	}
	ref := adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "ml-dsa-65"}}
	var bk adminapi.KeyBackup
	if err := a.Call(adminapi.OpKeyBackup, ref, &bk); err != nil || len(bk.Keys) != 2 {
		t.Fatalf("backup: %v", err)
	}
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "std", UserPIN: user, Blob: bk.Blob}, nil); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("an HSM-protected ML-DSA key restored into a standard token: %v", err)
	}
	soft := gen("std", "ml-kem-1024", "soft-kem")
	sref := adminapi.KeyRef{Token: "std", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "soft-kem"}}
	if err := a.Call(adminapi.OpKeyBackup, sref, &bk); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyDelete, sref, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "std", SOPIN: so, KeySelector: sref.KeySelector}, nil); err != nil {
		t.Fatal(err)
	}
	var back []adminapi.Key
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "std", UserPIN: user, Blob: bk.Blob}, &back); err != nil || len(back) != 2 ||
		!slices.ContainsFunc(back, func(k adminapi.Key) bool {
			return k.Fingerprint == soft[0].Fingerprint && k.ParameterSet == "ML-KEM-1024"
		}) {
		t.Fatalf("restore: %+v %v", back, err)
	}
}
