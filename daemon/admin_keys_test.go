package daemon

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
)

func fingerprint(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestAdminKeys: generate and import every kind, list and show them, export
// the public half, and the soft-delete lifecycle, against what a PKCS#11
// client of the same token sees.
func TestAdminKeys(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("keys-so-1"), []byte("keys-user-1")
	var prem, std adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "prem", Tier: "premium", SOPIN: so, UserPIN: user}, &prem); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "std", Tier: "standard", SOPIN: so, UserPIN: user}, &std); err != nil {
		t.Fatal(err)
	}
	gen := func(token, typ, label string, opts adminapi.KeyOptions) ([]adminapi.Key, error) {
		opts.Label = label
		var keys []adminapi.Key
		err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: token, UserPIN: user, Type: typ, KeyOptions: opts}, &keys)
		return keys, err
	}
	for _, typ := range []string{"aes-128", "aes-192", "aes-256", "generic-256", "rsa-2048", "ec-p256", "ec-p384", "ec-p521", "ed25519"} {
		keys, err := gen("prem", typ, typ, adminapi.KeyOptions{})
		if err != nil {
			t.Fatalf("generate %s: %v", typ, err)
		}
		pair := typ[:2] == "rs" || typ[:2] == "ec" || typ[:2] == "ed"
		if pair && (len(keys) != 2 || keys[0].Fingerprint == "" || keys[0].Fingerprint != keys[1].Fingerprint || keys[0].ID != keys[1].ID) ||
			!pair && len(keys) != 1 || keys[0].Protection != "hsm" {
			t.Fatalf("generate %s: %+v", typ, keys)
		}
	}
	if _, err := gen("prem", "rsa-1024", "x", adminapi.KeyOptions{}); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("rsa-1024: %v", err)
	}
	if _, err := gen("std", "aes-256", "x", adminapi.KeyOptions{Protection: "hsm"}); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("HSM protection on a standard token: %v", err)
	}
	if _, err := gen("prem", "aes-256", "x", adminapi.KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	wrapOnly, err := gen("std", "aes-256", "wrap-only", adminapi.KeyOptions{Usage: []string{"wrap", "unwrap"}, Extractable: true})
	if err != nil || !slices.Equal(wrapOnly[0].Usage, []string{"wrap", "unwrap"}) || wrapOnly[0].Protection != "software" {
		t.Fatalf("wrap-only key: %+v %v", wrapOnly, err)
	}
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "std", UserPIN: []byte("wrong-user"), Type: "aes-256", KeyOptions: adminapi.KeyOptions{Label: "y"}}, nil); code(t, err) != adminapi.CodePINIncorrect {
		t.Fatalf("wrong user PIN: %v", err)
	}

	// Import: PKCS#8 EC, PKCS#1 RSA, Ed25519, a public key, raw AES.
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	edDER, _ := x509.MarshalPKCS8PrivateKey(edKey)
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	imports := []struct {
		label, typ string
		material   []byte
		pub        any
		objects    int
	}{
		{label: "imp-ec", typ: "", material: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), pub: &ecKey.PublicKey, objects: 2},
		{label: "imp-rsa", typ: "", material: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), pub: &rsaKey.PublicKey, objects: 2},
		{label: "imp-ed", typ: "", material: edDER, pub: edKey.Public(), objects: 2},
		{label: "imp-pub", typ: "", material: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), pub: &rsaKey.PublicKey, objects: 1},
		{label: "imp-aes", typ: "aes", material: make([]byte, 32), pub: nil, objects: 1},
	}
	for _, im := range imports {
		var keys []adminapi.Key
		err := a.Call(adminapi.OpKeyImport, adminapi.KeyImport{Token: "prem", UserPIN: user, Type: im.typ, Material: im.material, KeyOptions: adminapi.KeyOptions{Label: im.label}}, &keys)
		if err != nil || len(keys) != im.objects {
			t.Fatalf("import %s: %+v %v", im.label, keys, err)
		}
		if im.pub != nil && keys[0].Fingerprint != fingerprint(t, im.pub) {
			t.Fatalf("import %s: fingerprint %s, want %s", im.label, keys[0].Fingerprint, fingerprint(t, im.pub))
		}
		if im.objects == 2 && keys[0].Protection != "hsm" {
			t.Fatalf("import %s into a premium token: %s", im.label, keys[0].Protection)
		}
	}
	for _, bad := range []adminapi.KeyImport{
		{Material: []byte("not a key")},
		{Material: make([]byte, 20), Type: "aes"},
		{Material: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})},
	} {
		bad.Token, bad.UserPIN, bad.Label = "prem", user, "bad"
		if err := a.Call(adminapi.OpKeyImport, bad, nil); code(t, err) != adminapi.CodeBadRequest {
			t.Fatalf("bad import %q: %v", bad.Material[:min(10, len(bad.Material))], err)
		}
	}

	// Show and export agree with what was imported.
	var shown []adminapi.Key
	if err := a.Call(adminapi.OpKeyShow, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "imp-ec"}}, &shown); err != nil || len(shown) != 2 {
		t.Fatalf("show: %+v %v", shown, err)
	}
	if at := shown[0].Attributes; at == nil || at.Sensitive == nil || !*at.Sensitive || at.Extractable == nil || *at.Extractable ||
		at.Local == nil || *at.Local || at.KeyGenMechanism != nil {
		t.Fatalf("imported key's attributes: %+v", shown[0].Attributes)
	}
	if kt := shown[0].KeyType; kt == nil || kt.Name != "CKK_EC" || kt.Value != 3 {
		t.Fatalf("imported key's type: %+v", kt)
	}
	var pub adminapi.PublicKey
	if err := a.Call(adminapi.OpKeyExportPublic, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "imp-ec"}}, &pub); err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(pub.PEM))
	got, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil || !ecKey.PublicKey.Equal(got) {
		t.Fatalf("exported public key: %v", err)
	}
	if err := a.Call(adminapi.OpKeyShow, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "x"}}, nil); err != nil {
		t.Fatalf("show one key: %v", err)
	}
	if _, err := gen("prem", "aes-128", "x", adminapi.KeyOptions{}); code(t, err) != adminapi.CodeExists {
		t.Fatalf("a second key labelled x: %v", err)
	}
	gen("prem", "aes-128", "x", adminapi.KeyOptions{AllowDuplicateLabel: true})
	if err := a.Call(adminapi.OpKeyShow, adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "x"}}, nil); code(t, err) != adminapi.CodeAmbiguous {
		t.Fatalf("show an ambiguous label: %v", err)
	}

	// A client of the token sees the keys; one it destroys is kept, and
	// the administrator recovers it.
	cl := d.dial(t)
	h := cl.Open(uint64(prem.Slot), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	found := cl.Find(h, A(ck.CKA_LABEL, []byte("ec-p256")))
	if len(found) != 2 {
		t.Fatalf("client finds %d objects labelled ec-p256", len(found))
	}
	for _, o := range found {
		cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(o))
	}
	if n := len(cl.Find(h, A(ck.CKA_LABEL, []byte("ec-p256")))); n != 0 {
		t.Fatalf("destroyed key still found: %d", n)
	}
	var deleted []adminapi.Key
	if err := a.Call(adminapi.OpKeyList, adminapi.KeyList{Token: "prem", UserPIN: user, Deleted: true}, &deleted); err != nil || len(deleted) != 2 || deleted[0].PurgeAfter == nil {
		t.Fatalf("deleted keys: %+v %v", deleted, err)
	}
	ref := adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "ec-p256"}}
	if err := a.Call(adminapi.OpKeyRecover, ref, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(cl.Find(h, A(ck.CKA_LABEL, []byte("ec-p256")))); n != 2 {
		t.Fatalf("recovered key found %d times", n)
	}
	// Admin delete, then purge with the SO PIN.
	if err := a.Call(adminapi.OpKeyDelete, ref, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyDelete, ref, nil); code(t, err) != adminapi.CodeDeleted {
		t.Fatalf("delete twice: %v", err)
	}
	purge := adminapi.KeyPurge{Token: "prem", SOPIN: so, KeySelector: adminapi.KeySelector{Key: "ec-p256"}}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "prem", SOPIN: user, KeySelector: purge.KeySelector}, nil); code(t, err) != adminapi.CodePINIncorrect {
		t.Fatalf("purge with the user PIN: %v", err)
	}
	if err := a.Call(adminapi.OpKeyPurge, purge, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyRecover, ref, nil); code(t, err) != adminapi.CodeNotFound {
		t.Fatalf("recover a purged key: %v", err)
	}

	// Purge protection: on for good, purges refused, the token kept.
	on, off, days := true, false, 30
	if err := a.Call(adminapi.OpTokenSet, adminapi.TokenSet{Label: "prem", SOPIN: so, RetentionDays: &days, PurgeProtection: &on}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpTokenSet, adminapi.TokenSet{Label: "prem", SOPIN: so, PurgeProtection: &off}, nil); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("turn protection off: %v", err)
	}
	ed := adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "ed25519"}}
	if err := a.Call(adminapi.OpKeyDelete, ed, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "prem", SOPIN: so, KeySelector: ed.KeySelector}, nil); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("purge under protection: %v", err)
	}
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))
	if err := a.Call(adminapi.OpTokenDelete, adminapi.TokenDelete{Label: "prem", SOPIN: so}, nil); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("delete a protected token: %v", err)
	}
	h = cl.Open(uint64(prem.Slot), true)
	cl.Must(ck.CKR_SESSION_EXISTS, "C_InitToken", U(uint64(prem.Slot)), S(string(so)), Label32("prem"))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h))
	cl.Must(ck.CKR_ACTION_PROHIBITED, "C_InitToken", U(uint64(prem.Slot)), S(string(so)), Label32("prem"))

	got2 := events(t, d, string(so), string(user))
	for _, e := range []string{"key.generate", "key.import", "key.destroy", "key.recover", "key.delete", "key.purge", "key.purge.refused", "token.set"} {
		if !slices.Contains(got2, e) {
			t.Errorf("no %s in the audit log", e)
		}
	}
}

