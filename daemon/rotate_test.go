package daemon

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
)

// TestRotateTokenWhileSigning: a client signs in a loop, and another
// writes and reads private objects, while the token's data key is rotated
// again and again: no call fails, and after a restart every object opens
// and both PINs log in.
func TestRotateTokenWhileSigning(t *testing.T) {
	d := startDaemon(t, EngineConfig{})
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
	hs := signer.open(slot, false)
	signer.must(ck.CKR_OK, "C_Login", U(hs), U(ck.CKU_USER), S(string(user)))
	priv := signer.find(hs, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), A(ck.CKA_LABEL, []byte("signer")))[0]
	writer := d.dial(t)
	hw := writer.open(slot, true)
	writer.must(ck.CKR_OK, "C_Login", U(hw), U(ck.CKU_USER), S(string(user)))

	var stop atomic.Bool
	var signatures, writes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if rv, _ := signer.call("C_SignInit", U(hs), mech(ck.CKM_ECDSA), U(priv)); rv != ck.CKR_OK {
				t.Errorf("C_SignInit during rotation: %#x", rv)
				return
			}
			if rv, _ := signer.call("C_Sign", U(hs), B(make([]byte, 32)), Out(128)); rv != ck.CKR_OK {
				t.Errorf("C_Sign during rotation: %#x", rv)
				return
			}
			signatures.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 0; !stop.Load(); n++ {
			rv, out := writer.call("C_CreateObject", U(hw), T(dataObject(fmt.Sprint("w", n), true, true, fmt.Sprint("written-", n))...), none())
			if rv != ck.CKR_OK {
				t.Errorf("C_CreateObject during rotation: %#x", rv)
				return
			}
			if rv, ans := writer.get(hw, out[2].Ulong, ck.CKA_VALUE); rv != ck.CKR_OK || string(ans[0].Value) != fmt.Sprint("written-", n) {
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
	d.start(t, EngineConfig{})
	a = adminDial(t, d)
	for i := range 20 {
		var v adminapi.SecretValue
		if err := a.Call(adminapi.OpSecretGet, adminapi.SecretGet{Token: "rot", UserPIN: user, Name: fmt.Sprint("s", i)}, &v); err != nil || string(v.Value) != fmt.Sprint("value-", i) {
			t.Fatalf("secret %d after restart: %q %v", i, v.Value, err)
		}
	}
	cl := d.dial(t)
	h := cl.open(slot, true)
	cl.must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_SO), S(string(so)))
	cl.must(ck.CKR_OK, "C_Logout", U(h))
	cl.must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(string(user)))
	objs := cl.find(h, AU(ck.CKA_CLASS, ck.CKO_DATA))
	if len(objs) != 20+int(writes.Load()) {
		t.Fatalf("%d data objects after restart, want %d", len(objs), 20+writes.Load())
	}
	for _, o := range objs {
		if rv, _ := cl.get(h, o, ck.CKA_VALUE); rv != ck.CKR_OK {
			t.Fatalf("data object after restart: %#x", rv)
		}
	}
	priv = cl.find(h, AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY))[0]
	cl.must(ck.CKR_OK, "C_SignInit", U(h), mech(ck.CKM_ECDSA), U(priv))
	cl.must(ck.CKR_OK, "C_Sign", U(h), B(make([]byte, 32)), Out(128))
}
