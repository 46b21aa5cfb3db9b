package mech

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"

	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Message-based encryption (PKCS#11 3.0, C_MessageEncryptInit and kin):
// one key, one mechanism, many messages, each with its own IV (or nonce),
// associated data and tag, which a per-message parameter carries:
// CK_GCM_MESSAGE_PARAMS for AES-GCM, CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS
// for ChaCha20-Poly1305.
//
// A mechanism computes; where a generated IV's counter comes from is the
// token's business (it keeps one per key, persisted ahead of use).
// Params reads a message's parameter and says how its IV is made;
// CounterIV and RandomIV make it; Seal and Open do the rest.
//
// The policy, as docs/mechanisms.md ("Message-based operations") says:
//   - GCM encryption takes no IV from the caller (CKG_NO_GENERATE is
//     CKR_MECHANISM_PARAM_INVALID): the token makes every IV, so a key used
//     here never sees one twice. CKG_GENERATE and CKG_GENERATE_COUNTER put
//     a 64-bit counter in the last 8 bytes of a 12-byte IV, after the
//     caller's fixed bits (at most 32), zeros between; CKG_GENERATE_RANDOM
//     draws at least 96 random bits after them (SP 800-38D 8.2.2).
//   - ChaCha20-Poly1305's message parameter has no generator: its nonce is
//     the caller's, as for C_EncryptInit.
//   - A decryption takes the IV it is given; the generator and fixed bits
//     are ignored, as the specification says.

// IVGen is how a message's IV is made.
type IVGen int

const (
	IVCaller  IVGen = iota // the caller's, whole
	IVCounter              // the fixed part, then the token's counter in the last 8 bytes
	IVRandom               // the fixed part, then random bits
)

// Sizes of generated GCM IVs.
const (
	// GCMCounterIVLen is the length of a counter IV, the 96 bits SP
	// 800-38D 8.2.1 builds from a fixed and an invocation field.
	GCMCounterIVLen = 12
	// gcmMaxFixedBits bounds the caller's fixed part of a counter IV: the
	// counter takes the last 64 bits.
	gcmMaxFixedBits = 32
	// gcmMinRandomBits is the least random part of a random IV.
	gcmMinRandomBits = 96
)

// MsgParams is one message's parameter, checked.
type MsgParams struct {
	// IV is the caller's IV, a copy: the whole IV (IVCaller), or a buffer
	// of the IV's length whose first FixedBits bits are the fixed part.
	IV        []byte
	FixedBits int
	Gen       IVGen
	// Tag is a decryption's tag, a copy; nil when the parameter had none
	// (a multi-part message's Begin).
	Tag []byte
	// TagLen is the tag's length in bytes: the tag's, or on encryption the
	// caller's buffer's.
	TagLen int
}

// MsgCipher is a message-based encryption or decryption: the key and the
// mechanism fixed at Init, the rest per message.
type MsgCipher interface {
	// Params reads one message's parameter; out says it came in a call
	// that writes it back (an encryption's: its tag is an output).
	Params(p *wire.Param, encrypt bool) (*MsgParams, error)
	// Seal encrypts a message under iv: the ciphertext and, apart, the
	// tag of mp.TagLen bytes.
	Seal(mp *MsgParams, iv, aad, plain []byte) (ct, tag []byte, err error)
	// Open decrypts a message and checks its tag:
	// CKR_AEAD_DECRYPT_FAILED when it does not match.
	Open(mp *MsgParams, iv, aad, ct, tag []byte) ([]byte, error)
}

// MessageCipher starts a message-based encryption (encrypt) or decryption
// with key k. A parameter at Init is not needed, and ignored: each message
// brings its own.
func (m *Mechanism) MessageCipher(k Key, encrypt bool) (MsgCipher, error) {
	if m.message == nil {
		return nil, errNotThis
	}
	return m.message(k, encrypt)
}

// CounterIV is a counter IV: the fixed part of mp.IV, zeros, and counter
// in the last 8 bytes, big-endian.
func CounterIV(mp *MsgParams, counter uint64) []byte {
	iv := fixedPart(mp)
	binary.BigEndian.PutUint64(iv[len(iv)-8:], counter)
	return iv
}

// RandomIV is a random IV: the fixed part of mp.IV, then random bits.
func RandomIV(mp *MsgParams) []byte {
	iv := fixedPart(mp)
	r := make([]byte, len(iv))
	rand.Read(r) // never fails (crypto/rand's contract since Go 1.24)
	whole, bits := mp.FixedBits/8, mp.FixedBits%8
	clear(r[:whole])
	if bits != 0 {
		r[whole] &= 0xFF >> bits
	}
	for i := range iv {
		iv[i] |= r[i]
	}
	return iv
}

// fixedPart is mp.IV with every bit after the first mp.FixedBits cleared.
func fixedPart(mp *MsgParams) []byte {
	iv := append([]byte(nil), mp.IV...)
	whole, bits := mp.FixedBits/8, mp.FixedBits%8
	if bits != 0 {
		iv[whole] &= ^byte(0xFF >> bits)
		whole++
	}
	clear(iv[whole:])
	return iv
}

// gcmMessage is AES-GCM's message-based cipher.
type gcmMessage struct {
	block cipher.Block
}

func newGCMMessage(k Key, _ bool) (MsgCipher, error) {
	b, err := aesBlock(k)
	if err != nil {
		return nil, err
	}
	return &gcmMessage{block: b}, nil
}

var errMsgParam = ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)

