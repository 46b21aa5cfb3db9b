package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// A one-call message's size query may ask for the whole result (protocol
// version 5, calls.Prefetches): the output and, for an encryption, what
// the parameter gets back (the token's IV, the tag) come with the length,
// and the message stays, its output kept, as after any size query. The
// module holds them and ends the message when it hands them over
// (C_SessionCancel with calls.CancelCurrentMessage); a follow-up with
// other input comes to the daemon, which makes the message anew.
func TestMessagePrefetch(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	key := aesKey(cl, h, false)
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	b, _ := aes.NewCipher(aesValue)
	g, _ := cipher.NewGCM(b)
	fixed := []byte{0xCA, 0xFE, 0xF0, 0x0D, 9, 9, 9, 9, 9, 9, 9, 9}
	param := gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 16)
	counter := func(iv []byte) uint64 { return binary.BigEndian.Uint64(iv[4:]) }
	sealed := func(what string, iv, ct, tag []byte, aad, plain string) {
		t.Helper()
		if len(iv) != 12 || !bytes.Equal(iv[:4], fixed[:4]) {
			t.Fatalf("%s: IV %x", what, iv)
		}
		if want := g.Seal(nil, iv, []byte(plain), []byte(aad)); !bytes.Equal(append(append([]byte(nil), ct...), tag...), want) {
			t.Fatalf("%s: differs from crypto/cipher", what)
		}
	}

	// The prefetch: everything, and the message kept for the follow-up.
	q := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), param, S("aad"), S("plain"), prefetch())
	iv1 := append([]byte(nil), written(q[1], "pIv")...)
	if q[4].Length != 5 || len(q[4].Bytes) != 5 {
		t.Fatalf("prefetch: %d bytes of %d", len(q[4].Bytes), q[4].Length)
	}
	sealed("prefetch", iv1, q[4].Bytes, written(q[1], "pTag"), "aad", "plain")
	out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), param, S("aad"), S("plain"), Out(64))
	if !bytes.Equal(written(out[1], "pIv"), iv1) || !bytes.Equal(out[4].Bytes, q[4].Bytes) {
		t.Fatal("the follow-up did not get the prefetched message")
	}

	// Handed over by the module: it ends the message, and the process
	// goes on with the next IV.
	q = cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), param, S("aad"), S("plain"), prefetch())
	iv2 := append([]byte(nil), written(q[1], "pIv")...)
	if counter(iv2) != counter(iv1)+1 {
		t.Fatalf("IV %x after %x", iv2, iv1)
	}
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage))
	iv, ct, tag := encryptOne(cl, h, fixed, "aad", "next")
	if counter(iv) != counter(iv2)+1 {
		t.Fatalf("IV %x after the collected %x", iv, iv2)
	}
	sealed("after the collected message", iv, ct, tag, "aad", "next")

	// A follow-up with other input, or with the same input and other
	// associated data, never gets the prefetched IV: the message is made
	// anew with the next one.
	for _, other := range []struct{ aad, plain string }{{"aad", "other"}, {"AAD", "plain"}} {
		q = cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), param, S("aad"), S("plain"), prefetch())
		ivq := append([]byte(nil), written(q[1], "pIv")...)
		out = cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), param, S(other.aad), S(other.plain), Out(64))
		ivo := written(out[1], "pIv")
		if bytes.Equal(ivo, ivq) || counter(ivo) != counter(ivq)+1 {
			t.Fatalf("%q/%q: IV %x after the prefetch's %x", other.aad, other.plain, ivo, ivq)
		}
		sealed("other input", ivo, out[4].Bytes, written(out[1], "pTag"), other.aad, other.plain)
	}

	cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))

	// Decryption: the plaintext comes, and the message stays.
	cl.Must(ck.CKR_OK, "C_MessageDecryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	q = cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), gcmMsgIn(iv, tag), S("aad"), B(ct), prefetch())
	if string(q[4].Bytes) != "next" {
		t.Fatalf("prefetched plaintext %q", q[4].Bytes)
	}
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_MessageDecryptFinal", U(h))
	q = cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), gcmMsgIn(iv, tag), S("aad"), B(ct), prefetch())
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_MESSAGE_DECRYPT|calls.CancelCurrentMessage))
	cl.Must(ck.CKR_OK, "C_MessageDecryptFinal", U(h))

	// Signing: the signature comes, the follow-up gets the same.
	mac := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true), A(ck.CKA_VALUE, bytes.Repeat([]byte{7}, 32)))
	none := wire.Value{Param: &wire.Param{}}
	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_SHA256_HMAC), U(mac))
	q = cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("data"), prefetch())
	if len(q[3].Bytes) != 32 {
		t.Fatalf("prefetched signature: %d bytes", len(q[3].Bytes))
	}
	if out := cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("data"), Out(64)); !bytes.Equal(out[3].Bytes, q[3].Bytes) {
		t.Fatal("the follow-up did not get the prefetched signature")
	}
	cl.Must(ck.CKR_OK, "C_MessageSignFinal", U(h))
}

