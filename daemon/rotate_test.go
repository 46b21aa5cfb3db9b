package daemon

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
)

// TestRotateTokenWhileSigning: a client signs in a loop, and another
// writes and reads private objects, while the token's data key is rotated
// again and again: no call fails, and after a restart every object opens
// and both PINs log in.
func TestRotateTokenWhileSigning(t *testing.T) {
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("rot-so-123"), []byte("rot-user-123")
	var tok adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "rot", Tier: "premium", SOPIN: so, UserPIN: user}, &tok); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "rot", UserPIN: user, Type: "ec-p256", KeyOptions: adminapi.KeyOptions{Label: "signer"}}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := a.Call(adminapi.OpSecretSet, adminapi.SecretSet{Token: "rot", UserPIN: user, Name: fmt.Sprint("s", i), Value: []byte(fmt.Sprint("value-", i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	slot := uint64(tok.Slot)

	signer := d.dial(t)
	hs := signer.Open(slot, false)
	signer.Must(ck.CKR_OK, "C_Login", U(hs), U(ck.CKU_USER), S(string(user)))
	priv := signer.Find(hs, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), A(ck.CKA_LABEL, []byte("signer")))[0]
	writer := d.dial(t)
	hw := writer.Open(slot, true)
	writer.Must(ck.CKR_OK, "C_Login", U(hw), U(ck.CKU_USER), S(string(user)))

	var stop atomic.Bool
	var signatures, writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if rv, _ := signer.Call("C_SignInit", U(hs), M(ck.CKM_ECDSA), U(priv)); rv != ck.CKR_OK {
				t.Errorf("C_SignInit during rotation: %#x", rv)
				return
			}
			if rv, _ := signer.Call("C_Sign", U(hs), B(make([]byte, 32)), Out(128)); rv != ck.CKR_OK {
				t.Errorf("C_Sign during rotation: %#x", rv)
				return
			}
			signatures.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 0; !stop.Load(); n++ {
			rv, out := writer.Call("C_CreateObject", U(hw), T(DataObject(fmt.Sprint("w", n), true, true, fmt.Sprint("written-", n))...), None())
			if rv != ck.CKR_OK {
				t.Errorf("C_CreateObject during rotation: %#x", rv)
				return
			}
			if rv, ans := writer.Get(hw, out[2].Ulong, ck.CKA_VALUE); rv != ck.CKR_OK || string(ans[0].Value) != fmt.Sprint("written-", n) {
				t.Errorf("read back during rotation: %#x", rv)
				return
			}
			writes.Add(1)
		}
	}()
	var gens []uint32
	for range 4 {
		var res adminapi.Rotated
		var reports int
		if err := a.CallProgress(adminapi.OpRotateToken, adminapi.RotateToken{Label: "rot", SOPIN: so, UserPIN: user}, &res, func(adminapi.Progress) { reports++ }); err != nil {
			t.Fatal(err)
		}
		if res.Resealed < 21 || reports == 0 {
			t.Fatalf("rotation: %+v, %d progress reports", res, reports)
		}
		gens = append(gens, res.DataGeneration)
	}
	stop.Store(true)
	wg.Wait()
	if t.Failed() {
		return
	}
	if signatures.Load() == 0 || writes.Load() == 0 {
		t.Fatalf("%d signatures, %d writes during the rotations", signatures.Load(), writes.Load())
	}
	t.Logf("%d signatures and %d writes during 4 rotations (generations %v)", signatures.Load(), writes.Load(), gens)
	if err := a.Call(adminapi.OpRotateToken, adminapi.RotateToken{Label: "rot", SOPIN: so}, nil); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("rotation without the user PIN: %v", err)
	}

	// A cold daemon opens everything with the new key.
	a.Close()
	d.stop()
	d.start(t, token.Config{})
	a = adminDial(t, d)
	for i := range 20 {
		var v adminapi.SecretValue
		if err := a.Call(adminapi.OpSecretGet, adminapi.SecretGet{Token: "rot", UserPIN: user, Name: fmt.Sprint("s", i)}, &v); err != nil || string(v.Value) != fmt.Sprint("value-", i) {
			t.Fatalf("secret %d after restart: %q %v", i, v.Value, err)
		}
	}
	cl := d.dial(t)
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_SO), S(string(so)))
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	objs := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_DATA))
	if len(objs) != 20+int(writes.Load()) {
		t.Fatalf("%d data objects after restart, want %d", len(objs), 20+writes.Load())
	}
	for _, o := range objs {
		if rv, _ := cl.Get(h, o, ck.CKA_VALUE); rv != ck.CKR_OK {
			t.Fatalf("data object after restart: %#x", rv)
		}
	}
	priv = cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY))[0]
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), B(make([]byte, 32)), Out(128))
}