func (g *gcmMessage) Params(p *wire.Param, encrypt bool) (*MsgParams, error) {
	gp, err := p.GCMMessageParams(encrypt)
	if err != nil {
		return nil, errMsgParam
	}
	n := len(gp.IV)
	if gp.IV == nil || n < 1 || n > gcmMaxIV {
		return nil, errMsgParam
	}
	mp := &MsgParams{IV: append([]byte(nil), gp.IV...), TagLen: int(gp.TagCap)}
	if !encrypt {
		// The generator and the fixed bits are ignored (PKCS#11 3.0,
		// "AES-GCM authenticated encryption / decryption").
		if gp.Tag != nil {
			mp.Tag = append([]byte(nil), gp.Tag...)
		}
		if mp.Tag != nil && !gcmTagLen(len(mp.Tag)) {
			return nil, errMsgParam
		}
		return mp, nil
	}
	if gp.TagNull || !gcmTagLen(mp.TagLen) || gp.IVFixedBits > uint64(8*n) {
		return nil, errMsgParam
	}
	mp.FixedBits = int(gp.IVFixedBits)
	switch gp.IVGenerator {
	case ck.CKG_GENERATE, ck.CKG_GENERATE_COUNTER:
		if n != GCMCounterIVLen || mp.FixedBits > gcmMaxFixedBits {
			return nil, errMsgParam
		}
		mp.Gen = IVCounter
	case ck.CKG_GENERATE_RANDOM:
		if 8*n-mp.FixedBits < gcmMinRandomBits {
			return nil, errMsgParam
		}
		mp.Gen = IVRandom
	default:
		// CKG_NO_GENERATE among them: the token makes every IV it
		// encrypts under.
		return nil, errMsgParam
	}
	return mp, nil
}

// gcmTagLen says whether a GCM tag of n bytes is one this token makes and
// checks: 12 to 16 bytes, as C_EncryptInit's (gcmMinTagBits).
func gcmTagLen(n int) bool { return n >= gcmMinTagBits/8 && n <= 16 }

func (g *gcmMessage) aead(mp *MsgParams, ivLen, tagLen int) (cipher.AEAD, error) {
	a, err := newGCM(g.block, ivLen, tagLen)
	if err != nil {
		return nil, errMsgParam
	}
	return a, nil
}

func (g *gcmMessage) Seal(mp *MsgParams, iv, aad, plain []byte) ([]byte, []byte, error) {
	a, err := g.aead(mp, len(iv), mp.TagLen)
	if err != nil {
		return nil, nil, err
	}
	return sealSplit(a, iv, aad, plain)
}

func (g *gcmMessage) Open(mp *MsgParams, iv, aad, ct, tag []byte) ([]byte, error) {
	if !gcmTagLen(len(tag)) {
		return nil, errMsgParam
	}
	a, err := g.aead(mp, len(iv), len(tag))
	if err != nil {
		return nil, err
	}
	return openJoined(a, iv, aad, ct, tag)
}

// sealSplit seals and returns the ciphertext and the tag apart.
func sealSplit(a cipher.AEAD, iv, aad, plain []byte) ([]byte, []byte, error) {
	out := a.Seal(nil, iv, plain, aad)
	n := len(plain)
	return out[:n:n], out[n:], nil
}

// openJoined opens a ciphertext whose tag came apart.
func openJoined(a cipher.AEAD, iv, aad, ct, tag []byte) ([]byte, error) {
	in := make([]byte, 0, len(ct)+len(tag))
	in = append(append(in, ct...), tag...)
	out, err := a.Open(in[:0], iv, in, aad)
	if err != nil {
		wipe(in)
		return nil, ck.Error(ck.CKR_AEAD_DECRYPT_FAILED)
	}
	return append([]byte{}, out...), nil
}

// chachaMessage is ChaCha20-Poly1305's message-based cipher.
type chachaMessage struct {
	ietf, x cipher.AEAD
}

const chachaTagLen = chacha20poly1305.Overhead

func newChaChaMessage(k Key, _ bool) (MsgCipher, error) {
	key, err := chachaKey(k)
	if err != nil {
		return nil, err
	}
	ietf, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	x, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return &chachaMessage{ietf: ietf, x: x}, nil
}

func (c *chachaMessage) Params(p *wire.Param, encrypt bool) (*MsgParams, error) {
	cp, err := p.ChaCha20Poly1305MsgParams(encrypt)
	if err != nil {
		return nil, errMsgParam
	}
	if c.aead(len(cp.Nonce)) == nil || cp.Nonce == nil {
		return nil, errMsgParam
	}
	mp := &MsgParams{IV: append([]byte(nil), cp.Nonce...), Gen: IVCaller, TagLen: chachaTagLen}
	if encrypt {
		if cp.TagNull || cp.TagCap != chachaTagLen {
			return nil, errMsgParam
		}
		return mp, nil
	}
	if cp.Tag != nil {
		if len(cp.Tag) != chachaTagLen {
			return nil, errMsgParam
		}
		mp.Tag = append([]byte(nil), cp.Tag...)
	}
	return mp, nil
}

// aead is the cipher for a nonce of n bytes: RFC 8439's for 12,
// XChaCha20-Poly1305 for 24; nil otherwise.
func (c *chachaMessage) aead(n int) cipher.AEAD {
	switch n {
	case chacha20poly1305.NonceSize:
		return c.ietf
	case chacha20poly1305.NonceSizeX:
		return c.x
	}
	return nil
}

func (c *chachaMessage) Seal(mp *MsgParams, iv, aad, plain []byte) ([]byte, []byte, error) {
	a := c.aead(len(iv))
	if a == nil {
		return nil, nil, errMsgParam
	}
	return sealSplit(a, iv, aad, plain)
}

func (c *chachaMessage) Open(mp *MsgParams, iv, aad, ct, tag []byte) ([]byte, error) {
	a := c.aead(len(iv))
	if a == nil || len(tag) != chachaTagLen {
		return nil, errMsgParam
	}
	return openJoined(a, iv, aad, ct, tag)
}
