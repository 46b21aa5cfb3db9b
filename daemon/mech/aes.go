package mech

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"math/big"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// AES: key generation, the block modes ECB, CBC and CBC with PKCS#7
// padding, CTR and GCM; and generic secret key generation, which has no
// better home.

// blockModeMechanism is ECB, CBC or CBC_PAD over the block cipher of
// keys of the given types: AES here, DES and triple DES in des.go.
func blockModeMechanism(info wire.MechanismInfo, keyTypes []uint64, blk blockOf, mode blockMode) *Mechanism {
	e := &Mechanism{
		info: info, keyTypes: keyTypes,
		encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newBlockOp(blk, k, m, mode, false) },
		decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newBlockOp(blk, k, m, mode, true) },
	}
	if mode == modeCBCPad {
		// CBC_PAD also wraps keys (aeskw.go). ECB and CBC could
		// too, zero-padded, but the padding would become part of the
		// unwrapped key: they are not offered for wrapping.
		e.info.Flags |= ck.CKF_WRAP | ck.CKF_UNWRAP
		e.wrap, e.unwrap = cbcPadWrapper(blk)
	}
	return e
}

func aesMechanisms() map[uint64]*Mechanism {
	block := func(mode blockMode) *Mechanism {
		return blockModeMechanism(aesInfo(ck.CKF_ENCRYPT|ck.CKF_DECRYPT), aesOnly, aesBlock, mode)
	}
	return map[uint64]*Mechanism{
		ck.CKM_AES_KEY_GEN: {
			info: aesInfo(ck.CKF_GENERATE), genKeyType: ck.CKK_AES,
			generate: generateAES,
		},
		ck.CKM_GENERIC_SECRET_KEY_GEN: {
			info:       wire.MechanismInfo{MinKeySize: 8, MaxKeySize: 8 * maxGenericBytes, Flags: ck.CKF_GENERATE},
			genKeyType: ck.CKK_GENERIC_SECRET,
			generate:   generateGeneric,
		},
		ck.CKM_AES_ECB:     block(modeECB),
		ck.CKM_AES_CBC:     block(modeCBC),
		ck.CKM_AES_CBC_PAD: block(modeCBCPad),
		ck.CKM_AES_CTR: {
			info: aesInfo(ck.CKF_ENCRYPT | ck.CKF_DECRYPT), keyTypes: aesOnly,
			encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newCTROp(k, m, false) },
			decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newCTROp(k, m, true) },
		},
		ck.CKM_AES_GCM: {
			info: aesInfo(ck.CKF_ENCRYPT | ck.CKF_DECRYPT), keyTypes: aesOnly,
			encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newGCMOp(k, m, false) },
			decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newGCMOp(k, m, true) },
			message: newGCMMessage,
		},
	}
}

// Key generation.