// TestRotateMasterWhileSigning: the master key is rotated while a client
// signs, another writes private objects and a third reads a public one; no
// call fails, and after a restart the new master alone opens everything,
// both PINs log in, the audit chain verifies, and a key backup made before
// the rotation restores.
func TestRotateMasterWhileSigning(t *testing.T) {
	d := startDaemon(t, token.Config{})
	a := adminDial(t, d)
	so, user := []byte("mrot-so-12"), []byte("mrot-user-12")
	var tok adminapi.Token
	if err := a.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "m", Tier: "premium", SOPIN: so, UserPIN: user}, &tok); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyGenerate, adminapi.KeyGenerate{Token: "m", UserPIN: user, Type: "ec-p256", KeyOptions: adminapi.KeyOptions{Label: "signer"}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpSecretSet, adminapi.SecretSet{Token: "m", UserPIN: user, Name: "s", Value: []byte("secret-value-1")}, nil); err != nil {
		t.Fatal(err)
	}
	var bk adminapi.KeyBackup
	if err := a.Call(adminapi.OpKeyBackup, adminapi.KeyRef{Token: "m", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "signer"}}, &bk); err != nil {
		t.Fatal(err)
	}
	slot := uint64(tok.Slot)
	signer := d.dial(t)
	hs := signer.Open(slot, true)
	signer.Must(ck.CKR_OK, "C_Login", U(hs), U(ck.CKU_USER), S(string(user)))
	signer.Create(hs, DataObject("public", true, false, "public-value")...)
	priv := signer.Find(hs, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), A(ck.CKA_LABEL, []byte("signer")))[0]
	writer := d.dial(t)
	hw := writer.Open(slot, true)
	writer.Must(ck.CKR_OK, "C_Login", U(hw), U(ck.CKU_USER), S(string(user)))
	reader := d.dial(t)
	hr := reader.Open(slot, false)
	publicR := reader.Find(hr, A(ck.CKA_LABEL, []byte("public")))[0]

	// Begun and aborted: nothing changes.
	var begun adminapi.MasterBegun
	if err := a.Call(adminapi.OpRotateMasterBegin, adminapi.RotateMasterBegin{}, &begun); err != nil || begun.Generation != 2 {
		t.Fatalf("begin: %+v %v", begun, err)
	}
	if err := a.Call(adminapi.OpRotateMasterBegin, adminapi.RotateMasterBegin{}, nil); code(t, err) != adminapi.CodeInUse {
		t.Fatalf("begin twice: %v", err)
	}
	if err := a.Call(adminapi.OpRotateMasterAbort, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpRotateMasterFinish, nil, nil); code(t, err) != adminapi.CodeNotFound {
		t.Fatalf("finish after abort: %v", err)
	}

	var stop atomic.Bool
	var signatures, writes, reads atomic.Int64
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if rv, _ := signer.Call("C_SignInit", U(hs), M(ck.CKM_ECDSA), U(priv)); rv != ck.CKR_OK {
				t.Errorf("C_SignInit during the rotation: %#x", rv)
				return
			}
			if rv, _ := signer.Call("C_Sign", U(hs), B(make([]byte, 32)), Out(128)); rv != ck.CKR_OK {
				t.Errorf("C_Sign during the rotation: %#x", rv)
				return
			}
			signatures.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 0; !stop.Load(); n++ {
			if rv, _ := writer.Call("C_CreateObject", U(hw), T(DataObject(fmt.Sprint("w", n), true, n%2 == 0, fmt.Sprint("written-", n))...), None()); rv != ck.CKR_OK {
				t.Errorf("C_CreateObject during the rotation: %#x", rv)
				return
			}
			writes.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if rv, ans := reader.Get(hr, publicR, ck.CKA_VALUE); rv != ck.CKR_OK || string(ans[0].Value) != "public-value" {
				t.Errorf("read during the rotation: %#x", rv)
				return
			}
			if rv, _ := reader.Call("C_GetTokenInfo", U(slot), None()); rv != ck.CKR_OK {
				t.Errorf("C_GetTokenInfo during the rotation: %#x", rv)
				return
			}
			reads.Add(1)
		}
	}()
	if err := a.Call(adminapi.OpRotateMasterBegin, adminapi.RotateMasterBegin{}, &begun); err != nil {
		t.Fatal(err)
	}
	var reports int
	var rotated adminapi.MasterRotated
	err := a.CallProgress(adminapi.OpRotateMasterFinish, nil, &rotated, func(adminapi.Progress) { reports++ })
	stop.Store(true)
	wg.Wait()
	if err != nil || rotated.Generation != 2 || reports == 0 {
		t.Fatalf("finish: %+v, %d reports, %v", rotated, reports, err)
	}
	if t.Failed() {
		return
	}
	t.Logf("%d signatures, %d writes, %d reads during the master key rotation", signatures.Load(), writes.Load(), reads.Load())
	var st adminapi.Status
	if err := a.Call(adminapi.OpStatus, nil, &st); err != nil || st.MasterGeneration != 2 || st.RotationPending {
		t.Fatalf("status: %+v %v", st, err)
	}

	// A restart: the new master alone.
	a.Close()
	d.stop()
	d.start(t, token.Config{})
	a = adminDial(t, d)
	rec, err := d.st.Store.RootRecord(ctx)
	if err != nil || rec.MasterGeneration != 2 || string(rec.Proof) != string(d.st.Root.DomainID()) || string(rec.DomainID) == string(rec.Proof) {
		t.Fatalf("root record: %+v %v", rec, err)
	}
	var v adminapi.SecretValue
	if err := a.Call(adminapi.OpSecretGet, adminapi.SecretGet{Token: "m", UserPIN: user, Name: "s"}, &v); err != nil || string(v.Value) != "secret-value-1" {
		t.Fatalf("secret after the rotation: %v", err)
	}
	cl := d.dial(t)
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_SO), S(string(so)))
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	if n := len(cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_DATA))); n < int(writes.Load())+2 {
		t.Fatalf("%d data objects after the rotation, want at least %d", n, writes.Load()+2)
	}
	for _, o := range cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_DATA)) {
		if rv, _ := cl.Get(h, o, ck.CKA_VALUE); rv != ck.CKR_OK {
			t.Fatalf("data object after the rotation: %#x", rv)
		}
	}
	priv = cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY))[0]
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA), U(priv))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), B(make([]byte, 32)), Out(128))
	var v2 adminapi.AuditVerify
	if err := a.Call(adminapi.OpAuditVerify, nil, &v2); err != nil || !v2.OK {
		t.Fatalf("audit across the rotation: %+v %v", v2, err)
	}
	ref := adminapi.KeyRef{Token: "m", UserPIN: user, KeySelector: adminapi.KeySelector{Key: "signer"}}
	a.Call(adminapi.OpKeyDelete, ref, nil)
	if err := a.Call(adminapi.OpKeyPurge, adminapi.KeyPurge{Token: "m", SOPIN: so, KeySelector: ref.KeySelector}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "m", UserPIN: user, Blob: bk.Blob}, nil); err != nil {
		t.Fatalf("restore a backup from before the rotation: %v", err)
	}

	// A second rotation, with key backups and audit records written
	// through it: each backup opens afterwards, and the chain holds.
	b := adminDial(t, d)
	var blobs [][]byte
	stop.Store(false)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			var kb adminapi.KeyBackup
			if err := b.Call(adminapi.OpKeyBackup, ref, &kb); err != nil {
				t.Errorf("key backup during the rotation: %v", err)
				return
			}
			blobs = append(blobs, kb.Blob)
		}
	}()
	if err := a.Call(adminapi.OpRotateMasterBegin, adminapi.RotateMasterBegin{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Call(adminapi.OpRotateMasterFinish, nil, &rotated); err != nil || rotated.Generation != 3 {
		t.Fatalf("second rotation: %+v %v", rotated, err)
	}
	stop.Store(true)
	wg.Wait()
	var kb adminapi.KeyBackup
	if err := b.Call(adminapi.OpKeyBackup, ref, &kb); err != nil {
		t.Fatal(err)
	}
	blobs = append(blobs, kb.Blob)
	for i, blob := range blobs {
		// Every backup opens: the key exists, so the restore stops there.
		if err := a.Call(adminapi.OpKeyRestore, adminapi.KeyRestore{Token: "m", UserPIN: user, Blob: blob}, nil); code(t, err) != adminapi.CodeExists {
			t.Fatalf("backup %d of %d after the second rotation: %v", i+1, len(blobs), err)
		}
	}
	if err := a.Call(adminapi.OpAuditVerify, nil, &v2); err != nil || !v2.OK {
		t.Fatalf("audit across two rotations: %+v %v", v2, err)
	}
}
