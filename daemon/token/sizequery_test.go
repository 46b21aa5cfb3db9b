package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
)

// A size query returns a length and nothing else (PKCS#11 5.2): the call
// that follows it performs the operation on the input it brings, from the
// state after the Init. These tests ask for the length with one input and
// then call with another, in every form a follow-up can take (another size
// query, a short buffer, a prefetch), and compare with a fresh operation
// over the second input.

// prefetch is a NULL output buffer asking for the whole result with its
// length (protocol version 3, calls.Prefetches).
func prefetch() wire.Value { return wire.Value{Out: wire.OutSpec{Prefetch: true}} }

// sizeQueryFollowUps are the first calls a test makes before the one
// with a buffer: each is a size query in one of its forms, over input a,
// then the same forms over b (which must not undo the change of input).
var sizeQueryFollowUps = []struct {
	name  string
	first func(in string) []wire.Value // the call's input and output arguments
}{
	{"size query", func(in string) []wire.Value { return []wire.Value{S(in), SizeQuery()} }},
	{"prefetch", func(in string) []wire.Value { return []wire.Value{S(in), prefetch()} }},
	{"short buffer", func(in string) []wire.Value { return []wire.Value{S(in), Out(1)} }},
}

func TestSizeQueryThenOtherInput(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("sizeq"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	hmacValue := bytes.Repeat([]byte{7}, 32)
	hmacKey := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true), A(ck.CKA_VALUE, hmacValue))
	aesKey := aesKey(cl, h, false)
	iv := bytes.Repeat([]byte{3}, 16)
	cbcPad := MP(ck.CKM_AES_CBC_PAD, wire.Param{Kind: calls.PBytes, Bytes: iv})
	block, _ := aes.NewCipher(aesValue)
	cbcEncrypt := func(plain string) []byte {
		n := 16 - len(plain)%16
		p := append([]byte(plain), bytes.Repeat([]byte{byte(n)}, n)...)
		out := make([]byte, len(p))
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(out, p)
		return out
	}
	ecb := func(plain string) []byte {
		out := make([]byte, len(plain))
		for i := 0; i < len(plain); i += 16 {
			block.Encrypt(out[i:i+16], []byte(plain[i:i+16]))
		}
		return out
	}
	ctB := cbcEncrypt("the second input, longer")
	ctA := cbcEncrypt("first")

	type family struct {
		name, init, call string
		mech             wire.Value
		key              *uint64 // nil for a digest
		a, b             string
		want             []byte // the operation over b, done apart
	}
	mac := hmac.New(sha256.New, hmacValue)
	mac.Write([]byte("bbbbbbb"))
	digest := sha256.Sum256([]byte("bbbbbbb"))
	families := []family{
		{"digest", "C_DigestInit", "C_Digest", M(ck.CKM_SHA256), nil, "a", "bbbbbbb", digest[:]},
		{"hmac", "C_SignInit", "C_Sign", M(ck.CKM_SHA256_HMAC), &hmacKey, "a", "bbbbbbb", mac.Sum(nil)},
		{"cbc-pad", "C_EncryptInit", "C_Encrypt", cbcPad, &aesKey, "first", "the second input, longer", ctB},
		{"ecb", "C_EncryptInit", "C_Encrypt", M(ck.CKM_AES_ECB), &aesKey, "0123456789abcdef", "fedcba9876543210fedcba9876543210",
			ecb("fedcba9876543210fedcba9876543210")},
		{"decrypt", "C_DecryptInit", "C_Decrypt", cbcPad, &aesKey, string(ctA), string(ctB), []byte("the second input, longer")},
	}
	for _, f := range families {
		initArgs := []wire.Value{U(h), f.mech}
		if f.key != nil {
			initArgs = append(initArgs, U(*f.key))
		}
		for _, q := range sizeQueryFollowUps {
			// Input a measured, then the call with b.
			cl.Must(ck.CKR_OK, f.init, initArgs...)
			cl.Call(f.call, append([]wire.Value{U(h)}, q.first(f.a)...)...)
			out := cl.Must(ck.CKR_OK, f.call, U(h), S(f.b), Out(256))
			if !bytes.Equal(out[2].Bytes, f.want) {
				t.Errorf("%s, %s over a, then b: %x, want %x", f.name, q.name, out[2].Bytes, f.want)
			}
			cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, f.call, U(h), S(f.b), Out(256))

			// Input a measured, b measured too, then the call with b.
			cl.Must(ck.CKR_OK, f.init, initArgs...)
			cl.Call(f.call, append([]wire.Value{U(h)}, q.first(f.a)...)...)
			m := cl.Must(ck.CKR_OK, f.call, U(h), S(f.b), SizeQuery())
			if m[2].Length < uint64(len(f.want)) {
				t.Errorf("%s, %s: the length of b's output %d < %d", f.name, q.name, m[2].Length, len(f.want))
			}
			cl.Must(ck.CKR_BUFFER_TOO_SMALL, f.call, U(h), S(f.b), Out(1))
			out = cl.Must(ck.CKR_OK, f.call, U(h), S(f.b), Out(256))
			if !bytes.Equal(out[2].Bytes, f.want) {
				t.Errorf("%s, %s over a, b, then b: %x, want %x", f.name, q.name, out[2].Bytes, f.want)
			}
		}
		// The same input twice gets what was measured, as before.
		cl.Must(ck.CKR_OK, f.init, initArgs...)
		cl.Must(ck.CKR_OK, f.call, U(h), S(f.b), prefetch())
		out := cl.Must(ck.CKR_OK, f.call, U(h), S(f.b), Out(256))
		if !bytes.Equal(out[2].Bytes, f.want) {
			t.Errorf("%s, the same input twice: %x, want %x", f.name, out[2].Bytes, f.want)
		}
		// Other input that the mechanism refuses ends the operation.
		if f.name == "ecb" || f.name == "decrypt" {
			cl.Must(ck.CKR_OK, f.init, initArgs...)
			cl.Must(ck.CKR_OK, f.call, U(h), S(f.a), SizeQuery())
			want := uint64(ck.CKR_DATA_LEN_RANGE)
			if f.name == "decrypt" {
				want = ck.CKR_ENCRYPTED_DATA_LEN_RANGE
			}
			cl.Must(want, f.call, U(h), S("odd"), Out(256))
			cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, f.call, U(h), S(f.a), Out(256))
		}
	}

	// An Update measured over one input gives another's output from the
	// state before it (TestUpdateQueryRewinds has more).
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), cbcPad, U(aesKey))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S("0123456789abcdef0"), SizeQuery())
	other := "another input of 32 bytes, yes.."
	part0 := bytes.Clone(cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(other), Out(256))[2].Bytes)
	rest0 := cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(256))[1].Bytes
	if want := cbcEncrypt(other); !bytes.Equal(append(part0, rest0...), want) {
		t.Errorf("update, other input: %x, want %x", append(part0, rest0...), want)
	}
	// The same input still gets what was measured, and the Final the rest.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), cbcPad, U(aesKey))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S("0123456789abcdef0"), SizeQuery())
	part := bytes.Clone(cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S("0123456789abcdef0"), Out(256))[2].Bytes)
	rest := cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(256))[1].Bytes
	if want := cbcEncrypt("0123456789abcdef0"); !bytes.Equal(append(part, rest...), want) {
		t.Errorf("update, same input: %x, want %x", append(part, rest...), want)
	}
}

