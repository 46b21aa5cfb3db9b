package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
)

// C_WrapKeyAuthenticated's size query may ask for the whole result
// (protocol version 6, calls.Prefetches): it is sealed then, under one
// IV of the token's, and the wrapped key, the IV and the tag come with
// the length, for the module to hold and hand over to the follow-up with
// the same arguments. Nothing stays in the daemon: a call that comes
// after it, with the same arguments or others, is sealed anew under the
// next IV. A plain size query still uses no IV.
func TestWrapKeyAuthenticatedPrefetch(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	kekValue := bytes.Repeat([]byte{0x42}, 32)
	kek := cl.secret(h, ck.CKK_AES, kekValue, AB(ck.CKA_WRAP, true), AB(ck.CKA_UNWRAP, true))
	keyValue := bytes.Repeat([]byte{0x17}, 32)
	k := cl.secret(h, ck.CKK_AES, keyValue, AB(ck.CKA_EXTRACTABLE, true))
	b, _ := aes.NewCipher(kekValue)
	g, _ := cipher.NewGCM(b)
	counter := func(iv []byte) uint64 { return binary.BigEndian.Uint64(iv[4:]) }
	mech := gcmWrapMech(make([]byte, 12), 0, ck.CKG_GENERATE_COUNTER, 16)
	opens := func(what string, iv, ct, tag []byte, aad string) {
		t.Helper()
		if plain, err := g.Open(nil, iv, append(bytes.Clone(ct), tag...), []byte(aad)); err != nil || !bytes.Equal(plain, keyValue) {
			t.Fatalf("%s: crypto/cipher opens %x, %v", what, plain, err)
		}
	}

	// The prefetch: the whole result, under a counter IV.
	q := cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), mech, U(kek), U(k), S("aad"), prefetch())
	iv1, tag1 := bytes.Clone(written(q[1], "pIv")), bytes.Clone(written(q[1], "pTag"))
	if q[5].Length != 32 || len(q[5].Bytes) != 32 || len(iv1) != 12 || len(tag1) != 16 {
		t.Fatalf("prefetch: %d bytes of %d, IV %x, tag %x", len(q[5].Bytes), q[5].Length, iv1, tag1)
	}
	opens("prefetch", iv1, q[5].Bytes, tag1, "aad")
	// It unwraps as any wrap does.
	u := cl.Must(ck.CKR_OK, "C_UnwrapKeyAuthenticated", U(h), gcmUnwrapMech(iv1, tag1), U(kek), B(q[5].Bytes),
		T(readable(ck.CKK_AES)...), S("aad"), None())[6].Ulong
	if got := cl.value(h, u); !bytes.Equal(got, keyValue) {
		t.Fatalf("unwrapped %x", got)
	}

	// A plain size query uses no IV; every sealing call after the
	// prefetch, with its arguments or others, uses the next.
	cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), mech, U(kek), U(k), S("aad"), SizeQuery())
	prev := iv1
	for _, aad := range []string{"aad", "other"} {
		out := cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), mech, U(kek), U(k), S(aad), Out(64))
		iv := written(out[1], "pIv")
		if counter(iv) != counter(prev)+1 {
			t.Fatalf("%s: IV %x after %x", aad, iv, prev)
		}
		opens(aad, iv, out[5].Bytes, written(out[1], "pTag"), aad)
		prev = bytes.Clone(iv)
	}
	q = cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), mech, U(kek), U(k), S("aad"), prefetch())
	if iv := written(q[1], "pIv"); counter(iv) != counter(prev)+1 {
		t.Fatalf("second prefetch: IV %x after %x", iv, prev)
	}

	// A random IV too; and a refused wrap refuses its prefetch.
	q = cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(make([]byte, 12), 0, ck.CKG_GENERATE_RANDOM, 16),
		U(kek), U(k), S("aad"), prefetch())
	opens("random", written(q[1], "pIv"), q[5].Bytes, written(q[1], "pTag"), "aad")
	locked := cl.secret(h, ck.CKK_AES, keyValue, AB(ck.CKA_EXTRACTABLE, false))
	cl.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKeyAuthenticated", U(h), mech, U(kek), U(locked), S("aad"), prefetch())
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(make([]byte, 12), 0, ck.CKG_NO_GENERATE, 16),
		U(kek), U(k), S("aad"), prefetch())
}