// The last part of a message signed in parts prefetches too: the
// signature comes with the length, and the message stays for the
// follow-up; one with other input is refused, as after any size query of
// a part (its measurement is in the message already).
func TestMessageNextPrefetch(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	mac := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true), A(ck.CKA_VALUE, bytes.Repeat([]byte{7}, 32)))
	none := wire.Value{Param: &wire.Param{}}
	last := func(spec wire.OutSpec) wire.Value { return wire.Value{Out: spec} }
	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_SHA256_HMAC), U(mac))

	cl.Must(ck.CKR_OK, "C_SignMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("in "), wire.Value{Null: true})
	q := cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("parts"), last(wire.OutSpec{Prefetch: true}))
	if q[3].Length != 32 || len(q[3].Bytes) != 32 {
		t.Fatalf("prefetch: %d bytes of %d", len(q[3].Bytes), q[3].Length)
	}
	out := cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("parts"), last(wire.OutSpec{Present: true, Capacity: 64}))
	if !bytes.Equal(out[3].Bytes, q[3].Bytes) {
		t.Fatal("the follow-up did not get the prefetched signature")
	}
	// Handed over by the module: the message ends.
	cl.Must(ck.CKR_OK, "C_SignMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("x"), last(wire.OutSpec{Prefetch: true}))
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_MESSAGE_SIGN|calls.CancelCurrentMessage))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_SignMessageNext", U(h), none, S("x"), last(wire.OutSpec{Present: true, Capacity: 64}))
	// Other input at the follow-up.
	cl.Must(ck.CKR_OK, "C_SignMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("x"), last(wire.OutSpec{Prefetch: true}))
	cl.Must(ck.CKR_ARGUMENTS_BAD, "C_SignMessageNext", U(h), none, S("y"), last(wire.OutSpec{Present: true, Capacity: 64}))
	cl.Must(ck.CKR_OK, "C_MessageSignFinal", U(h))

	// An AEAD message in parts: a part before the last prefetches its
	// (empty) output, and the module's word that it collected it
	// (calls.CollectUpdate with the process's flag) lets the message go
	// on; the last part prefetches the ciphertext and the tag.
	key := aesKey(cl, h, false)
	b, _ := aes.NewCipher(aesValue)
	g, _ := cipher.NewGCM(b)
	param := gcmMsg(make([]byte, 12), 0, ck.CKG_GENERATE, 16)
	collect := U(calls.CollectUpdate | ck.CKF_MESSAGE_ENCRYPT<<32)
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	iv := append([]byte(nil), written(cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), param, S("head"))[1], "pIv")...)
	if q := cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("part one, "), prefetch(), U(0)); q[3].Length != 0 || q[3].Bytes == nil {
		t.Fatalf("a part's prefetch: %+v", q[3])
	}
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), collect)
	q = cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("part two"), prefetch(), U(ck.CKF_END_OF_MESSAGE))
	if want := g.Seal(nil, iv, []byte("part one, part two"), []byte("head")); !bytes.Equal(append(append([]byte(nil), q[3].Bytes...), written(q[1], "pTag")...), want) {
		t.Fatal("the last part's prefetch differs from crypto/cipher")
	}
	out = cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("part two"), Out(64), U(ck.CKF_END_OF_MESSAGE))
	if !bytes.Equal(out[3].Bytes, q[3].Bytes) || !bytes.Equal(written(out[1], "pTag"), written(q[1], "pTag")) {
		t.Fatal("the follow-up did not get the prefetched last part")
	}
	// Without the word, the follow-up of a part gets its output from the
	// daemon; a collect word with nothing kept changes nothing.
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), param, S(""))
	cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("a"), prefetch(), U(0))
	cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("a"), Out(64), U(0))
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), collect)
	cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), param, S("b"), Out(64), U(ck.CKF_END_OF_MESSAGE))
	cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
}
