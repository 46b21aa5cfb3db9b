package mech

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// AES key wrap: KW (RFC 3394, NIST SP 800-38F), KWP (RFC 5649; also under
// its older PKCS#11 name CKM_AES_KEY_WRAP_PAD), both as wrapping and as
// single-part encryption mechanisms; and CBC_PAD as a wrapping mechanism.
//
// KW wraps only what is a multiple of 8 bytes, at least 16: AES keys, and
// generic secrets of such lengths. It does not zero-pad, since the unwrap
// could not tell the padding from the key; KWP wraps any length.

var (
	kwDefaultIV  = []byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}
	kwpDefaultIV = []byte{0xA6, 0x59, 0x59, 0xA6}
)

// Failures of seal and open, which each use maps to its own CK_RV. Every
// integrity failure of an unwrap is one error, so a failure tells nothing
// of where it was found.
var (
	errWrapLen = errors.New("key wrap: input length out of range")
	errUnwrap  = errors.New("key unwrap: integrity check failed")
)

// keyWrap is KW or KWP (padded).
type keyWrap struct{ padded bool }

// seal wraps in: KW takes n ≥ 2 semiblocks, KWP 1 to 2^32-1 bytes.
func (w keyWrap) seal(b cipher.Block, iv, in []byte) ([]byte, error) {
	switch {
	case w.padded && (len(in) == 0 || uint64(len(in)) > 1<<32-1):
		return nil, errWrapLen
	case w.padded:
		return kwpWrap(b, iv, in), nil
	case len(in) < 16 || len(in)%8 != 0:
		return nil, errWrapLen
	}
	return kwWrap(b, iv, in), nil
}

// open unwraps in: semiblocks, at least 3 for KW, 2 for KWP.
func (w keyWrap) open(b cipher.Block, iv, in []byte) ([]byte, error) {
	switch {
	case len(in)%8 != 0 || len(in) < 16 || (!w.padded && len(in) < 24):
		return nil, errWrapLen
	case w.padded:
		return kwpUnwrap(b, iv, in)
	}
	return kwUnwrap(b, iv, in)
}

// setup returns the cipher and the IV: the parameter, when given, is 8
// bytes for KW and 4 for KWP (the constant half of its AIV).
func (w keyWrap) setup(k Key, m *wire.Mechanism) (cipher.Block, []byte, error) {
	b, err := aesBlock(k)
	if err != nil {
		return nil, nil, err
	}
	var iv []byte
	if w.padded {
		iv, err = optionalParam(m, 4, kwpDefaultIV)
	} else {
		iv, err = optionalParam(m, 8, kwDefaultIV)
	}
	return b, iv, err
}

// mapErr gives seal's and open's errors their CK_RV: lenRV for a length
// out of range, badRV for a failed integrity check.
func mapErr(err error, lenRV, badRV uint64) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errWrapLen):
		return ck.Error(lenRV)
	}
	return ck.Error(badRV)
}

func (w keyWrap) mechanism() *Mechanism {
	return &Mechanism{
		info: aesInfo(ck.CKF_ENCRYPT | ck.CKF_DECRYPT | ck.CKF_WRAP | ck.CKF_UNWRAP), keyTypes: aesOnly,
		encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return w.cipher(k, m, false) },
		decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return w.cipher(k, m, true) },
		wrap: func(k Key, m *wire.Mechanism, enc []byte) ([]byte, error) {
			b, iv, err := w.setup(k, m)
			if err != nil {
				return nil, err
			}
			out, err := w.seal(b, iv, enc)
			return out, mapErr(err, ck.CKR_KEY_SIZE_RANGE, ck.CKR_GENERAL_ERROR)
		},
		unwrap: func(k Key, m *wire.Mechanism, wrapped []byte) ([]byte, error) {
			b, iv, err := w.setup(k, m)
			if err != nil {
				return nil, err
			}
			out, err := w.open(b, iv, wrapped)
			return out, mapErr(err, ck.CKR_WRAPPED_KEY_LEN_RANGE, ck.CKR_WRAPPED_KEY_INVALID)
		},
	}
}

// cipher is KW or KWP as an encryption mechanism: single-part in the
// specification; a multi-part call buffers and computes at Final.
func (w keyWrap) cipher(k Key, m *wire.Mechanism, decrypt bool) (CipherOp, error) {
	b, iv, err := w.setup(k, m)
	if err != nil {
		return nil, err
	}
	op := &oneShotCipher{buffer: buffer{decrypt: decrypt}}
	if decrypt {
		op.one = func(in []byte) ([]byte, error) {
			out, err := w.open(b, iv, in)
			return out, mapErr(err, ck.CKR_ENCRYPTED_DATA_LEN_RANGE, ck.CKR_ENCRYPTED_DATA_INVALID)
		}
	} else {
		op.one = func(in []byte) ([]byte, error) {
			out, err := w.seal(b, iv, in)
			return out, mapErr(err, ck.CKR_DATA_LEN_RANGE, ck.CKR_GENERAL_ERROR)
		}
	}
	return op, nil
}

func keyWrapMechanisms() map[uint64]*Mechanism {
	return map[uint64]*Mechanism{
		ck.CKM_AES_KEY_WRAP:     keyWrap{}.mechanism(),
		ck.CKM_AES_KEY_WRAP_KWP: keyWrap{padded: true}.mechanism(),
		ck.CKM_AES_KEY_WRAP_PAD: keyWrap{padded: true}.mechanism(),
	}
}

