package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"os"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// The message-based functions through the engine's calls: the module's
// side of them is tested in cryptoki/module/moduletest, the whole path in
// cryptoki/e2e.

var aesValue = bytes.Repeat([]byte{0x11}, 32)

// gcmMsg is a GCM message parameter as the module sends it: an
// encryption's tag an output of tagBytes.
func gcmMsg(iv []byte, fixed, gen uint64, tagBytes uint64) wire.Value {
	p := wire.GCMMessageParams{IV: iv, IVFixedBits: fixed, IVGenerator: gen, TagOut: true, TagCap: tagBytes}.Param()
	return wire.Value{Param: &p}
}

// gcmMsgIn is a decryption's: the tag an input.
func gcmMsgIn(iv, tag []byte) wire.Value {
	p := wire.GCMMessageParams{IV: iv, Tag: tag}.Param()
	return wire.Value{Param: &p}
}

// written returns what a MsgParamOut result wrote back into field name.
func written(v wire.Value, name string) []byte {
	if v.Param == nil {
		return nil
	}
	for _, f := range v.Param.Fields {
		if f.Name == name && !f.Null {
			return f.Bytes
		}
	}
	return nil
}

func msgSession(t *testing.T) (*testEngine, *client, uint64) {
	t.Helper()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("msg"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	return d, cl, h
}

func aesKey(cl *client, h uint64, token bool) uint64 {
	attrs := AESKey("k", true, false)
	attrs[2] = AB(ck.CKA_TOKEN, token)
	return cl.Create(h, attrs...)
}

// encryptOne encrypts a message with a counter IV and returns the IV, the
// ciphertext and the tag.
func encryptOne(cl *client, h uint64, fixed []byte, aad, plain string) (iv, ct, tag []byte) {
	cl.T.Helper()
	out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), gcmMsg(fixed, 32, ck.CKG_GENERATE_COUNTER, 16), S(aad), S(plain), Out(256))
	return written(out[1], "pIv"), out[4].Bytes, written(out[1], "pTag")
}

func TestMessageEncryptGCM(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	key := aesKey(cl, h, false)
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	b, _ := aes.NewCipher(aesValue)
	g, _ := cipher.NewGCM(b)
	fixed := []byte{0xCA, 0xFE, 0xF0, 0x0D, 9, 9, 9, 9, 9, 9, 9, 9}

	var last uint64
	for i := 0; i < 5; i++ {
		iv, ct, tag := encryptOne(cl, h, fixed, "aad", "message")
		if len(iv) != 12 || !bytes.Equal(iv[:4], fixed[:4]) {
			t.Fatalf("message %d: IV %x keeps not the fixed part", i, iv)
		}
		c := binary.BigEndian.Uint64(iv[4:])
		if i > 0 && c != last+1 {
			t.Fatalf("message %d: counter %d after %d", i, c, last)
		}
		last = c
		if want := g.Seal(nil, iv, []byte("message"), []byte("aad")); !bytes.Equal(append(ct, tag...), want) {
			t.Fatalf("message %d: differs from crypto/cipher", i)
		}
	}

	// In parts: the IV at Begin, the ciphertext and the tag at the end.
	out := cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), gcmMsg(fixed, 0, ck.CKG_GENERATE, 16), S("head"))
	iv := written(out[1], "pIv")
	if binary.BigEndian.Uint64(iv[4:]) != last+1 || !bytes.Equal(iv[:4], make([]byte, 4)) {
		t.Fatalf("Begin's IV %x", iv)
	}
	if out := cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), gcmMsg(fixed, 0, ck.CKG_GENERATE, 16), S("part one, "), Out(64), U(0)); len(out[3].Bytes) != 0 {
		t.Fatalf("a part's output: %x", out[3].Bytes)
	}
	// A size query of the last part keeps the message; the call that
	// follows fetches what it measured.
	q := cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), gcmMsg(fixed, 0, ck.CKG_GENERATE, 16), S("part two"), SizeQuery(), U(ck.CKF_END_OF_MESSAGE))
	if q[3].Length != 18 || written(q[1], "pTag") != nil {
		t.Fatalf("size query: %+v", q[3])
	}
	out = cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), gcmMsg(fixed, 0, ck.CKG_GENERATE, 16), S("part two"), Out(64), U(ck.CKF_END_OF_MESSAGE))
	ct, tag := out[3].Bytes, written(out[1], "pTag")
	if want := g.Seal(nil, iv, []byte("part one, part two"), []byte("head")); !bytes.Equal(append(ct, tag...), want) {
		t.Fatal("the parts differ from crypto/cipher")
	}
	cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptMessage", U(h), gcmMsg(fixed, 0, ck.CKG_GENERATE, 16), S(""), S("x"), Out(64))

	// Decryption, whole and in parts; a wrong tag is
	// CKR_AEAD_DECRYPT_FAILED, and the process goes on.
	cl.Must(ck.CKR_OK, "C_MessageDecryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	pt := cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), gcmMsgIn(iv, tag), S("head"), B(ct), Out(64))
	if string(pt[4].Bytes) != "part one, part two" {
		t.Fatalf("decrypted %q", pt[4].Bytes)
	}
	bad := append([]byte(nil), tag...)
	bad[3] ^= 0x40
	cl.Must(ck.CKR_AEAD_DECRYPT_FAILED, "C_DecryptMessage", U(h), gcmMsgIn(iv, bad), S("head"), B(ct), Out(64))
	cl.Must(ck.CKR_OK, "C_DecryptMessageBegin", U(h), gcmMsgIn(iv, nil), S("head"))
	cl.Must(ck.CKR_OK, "C_DecryptMessageNext", U(h), gcmMsgIn(iv, nil), B(ct[:5]), Out(64), U(0))
	pt = cl.Must(ck.CKR_OK, "C_DecryptMessageNext", U(h), gcmMsgIn(iv, tag), B(ct[5:]), Out(64), U(ck.CKF_END_OF_MESSAGE))
	if string(pt[3].Bytes) != "part one, part two" {
		t.Fatalf("decrypted in parts %q", pt[3].Bytes)
	}
	cl.Must(ck.CKR_OK, "C_DecryptMessageBegin", U(h), gcmMsgIn(iv, nil), S("head"))
	cl.Must(ck.CKR_AEAD_DECRYPT_FAILED, "C_DecryptMessageNext", U(h), gcmMsgIn(iv, bad), B(ct), Out(64), U(ck.CKF_END_OF_MESSAGE))
	cl.Must(ck.CKR_OK, "C_MessageDecryptFinal", U(h))
}