// TestAdminKeyBackup: a key backup restores into its own domain, with its
// identity and protection, and nowhere else.
func TestAdminKeyBackup(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	other := startDaemon(t, token.Config{})
	so, user := []byte("bk-so-123"), []byte("bk-user-123")
	a, b := adminDial(t, d), adminDial(t, other)
	for _, c := range []*adminapi.Client{a, b} {
		for _, tk := range []adminapi.TokenCreate{{Label: "prem", Tier: "premium"}, {Label: "std", Tier: "standard"}} {
			tk.SOPIN, tk.UserPIN = so, user
			if err := c.Call(adminapi.OpTokenCreate, tk, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var made []adminapi.Key
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "prem", UserPIN: user, Type: "ec-p256", KeyOptions: adminapi.KeyOptions{Label: "tls"}}, &made); err != nil {
		t.Fatal(err)
	}
	ref := adminapi.KeyRef{Token: "prem", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "tls"}}
	var bk adminapi.KeyBackup
	if err := a.Call(adminapi.OpKeyBackup, ref, &bk); err != nil || len(bk.Keys) != 2 || len(bk.Blob) == 0 {
		t.Fatalf("backup: %+v %v", bk.Keys, err)
	}
	restore := func(c *adminapi.Client, token string, blob []byte) ([]adminapi.Key, error) {
		var keys []adminapi.Key
		err := c.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: token, UserPIN: user, Blob: blob}, &keys)
		return keys, err
	}
	if _, err := restore(a, "prem", bk.Blob); code(t, err) != adminapi.CodeExists {
		t.Fatalf("restore over the live key: %v", err)
	}
	if _, err := restore(b, "prem", bk.Blob); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("restore into another domain: %v", err)
	}
	if _, err := restore(a, "std", bk.Blob); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("restore an HSM-protected key into a standard token: %v", err)
	}
	bad := slices.Clone(bk.Blob)
	bad[len(bad)-1] ^= 1
	if _, err := restore(a, "prem", bad); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("restore an altered backup: %v", err)
	}
	// Lost for good, then restored: the same key, still HSM-protected,
	// still signing for the same public key.
	if err := a.Call(adminapi.OpKeyDelete, ref, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "prem", SOPIN: so, KeySelector: ref.KeySelector}, nil); err != nil {
		t.Fatal(err)
	}
	keys, err := restore(a, "prem", bk.Blob)
	if err != nil || len(keys) != 2 {
		t.Fatalf("restore: %+v %v", keys, err)
	}
	for i, k := range keys {
		want := made[0]
		if k.Class == "public-key" {
			want = made[1]
		}
		if k.UUID != want.UUID || k.Fingerprint != want.Fingerprint || k.Protection != want.Protection {
			t.Fatalf("restored key %d: %+v, was %+v", i, k, want)
		}
	}
	var tok adminapi.Token
	a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: "prem"}, &tok)
	cl := d.dial(t)
	h := cl.Open(uint64(tok.Slot), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	var priv uint64
	for _, o := range cl.Find(h, A(ck.CKA_LABEL, []byte("tls"))) {
		if rv, ans := cl.Get(h, o, ck.CKA_CLASS); rv == ck.CKR_OK && UlongOf(ans[0].Value) == ck.CKO_PRIVATE_KEY {
			priv = o
		}
	}
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), B(make([]byte, 32)), Out(128))
	if rv, ans := cl.Get(h, priv, ck.CKA_VALUE, ck.CKA_HSMEMU_PROTECTION); rv != ck.CKR_ATTRIBUTE_SENSITIVE || UlongOf(ans[1].Value) != ck.CKP_HSMEMU_HSM {
		t.Fatalf("restored key's value: %#x %+v", rv, ans)
	}
	if got := events(t, d, string(user)); !slices.Contains(got, "key.backup") || !slices.Contains(got, "key.restore") {
		t.Fatalf("backup and restore not audited: %v", got)
	}
	if got := events(t, other); !slices.Contains(got, "key.restore.refused") {
		t.Fatalf("refused restore not audited: %v", got)
	}
}

