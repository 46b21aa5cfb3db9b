package mech

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/subtle"
	"fmt"
	"hash"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// MACs: HMAC over SHA-1, SHA-2 and SHA-3, and AES-CMAC (DES3-CMAC is in
// des.go), as sign and verify operations, single- and multi-part; and the
// HMAC key generation mechanisms of PKCS#11 3.0. The _GENERAL variants (a
// truncated MAC whose length is a CK_ULONG parameter) are not offered:
// the protocol table does not carry their parameter.

// hmacs are the HMAC mechanisms: the digest they use, the key type of
// their own (besides generic secrets), and that key type's generation
// mechanism.
var hmacs = map[uint64]struct{ hash, keyType, keyGen uint64 }{
	ck.CKM_SHA_1_HMAC:      {ck.CKM_SHA_1, ck.CKK_SHA_1_HMAC, ck.CKM_SHA_1_KEY_GEN},
	ck.CKM_SHA224_HMAC:     {ck.CKM_SHA224, ck.CKK_SHA224_HMAC, ck.CKM_SHA224_KEY_GEN},
	ck.CKM_SHA256_HMAC:     {ck.CKM_SHA256, ck.CKK_SHA256_HMAC, ck.CKM_SHA256_KEY_GEN},
	ck.CKM_SHA384_HMAC:     {ck.CKM_SHA384, ck.CKK_SHA384_HMAC, ck.CKM_SHA384_KEY_GEN},
	ck.CKM_SHA512_HMAC:     {ck.CKM_SHA512, ck.CKK_SHA512_HMAC, ck.CKM_SHA512_KEY_GEN},
	ck.CKM_SHA512_224_HMAC: {ck.CKM_SHA512_224, ck.CKK_SHA512_224_HMAC, ck.CKM_SHA512_224_KEY_GEN},
	ck.CKM_SHA512_256_HMAC: {ck.CKM_SHA512_256, ck.CKK_SHA512_256_HMAC, ck.CKM_SHA512_256_KEY_GEN},
	ck.CKM_SHA3_224_HMAC:   {ck.CKM_SHA3_224, ck.CKK_SHA3_224_HMAC, ck.CKM_SHA3_224_KEY_GEN},
	ck.CKM_SHA3_256_HMAC:   {ck.CKM_SHA3_256, ck.CKK_SHA3_256_HMAC, ck.CKM_SHA3_256_KEY_GEN},
	ck.CKM_SHA3_384_HMAC:   {ck.CKM_SHA3_384, ck.CKK_SHA3_384_HMAC, ck.CKM_SHA3_384_KEY_GEN},
	ck.CKM_SHA3_512_HMAC:   {ck.CKM_SHA3_512, ck.CKK_SHA3_512_HMAC, ck.CKM_SHA3_512_KEY_GEN},
}

func macMechanisms() map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{}
	for typ, hm := range hmacs {
		newHash := hashes[hm.hash]
		kind := fmt.Sprintf("hmac-%#x", hm.hash)
		keyed := func(k Key) (hash.Hash, error) {
			mac := hmac.New(newHash, value(k))
			// Reset keeps the states after each pad, which Sum and
			// the clones then restore instead of hashing the pads.
			mac.Reset()
			return mac, nil
		}
		ctor := func(k Key, m *wire.Mechanism) (SignOp, error) { return newHMAC(k, m, kind, keyed, newHash) }
		t[typ] = &Mechanism{
			// Generic secret key sizes, in bits. A key is a generic
			// secret or of the HMAC's own key type (PKCS#11 3.0,
			// "HMAC mechanisms"), nothing else: an AES key is
			// CKR_KEY_TYPE_INCONSISTENT.
			info:     wire.MechanismInfo{MinKeySize: 8, MaxKeySize: 8 * maxGenericBytes, Flags: ck.CKF_SIGN | ck.CKF_VERIFY},
			keyTypes: []uint64{ck.CKK_GENERIC_SECRET, hm.keyType},
			sign:     ctor,
			verify:   ctor,
		}
		// Its key generation: CKA_VALUE_LEN bytes, sizes in bytes.
		t[hm.keyGen] = &Mechanism{
			info:       wire.MechanismInfo{MinKeySize: 1, MaxKeySize: maxGenericBytes, Flags: ck.CKF_GENERATE},
			genKeyType: hm.keyType,
			generate:   generateGeneric,
		}
	}
	cmacCtor := func(k Key, m *wire.Mechanism) (SignOp, error) {
		if err := noParam(m); err != nil {
			return nil, err
		}
		b, err := aesBlock(k)
		if err != nil {
			return nil, err
		}
		return &macOp{h: newCMAC(b)}, nil
	}
	t[ck.CKM_AES_CMAC] = &Mechanism{
		info: aesInfo(ck.CKF_SIGN | ck.CKF_VERIFY), keyTypes: aesOnly,
		sign: cmacCtor, verify: cmacCtor,
	}
	return t
}

