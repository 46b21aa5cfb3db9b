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

// A size query returns a length and nothing else (PKCS#11 5.2): an
// encryption's follow-up whose parameter asks for another tag length
// than the query's, the input being the same, is a message of its own,
// sealed anew under a new IV with the tag it asks for; it is not refused
// as a parameter that does not fit what the query measured. Asked back
// with the query's parameter, the message is made anew again.
func TestMessageFollowUpOtherTagLength(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	key := aesKey(cl, h, false)
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	b, _ := aes.NewCipher(aesValue)
	fixed := []byte{0xCA, 0xFE, 0xF0, 0x0D, 0, 0, 0, 0, 0, 0, 0, 0}
	counter := func(iv []byte) uint64 { return binary.BigEndian.Uint64(iv[4:]) }
	sealed := func(what string, out []wire.Value, tagLen int, plain string) []byte {
		t.Helper()
		g, _ := cipher.NewGCMWithTagSize(b, tagLen)
		iv, tag := written(out[1], "pIv"), written(out[1], "pTag")
		if len(iv) != 12 || len(tag) != tagLen {
			t.Fatalf("%s: IV %x, tag %x", what, iv, tag)
		}
		if want := g.Seal(nil, iv, []byte(plain), []byte("aad")); !bytes.Equal(append(append([]byte(nil), out[4].Bytes...), tag...), want) {
			t.Fatalf("%s: differs from crypto/cipher", what)
		}
		return append([]byte(nil), iv...)
	}

	for _, query := range []wire.Value{prefetch(), Null()} {
		q := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 16), S("aad"), S("plain"), query)
		if q[4].Length != 5 {
			t.Fatalf("query: length %d", q[4].Length)
		}
		var ivq []byte
		if query.Out.Prefetch {
			ivq = sealed("prefetch", q, 16, "plain")
		}
		out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 12), S("aad"), S("plain"), Out(64))
		iv := sealed("a follow-up with a 12-byte tag", out, 12, "plain")
		if ivq != nil && counter(iv) != counter(ivq)+1 {
			t.Fatalf("follow-up IV %x after the prefetch's %x", iv, ivq)
		}
		// The message ended with the follow-up: the next is a new one.
		out = cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 16), S("aad"), S("plain"), Out(64))
		if next := sealed("the next message", out, 16, "plain"); counter(next) != counter(iv)+1 {
			t.Fatalf("IV %x after %x", next, iv)
		}
	}
}

// A signature message's follow-up is checked as the call it is: a
// parameter the mechanism does not take is refused
// (CKR_MECHANISM_PARAM_INVALID) after a size query as without one, never
// given the signature the query measured.
func TestSignMessageFollowUpParameter(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(AB(ck.CKA_TOKEN, false), A(ck.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})),
		T(AB(ck.CKA_TOKEN, false)), None(), None())
	priv := out[5].Ulong
	none := wire.Value{Param: &wire.Param{}}
	bad := wire.Value{Param: &wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}

	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(priv))
	for _, query := range []wire.Value{prefetch(), Null()} {
		cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("msg"), query)
		cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignMessage", U(h), bad, S("msg"), Out(128))
		// The error ended the message; the process goes on.
		cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S("msg"), Out(128))
	}
	cl.Must(ck.CKR_OK, "C_SignMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("last"), prefetch())
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignMessageNext", U(h), bad, S("last"), wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}})
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_SignMessageNext", U(h), none, S("last"), wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}})
}