func TestMessageChaCha20Poly1305(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	value := bytes.Repeat([]byte{0x5A}, 32)
	key := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_CHACHA20), AB(ck.CKA_TOKEN, false), A(ck.CKA_VALUE, value))
	nonce := bytes.Repeat([]byte{7}, 12)
	enc := wire.ChaCha20Poly1305MsgParams{Nonce: nonce, TagOut: true, TagCap: 16}.Param()
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_CHACHA20_POLY1305), U(key))
	out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), wire.Value{Param: &enc}, S("aad"), S("message"), Out(64))
	a, _ := chacha20poly1305.New(value)
	ct, tag := out[4].Bytes, written(out[1], "pTag")
	if want := a.Seal(nil, nonce, []byte("message"), []byte("aad")); !bytes.Equal(append(ct, tag...), want) {
		t.Fatal("differs from x/crypto")
	}
	if written(out[1], "pIv") != nil {
		t.Fatal("the caller's nonce was written back")
	}
	dec := wire.ChaCha20Poly1305MsgParams{Nonce: nonce, Tag: tag}.Param()
	cl.Must(ck.CKR_OK, "C_MessageDecryptInit", U(h), M(ck.CKM_CHACHA20_POLY1305), U(key))
	if pt := cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), wire.Value{Param: &dec}, S("aad"), B(ct), Out(64)); string(pt[4].Bytes) != "message" {
		t.Fatalf("decrypted %q", pt[4].Bytes)
	}
}