// TestAdminKeyBackupIVCounter: a restored AES key's IV counter for
// message-based encryption is not the backup's, which is as old as the
// backup: the key starts again at a random point.
func TestAdminKeyBackupIVCounter(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	so, user := []byte("iv-so-123"), []byte("iv-user-123")
	a := adminDial(t, d)
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "std", Tier: "standard", SOPIN: so, UserPIN: user}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "std", UserPIN: user, Type: "aes-256", KeyOptions: adminapi.KeyOptions{Label: "gcm"}}, nil); err != nil {
		t.Fatal(err)
	}
	var tok adminapi.Token
	a.Call(adminapi.OpTokenShow, adminapi.TokenRef{Label: "std"}, &tok)
	cl := d.dial(t)
	h := cl.Open(uint64(tok.Slot), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	encrypt := func() []byte {
		t.Helper()
		key := cl.Find(h, A(ck.CKA_LABEL, []byte("gcm")))[0]
		cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
		defer cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
		p := wire.GCMMessageParams{IV: make([]byte, 12), IVGenerator: ck.CKG_GENERATE, TagOut: true, TagCap: 16}.Param()
		out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), wire.Value{Param: &p}, S(""), S("x"), Out(64))
		return bytes.Clone(out[1].Param.Fields[0].Bytes) // the reply's buffer is reused
	}
	before := encrypt()
	ref := adminapi.KeyRef{Token: "std", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "gcm"}}
	var bk adminapi.KeyBackup
	if err := a.Call(adminapi.OpKeyBackup, ref, &bk); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyDelete, ref, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "std", SOPIN: so, KeySelector: ref.KeySelector}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "std", UserPIN: user, Blob: bk.Blob}, nil); err != nil {
		t.Fatal(err)
	}
	key := cl.Find(h, A(ck.CKA_LABEL, []byte("gcm")))[0]
	if rv, _ := cl.Get(h, key, ck.CKA_HSMEMU_IV_COUNTER); rv != ck.CKR_ATTRIBUTE_TYPE_INVALID {
		t.Fatalf("the restored key kept the backup's counter: %v", ck.Error(rv))
	}
	// This daemon knows the key by its UUID: its counter goes on.
	if after := encrypt(); bytes.Equal(after, before) || binary.BigEndian.Uint64(after[4:]) != binary.BigEndian.Uint64(before[4:])+1 {
		t.Fatalf("IV %x after %x", after, before)
	}
}