// valueLen reads the template's CKA_VALUE_LEN, which key generation needs.
func valueLen(tmpl map[uint64][]byte) (uint64, error) {
	v, ok := tmpl[ck.CKA_VALUE_LEN]
	if !ok {
		return 0, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	if len(v) != 8 {
		return 0, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	return ulongOf(v), nil
}

func randomValue(n int) (map[uint64][]byte, error) {
	v := make([]byte, n)
	rand.Read(v) // never fails (crypto/rand's contract since Go 1.24)
	return map[uint64][]byte{ck.CKA_VALUE: v}, nil
}

func generateAES(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	n, err := valueLen(tmpl)
	if err != nil {
		return nil, err
	}
	if n != 16 && n != 24 && n != 32 {
		return nil, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	return randomValue(int(n))
}

func generateGeneric(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	n, err := valueLen(tmpl)
	switch {
	case err != nil:
		return nil, err
	case n == 0:
		return nil, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	case n > maxGenericBytes:
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return randomValue(int(n))
}

// Block modes.

type blockMode int

const (
	modeECB blockMode = iota
	modeCBC
	modeCBCPad
)

// blockOf returns the block cipher of a key, checking its type.
type blockOf func(Key) (cipher.Block, error)

// blockOp is ECB, CBC or CBC_PAD, either way. Update returns every whole
// block it can; a CBC_PAD decryption keeps the last whole block back,
// since only Final knows it is the last and may strip its padding.
type blockOp struct {
	mode    cipher.BlockMode
	pad     bool
	decrypt bool
	buf     []byte // input not yet processed: less than a block (a block for CBC_PAD decryption)
	// CBC's chaining value and its block cipher, so that Rewind can make
	// the mode anew from the state at Mark (rewind.go); nil for ECB.
	blk cipher.Block
	iv  []byte
	// The state at Mark.
	markBuf, markIV []byte
}

func newBlockOp(blk blockOf, k Key, m *wire.Mechanism, mode blockMode, decrypt bool) (*blockOp, error) {
	b, err := blk(k)
	if err != nil {
		return nil, err
	}
	op := &blockOp{pad: mode == modeCBCPad, decrypt: decrypt}
	if mode == modeECB {
		if err := noParam(m); err != nil {
			return nil, err
		}
		op.mode = ecb{b, decrypt}
		return op, nil
	}
	iv, err := bytesParam(m, b.BlockSize())
	if err != nil {
		return nil, err
	}
	op.blk, op.iv = b, append([]byte(nil), iv...)
	if decrypt {
		op.mode = cipher.NewCBCDecrypter(b, iv)
	} else {
		op.mode = cipher.NewCBCEncrypter(b, iv)
	}
	return op, nil
}

func (op *blockOp) Update(in []byte) ([]byte, error) {
	bs := op.mode.BlockSize()
	total := len(op.buf) + len(in)
	keep := total % bs
	if keep == 0 && total > 0 && op.pad && op.decrypt {
		keep = bs
	}
	n := total - keep
	out := make([]byte, n)
	if n > 0 {
		// Complete the buffered block with the head of in, then the rest.
		head := copy(out, op.buf)
		copy(out[head:], in[:n-head])
		// CBC chains on the last ciphertext block: the input's when
		// decrypting, the output's when encrypting.
		if op.iv != nil && op.decrypt {
			copy(op.iv, out[n-bs:])
		}
		op.mode.CryptBlocks(out, out)
		if op.iv != nil && !op.decrypt {
			copy(op.iv, out[n-bs:])
		}
		in = in[n-head:]
		wipe(op.buf)
		op.buf = op.buf[:0]
	}
	op.buf = append(op.buf, in...)
	return out, nil
}

// Final takes the partial block and leaves the mark (rewind.go): the
// engine marks before a Final, so that a Final that was only measured
// can be taken back. Wipe clears the mark when the operation ends.
func (op *blockOp) Final() ([]byte, error) {
	bs := op.mode.BlockSize()
	defer func() { wipe(op.buf); op.buf = nil }()
	switch {
	case !op.pad:
		if len(op.buf) != 0 {
			return nil, lenErr(op.decrypt)
		}
		return []byte{}, nil
	case !op.decrypt:
		return padEncrypt(op.mode, op.buf), nil
	}
	if len(op.buf) != bs {
		return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_LEN_RANGE)
	}
	last := make([]byte, bs)
	op.mode.CryptBlocks(last, op.buf)
	n, ok := unpad(last)
	if !ok {
		wipe(last)
		return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_INVALID)
	}
	return last[:n], nil
}

// Wipe clears the partial block and the mark.
func (op *blockOp) Wipe() {
	wipe(op.buf)
	op.buf = nil
	wipe(op.markBuf)
	op.markBuf = nil
}

// padEncrypt encrypts the last, partial block with its PKCS#7 padding.
func padEncrypt(mode cipher.BlockMode, rest []byte) []byte {
	bs := mode.BlockSize()
	last := make([]byte, bs)
	copy(last, rest)
	p := bs - len(rest)
	for i := len(rest); i < bs; i++ {
		last[i] = byte(p)
	}
	mode.CryptBlocks(last, last)
	return last
}

// unpad checks the PKCS#7 padding of a decrypted last block, in constant
// time, and returns the length of the data before it.
func unpad(last []byte) (int, bool) {
	bs := len(last)
	p := int(last[bs-1])
	good := subtle.ConstantTimeLessOrEq(1, p) & subtle.ConstantTimeLessOrEq(p, bs)
	for i := 0; i < bs; i++ {
		// Bytes in the padding (i >= bs-p) must equal p.
		inPad := subtle.ConstantTimeLessOrEq(bs-p, i)
		same := subtle.ConstantTimeByteEq(last[i], byte(p))
		good &= same | (inPad ^ 1)
	}
	return bs - p, good == 1
}

// ecb is ECB as a cipher.BlockMode: each block on its own.
type ecb struct {
	b       cipher.Block
	decrypt bool
}

func (e ecb) BlockSize() int { return e.b.BlockSize() }

func (e ecb) CryptBlocks(dst, src []byte) {
	bs := e.b.BlockSize()
	if len(src)%bs != 0 || len(dst) < len(src) {
		panic("mech: internal error: ECB on partial blocks")
	}
	for i := 0; i < len(src); i += bs {
		if e.decrypt {
			e.b.Decrypt(dst[i:i+bs], src[i:i+bs])
		} else {
			e.b.Encrypt(dst[i:i+bs], src[i:i+bs])
		}
	}
}

// CTR.

// ctrOp is AES-CTR with CK_AES_CTR_PARAMS: the counter is the low
// ulCounterBits bits of the counter block. A counter that would wrap would
// reuse key stream, so data longer than the counter's remaining values
// allow is refused.
type ctrOp struct {
	stream  cipher.Stream
	blocks  uint64 // blocks the counter has left, at most 1<<62
	done    uint64 // bytes processed
	decrypt bool
	// The block cipher and the first counter block, so that Rewind can
	// make the key stream anew at any offset (rewind.go); the bytes
	// processed at Mark.
	blk      cipher.Block
	cb       [16]byte
	markDone uint64
}

func newCTROp(k Key, m *wire.Mechanism, decrypt bool) (*ctrOp, error) {
	b, err := aesBlock(k)
	if err != nil {
		return nil, err
	}
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.CTRParams()
	if err != nil {
		return nil, paramErr(err)
	}
	if p.CounterBits < 1 || p.CounterBits > 128 {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	// Values left: 2^bits minus the counter's start.
	bits := uint(p.CounterBits)
	start := new(big.Int).SetBytes(p.CB[:])
	mask := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), bits), big.NewInt(1))
	left := new(big.Int).Sub(new(big.Int).Add(mask, big.NewInt(1)), start.And(start, mask))
	blocks := uint64(1) << 62
	if left.IsUint64() && left.Uint64() < blocks {
		blocks = left.Uint64()
	}
	// Within those blocks no carry leaves the counter's bits, so the
	// standard library's 128-bit increment computes the same key stream.
	return &ctrOp{stream: cipher.NewCTR(b, p.CB[:]), blocks: blocks, decrypt: decrypt, blk: b, cb: p.CB}, nil
}

