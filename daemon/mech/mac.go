package mech

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// MACs: HMAC over SHA-1 and SHA-2, and AES-CMAC, as sign and verify
// operations, single- and multi-part. The _GENERAL variants (a truncated
// MAC whose length is a CK_ULONG parameter) are not offered: the protocol
// table does not carry their parameter.

func macMechanisms() map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{}
	for typ, h := range map[uint64]uint64{
		ck.CKM_SHA_1_HMAC:  ck.CKM_SHA_1,
		ck.CKM_SHA224_HMAC: ck.CKM_SHA224,
		ck.CKM_SHA256_HMAC: ck.CKM_SHA256,
		ck.CKM_SHA384_HMAC: ck.CKM_SHA384,
		ck.CKM_SHA512_HMAC: ck.CKM_SHA512,
	} {
		newHash := hashes[h]
		ctor := func(k Key, m *wire.Mechanism) (SignOp, error) { return newHMAC(k, m, newHash) }
		t[typ] = &Mechanism{
			// Generic secret key sizes, in bits. PKCS#11 names generic
			// secret keys for HMAC; AES keys are taken too, as other
			// tokens do.
			info:     wire.MechanismInfo{MinKeySize: 8, MaxKeySize: 8 * maxGenericBytes, Flags: ck.CKF_SIGN | ck.CKF_VERIFY},
			keyTypes: anySecret,
			sign:     ctor,
			verify:   ctor,
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

func newHMAC(k Key, m *wire.Mechanism, h func() hash.Hash) (SignOp, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	v := value(k)
	if len(v) == 0 || len(v) > maxGenericBytes {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return &macOp{h: hmac.New(h, v)}, nil
}

// macOp is a MAC as a SignOp: Sign returns the whole MAC; Verify compares
// in constant time.
type macOp struct{ h hash.Hash }

func (op *macOp) Update(in []byte) error { op.h.Write(in); return nil }

func (op *macOp) Sign() ([]byte, error) { return op.h.Sum(nil), nil }

func (op *macOp) Verify(sig []byte) error {
	if len(sig) != op.h.Size() {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	if !hmac.Equal(op.h.Sum(nil), sig) {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

// cmac is AES-CMAC (NIST SP 800-38B, RFC 4493) as a hash.Hash. It keeps
// the last block of input back until Sum, which alone knows it is the last
// and so whether it takes subkey K1 (a whole block) or K2 (padded).
type cmac struct {
	b      cipher.Block
	k1, k2 [16]byte
	x      [16]byte // the chaining value
	buf    [16]byte // pending input: the last block seen, maybe partial
	n      int      // bytes in buf
}

func newCMAC(b cipher.Block) *cmac {
	c := &cmac{b: b}
	// L = AES(K, 0^128); K1 = L·x, K2 = K1·x in GF(2^128).
	var l [16]byte
	b.Encrypt(l[:], l[:])
	double(&c.k1, &l)
	double(&c.k2, &c.k1)
	clear(l[:])
	return c
}

// double multiplies by x in GF(2^128) with the polynomial x^128 + x^7 +
// x^2 + x + 1, in constant time.
func double(dst, src *[16]byte) {
	carry := src[0] >> 7
	for i := 0; i < 15; i++ {
		dst[i] = src[i]<<1 | src[i+1]>>7
	}
	dst[15] = src[15]<<1 ^ byte(subtle.ConstantTimeSelect(int(carry), 0x87, 0))
}

func (c *cmac) Size() int      { return 16 }
func (c *cmac) BlockSize() int { return 16 }

func (c *cmac) Reset() {
	clear(c.x[:])
	clear(c.buf[:])
	c.n = 0
}

func (c *cmac) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		if c.n == 16 {
			// A full block followed by more input: not the last one.
			subtle.XORBytes(c.x[:], c.x[:], c.buf[:])
			c.b.Encrypt(c.x[:], c.x[:])
			c.n = 0
		}
		k := copy(c.buf[c.n:], p)
		c.n += k
		p = p[k:]
	}
	return written, nil
}

func (c *cmac) Sum(in []byte) []byte {
	var last [16]byte
	copy(last[:], c.buf[:c.n])
	if c.n == 16 {
		subtle.XORBytes(last[:], last[:], c.k1[:])
	} else {
		last[c.n] = 0x80
		subtle.XORBytes(last[:], last[:], c.k2[:])
	}
	subtle.XORBytes(last[:], last[:], c.x[:])
	c.b.Encrypt(last[:], last[:])
	return append(in, last[:]...)
}
