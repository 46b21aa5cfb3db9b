package mech

import (
	"bytes"
	"crypto/hmac"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// An HMAC's operations clone the keyed state the key keeps: operations
// on one key, interleaved, each get the MAC of their own input, and the
// kept state never takes any of it (a long key, hashed first, too).
func TestHMACKeptState(t *testing.T) {
	for typ, hm := range hmacs {
		for _, n := range []int{32, 300} {
			v := bytes.Repeat([]byte{0x4b}, n)
			k := testKeyObject(t, ck.CKO_SECRET_KEY, ck.CKK_GENERIC_SECRET, map[uint64][]byte{ck.CKA_VALUE: v})
			want := func(in []byte) []byte {
				h := hmac.New(hashes[hm.hash], v)
				h.Write(in)
				return h.Sum(nil)
			}
			m := &wire.Mechanism{Type: typ}
			for round := range 3 {
				a, err := mechanisms[typ].sign(k, m)
				if err != nil {
					t.Fatal(err)
				}
				b, err := mechanisms[typ].sign(k, m)
				if err != nil {
					t.Fatal(err)
				}
				a.Update([]byte("first"))
				b.Update([]byte("second, longer than the first"))
				a.Update([]byte(" and more"))
				sa, _ := a.Sign()
				sb, _ := b.Sign()
				if !bytes.Equal(sa, want([]byte("first and more"))) || !bytes.Equal(sb, want([]byte("second, longer than the first"))) {
					t.Fatalf("mechanism %#x, %d-byte key, round %d: a MAC is not its input's", typ, n, round)
				}
				// Verify takes the same path.
				vo, err := mechanisms[typ].verify(k, m)
				if err != nil {
					t.Fatal(err)
				}
				vo.Update([]byte("first and more"))
				if err := vo.Verify(sa); err != nil {
					t.Fatalf("mechanism %#x: verify: %v", typ, err)
				}
			}
		}
	}
}

// An EC key's curve is kept with it: the second Init on a key answers
// as the first, for every curve, and a key whose CKA_EC_PARAMS names no
// curve keeps its refusal.
func TestWeierstrassKept(t *testing.T) {
	for _, name := range []string{"P-224", "P-256", "P-384", "P-521", "secp256k1"} {
		k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC, map[uint64][]byte{ck.CKA_EC_PARAMS: ECParams(name)})
		c1, k1, err1 := weierstrass(k)
		c2, k2, err2 := weierstrass(k)
		c3, k3, err3 := readWeierstrass(k)
		if err1 != nil || err2 != nil || err3 != nil || c1 != c3 || c2 != c3 || k1 != k3 || k2 != k3 {
			t.Errorf("%s: %v %v %v / %v %v %v", name, c1, k1, err1, c2, k2, err2)
		}
		if k1 != (name == "secp256k1") {
			t.Errorf("%s: secp256k1 %v", name, k1)
		}
	}
	bad := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_EC, map[uint64][]byte{ck.CKA_EC_PARAMS: {0x06, 0x03, 0x2b, 0x65, 0x70}})
	for range 2 {
		if _, _, err := weierstrass(bad); err == nil {
			t.Fatal("Ed25519's OID taken for a Weierstrass curve")
		}
	}
}