func (op *ctrOp) Update(in []byte) ([]byte, error) {
	total := op.done + uint64(len(in))
	if (total+15)/16 > op.blocks {
		return nil, lenErr(op.decrypt)
	}
	out := make([]byte, len(in))
	op.stream.XORKeyStream(out, in)
	op.done = total
	return out, nil
}

func (op *ctrOp) Final() ([]byte, error) { return []byte{}, nil }

// GCM.

const (
	gcmMaxIV      = 256 // bytes; PKCS#11 allows more, nobody needs it
	gcmMinTagBits = 96  // shorter tags (32, 64) are refused: see docs
)

func newGCMOp(k Key, m *wire.Mechanism, decrypt bool) (*oneShotCipher, error) {
	b, err := aesBlock(k)
	if err != nil {
		return nil, err
	}
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.GCMParams()
	if err != nil {
		return nil, paramErr(err)
	}
	// ulIvBits is ignored, as most tokens do: clients disagree on it, and
	// the IV's length says it all.
	if len(p.IV) < 1 || len(p.IV) > gcmMaxIV ||
		p.TagBits < gcmMinTagBits || p.TagBits > 128 || p.TagBits%8 != 0 {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	var aead cipher.AEAD
	if len(p.IV) == 12 && p.TagBits == 128 {
		// The common form's GCM (its hash key and tables) is kept with
		// the key: a GCM is safe for concurrent use.
		aead, err = memoKey(k, "gcm-96-128", parseGCM96)
	} else {
		aead, err = newGCM(b, len(p.IV), int(p.TagBits/8))
	}
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return aeadOneShot(aead, p.IV, p.AAD, decrypt), nil
}

// parseGCM96 is a key's GCM with a 96-bit IV and a 128-bit tag.
func parseGCM96(k Key) (cipher.AEAD, error) {
	b, err := aesBlock(k)
	if err != nil {
		return nil, err
	}
	return newGCM(b, 12, 16)
}

// aeadOneShot is a single-part AEAD operation (GCM, ChaCha20-Poly1305)
// over copies of the nonce and associated data: encryption seals,
// decryption opens and refuses input shorter than the tag.
func aeadOneShot(aead cipher.AEAD, nonce, aad []byte, decrypt bool) *oneShotCipher {
	nonce = append([]byte(nil), nonce...)
	aad = append([]byte(nil), aad...)
	op := &oneShotCipher{buffer: buffer{decrypt: decrypt}}
	if !decrypt {
		op.one = func(in []byte) ([]byte, error) { return aead.Seal(nil, nonce, in, aad), nil }
		return op
	}
	op.one = func(in []byte) ([]byte, error) {
		if len(in) < aead.Overhead() {
			return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_LEN_RANGE)
		}
		out, err := aead.Open(nil, nonce, in, aad)
		if err != nil {
			return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_INVALID)
		}
		if out == nil {
			out = []byte{}
		}
		return out, nil
	}
	return op
}

