package daemon

import (
	"bytes"
	"crypto/mlkem"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/cloudflare/circl/kem/mlkem/mlkem768"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/mech/mechtest"
	"hsmemu/daemon/token"
)

// pkcs8PQC is a post-quantum OneAsymmetricKey, for building test files.
type pkcs8PQC struct {
	Version    int
	Algorithm  struct{ OID asn1.ObjectIdentifier }
	PrivateKey []byte
}

func pqcPKCS8(t *testing.T, oid asn1.ObjectIdentifier, inner any) []byte {
	t.Helper()
	in, err := asn1.Marshal(inner)
	if err != nil {
		t.Fatal(err)
	}
	var p pkcs8PQC
	p.Algorithm.OID, p.PrivateKey = oid, in
	der, err := asn1.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func spkiPEM(t *testing.T, oid asn1.ObjectIdentifier, params []byte, pub []byte) []byte {
	t.Helper()
	type alg struct {
		OID    asn1.ObjectIdentifier
		Params asn1.RawValue `asn1:"optional"`
	}
	a := alg{OID: oid}
	if params != nil {
		a.Params = asn1.RawValue{FullBytes: params}
	}
	der, err := asn1.Marshal(struct {
		Algorithm alg
		PublicKey asn1.BitString
	}{a, asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)}})
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// TestAdminPQCImport: `key import` takes post-quantum public keys as
// SubjectPublicKeyInfo and private keys as PKCS#8 in the profiles' three
// forms; an exported public key imported elsewhere verifies the token's
// signatures and encapsulates to its private key; a premium token keeps
// an imported private key HSM-protected; wrong sizes, parameters and
// algorithms are refused with errors that say so.
func TestAdminPQCImport(t *testing.T) {
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
	imp := func(tok, label string, material []byte) ([]adminapi.Key, error) {
		var keys []adminapi.Key
		err := a.Call(adminapi.OpKeyImport, adminapi.KeyImport{Token: tok, UserPIN: user, Material: material, KeyOptions: adminapi.KeyOptions{Label: label}}, &keys)
		return keys, err
	}
	exportPEM := func(tok, label string) []byte {
		var pub adminapi.PublicKey
		if err := a.Call(adminapi.OpKeyExportPublic, adminapi.KeyRef{Token: tok, UserPIN: user, KeySelector: adminapi.KeySelector{Key: label}}, &pub); err != nil {
			t.Fatal(err)
		}
		return []byte(pub.PEM)
	}
	session := func(tok string) (*client, uint64) {
		var ti adminapi.Token
		if err := a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: tok}, &ti); err != nil {
			t.Fatal(err)
		}
		cl := d.dial(t)
		h := cl.Open(uint64(ti.Slot), true)
		cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
		return cl, h
	}
	prem, hp := session("prem")
	std, hs := session("std")
	byClass := func(cl *client, h uint64, label string, class uint64) uint64 {
		t.Helper()
		for _, o := range cl.Find(h, A(ck.CKA_LABEL, []byte(label))) {
			if rv, ans := cl.Get(h, o, ck.CKA_CLASS); rv == ck.CKR_OK && UlongOf(ans[0].Value) == class {
				return o
			}
		}
		t.Fatalf("no object of class %d labelled %s", class, label)
		return 0
	}

	// Round trip: an ML-DSA-65 key's exported public key, imported into
	// the standard token, verifies what the premium token signs.
	var keys []adminapi.Key
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "prem", UserPIN: user, Type: "ml-dsa-65", KeyOptions: adminapi.KeyOptions{Label: "signer"}}, &keys); err != nil {
		t.Fatal(err)
	}
	got, err := imp("std", "signer-pub", exportPEM("prem", "signer"))
	if err != nil || len(got) != 1 || got[0].ParameterSet != "ML-DSA-65" || got[0].Fingerprint != keys[0].Fingerprint {
		t.Fatalf("import of the exported public key: %+v %v", got, err)
	}
	ctx := wire.SignContext{Context: []byte("import")}
	prem.Must(ck.CKR_OK, "C_SignInit", U(hp), MP(ck.CKM_ML_DSA, ctx.Param()), U(byClass(prem, hp, "signer", ck.CKO_PRIVATE_KEY)))
	sig := bytes.Clone(prem.Must(ck.CKR_OK, "C_Sign", U(hp), S("round trip"), Out(8192))[2].Bytes)
	pubStd := byClass(std, hs, "signer-pub", ck.CKO_PUBLIC_KEY)
	std.Must(ck.CKR_OK, "C_VerifyInit", U(hs), MP(ck.CKM_ML_DSA, ctx.Param()), U(pubStd))
	std.Must(ck.CKR_OK, "C_Verify", U(hs), S("round trip"), B(sig))
	sig[10] ^= 1
	std.Must(ck.CKR_OK, "C_VerifyInit", U(hs), MP(ck.CKM_ML_DSA, ctx.Param()), U(pubStd))
	std.Must(ck.CKR_SIGNATURE_INVALID, "C_Verify", U(hs), S("round trip"), B(sig))

	// An ML-KEM-768 public key, imported, encapsulates to the premium
	// token's private key.
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "prem", UserPIN: user, Type: "ml-kem-768", KeyOptions: adminapi.KeyOptions{Label: "kem"}}, &keys); err != nil {
		t.Fatal(err)
	}
	if _, err := imp("std", "kem-pub", exportPEM("prem", "kem")); err != nil {
		t.Fatal(err)
	}
	aes := T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true))
	out := std.Must(ck.CKR_OK, "C_EncapsulateKey", U(hs), M(ck.CKM_ML_KEM), U(byClass(std, hs, "kem-pub", ck.CKO_PUBLIC_KEY)), aes, Out(4096), None())
	ct, k1 := bytes.Clone(out[4].Bytes), out[5].Ulong
	k2 := prem.Must(ck.CKR_OK, "C_DecapsulateKey", U(hp), M(ck.CKM_ML_KEM), U(byClass(prem, hp, "kem", ck.CKO_PRIVATE_KEY)), aes, B(ct), None())[5].Ulong
	_, v1 := std.Get(hs, k1, ck.CKA_VALUE)
	_, v2 := prem.Get(hp, k2, ck.CKA_VALUE)
	if !bytes.Equal(v1[0].Value, v2[0].Value) {
		t.Fatal("the imported ML-KEM public key encapsulates to another secret")
	}

	// A private key from Wycheproof's PKCS#8 (the seed form) on the
	// premium token: HSM-protected, its public half the file's, and its
	// deterministic signature the file's.
	var v struct {
		TestGroups []struct {
			PrivateKeyPkcs8, PublicKey string
			Tests                      []struct {
				Msg, Ctx, Sig string
				Rnd, Mu       *string
				Result        string
			}
		}
	}
	if err := json.Unmarshal(mechtest.WycheproofFile(t, "mldsa_65_sign_seed_test.json"), &v); err != nil {
		t.Fatal(err)
	}
	g := v.TestGroups[0]
	p8, _ := hex.DecodeString(g.PrivateKeyPkcs8)
	got, err = imp("prem", "wp", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}))
	if err != nil || len(got) != 2 || got[0].Protection != "hsm" || got[0].ParameterSet != "ML-DSA-65" {
		t.Fatalf("import of Wycheproof's PKCS#8: %+v %v", got, err)
	}
	if s := parseSPKI(t, string(exportPEM("prem", "wp"))); hex.EncodeToString(s.PublicKey.Bytes) != g.PublicKey {
		t.Error("the imported key's public half is not the file's")
	}
	wpPriv := byClass(prem, hp, "wp", ck.CKO_PRIVATE_KEY)
	signed := 0
	for _, tc := range g.Tests {
		if tc.Result != "valid" || tc.Rnd != nil || tc.Msg == "" && tc.Mu != nil {
			continue
		}
		msg, _ := hex.DecodeString(tc.Msg)
		c, _ := hex.DecodeString(tc.Ctx)
		det := wire.SignContext{HedgeVariant: ck.CKH_DETERMINISTIC_REQUIRED, Context: c}
		prem.Must(ck.CKR_OK, "C_SignInit", U(hp), MP(ck.CKM_ML_DSA, det.Param()), U(wpPriv))
		if s := prem.Must(ck.CKR_OK, "C_Sign", U(hp), B(msg), Out(8192))[2].Bytes; hex.EncodeToString(s) != tc.Sig {
			t.Error("the imported key's signature is not the file's")
		}
		signed++
	}
	if signed == 0 {
		t.Fatal("no vector signed")
	}
	for _, attr := range []uint64{ck.CKA_VALUE, ck.CKA_SEED} {
		if rv, _ := prem.Get(hp, wpPriv, attr); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("imported premium key's %#x: %#x", attr, rv)
		}
	}
	kek := prem.Must(ck.CKR_OK, "C_GenerateKey", U(hp), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_WRAP, true)), None())[3].Ulong
	prem.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(hp), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), U(wpPriv), Out(16384))

	// ML-KEM-768 private keys in the three forms, on the standard token:
	// each decapsulates what crypto/mlkem encapsulates to its public half.
	kemOID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4, 2}
	seed := bytes.Repeat([]byte{0x5a}, 64)
	_, sk := mlkem768.NewKeyFromSeed(seed)
	dk, _ := sk.MarshalBinary()
	for name, inner := range map[string]any{
		"seed":     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: seed},
		"expanded": dk,
		"both":     struct{ Seed, Expanded []byte }{seed, dk},
	} {
		got, err := imp("std", "kem-"+name, pqcPKCS8(t, kemOID, inner))
		if err != nil || len(got) != 2 || got[0].ParameterSet != "ML-KEM-768" || got[0].Protection != "software" {
			t.Fatalf("%s: %+v %v", name, got, err)
		}
		ek, err := mlkem.NewEncapsulationKey768(parseSPKI(t, string(exportPEM("std", "kem-"+name))).PublicKey.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		secret, ct := ek.Encapsulate()
		k := std.Must(ck.CKR_OK, "C_DecapsulateKey", U(hs), M(ck.CKM_ML_KEM), U(byClass(std, hs, "kem-"+name, ck.CKO_PRIVATE_KEY)), aes, B(ct), None())[5].Ulong
		if _, v := std.Get(hs, k, ck.CKA_VALUE); !bytes.Equal(v[0].Value, secret) {
			t.Errorf("%s: the secret differs", name)
		}
	}

	// Refusals, each saying what is wrong.
	dsaOID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 18}
	pub65, _ := hex.DecodeString(g.PublicKey)
	otherSeed := bytes.Repeat([]byte{1}, 64)
	_, otherSK := mlkem768.NewKeyFromSeed(otherSeed)
	otherDK, _ := otherSK.MarshalBinary()
	for _, tc := range []struct {
		name     string
		material []byte
		want     string
	}{
		{"short public key", spkiPEM(t, dsaOID, nil, pub65[1:]), "ML-DSA-65 public key is 1952 bytes, not 1951"},
		{"parameters", spkiPEM(t, dsaOID, []byte{5, 0}, pub65), "has parameters"},
		{"another OID", spkiPEM(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 2, 267, 12, 6, 5}, nil, pub65), "does not parse"},
		{"short seed", pqcPKCS8(t, kemOID, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: seed[:63]}), "ML-KEM-768 seed is 64 bytes, not 63"},
		{"long expanded key", pqcPKCS8(t, kemOID, append(bytes.Clone(dk), 0)), "ML-KEM-768 private key is 2400 bytes, not 2401"},
		{"seed and key differ", pqcPKCS8(t, kemOID, struct{ Seed, Expanded []byte }{seed, otherDK}), "not a valid one"},
		{"bad privateKey", pqcPKCS8(t, kemOID, 7), "none of the profile's forms"},
		{"public key as private", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: pub65})}), "does not parse"},
	} {
		_, err := imp("std", "bad", tc.material)
		if code(t, err) != adminapi.CodeBadRequest || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
