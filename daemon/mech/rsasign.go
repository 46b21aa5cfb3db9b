package mech

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech/internal/rsaraw"
)

// RSA signatures are encoded here (RFC 8017, EMSA-PKCS1-v1_5 and
// EMSA-PSS) and the private operation is OpenSSL's (internal/rsaraw),
// three to four times faster than crypto/rsa on the machines hsmemu is
// sized for. The encoding being ours also lets PSS sign with an empty
// salt, which crypto/rsa cannot.

// digestInfoPrefix is the DER DigestInfo prefix of each hash (RFC 8017, 9.2).
var digestInfoPrefix = map[crypto.Hash][]byte{
	crypto.SHA1:   {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14},
	crypto.SHA224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
	// SHA-3 (NIST's hash algorithm OIDs 2.16.840.1.101.3.4.2.7 to .10).
	crypto.SHA3_224: {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x07, 0x05, 0x00, 0x04, 0x1c},
	crypto.SHA3_256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x08, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA3_384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x09, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA3_512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x0a, 0x05, 0x00, 0x04, 0x40},
}

// emsaPKCS1v15 encodes a digest by h (or, h 0, a DigestInfo the caller
// made) into k bytes: 00 01 FF..FF 00 T.
func emsaPKCS1v15(h crypto.Hash, in []byte, k int) ([]byte, error) {
	t := in
	if h != 0 {
		prefix, ok := digestInfoPrefix[h]
		if !ok || len(in) != h.Size() {
			return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
		}
		t = append(append(make([]byte, 0, len(prefix)+len(in)), prefix...), in...)
	}
	if len(t)+11 > k {
		return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
	}
	em := make([]byte, k)
	em[1] = 1
	for i := 2; i < k-len(t)-1; i++ {
		em[i] = 0xff
	}
	copy(em[k-len(t):], t)
	return em, nil
}

// emsaPSS encodes mHash, a digest by h, with a random salt of saltLen
// bytes for a modulus of modBits, left-padded to k bytes.
func emsaPSS(h crypto.Hash, mHash []byte, saltLen, modBits, k int) ([]byte, error) {
	hLen := h.Size()
	emBits := modBits - 1
	emLen := (emBits + 7) / 8
	if len(mHash) != hLen || emLen < hLen+saltLen+2 {
		return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	d := h.New()
	d.Write(make([]byte, 8))
	d.Write(mHash)
	d.Write(salt)
	hv := d.Sum(nil)
	// DB = PS || 0x01 || salt, masked by MGF1(H).
	db := make([]byte, emLen-hLen-1)
	db[len(db)-saltLen-1] = 1
	copy(db[len(db)-saltLen:], salt)
	mask := mgf1(h, hv, len(db))
	for i := range db {
		db[i] ^= mask[i]
	}
	db[0] &= 0xff >> (8*emLen - emBits)
	em := make([]byte, k)
	off := k - emLen
	copy(em[off:], db)
	copy(em[off+len(db):], hv)
	em[k-1] = 0xbc
	return em, nil
}

// rsaSigningKey is a private key ready to sign: OpenSSL's copy when it
// took it, else crypto/rsa's.
type rsaSigningKey struct {
	priv *rsa.PrivateKey
	raw  *rsaraw.Key // nil: sign with crypto/rsa
}

func rsaSigning(k Key) (*rsaSigningKey, error) {
	return memoKey(k, "rsaSigning", func(k Key) (*rsaSigningKey, error) {
		if k.Class() != ck.CKO_PRIVATE_KEY {
			return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
		}
		priv, err := rsaPrivate(k)
		if err != nil {
			return nil, err
		}
		sk := &rsaSigningKey{priv: priv}
		if raw, err := rsaraw.New(priv); err == nil {
			sk.raw = raw
		}
		return sk, nil
	})
}

func (sk *rsaSigningKey) signPKCS1v15(h crypto.Hash, in []byte) ([]byte, error) {
	k := sk.priv.Size()
	em, err := emsaPKCS1v15(h, in, k)
	if err != nil {
		return nil, err
	}
	if sk.raw == nil {
		return rsa.SignPKCS1v15(nil, sk.priv, h, in)
	}
	return sk.raw.Private(em)
}

func (sk *rsaSigningKey) signPSS(h crypto.Hash, mHash []byte, saltLen int) ([]byte, error) {
	if sk.raw == nil {
		if saltLen == 0 {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID) // crypto/rsa reads 0 as "as long as fits"
		}
		return rsa.SignPSS(rand.Reader, sk.priv, h, mHash, &rsa.PSSOptions{SaltLength: saltLen, Hash: h})
	}
	em, err := emsaPSS(h, mHash, saltLen, sk.priv.N.BitLen(), sk.priv.Size())
	if err != nil {
		return nil, err
	}
	return sk.raw.Private(em)
}