// newGCM returns GCM with any IV length and a tag of 12 to 16 bytes. The
// standard library offers a custom IV length with the full tag, or a short
// tag with the standard 12-byte IV, not both; truncGCM covers the rest.
func newGCM(b cipher.Block, ivLen, tagLen int) (cipher.AEAD, error) {
	switch {
	case tagLen == 16:
		return cipher.NewGCMWithNonceSize(b, ivLen)
	case ivLen == 12:
		return cipher.NewGCMWithTagSize(b, tagLen)
	}
	full, err := cipher.NewGCMWithNonceSize(b, ivLen)
	if err != nil {
		return nil, err
	}
	return truncGCM{full, tagLen}, nil
}

// truncGCM is GCM with a tag shorter than 16 bytes over a full-tag GCM. A
// short tag is the full tag's first bytes (SP 800-38D 7.1), so sealing
// truncates. Opening decrypts with the key stream (the full-tag sealing of
// zeros under the same IV: the key stream does not depend on the AAD),
// then seals the plaintext again and compares the tags in constant time.
// It costs two passes; it serves only unusual IV and tag combinations.
type truncGCM struct {
	full cipher.AEAD
	tag  int
}

func (g truncGCM) NonceSize() int { return g.full.NonceSize() }
func (g truncGCM) Overhead() int  { return g.tag }

func (g truncGCM) Seal(dst, nonce, plaintext, aad []byte) []byte {
	s := g.full.Seal(nil, nonce, plaintext, aad)
	return append(dst, s[:len(plaintext)+g.tag]...)
}

func (g truncGCM) Open(dst, nonce, ciphertext, aad []byte) ([]byte, error) {
	if len(ciphertext) < g.tag {
		return nil, errOpen
	}
	n := len(ciphertext) - g.tag
	c, tag := ciphertext[:n], ciphertext[n:]
	plain := g.full.Seal(nil, nonce, make([]byte, n), nil)[:n]
	subtle.XORBytes(plain, plain, c)
	again := g.full.Seal(nil, nonce, plain, aad)
	if subtle.ConstantTimeCompare(again[n:n+g.tag], tag) != 1 {
		wipe(plain)
		return nil, errOpen
	}
	return append(dst, plain...), nil
}

var errOpen = ck.Error(ck.CKR_ENCRYPTED_DATA_INVALID)