// An Ed25519 signature: deterministic, so a fresh one over the second
// input is the one to expect.
func TestSizeQueryThenOtherInputEd25519(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("sizeq-ed"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	s := &asymSession{client: cl, h: h}
	_, priv := s.genPair(M(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN),
		[]wire.Attribute{A(ck.CKA_EC_PARAMS, []byte{0x06, 0x03, 0x2b, 0x65, 0x70}), AB(ck.CKA_TOKEN, false)},
		[]wire.Attribute{AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true)})
	sign := func(in string) []byte {
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		return bytes.Clone(cl.Must(ck.CKR_OK, "C_Sign", U(h), S(in), Out(256))[2].Bytes)
	}
	want := sign("second")
	if bytes.Equal(want, sign("first")) {
		t.Fatal("two inputs, one signature")
	}
	for _, q := range sizeQueryFollowUps {
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
		cl.Call("C_Sign", append([]wire.Value{U(h)}, q.first("first")...)...)
		if got := cl.Must(ck.CKR_OK, "C_Sign", U(h), S("second"), Out(256))[2].Bytes; !bytes.Equal(got, want) {
			t.Errorf("%s over first, then second: %x, want %x", q.name, got, want)
		}
	}
}

// Message-based: a one-call message is made anew over the follow-up's
// input, an encryption with an IV of the token's under a new IV; a Next
// whose follow-up brings other input is refused.
func TestSizeQueryThenOtherInputMessages(t *testing.T) {
	t.Parallel()
	_, cl, h := msgSession(t)
	key := aesKey(cl, h, false)
	gcm, _ := cipher.NewGCM(func() cipher.Block { b, _ := aes.NewCipher(aesValue); return b }())
	cl.Must(ck.CKR_OK, "C_MessageEncryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	for _, gen := range []uint64{ck.CKG_GENERATE, ck.CKG_GENERATE_RANDOM} {
		p := gcmMsg(make([]byte, 12), 0, gen, 16)
		cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S("aad"), S("first"), SizeQuery())
		out := cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S("aad"), S("the second one"), Out(64))
		iv, ct, tag := written(out[1], "pIv"), out[4].Bytes, written(out[1], "pTag")
		plain, err := gcm.Open(nil, iv, append(bytes.Clone(ct), tag...), []byte("aad"))
		if err != nil || string(plain) != "the second one" {
			t.Errorf("generator %#x: %q, %v", gen, plain, err)
		}
		// Other associated data is other input too.
		cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S("aad"), S("same"), SizeQuery())
		out = cl.Must(ck.CKR_OK, "C_EncryptMessage", U(h), p, S("other aad"), S("same"), Out(64))
		iv, ct, tag = written(out[1], "pIv"), out[4].Bytes, written(out[1], "pTag")
		if _, err := gcm.Open(nil, iv, append(bytes.Clone(ct), tag...), []byte("other aad")); err != nil {
			t.Errorf("generator %#x, other associated data: %v", gen, err)
		}
	}
	// A Next's part is in the message once measured.
	p := gcmMsg(make([]byte, 12), 0, ck.CKG_GENERATE, 16)
	cl.Must(ck.CKR_OK, "C_EncryptMessageBegin", U(h), p, S(""))
	cl.Must(ck.CKR_OK, "C_EncryptMessageNext", U(h), p, S("last"), SizeQuery(), U(ck.CKF_END_OF_MESSAGE))
	cl.Must(ck.CKR_ARGUMENTS_BAD, "C_EncryptMessageNext", U(h), p, S("other"), Out(64), U(ck.CKF_END_OF_MESSAGE))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptMessageNext", U(h), p, S("last"), Out(64), U(ck.CKF_END_OF_MESSAGE))

	// C_SignMessage with HMAC, and C_DecryptMessage.
	hmacValue := bytes.Repeat([]byte{9}, 32)
	hk := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true), A(ck.CKA_VALUE, hmacValue))
	cl.Must(ck.CKR_OK, "C_MessageSignInit", U(h), M(ck.CKM_SHA256_HMAC), U(hk))
	cl.Must(ck.CKR_OK, "C_SignMessage", U(h), None(), S("first"), SizeQuery())
	got := cl.Must(ck.CKR_OK, "C_SignMessage", U(h), None(), S("second"), Out(64))[3].Bytes
	mac := hmac.New(sha256.New, hmacValue)
	mac.Write([]byte("second"))
	if !bytes.Equal(got, mac.Sum(nil)) {
		t.Errorf("C_SignMessage over first, then second: %x", got)
	}

	iv := bytes.Repeat([]byte{5}, 12)
	sealed := gcm.Seal(nil, iv, []byte("decrypted second"), nil)
	first := gcm.Seal(nil, iv, []byte("first"), nil)
	cl.Must(ck.CKR_OK, "C_MessageDecryptInit", U(h), M(ck.CKM_AES_GCM), U(key))
	cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), gcmMsgIn(iv, first[len(first)-16:]), S(""), B(first[:len(first)-16]), SizeQuery())
	out := cl.Must(ck.CKR_OK, "C_DecryptMessage", U(h), gcmMsgIn(iv, sealed[len(sealed)-16:]), S(""), B(sealed[:len(sealed)-16]), Out(64))
	if string(out[4].Bytes) != "decrypted second" {
		t.Errorf("C_DecryptMessage over first, then second: %q", out[4].Bytes)
	}
}