// cbcPadWrapper makes CBC_PAD over the block cipher blk a wrapping
// mechanism (the table entries are with the other block modes, aes.go
// and des.go): the key's encoding, PKCS#7-padded, in CBC under the IV
// parameter.
func cbcPadWrapper(blk blockOf) (wrap func(Key, *wire.Mechanism, []byte) ([]byte, error), unwrap func(Key, *wire.Mechanism, []byte) ([]byte, error)) {
	wrap = func(k Key, m *wire.Mechanism, enc []byte) ([]byte, error) {
		op, err := newBlockOp(blk, k, m, modeCBCPad, false)
		if err != nil {
			return nil, err
		}
		a, _ := op.Update(enc)
		b, _ := op.Final()
		return append(a, b...), nil
	}
	unwrap = func(k Key, m *wire.Mechanism, wrapped []byte) ([]byte, error) {
		op, err := newBlockOp(blk, k, m, modeCBCPad, true)
		if err != nil {
			return nil, err
		}
		if bs := op.mode.BlockSize(); len(wrapped) == 0 || len(wrapped)%bs != 0 {
			return nil, ck.Error(ck.CKR_WRAPPED_KEY_LEN_RANGE)
		}
		a, _ := op.Update(wrapped)
		b, err := op.Final()
		if err != nil {
			wipe(a)
			return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
		}
		return append(a, b...), nil
	}
	return wrap, unwrap
}

// kwWrap is W of SP 800-38F (RFC 3394 2.2.1, index form): p is n ≥ 2
// semiblocks of 8 bytes, iv the 8-byte initial value.
func kwWrap(b cipher.Block, iv, p []byte) []byte {
	n := len(p) / 8
	out := make([]byte, 8+len(p))
	copy(out, iv)
	copy(out[8:], p)
	var blk [16]byte
	copy(blk[:8], iv)
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			r := out[8*i : 8*i+8]
			copy(blk[8:], r)
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			copy(r, blk[8:])
		}
	}
	copy(out[:8], blk[:8])
	clear(blk[:])
	return out
}

// kwUnwrapRaw is W⁻¹: it returns the recovered initial value and the
// semiblocks, unchecked.
func kwUnwrapRaw(b cipher.Block, c []byte) (a [8]byte, p []byte) {
	n := len(c)/8 - 1
	p = make([]byte, len(c)-8)
	copy(p, c[8:])
	var blk [16]byte
	copy(blk[:8], c[:8])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:8], binary.BigEndian.Uint64(blk[:8])^t)
			r := p[8*(i-1) : 8*i]
			copy(blk[8:], r)
			b.Decrypt(blk[:], blk[:])
			copy(r, blk[8:])
		}
	}
	copy(a[:], blk[:8])
	clear(blk[:])
	return a, p
}

// kwUnwrap undoes kwWrap and checks the initial value; c is at least 24
// bytes, a multiple of 8 (open checks).
func kwUnwrap(b cipher.Block, iv, c []byte) ([]byte, error) {
	a, p := kwUnwrapRaw(b, c)
	if subtle.ConstantTimeCompare(a[:], iv) != 1 {
		wipe(p)
		return nil, errUnwrap
	}
	return p, nil
}

// kwpWrap is KWP (RFC 5649): the alternative initial value is the 4-byte
// constant and the data's length; the data is zero-padded to semiblocks;
// one semiblock of data is a single AES block, more go through W.
func kwpWrap(b cipher.Block, iv, p []byte) []byte {
	padded := make([]byte, (len(p)+7)/8*8)
	copy(padded, p)
	defer wipe(padded)
	var aiv [8]byte
	copy(aiv[:4], iv)
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(p)))
	if len(padded) == 8 {
		out := make([]byte, 16)
		copy(out, aiv[:])
		copy(out[8:], padded)
		b.Encrypt(out, out)
		return out
	}
	return kwWrap(b, aiv[:], padded)
}

// kwpUnwrap undoes kwpWrap, checking the constant, the length and the
// padding; c is at least 16 bytes, a multiple of 8 (open checks).
func kwpUnwrap(b cipher.Block, iv, c []byte) ([]byte, error) {
	var a [8]byte
	var p []byte
	if len(c) == 16 {
		var blk [16]byte
		b.Decrypt(blk[:], c)
		copy(a[:], blk[:8])
		p = append([]byte(nil), blk[8:]...)
		clear(blk[:])
	} else {
		a, p = kwUnwrapRaw(b, c)
	}
	// The length must fall in the last semiblock: len(p)-8 < mli ≤ len(p).
	// (Its top bit, never set for a length that fits, is checked apart so
	// the comparisons stay within the range they work on.)
	mli := int(binary.BigEndian.Uint32(a[4:]) & 0x7fffffff)
	ok := subtle.ConstantTimeCompare(a[:4], iv) & subtle.ConstantTimeByteEq(a[4]>>7, 0) &
		subtle.ConstantTimeLessOrEq(len(p)-7, mli) & subtle.ConstantTimeLessOrEq(mli, len(p))
	// The padding, if the length is right, must be zeros. Its length is
	// 0..7; look at the whole last semiblock, in constant time.
	var nonzero byte
	for i := len(p) - 8; i < len(p); i++ {
		inPad := subtle.ConstantTimeLessOrEq(mli, i)
		nonzero |= p[i] & byte(-inPad)
	}
	ok &= subtle.ConstantTimeByteEq(nonzero, 0)
	if ok != 1 {
		wipe(p)
		return nil, errUnwrap
	}
	return p[:mli], nil
}
