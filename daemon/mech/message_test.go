package mech

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

func gcmMsgParam(iv []byte, fixed, gen uint64, tag []byte, out bool, tagLen uint64) *wire.Param {
	p := wire.GCMMessageParams{IV: iv, IVFixedBits: fixed, IVGenerator: gen, Tag: tag, TagOut: out, TagCap: tagLen}.Param()
	return &p
}

func chachaMsgParam(nonce, tag []byte, out bool) *wire.Param {
	p := wire.ChaCha20Poly1305MsgParams{Nonce: nonce, Tag: tag, TagOut: out, TagCap: 16}.Param()
	return &p
}

// The message ciphers' output is the standard library's and x/crypto's,
// with the tag apart.
func TestMessageCiphersMatchGo(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{0x42}, 32)
	aad, plain := []byte("header"), []byte("a message of some length, more than a block")

	gm, err := mechanisms[ck.CKM_AES_GCM].MessageCipher(testSecret(t, ck.CKK_AES, key), true)
	if err != nil {
		t.Fatal(err)
	}
	mp, err := gm.Params(gcmMsgParam(make([]byte, 12), 0, ck.CKG_GENERATE_COUNTER, nil, true, 16), true)
	if err != nil {
		t.Fatal(err)
	}
	iv := CounterIV(mp, 7)
	ct, tag, err := gm.Seal(mp, iv, aad, plain)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	if want := g.Seal(nil, iv, plain, aad); !bytes.Equal(append(ct, tag...), want) {
		t.Fatal("GCM differs from crypto/cipher")
	}
	dm, _ := mechanisms[ck.CKM_AES_GCM].MessageCipher(testSecret(t, ck.CKK_AES, key), false)
	dp, err := dm.Params(gcmMsgParam(iv, 0, 0, tag, false, 0), false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dm.Open(dp, iv, aad, ct, tag)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %v", err)
	}
	bad := append([]byte(nil), tag...)
	bad[0] ^= 1
	if _, err := dm.Open(dp, iv, aad, ct, bad); codeOf(err) != ck.CKR_AEAD_DECRYPT_FAILED {
		t.Fatalf("a wrong tag: %v", err)
	}

	for _, n := range []int{12, 24} {
		nonce := bytes.Repeat([]byte{byte(n)}, n)
		cm, err := mechanisms[ck.CKM_CHACHA20_POLY1305].MessageCipher(testSecret(t, ck.CKK_CHACHA20, key), true)
		if err != nil {
			t.Fatal(err)
		}
		mp, err := cm.Params(chachaMsgParam(nonce, nil, true), true)
		if err != nil {
			t.Fatal(err)
		}
		if mp.Gen != IVCaller || !bytes.Equal(mp.IV, nonce) {
			t.Fatalf("nonce %d: %+v", n, mp)
		}
		ct, tag, err := cm.Seal(mp, mp.IV, aad, plain)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := chacha20poly1305.New(key)
		if n == 24 {
			a, _ = chacha20poly1305.NewX(key)
		}
		if want := a.Seal(nil, nonce, plain, aad); !bytes.Equal(append(ct, tag...), want) {
			t.Fatalf("nonce %d: differs from x/crypto", n)
		}
		dp, err := cm.Params(chachaMsgParam(nonce, tag, false), false)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := cm.Open(dp, nonce, aad, ct, tag); err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("nonce %d: open: %v", n, err)
		}
		if _, err := cm.Open(dp, nonce, []byte("other"), ct, tag); codeOf(err) != ck.CKR_AEAD_DECRYPT_FAILED {
			t.Fatalf("nonce %d: other AAD: %v", n, err)
		}
	}
}