// The rules of the message-based functions: errors end the current
// message, never the process; the forms do not mix.
func TestMessageRules(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	key := aesKey(cl, h, false)
	iv := make([]byte, 12)
	p := gcmMsg(iv, 0, ck.CKG_GENERATE, 16)
	next := func(want uint64, flags uint64) {
		cl.T.Helper()
		cl.Must(want, "C_EncryptMessageNext", U(h), p, S("part"), Out(64), U(flags))
	}

	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptMessage", U(h), p, S(""), S("x"), Out(64))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_MessageEncryptFinal", U(h))
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	// A process of the single-part functions is another kind.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), MP(ck.CKM_AES_GCM, wire.GCMParams{IV: iv, TagBits: 128}.Param()), U(key))
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_ENCRYPT))

	// The caller's IV on encryption, a wrong structure, none at all.
	for _, bad := range []wire.Value{gcmMsg(iv, 0, ck.CKG_NO_GENERATE, 16), gcmMsg(iv, 0, 77, 16), gcmMsg(make([]byte, 16), 0, ck.CKG_GENERATE, 16),
		gcmMsg(iv, 0, ck.CKG_GENERATE, 8), {Param: &wire.Param{}}, {Param: &wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}} {
		cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_EncryptMessage", U(h), bad, S(""), S("x"), Out(64))
	}
	cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S(""), S("x"), Out(64)) // the process goes on

	next(ck.CKR_OPERATION_NOT_INITIALIZED, 0) // no Begin
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	next(ck.CKR_OK, 0)
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_EncryptMessage", U(h), p, S(""), S("x"), Out(64)) // ends the message
	next(ck.CKR_OPERATION_NOT_INITIALIZED, ck.CKF_END_OF_MESSAGE)
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	next(ck.CKR_ARGUMENTS_BAD, 2) // a flag that is not CKF_END_OF_MESSAGE
	next(ck.CKR_OPERATION_NOT_INITIALIZED, 0)
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_EncryptMessageNext", U(h), gcmMsg(iv, 0, ck.CKG_GENERATE_RANDOM, 16), S("x"), Out(64), U(0))
	next(ck.CKR_OPERATION_NOT_INITIALIZED, 0)

	// A Final while a message is in progress: CKR_OPERATION_ACTIVE, which
	// ends the message; the next Final ends the process.
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_MessageEncryptFinal", U(h))
	next(ck.CKR_OPERATION_NOT_INITIALIZED, 0)
	// A size query keeps its message: a Begin is mixing forms.
	if q := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S(""), S("xyz"), SizeQuery()); q[4].Length != 3 {
		t.Fatalf("size query: %d", q[4].Length)
	}
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_EncryptMessageBegin", U(h), p, S(""))
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_EncryptMessage", U(h), p, S(""), S("xyz"), Out(1))
	// Other input is another message's: made over it, not the measured one.
	small := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S(""), S("other"), Out(64))
	if len(small[4].Bytes) != 5 || written(small[1], "pIv") == nil {
		t.Fatalf("the message over the follow-up's input: %+v", small[4])
	}
	// The module's own C_SessionCancel flag ends the message alone.
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_MESSAGE_ENCRYPT|calls.CancelCurrentMessage))
	next(ck.CKR_OPERATION_NOT_INITIALIZED, 0)
	cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S(""), S("x"), Out(64))
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_MESSAGE_ENCRYPT))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptMessage", U(h), p, S(""), S("x"), Out(64))

	// A key without CKA_ENCRYPT, a mechanism that is no AEAD.
	noEnc := cl.Create(h, append(AESKey("n", true, false), AB(ck.CKA_ENCRYPT, false))...)
	cl.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(noEnc))
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_CBC), U(key))
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_MessageSignInit", U(h), M(ck.CKM_AES_GCM), U(key))
}

// A key's counter survives a restart, and its stored mark is past every
// value handed out before one is.
func TestMessageCounterPersists(t *testing.T) {
	t.Parallel()
	d, cl, h := msgSession(t)
	key := aesKey(cl, h, true)
	mark := func(cl *client, h uint64) (uint64, uint64) {
		cl.T.Helper()
		rv, a := cl.Get(h, key, ck.CKA_HSMEMU_IV_COUNTER)
		if rv != ck.CKR_OK || len(a[0].Value) != 16 {
			cl.T.Fatalf("CKA_HSMEMU_IV_COUNTER: %v %+v", ck.Error(rv), a)
		}
		return binary.BigEndian.Uint64(a[0].Value), binary.BigEndian.Uint64(a[0].Value[8:])
	}
	if rv, _ := cl.Get(h, key, ck.CKA_HSMEMU_IV_COUNTER); rv != ck.CKR_ATTRIBUTE_TYPE_INVALID {
		t.Fatalf("a key never used has a counter: %v", ck.Error(rv))
	}
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	var max uint64
	for i := 0; i < 3; i++ {
		iv, _, _ := encryptOne(cl, h, make([]byte, 12), "", "x")
		max = binary.BigEndian.Uint64(iv[4:])
	}
	if m, limit := mark(cl, h); m <= max || m-max > ivBlock || limit != 1<<64-1 {
		t.Fatalf("mark %d, limit %d after %d", m, limit, max)
	}
	m, _ := mark(cl, h)
	cl.Must(ck.CKR_ATTRIBUTE_READ_ONLY, "C_SetAttributeValue", U(h), U(key), T(A(ck.CKA_HSMEMU_IV_COUNTER, make([]byte, 16))))
	// Another change keeps the stored state.
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(key), T(A(ck.CKA_LABEL, []byte("renamed"))))
	if m2, _ := mark(cl, h); m2 != m {
		t.Fatalf("C_SetAttributeValue moved the mark from %d to %d", m, m2)
	}

	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	h = cl.Open(cl.Slots()[0], true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key = cl.Find(h, A(ck.CKA_LABEL, []byte("renamed")))[0]
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	iv, _, _ := encryptOne(cl, h, make([]byte, 12), "", "x")
	if c := binary.BigEndian.Uint64(iv[4:]); c != m {
		t.Fatalf("after a restart the counter is %d; the mark was %d", c, m)
	}
	if m2, _ := mark(cl, h); m2 != m+ivBlock {
		t.Fatalf("a new block: mark %d, want %d", m2, m+ivBlock)
	}
}

