package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// Authenticated wrapping (PKCS#11 3.2, C_WrapKeyAuthenticated and
// C_UnwrapKeyAuthenticated with AES-GCM) through the engine's calls.

// gcmWrapMech is CKM_AES_GCM with a wrap's message parameter: the IV
// made by the token, the tag an output of tagBytes.
func gcmWrapMech(iv []byte, fixed, gen, tagBytes uint64) wire.Value {
	v := gcmMsg(iv, fixed, gen, tagBytes)
	v.Ulong = ck.CKM_AES_GCM
	return v
}

// gcmUnwrapMech is CKM_AES_GCM with an unwrap's: the IV and the tag in.
func gcmUnwrapMech(iv, tag []byte) wire.Value {
	v := gcmMsgIn(iv, tag)
	v.Ulong = ck.CKM_AES_GCM
	return v
}

func TestWrapKeyAuthenticated(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	kekValue := bytes.Repeat([]byte{0x42}, 32)
	kek := cl.secret(h, ck.CKK_AES, kekValue, AB(ck.CKA_WRAP, true), AB(ck.CKA_UNWRAP, true))
	keyValue := bytes.Repeat([]byte{0x17}, 32)
	k := cl.secret(h, ck.CKK_AES, keyValue, AB(ck.CKA_EXTRACTABLE, true))
	ivBuf := make([]byte, 12)
	aad := []byte("key-id=7;purpose=backup")

	// A size query writes nothing back and uses no IV.
	q := cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), U(kek), U(k), B(aad), SizeQuery())
	if q[5].Length != 32 || written(q[1], "pTag") != nil || written(q[1], "pIv") != nil {
		t.Fatalf("size query: length %d, parameter %+v", q[5].Length, q[1].Param)
	}
	short := cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), U(kek), U(k), B(aad), Out(31))
	if short[5].Length != 32 || written(short[1], "pTag") != nil {
		t.Fatalf("short buffer: length %d", short[5].Length)
	}

	wrap := func(gen uint64) (iv, ct, tag []byte) {
		t.Helper()
		out := cl.Must(ck.CKR_OK, "C_WrapKeyAuthenticated", U(h), gcmWrapMech(ivBuf, 0, gen, 16), U(kek), U(k), B(aad), Out(64))
		return written(out[1], "pIv"), bytes.Clone(out[5].Bytes), written(out[1], "pTag")
	}
	iv, ct, tag := wrap(ck.CKG_GENERATE)
	iv2, _, _ := wrap(ck.CKG_GENERATE_COUNTER)
	if len(iv) != 12 || len(iv2) != 12 || binary.BigEndian.Uint64(iv2[4:]) != binary.BigEndian.Uint64(iv[4:])+1 {
		t.Fatalf("counter IVs %x then %x", iv, iv2)
	}
	iv3, _, _ := wrap(ck.CKG_GENERATE_RANDOM)
	if bytes.Equal(iv3, iv) || bytes.Equal(iv3, iv2) {
		t.Fatalf("a random IV repeats a counter one: %x", iv3)
	}
	// The wrapped key is the key's value sealed under the KEK with the AAD.
	b, _ := aes.NewCipher(kekValue)
	g, _ := cipher.NewGCM(b)
	if plain, err := g.Open(nil, iv, append(bytes.Clone(ct), tag...), aad); err != nil || !bytes.Equal(plain, keyValue) {
		t.Fatalf("crypto/cipher opens %x, %v", plain, err)
	}

	u := cl.Must(ck.CKR_OK, "C_UnwrapKeyAuthenticated", U(h), gcmUnwrapMech(iv, tag), U(kek), B(ct), T(readable(ck.CKK_AES)...), B(aad), None())[6].Ulong
	if got := cl.value(h, u); !bytes.Equal(got, keyValue) {
		t.Fatalf("unwrapped %x", got)
	}
	_, ans := cl.Get(h, u, ck.CKA_LOCAL, ck.CKA_ALWAYS_SENSITIVE, ck.CKA_NEVER_EXTRACTABLE)
	if ans[0].Value[0] != 0 || ans[1].Value[0] != 0 || ans[2].Value[0] != 0 {
		t.Errorf("an unwrapped key says %+v", ans)
	}

	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	for _, c := range []struct {
		name          string
		iv, tag, ct   []byte
		aad           []byte
		want          uint64
		wantTemplated bool
	}{
		{name: "flipped ciphertext", iv: iv, tag: tag, ct: flip(ct, 5), aad: aad, want: ck.CKR_WRAPPED_KEY_INVALID},
		{name: "flipped tag", iv: iv, tag: flip(tag, 15), ct: ct, aad: aad, want: ck.CKR_WRAPPED_KEY_INVALID},
		{name: "other AAD", iv: iv, tag: tag, ct: ct, aad: flip(aad, 0), want: ck.CKR_WRAPPED_KEY_INVALID},
		{name: "no AAD", iv: iv, tag: tag, ct: ct, want: ck.CKR_WRAPPED_KEY_INVALID},
		{name: "other IV", iv: iv2, tag: tag, ct: ct, aad: aad, want: ck.CKR_WRAPPED_KEY_INVALID},
		{name: "no tag", iv: iv, ct: ct, aad: aad, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "short tag", iv: iv, tag: tag[:8], ct: ct, aad: aad, want: ck.CKR_MECHANISM_PARAM_INVALID},
	} {
		if rv, _ := cl.Call("C_UnwrapKeyAuthenticated", U(h), gcmUnwrapMech(c.iv, c.tag), U(kek), B(c.ct), T(readable(ck.CKK_AES)...), B(c.aad), None()); rv != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, rv, c.want)
		}
	}
	if n := len(cl.Find(h, AB(ck.CKA_TOKEN, false), AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))); n != 3 {
		t.Errorf("%d secret keys after the refused unwraps, want 3", n)
	}

	// The wrapping policy and the parameter's rules.
	locked := cl.secret(h, ck.CKK_AES, keyValue, AB(ck.CKA_EXTRACTABLE, false))
	noWrap := cl.secret(h, ck.CKK_AES, kekValue, AB(ck.CKA_WRAP, false), AB(ck.CKA_UNWRAP, false))
	for _, c := range []struct {
		name     string
		m        wire.Value
		kek, key uint64
		want     uint64
	}{
		{name: "unextractable key", m: gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), kek: kek, key: locked, want: ck.CKR_KEY_UNEXTRACTABLE},
		{name: "KEK without CKA_WRAP", m: gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), kek: noWrap, key: k, want: ck.CKR_KEY_FUNCTION_NOT_PERMITTED},
		{name: "the caller's IV", m: gcmWrapMech(ivBuf, 0, ck.CKG_NO_GENERATE, 16), kek: kek, key: k, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "tag of 4 bytes", m: gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 4), kek: kek, key: k, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "not an AEAD", m: wire.Value{Ulong: ck.CKM_AES_KEY_WRAP_KWP, Param: &wire.Param{}}, kek: kek, key: k, want: ck.CKR_MECHANISM_INVALID},
		{name: "ChaCha20-Poly1305", m: wire.Value{Ulong: ck.CKM_CHACHA20_POLY1305, Param: &wire.Param{}}, kek: kek, key: k, want: ck.CKR_MECHANISM_INVALID},
		{name: "no such key", m: gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), kek: kek, key: 9999, want: ck.CKR_KEY_HANDLE_INVALID},
		{name: "no such KEK", m: gcmWrapMech(ivBuf, 0, ck.CKG_GENERATE, 16), kek: 9999, key: k, want: ck.CKR_WRAPPING_KEY_HANDLE_INVALID},
	} {
		if rv, _ := cl.Call("C_WrapKeyAuthenticated", U(h), c.m, U(c.kek), U(c.key), B(aad), Out(64)); rv != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, rv, c.want)
		}
	}
	chacha := gcmUnwrapMech(iv, tag)
	chacha.Ulong = ck.CKM_CHACHA20_POLY1305
	if rv, _ := cl.Call("C_UnwrapKeyAuthenticated", U(h), chacha, U(kek), B(ct), T(readable(ck.CKK_AES)...), B(aad), None()); rv != ck.CKR_MECHANISM_INVALID {
		t.Errorf("unwrap with ChaCha20-Poly1305: %#x", rv)
	}
	if rv, _ := cl.Call("C_UnwrapKeyAuthenticated", U(h), gcmUnwrapMech(iv, tag), U(noWrap), B(ct), T(readable(ck.CKK_AES)...), B(aad), None()); rv != ck.CKR_KEY_FUNCTION_NOT_PERMITTED {
		t.Errorf("unwrap under a key without CKA_UNWRAP: %#x", rv)
	}
}