// What a message's parameter may say, and what the token makes of it.
func TestMessageParams(t *testing.T) {
	t.Parallel()
	key := testSecret(t, ck.CKK_AES, make([]byte, 16))
	gm, _ := mechanisms[ck.CKM_AES_GCM].MessageCipher(key, true)
	cm, _ := mechanisms[ck.CKM_CHACHA20_POLY1305].MessageCipher(testSecret(t, ck.CKK_CHACHA20, make([]byte, 32)), true)
	iv12, iv16 := make([]byte, 12), make([]byte, 16)
	tests := []struct {
		name    string
		c       MsgCipher
		p       *wire.Param
		encrypt bool
		gen     IVGen // when accepted
		ok      bool
	}{
		{"counter", gm, gcmMsgParam(iv12, 32, ck.CKG_GENERATE_COUNTER, nil, true, 16), true, IVCounter, true},
		{"generate is the counter", gm, gcmMsgParam(iv12, 0, ck.CKG_GENERATE, nil, true, 12), true, IVCounter, true},
		{"random", gm, gcmMsgParam(iv16, 32, ck.CKG_GENERATE_RANDOM, nil, true, 16), true, IVRandom, true},
		{"random 96 bits", gm, gcmMsgParam(iv12, 0, ck.CKG_GENERATE_RANDOM, nil, true, 16), true, IVRandom, true},
		{"caller's IV on encryption", gm, gcmMsgParam(iv12, 0, ck.CKG_NO_GENERATE, nil, true, 16), true, 0, false},
		{"unknown generator", gm, gcmMsgParam(iv12, 0, 9, nil, true, 16), true, 0, false},
		{"counter in a 16-byte IV", gm, gcmMsgParam(iv16, 0, ck.CKG_GENERATE_COUNTER, nil, true, 16), true, 0, false},
		{"counter with 33 fixed bits", gm, gcmMsgParam(iv12, 33, ck.CKG_GENERATE_COUNTER, nil, true, 16), true, 0, false},
		{"random under 96 bits", gm, gcmMsgParam(iv12, 8, ck.CKG_GENERATE_RANDOM, nil, true, 16), true, 0, false},
		{"fixed bits past the IV", gm, gcmMsgParam(iv12, 97, ck.CKG_GENERATE_RANDOM, nil, true, 16), true, 0, false},
		{"no IV", gm, gcmMsgParam(nil, 0, ck.CKG_GENERATE, nil, true, 16), true, 0, false},
		{"a 64-bit tag", gm, gcmMsgParam(iv12, 0, ck.CKG_GENERATE, nil, true, 8), true, 0, false},
		{"no tag buffer", gm, &wire.Param{}, true, 0, false},
		{"decryption with the caller's IV", gm, gcmMsgParam(iv12, 0, ck.CKG_NO_GENERATE, make([]byte, 16), false, 0), false, IVCaller, true},
		{"decryption ignores the generator", gm, gcmMsgParam(iv16, 99, 99, nil, false, 0), false, IVCaller, true},
		{"decryption with a short tag", gm, gcmMsgParam(iv12, 0, 0, make([]byte, 8), false, 0), false, 0, false},
		{"ChaCha20-Poly1305's structure for GCM", gm, chachaMsgParam(iv12, nil, true), true, 0, false},
		{"GCM's structure for ChaCha20-Poly1305", cm, gcmMsgParam(iv12, 0, ck.CKG_GENERATE, nil, true, 16), true, 0, false},
		{"nonce", cm, chachaMsgParam(iv12, nil, true), true, IVCaller, true},
		{"nonce of 16 bytes", cm, chachaMsgParam(iv16, nil, true), true, 0, false},
		{"a short ChaCha20-Poly1305 tag", cm, chachaMsgParam(iv12, make([]byte, 15), false), false, 0, false},
	}
	for _, tt := range tests {
		mp, err := tt.c.Params(tt.p, tt.encrypt)
		if !tt.ok {
			if codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
				t.Errorf("%s: %v, want CKR_MECHANISM_PARAM_INVALID", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if mp.Gen != tt.gen {
			t.Errorf("%s: generator %d, want %d", tt.name, mp.Gen, tt.gen)
		}
	}
}

// A generated IV keeps the caller's fixed bits, whole bytes or not, and
// puts the counter in the last 8 bytes or random bits after them.
func TestGeneratedIVs(t *testing.T) {
	t.Parallel()
	caller := bytes.Repeat([]byte{0xFF}, 12)
	for _, fixed := range []int{0, 5, 8, 31, 32} {
		mp := &MsgParams{IV: caller, FixedBits: fixed, Gen: IVCounter}
		iv := CounterIV(mp, 0x0102030405060708)
		if got := binary.BigEndian.Uint64(iv[4:]); got != 0x0102030405060708 {
			t.Errorf("fixed %d: counter %#x", fixed, got)
		}
		if got := leadingOnes(iv[:4]); got != fixed {
			t.Errorf("fixed %d: %d fixed bits kept, then zeros: %x", fixed, got, iv)
		}
		mp.IV = bytes.Repeat([]byte{0xFF}, 16)
		distinct := map[string]bool{}
		for range 8 {
			r := RandomIV(mp)
			if leadingOnes(r) < fixed {
				t.Errorf("fixed %d: random IV %x lost the fixed part", fixed, r)
			}
			distinct[string(r)] = true
		}
		if len(distinct) != 8 {
			t.Errorf("fixed %d: random IVs repeat", fixed)
		}
	}
	if !bytes.Equal(caller, bytes.Repeat([]byte{0xFF}, 12)) {
		t.Fatal("the caller's IV was changed")
	}
}

// leadingOnes counts the one bits at the start of b.
func leadingOnes(b []byte) int {
	n := 0
	for _, x := range b {
		for i := 7; i >= 0; i-- {
			if x>>i&1 == 0 {
				return n
			}
			n++
		}
	}
	return n
}

// Every mechanism that signs or verifies says so for messages too, and
// may take a message in parts unless the specification makes it
// single-part; the AEADs, and they alone, encrypt messages.
func TestMessageFlags(t *testing.T) {
	t.Parallel()
	for typ, m := range legacyMechanisms {
		f := m.info.Flags
		if (f&ck.CKF_SIGN != 0) != (f&ck.CKF_MESSAGE_SIGN != 0) || (f&ck.CKF_VERIFY != 0) != (f&ck.CKF_MESSAGE_VERIFY != 0) {
			t.Errorf("%#x: flags %#x", typ, f)
		}
		aead := typ == ck.CKM_AES_GCM || typ == ck.CKM_CHACHA20_POLY1305
		if (f&ck.CKF_MESSAGE_ENCRYPT != 0) != aead || (f&ck.CKF_MESSAGE_DECRYPT != 0) != aead || m.Does(MessageEncrypt) != aead {
			t.Errorf("%#x: message encryption flags %#x", typ, f)
		}
		multi := aead || f&(ck.CKF_SIGN|ck.CKF_VERIFY) != 0 && !singlePartSigs[typ]
		if (f&ck.CKF_MULTI_MESSAGE != 0) != multi {
			t.Errorf("%#x: CKF_MULTI_MESSAGE %v", typ, !multi)
		}
	}
	// The single-part set is the mechanisms whose operations are.
	priv, _ := testRSAKey(t, 1024)
	for typ, single := range map[uint64]bool{ck.CKM_RSA_PKCS: true, ck.CKM_SHA256_RSA_PKCS: false} {
		op, err := legacyMechanisms[typ].Sign(priv, &wire.Mechanism{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := op.(SinglePartOnly); ok != single || singlePartSigs[typ] != single {
			t.Errorf("%#x: single-part %v", typ, ok)
		}
	}
}