// A copy takes half of what is left of its key's range: the two never
// make the same IV, and halving it again and again exhausts the key,
// which then refuses rather than wraps.
func TestMessageCounterCopies(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	encrypt := func(h, key uint64) (uint64, uint64) {
		cl.T.Helper()
		cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
		defer cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
		rv, out := cl.Call("C_EncryptMessage", U(h), gcmMsg(make([]byte, 12), 0, ck.CKG_GENERATE, 16), S(""), S("x"), Out(64))
		if rv != ck.CKR_OK {
			return rv, 0
		}
		return rv, binary.BigEndian.Uint64(written(out[1], "pIv")[4:])
	}
	copyOf := func(key uint64, token bool) uint64 {
		cl.T.Helper()
		return cl.Must(ck.CKR_OK, "C_CopyObject", U(h), U(key), T(AB(ck.CKA_TOKEN, token)), None())[3].Ulong
	}

	// A key in use keeps the block it reserved; its copy starts past it,
	// in the upper half of what was left.
	key := aesKey(cl, h, true)
	_, first := encrypt(h, key)
	copied := copyOf(key, false)
	_, c := encrypt(h, copied)
	if c < first+ivBlock || c-first < (1<<64-1-first)/2-ivBlock {
		t.Fatalf("the copy starts at %d, the key at %d", c, first)
	}
	if _, next := encrypt(h, key); next != first+1 {
		t.Fatalf("after the copy the key goes on at %d, not %d", next, first+1)
	}

	// Halved 64 times before any use, a key has nothing left: it
	// refuses, never wraps. Random IVs need no counter.
	key = aesKey(cl, h, false)
	for i := 0; i < 64; i++ {
		copyOf(key, i%2 == 0)
	}
	if rv, _ := encrypt(h, key); rv != ck.CKR_KEY_EXHAUSTED {
		t.Fatalf("an exhausted key: %v", ck.Error(rv))
	}
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), gcmMsg(make([]byte, 12), 0, ck.CKG_GENERATE_RANDOM, 16), S(""), S("x"), Out(64))
}

func TestMessageSignVerify(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(AB(ck.CKA_TOKEN, false), A(ck.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})),
		T(AB(ck.CKA_TOKEN, false)), None(), None())
	pub, priv := out[4].Ulong, out[5].Ulong
	_, a := cl.Get(h, pub, ck.CKA_EC_POINT)
	point := a[0].Value[2:] // a DER OCTET STRING of 65 bytes
	x, y := elliptic.Unmarshal(elliptic.P256(), point)
	pk := &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y}
	verify := func(msg string, sig []byte) bool {
		d := sha256.Sum256([]byte(msg))
		return len(sig) == 64 && ecdsa.Verify(pk, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	}
	none := wire.Value{Param: &wire.Param{}}

	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(priv))
	for _, msg := range []string{"one", "two", ""} {
		if sig := cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, S(msg), Out(128))[3].Bytes; !verify(msg, sig) {
			t.Fatalf("%q: signature does not verify", msg)
		}
	}
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignMessage", U(h), wire.Value{Param: &wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}, S("x"), Out(128))
	cl.Must(ck.CKR_OK, "C_SignMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("in "), wire.Value{Null: true})
	cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("parts"), wire.Value{})
	sig := cl.Must(ck.CKR_OK, "C_SignMessageNext", U(h), none, S("parts"), wire.Value{Out: wire.OutSpec{Present: true, Capacity: 128}})[3].Bytes
	if !verify("in parts", sig) {
		t.Fatal("the parts' signature does not verify")
	}
	cl.Must(ck.CKR_OK, "C_MessageSignFinal", U(h))

	cl.Must(ck.CKR_OK, "C_MessageVerifyInit", U(h), M(ck.CKM_ECDSA_SHA256), U(pub))
	cl.Must(ck.CKR_OK, "C_VerifyMessage", U(h), none, S("in parts"), B(sig))
	cl.Must(ck.CKR_SIGNATURE_INVALID, "C_VerifyMessage", U(h), none, S("in part"), B(sig))
	cl.Must(ck.CKR_OK, "C_VerifyMessageBegin", U(h), none)
	cl.Must(ck.CKR_OK, "C_VerifyMessageNext", U(h), none, S("in "), Null())
	cl.Must(ck.CKR_OK, "C_VerifyMessageNext", U(h), none, S("parts"), B(sig))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_VerifyMessageNext", U(h), none, S("parts"), B(sig))
	cl.Must(ck.CKR_OK, "C_MessageVerifyFinal", U(h))

	// ECDSA on a digest is single-part: its messages come whole.
	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_ECDSA), U(priv))
	cl.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_SignMessageBegin", U(h), none)
	d := sha256.Sum256([]byte("digest"))
	if sig := cl.Must(ck.CKR_OK, "C_SignMessage", U(h), none, B(d[:]), Out(128))[3].Bytes; !verify("digest", sig) {
		t.Fatal("CKM_ECDSA's signature does not verify")
	}
}

