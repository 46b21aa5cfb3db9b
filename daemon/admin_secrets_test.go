package daemon

import (
	"bytes"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// TestAdminSecrets: versions, enabled and expiry, soft delete, and what a
// PKCS#11 client of the token sees of a secret.
func TestAdminSecrets(t *testing.T) {
	t.Parallel()
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("sec-so-12"), []byte("sec-user-12")
	var tok adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "app", Tier: "standard", SOPIN: so, UserPIN: user}, &tok); err != nil {
		t.Fatal(err)
	}
	set := func(name, value string, mod func(*adminapi.SecretSet)) (adminapi.SecretVersion, error) {
		args := adminapi.SecretSet{Token: "app", UserPIN: user, Name: name, Value: []byte(value)}
		if mod != nil {
			mod(&args)
		}
		var v adminapi.SecretVersion
		err := a.Call(adminapi.OpSecretSet, args, &v)
		return v, err
	}
	get := func(name string, version int64) (adminapi.SecretValue, error) {
		var v adminapi.SecretValue
		err := a.Call(adminapi.OpSecretGet, adminapi.SecretGet{Token: "app", UserPIN: user, Name: name, Version: version}, &v)
		return v, err
	}
	for i, val := range []string{"s3cr3t-one", "s3cr3t-two", "s3cr3t-three"} {
		v, err := set("db", val, func(s *adminapi.SecretSet) { s.ContentType = "text/plain" })
		if err != nil || v.Version != int64(i+1) || !v.Enabled || v.ContentType != "text/plain" {
			t.Fatalf("set %d: %+v %v", i+1, v, err)
		}
	}
	if v, err := get("db", 0); err != nil || string(v.Value) != "s3cr3t-three" || v.Version != 3 {
		t.Fatalf("get newest: %+v %v", v, err)
	}
	if v, err := get("db", 1); err != nil || string(v.Value) != "s3cr3t-one" {
		t.Fatalf("get version 1: %+v %v", v, err)
	}
	if _, err := get("db", 7); code(t, err) != adminapi.CodeNotFound {
		t.Fatalf("get version 7: %v", err)
	}
	if _, err := get("nope", 0); code(t, err) != adminapi.CodeNotFound {
		t.Fatalf("get a missing secret: %v", err)
	}
	if _, err := set("off", "x", func(s *adminapi.SecretSet) { s.Disabled = true }); err != nil {
		t.Fatal(err)
	}
	if _, err := get("off", 0); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("get a disabled version: %v", err)
	}
	if _, err := set("x", "y", func(s *adminapi.SecretSet) { s.Expires = 1 }); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("set already expired: %v", err)
	}
	if _, err := set("big", string(make([]byte, adminapi.MaxSecretSize+1)), nil); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("set too big: %v", err)
	}

	// A PKCS#11 client sees the versions as private data objects, reads
	// their value and attributes, and can expire one.
	cl := d.dial(t)
	h := cl.Open(uint64(tok.Slot), true)
	if n := len(cl.Find(h, A(ck.CKA_LABEL, []byte("db")))); n != 0 {
		t.Fatalf("a public session finds %d private versions", n)
	}
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	objs := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_DATA), A(ck.CKA_LABEL, []byte("db")), A(ck.CKA_APPLICATION, []byte(ck.SecretApplication)))
	if len(objs) != 3 {
		t.Fatalf("client finds %d versions", len(objs))
	}
	rv, ans := cl.Get(h, objs[1], ck.CKA_VALUE, ck.CKA_HSMEMU_SECRET_VERSION, ck.CKA_HSMEMU_SECRET_ENABLED)
	if rv != ck.CKR_OK || string(ans[0].Value) != "s3cr3t-two" || !bytes.Equal(ans[1].Value, keystore.Ulong(2)) || !bytes.Equal(ans[2].Value, keystore.Bool(true)) {
		t.Fatalf("client reads version 2: %#x %+v", rv, ans)
	}
	past := uint64(time.Now().Add(-time.Minute).Unix())
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(objs[2]), T(AU(ck.CKA_HSMEMU_SECRET_EXPIRES, past)))
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(objs[2]), T(AU(ck.CKA_HSMEMU_SECRET_VERSION, 9)))
	if _, err := get("db", 0); code(t, err) != adminapi.CodeRefused {
		t.Fatalf("get an expired version: %v", err)
	}
	// A client's own data object, deleted, is not a secret of that name.
	plain := cl.Create(h, DataObject("plain", true, true, "not a secret")...)
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(plain))
	if _, err := set("plain", "now a secret", nil); err != nil {
		t.Fatalf("set over a deleted data object's label: %v", err)
	}
	var deleted []adminapi.Secret
	if err := a.Call(adminapi.OpSecretList, adminapi.SecretList{Token: "app", UserPIN: user, Deleted: true}, &deleted); err != nil || len(deleted) != 0 {
		t.Fatalf("deleted secrets: %+v %v", deleted, err)
	}
	a.Call(adminapi.OpSecretDelete, adminapi.SecretRef{Token: "app", UserPIN: user, Name: "plain"}, nil)
	if err := a.Call(adminapi.OpSecretPurge, adminapi.SecretPurge{Token: "app", SOPIN: so, Name: "plain"}, nil); err != nil {
		t.Fatal(err)
	}
	if del, _ := d.st.Store.DeletedObjects(ctx, keystoreUUID(t, d, "app")); len(del) != 1 {
		t.Fatalf("the client's deleted data object went with the secret's purge: %d left", len(del))
	}

	// List, versions, delete, recover, purge.
	var list []adminapi.Secret
	if err := a.Call(adminapi.OpSecretList, adminapi.SecretList{Token: "app", UserPIN: user}, &list); err != nil || len(list) != 2 ||
		list[0].Name != "db" || list[0].Versions != 3 || list[0].Current.Version != 3 || list[1].Name != "off" {
		t.Fatalf("list: %+v %v", list, err)
	}
	ref := adminapi.SecretRef{Token: "app", UserPIN: user, Name: "db"}
	var vs []adminapi.SecretVersion
	if err := a.Call(adminapi.OpSecretVersions, ref, &vs); err != nil || len(vs) != 3 || vs[2].Expires == nil {
		t.Fatalf("versions: %+v %v", vs, err)
	}
	if err := a.Call(adminapi.OpSecretDelete, ref, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(cl.Find(h, A(ck.CKA_LABEL, []byte("db")))); n != 0 {
		t.Fatalf("client finds %d versions of a deleted secret", n)
	}
	if _, err := set("db", "new", nil); code(t, err) != adminapi.CodeDeleted {
		t.Fatalf("set a deleted secret: %v", err)
	}
	if err := a.Call(adminapi.OpSecretRecover, ref, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := get("db", 1); err != nil || string(v.Value) != "s3cr3t-one" {
		t.Fatalf("recovered version 1: %+v %v", v, err)
	}
	a.Call(adminapi.OpSecretDelete, ref, nil)
	if err := a.Call(adminapi.OpSecretPurge, adminapi.SecretPurge{Token: "app", SOPIN: so, Name: "db"}, nil); err != nil {
		t.Fatal(err)
	}
	if v, err := set("db", "fresh", nil); err != nil || v.Version != 1 {
		t.Fatalf("set after purge: %+v %v", v, err)
	}
	got := events(t, d, "s3cr3t-one", "s3cr3t-two", "s3cr3t-three", string(user), string(so))
	for _, e := range []string{"secret.set", "secret.get", "secret.get.refused", "secret.delete", "secret.recover", "secret.purge"} {
		found := false
		for _, g := range got {
			found = found || g == e
		}
		if !found {
			t.Errorf("no %s in the audit log", e)
		}
	}
}

func keystoreUUID(t *testing.T, d *testDaemon, label string) keystore.UUID {
	t.Helper()
	ti, err := d.st.Store.TokenByLabel(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	return ti.UUID
}