// newHMAC starts an HMAC with the key's pads already hashed: the key
// keeps an HMAC keyed once (keyed makes it; kind names its hash), whose
// state each operation clones, sparing it two blocks of the hash and the
// allocations of the pads.
func newHMAC(k Key, m *wire.Mechanism, kind string, keyed func(Key) (hash.Hash, error), h func() hash.Hash) (SignOp, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	v := value(k)
	if len(v) == 0 || len(v) > maxGenericBytes {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	proto, err := memoKey(k, kind, keyed)
	if err != nil {
		return nil, err
	}
	if c, ok := proto.(hash.Cloner); ok {
		if mac, err := c.Clone(); err == nil {
			return &macOp{h: mac}, nil
		}
	}
	return &macOp{h: hmac.New(h, v)}, nil
}

// macOp is a MAC as a SignOp: Sign returns the whole MAC; Verify compares
// in constant time.
type macOp struct{ h hash.Hash }

func (op *macOp) Update(in []byte) error { op.h.Write(in); return nil }

func (op *macOp) Sign() ([]byte, error) { return op.h.Sum(nil), nil }

// Sum leaves an HMAC's state and a CMAC's (cmac.Sum works on a copy of
// the last block) as they were.
func (*macOp) keepsState() {}

func (op *macOp) Verify(sig []byte) error {
	if len(sig) != op.h.Size() {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	if !hmac.Equal(op.h.Sum(nil), sig) {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

// cmac is CMAC (NIST SP 800-38B; RFC 4493 for AES) over a 128-bit or
// 64-bit block cipher, as a hash.Hash. It keeps the last block of input
// back until Sum, which alone knows it is the last and so whether it
// takes subkey K1 (a whole block) or K2 (padded).
type cmac struct {
	b      cipher.Block
	k1, k2 []byte
	x      []byte // the chaining value
	buf    []byte // pending input: the last block seen, maybe partial
	n      int    // bytes in buf
}

func newCMAC(b cipher.Block) *cmac {
	bs := b.BlockSize()
	c := &cmac{b: b, k1: make([]byte, bs), k2: make([]byte, bs), x: make([]byte, bs), buf: make([]byte, bs)}
	// L = E(K, 0); K1 = L·x, K2 = K1·x in GF(2^b).
	l := make([]byte, bs)
	b.Encrypt(l, l)
	double(c.k1, l)
	double(c.k2, c.k1)
	clear(l)
	return c
}

// double multiplies by x in GF(2^128), with the polynomial x^128 + x^7 +
// x^2 + x + 1, or in GF(2^64), with x^64 + x^4 + x^3 + x + 1, in constant
// time.
func double(dst, src []byte) {
	rb := 0x87
	if len(src) == 8 {
		rb = 0x1b
	}
	n := len(src)
	carry := src[0] >> 7
	for i := 0; i < n-1; i++ {
		dst[i] = src[i]<<1 | src[i+1]>>7
	}
	dst[n-1] = src[n-1]<<1 ^ byte(subtle.ConstantTimeSelect(int(carry), rb, 0))
}

func (c *cmac) Size() int      { return len(c.x) }
func (c *cmac) BlockSize() int { return len(c.x) }

func (c *cmac) Reset() {
	clear(c.x)
	clear(c.buf)
	c.n = 0
}

func (c *cmac) Write(p []byte) (int, error) {
	written := len(p)
	bs := len(c.buf)
	for len(p) > 0 {
		if c.n == bs {
			// A full block followed by more input: not the last one.
			subtle.XORBytes(c.x, c.x, c.buf)
			c.b.Encrypt(c.x, c.x)
			c.n = 0
		}
		k := copy(c.buf[c.n:], p)
		c.n += k
		p = p[k:]
	}
	return written, nil
}

func (c *cmac) Sum(in []byte) []byte {
	bs := len(c.buf)
	last := make([]byte, bs)
	copy(last, c.buf[:c.n])
	if c.n == bs {
		subtle.XORBytes(last, last, c.k1)
	} else {
		last[c.n] = 0x80
		subtle.XORBytes(last, last, c.k2)
	}
	subtle.XORBytes(last, last, c.x)
	c.b.Encrypt(last, last)
	return append(in, last...)
}
