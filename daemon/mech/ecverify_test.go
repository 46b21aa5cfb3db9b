package mech

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/internal/ecverify"
)

// A P-256 key gets its table on its ecTableAfter-th verification, not
// before, built in the background; every answer stays the same meanwhile
// and after: a valid signature verifies, a changed one does not.
func TestECDSAVerifyTableAfterUse(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, _ := priv.PublicKey.Bytes()
	k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC, map[uint64][]byte{
		ck.CKA_EC_PARAMS: ECParams("P-256"), ck.CKA_EC_POINT: pointDER(point),
	})
	digest := sha256.Sum256([]byte("table"))
	r, s, err := ecdsa.Sign(rand.Reader, priv, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	bad := append([]byte(nil), sig...)
	bad[40] ^= 1
	m := &wire.Mechanism{Type: ck.CKM_ECDSA}
	// Keys of other tests (Wycheproof's, with their tables) that are
	// garbage by now must not hold the bound.
	for ecverify.Tables() >= ecTableMax {
		runtime.GC()
		runtime.Gosched()
	}
	v, err := ecVerifyKeyOf(k, elliptic.P256())
	if err != nil || v == nil {
		t.Fatalf("no OpenSSL key: %v", err)
	}
	check := func(i int) {
		t.Helper()
		if err := verifyOnce(k, m, digest[:], sig); err != nil {
			t.Fatalf("verification %d: %v", i, err)
		}
		if err := verifyOnce(k, m, digest[:], bad); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
			t.Fatalf("verification %d of a changed signature: %v", i, err)
		}
	}
	// Each check is two verifications.
	for i := 0; i < ecTableAfter/2-1; i++ {
		check(i)
	}
	if v.key.Precomputed() || v.uses.Load() != ecTableAfter-2 {
		t.Fatalf("after %d verifications: table %v", v.uses.Load(), v.key.Precomputed())
	}
	check(ecTableAfter/2 - 1) // the ecTableAfter-th starts the build
	for !v.key.Precomputed() {
		if !ecTableBuilding.Load() && !v.key.Precomputed() {
			t.Fatal("no table built and none being built")
		}
		runtime.Gosched()
	}
	check(ecTableAfter)
	// A key's own private half verifies the same way.
	pk := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_EC, map[uint64][]byte{
		ck.CKA_EC_PARAMS: ECParams("P-256"), ck.CKA_VALUE: priv.D.FillBytes(make([]byte, 32)),
	})
	if err := verifyOnce(pk, m, digest[:], sig); err != nil {
		t.Fatalf("with the private key object: %v", err)
	}
	if err := verifyOnce(k, m, digest[:], sig[:63]); codeOf(err) != ck.CKR_SIGNATURE_LEN_RANGE {
		t.Fatalf("short signature: %v", err)
	}
}