// A message's buffered parts, associated data and kept output are bounded
// and charged as an operation's are (memory.go): over the bound or the
// budget the message ends, the process goes on, and every way a message
// or process ends gives its charge back. A request the daemon refused
// before reading it ends the current message too.
func TestMessageMemory(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{MaxOpBuffer: 2500, OpBudget: 3000})
	app, ok := d.eng.Attach(AppID{0x6d}, int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		t.Fatal("attach")
	}
	t.Cleanup(func() { d.eng.Detach(app) })
	cl := &client{Client: NewClient(t, &inProcess{eng: d.eng, app: app, res: &wire.Results{}})}
	slot := cl.NewToken("mem")
	h, h2 := cl.Open(slot, true), cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := aesKey(cl, h, false)
	p := gcmMsg(make([]byte, 12), 0, ck.CKG_GENERATE, 16)
	next := func(h uint64, want uint64, n int, flags uint64, out wire.Value) {
		t.Helper()
		cl.Must(want, "C_EncryptMessageNext", U(h), p, B(make([]byte, n)), out, U(flags))
	}
	for _, s := range []uint64{h, h2} {
		cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(s), M(ck.CKM_AES_GCM), U(key))
	}

	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S("aad"))
	next(h, ck.CKR_OK, 2000, 0, Out(0))
	first, _ := d.eng.OpMemory()
	if first < 2003 || first > 3000 {
		t.Fatalf("a message holding 2000 bytes and its AAD is charged %d", first)
	}
	next(h, ck.CKR_DATA_LEN_RANGE, 501, 0, Out(0)) // past MaxOpBuffer
	next(h, ck.CKR_OPERATION_NOT_INITIALIZED, 1, 0, Out(0))
	held(t, d, 0, "after the bound")

	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	next(h, ck.CKR_OK, 2000, 0, Out(0))
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h2), p, S(""))
	next(h2, ck.CKR_DEVICE_MEMORY, 2000, 0, Out(0)) // past the budget
	next(h2, ck.CKR_OPERATION_NOT_INITIALIZED, 1, 0, Out(0))
	cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h2), p, S(""), S("x"), Out(64)) // the process goes on
	// A size query's output counts, until it is delivered.
	next(h, ck.CKR_OK, 100, ck.CKF_END_OF_MESSAGE, SizeQuery())
	if used, _ := d.eng.OpMemory(); used < 2100 {
		t.Fatalf("a measured output is not charged: %d", used)
	}
	next(h, ck.CKR_OK, 100, ck.CKF_END_OF_MESSAGE, Out(4000))
	held(t, d, 0, "after the delivery")

	// A Final while a message is in progress ends the message.
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	next(h, ck.CKR_OK, 100, 0, Out(0))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_MessageEncryptFinal", U(h))
	held(t, d, 0, "after a Final")
	cl.Must(ck.CKR_OK, "C_MessageEncryptFinal", U(h))
	// So does a refused request, and a session's close.
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h2), p, S(""))
	next(h2, ck.CKR_OK, 100, 0, Out(0))
	c, _ := calls.ByName("C_EncryptMessageNext")
	if rv := d.eng.Refuse(app, c, h2, TooLarge); rv != ck.CKR_DATA_LEN_RANGE {
		t.Fatalf("refused: %v", ck.Error(rv))
	}
	held(t, d, 0, "after a refusal")
	next(h2, ck.CKR_OPERATION_NOT_INITIALIZED, 1, 0, Out(0))
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h2), p, S(""))
	next(h2, ck.CKR_OK, 100, 0, Out(0))
	cl.Must(ck.CKR_OK, "C_CloseSession", U(h2))
	held(t, d, 0, "after C_CloseSession")
}
