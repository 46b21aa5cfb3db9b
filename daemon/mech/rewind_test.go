package mech

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Every cipher operation with an Update can go back to its mark: a
// stream fed with a wrong part after each mark, rewound, then the right
// part, is the stream of the right parts. Part sizes cross block and
// key-stream block boundaries, and the CTR counter carries past its low
// 64 bits.
func TestRewind(t *testing.T) {
	value := bytes.Repeat([]byte{0x24}, 32)
	aesKey := testSecret(t, ck.CKK_AES, value)
	chachaKey := testSecret(t, ck.CKK_CHACHA20, value)
	iv := bytes.Repeat([]byte{3}, 16)
	cb := [16]byte{7: 1, 8: 0xff, 9: 0xff, 10: 0xff, 11: 0xff, 12: 0xff, 13: 0xff, 14: 0xff, 15: 0xfe}
	ops := []struct {
		name string
		make func() (CipherOp, error)
	}{
		{"ecb", func() (CipherOp, error) {
			return newBlockOp(aesBlock, aesKey, &wire.Mechanism{Type: ck.CKM_AES_ECB}, modeECB, false)
		}},
		{"cbc-pad", func() (CipherOp, error) {
			return newBlockOp(aesBlock, aesKey, &wire.Mechanism{Type: ck.CKM_AES_CBC_PAD, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: iv}}, modeCBCPad, false)
		}},
		{"cbc-pad decrypt", func() (CipherOp, error) {
			return newBlockOp(aesBlock, aesKey, &wire.Mechanism{Type: ck.CKM_AES_CBC_PAD, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: iv}}, modeCBCPad, true)
		}},
		{"ctr", func() (CipherOp, error) {
			return newCTROp(aesKey, &wire.Mechanism{Type: ck.CKM_AES_CTR, Present: true, Param: wire.CTRParams{CounterBits: 128, CB: cb}.Param()}, false)
		}},
		{"chacha20", func() (CipherOp, error) {
			p := wire.ChaCha20Params{BlockCounter: []byte{1, 0, 0, 0}, Nonce: bytes.Repeat([]byte{5}, 12)}.Param()
			return newChaChaOp(chachaKey, &wire.Mechanism{Type: ck.CKM_CHACHA20, Present: true, Param: p}, false)
		}},
		{"gcm", func() (CipherOp, error) {
			p := wire.GCMParams{IV: iv[:12], TagBits: 128}.Param()
			return newGCMOp(aesKey, &wire.Mechanism{Type: ck.CKM_AES_GCM, Present: true, Param: p}, false)
		}},
	}
	sizes := []int{5, 16, 27, 64, 0, 33, 100, 11}
	// The CBC-PAD decryption is fed whole blocks in all.
	whole := []int{16, 32, 0, 48, 16}
	for _, o := range ops {
		ps := sizes
		if o.name == "cbc-pad decrypt" || o.name == "ecb" {
			ps = whole
		}
		straight, err := o.make()
		if err != nil {
			t.Fatalf("%s: %v", o.name, err)
		}
		rewound, _ := o.make()
		r, ok := rewound.(Rewinder)
		if !ok {
			t.Fatalf("%s: no Rewinder", o.name)
		}
		var want, got []byte
		for i, n := range ps {
			part := bytes.Repeat([]byte{byte('A' + i)}, n)
			out, err := straight.Update(part)
			if err != nil {
				t.Fatalf("%s: %v", o.name, err)
			}
			want = append(want, out...)
			r.Mark()
			if _, err := rewound.Update(bytes.Repeat([]byte{'w'}, 16+n)); err != nil {
				t.Fatalf("%s: wrong part: %v", o.name, err)
			}
			r.Rewind()
			out, err = rewound.Update(part)
			if err != nil {
				t.Fatalf("%s: %v", o.name, err)
			}
			got = append(got, out...)
		}
		a, errA := straight.Final()
		b, errB := rewound.Final()
		if (errA == nil) != (errB == nil) {
			t.Fatalf("%s: finals %v, %v", o.name, errA, errB)
		}
		if want, got = append(want, a...), append(got, b...); !bytes.Equal(got, want) {
			t.Errorf("%s: rewound %x, want %x", o.name, got, want)
		}
	}

	// And the CTR stream is the standard library's, whose counter carries
	// through all 128 bits.
	block, _ := aes.NewCipher(value)
	var all []byte
	for i, n := range sizes {
		all = append(all, bytes.Repeat([]byte{byte('A' + i)}, n)...)
	}
	ref := make([]byte, len(all))
	cipher.NewCTR(block, cb[:]).XORKeyStream(ref, all)
	op, _ := ops[3].make()
	r := op.(Rewinder)
	var got []byte
	for _, n := range sizes {
		r.Mark()
		op.Update(bytes.Repeat([]byte{'w'}, n+3))
		r.Rewind()
		out, _ := op.Update(all[:n])
		all = all[n:]
		got = append(got, out...)
	}
	if !bytes.Equal(got, ref) {
		t.Errorf("ctr across the carry: %x, want %x", got, ref)
	}
}