// The input a kept output was measured over is kept whole up to 4 KiB
// and as its hash past that: on both sides of the bound, a follow-up
// with the same input gets the kept signature (ECDSA's are randomized,
// so a new one would differ), and one whose input differs in its last
// byte gets a signature of its own input.
func TestKeptInputBound(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("kept"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	r := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(A(ck.CKA_EC_PARAMS, mech.ECParams("P-256")), AB(ck.CKA_TOKEN, false), AB(ck.CKA_VERIFY, true)),
		T(AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true)), None(), None())
	pub, priv := r[4].Ulong, r[5].Ulong
	for _, n := range []int{0, 1, 4095, 4096, 4097, 9000} {
		in := bytes.Repeat([]byte{0x61}, n)
		other := bytes.Clone(in)
		if n > 0 {
			other[n-1] ^= 1
		} else {
			other = []byte{0}
		}
		for _, q := range sizeQueryFollowUps {
			cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(priv))
			first := cl.Must(wantRV(q.name), "C_Sign", append([]wire.Value{U(h)}, q.first(string(in))...)...)
			same := cl.Must(ck.CKR_OK, "C_Sign", U(h), B(in), Out(128))[2].Bytes
			if q.name == "prefetch" && !bytes.Equal(first[2].Bytes, same) {
				t.Errorf("%d bytes, %s: the follow-up with the same input got another signature", n, q.name)
			}
			cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_ECDSA_SHA256), U(pub))
			cl.Must(ck.CKR_OK, "C_Verify", U(h), B(in), B(same))

			cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(priv))
			cl.Must(wantRV(q.name), "C_Sign", append([]wire.Value{U(h)}, q.first(string(in))...)...)
			sig := cl.Must(ck.CKR_OK, "C_Sign", U(h), B(other), Out(128))[2].Bytes
			cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_ECDSA_SHA256), U(pub))
			cl.Must(ck.CKR_OK, "C_Verify", U(h), B(other), B(sig))
		}
	}
}

// wantRV is the answer to each form of sizeQueryFollowUps.
func wantRV(form string) uint64 {
	if form == "short buffer" {
		return ck.CKR_BUFFER_TOO_SMALL
	}
	return ck.CKR_OK
}
