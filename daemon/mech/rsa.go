package mech

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"math/big"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// RSA: key pairs, PKCS#1 v1.5 and PSS signatures, PKCS#1 v1.5 and OAEP
// encryption and key wrap, and RSA-AES key wrap. The primitives are
// crypto/rsa's, and for RSA-AES the symmetric family's AES key wrap with
// padding (aeskw.go); this file maps the specification's parameters
// onto them.

// Modulus sizes, in bits. A modern table takes keys of 2048 bits and up
// for every use; a legacy one (Table.WithLegacy) 1024 and up, and makes
// them too. The upper bounds keep one operation (or one key generation)
// from holding the daemon for seconds.
const (
	rsaMinBits       = 2048
	rsaLegacyMinBits = 1024
	rsaMaxBits       = 16384
	rsaGenMaxBits    = 8192
)

var rsaOnly = []uint64{ck.CKK_RSA}

// rsaPolicy is what a table's RSA mechanisms allow: the smallest modulus,
// and whether SHA-1 signs (CKM_SHA1_RSA_PKCS, CKM_SHA1_RSA_PKCS_PSS and
// PSS with a SHA-1 hashAlg); without it they only verify.
type rsaPolicy struct {
	minBits  int
	sha1Sign bool
}

func (r rsaPolicy) info(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: uint64(r.minBits), MaxKeySize: rsaMaxBits, Flags: flags}
}

func rsaMechanisms(p policy) map[uint64]*Mechanism {
	r := rsaPolicy{minBits: rsaMinBits}
	if p.legacy {
		r = rsaPolicy{minBits: rsaLegacyMinBits, sha1Sign: true}
	}
	signVerify := uint64(ck.CKF_SIGN | ck.CKF_VERIFY)
	pkcsSign, pkcsVerify := r.pkcs1Signer(0)
	pssSign, pssVerify := r.pssSigner(0)
	t := map[uint64]*Mechanism{
		ck.CKM_RSA_PKCS_KEY_PAIR_GEN: {
			info:         wire.MechanismInfo{MinKeySize: uint64(r.minBits), MaxKeySize: rsaGenMaxBits, Flags: ck.CKF_GENERATE_KEY_PAIR},
			genKeyType:   ck.CKK_RSA,
			generatePair: r.generatePair,
		},
		ck.CKM_RSA_PKCS: {
			info:     r.info(ck.CKF_ENCRYPT | ck.CKF_DECRYPT | signVerify | ck.CKF_WRAP | ck.CKF_UNWRAP),
			keyTypes: rsaOnly,
			encrypt:  func(k Key, m *wire.Mechanism) (CipherOp, error) { return r.cipherOp(k, m, rsaPKCS1v15, false) },
			decrypt:  func(k Key, m *wire.Mechanism) (CipherOp, error) { return r.cipherOp(k, m, rsaPKCS1v15, true) },
			sign:     pkcsSign,
			verify:   pkcsVerify,
			wrap:     func(w Key, m *wire.Mechanism, enc []byte) ([]byte, error) { return r.wrap(w, m, rsaPKCS1v15, enc) },
			unwrap:   func(u Key, m *wire.Mechanism, wr []byte) ([]byte, error) { return r.unwrap(u, m, rsaPKCS1v15, wr) },
		},
		ck.CKM_RSA_PKCS_OAEP: {
			info:     r.info(ck.CKF_ENCRYPT | ck.CKF_DECRYPT | ck.CKF_WRAP | ck.CKF_UNWRAP),
			keyTypes: rsaOnly,
			encrypt:  func(k Key, m *wire.Mechanism) (CipherOp, error) { return r.cipherOp(k, m, rsaOAEP, false) },
			decrypt:  func(k Key, m *wire.Mechanism) (CipherOp, error) { return r.cipherOp(k, m, rsaOAEP, true) },
			wrap:     func(w Key, m *wire.Mechanism, enc []byte) ([]byte, error) { return r.wrap(w, m, rsaOAEP, enc) },
			unwrap:   func(u Key, m *wire.Mechanism, wr []byte) ([]byte, error) { return r.unwrap(u, m, rsaOAEP, wr) },
		},
		ck.CKM_RSA_PKCS_PSS: {info: r.info(signVerify), keyTypes: rsaOnly, sign: pssSign, verify: pssVerify},
		ck.CKM_RSA_AES_KEY_WRAP: {
			info:     r.info(ck.CKF_WRAP | ck.CKF_UNWRAP),
			keyTypes: rsaOnly,
			wrap:     r.aesWrap,
			unwrap:   r.aesUnwrap,
		},
	}
	for typ, h := range map[uint64]uint64{
		ck.CKM_SHA1_RSA_PKCS:     ck.CKM_SHA_1,
		ck.CKM_SHA224_RSA_PKCS:   ck.CKM_SHA224,
		ck.CKM_SHA256_RSA_PKCS:   ck.CKM_SHA256,
		ck.CKM_SHA384_RSA_PKCS:   ck.CKM_SHA384,
		ck.CKM_SHA512_RSA_PKCS:   ck.CKM_SHA512,
		ck.CKM_SHA3_224_RSA_PKCS: ck.CKM_SHA3_224,
		ck.CKM_SHA3_256_RSA_PKCS: ck.CKM_SHA3_256,
		ck.CKM_SHA3_384_RSA_PKCS: ck.CKM_SHA3_384,
		ck.CKM_SHA3_512_RSA_PKCS: ck.CKM_SHA3_512,
	} {
		sign, verify := r.pkcs1Signer(h)
		t[typ] = r.hashed(h, sign, verify)
	}
	for typ, h := range map[uint64]uint64{
		ck.CKM_SHA1_RSA_PKCS_PSS:     ck.CKM_SHA_1,
		ck.CKM_SHA224_RSA_PKCS_PSS:   ck.CKM_SHA224,
		ck.CKM_SHA256_RSA_PKCS_PSS:   ck.CKM_SHA256,
		ck.CKM_SHA384_RSA_PKCS_PSS:   ck.CKM_SHA384,
		ck.CKM_SHA512_RSA_PKCS_PSS:   ck.CKM_SHA512,
		ck.CKM_SHA3_224_RSA_PKCS_PSS: ck.CKM_SHA3_224,
		ck.CKM_SHA3_256_RSA_PKCS_PSS: ck.CKM_SHA3_256,
		ck.CKM_SHA3_384_RSA_PKCS_PSS: ck.CKM_SHA3_384,
		ck.CKM_SHA3_512_RSA_PKCS_PSS: ck.CKM_SHA3_512,
	} {
		sign, verify := r.pssSigner(h)
		t[typ] = r.hashed(h, sign, verify)
	}
	return t
}

// hashed is a hash-and-sign mechanism's entry: over SHA-1 without the
// legacy policy, it only verifies.
func (r rsaPolicy) hashed(h uint64, sign, verify func(Key, *wire.Mechanism) (SignOp, error)) *Mechanism {
	if h == ck.CKM_SHA_1 && !r.sha1Sign {
		return &Mechanism{info: r.info(ck.CKF_VERIFY), keyTypes: rsaOnly, verify: verify}
	}
	return &Mechanism{info: r.info(ck.CKF_SIGN | ck.CKF_VERIFY), keyTypes: rsaOnly, sign: sign, verify: verify}
}

// generatePair makes an RSA key pair of the public template's
// CKA_MODULUS_BITS and CKA_PUBLIC_EXPONENT (default 65537).
func (r rsaPolicy) generatePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	bv, ok := pub[ck.CKA_MODULUS_BITS]
	if !ok {
		return nil, nil, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	bits := ulongOf(bv)
	if bits < uint64(r.minBits) || bits > rsaGenMaxBits {
		return nil, nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	e := int64(65537)
	if v, ok := pub[ck.CKA_PUBLIC_EXPONENT]; ok {
		x := new(big.Int).SetBytes(v)
		// Odd, at least 3, and small enough for crypto/rsa's int.
		if x.Bit(0) == 0 || x.Cmp(big.NewInt(3)) < 0 || x.BitLen() > 31 {
			return nil, nil, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
		e = x.Int64()
	}
	var k *rsa.PrivateKey
	var err error
	if e == 65537 {
		k, err = rsa.GenerateKey(rand.Reader, int(bits))
	} else {
		k, err = rsaGenerateWithExponent(int(bits), int(e))
	}
	if err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	privAdd, _, err := PrivateKeyAttrs(k)
	if err != nil {
		return nil, nil, err
	}
	pubAdd := map[uint64][]byte{
		ck.CKA_MODULUS:         bytes.Clone(privAdd[ck.CKA_MODULUS]),
		ck.CKA_PUBLIC_EXPONENT: bytes.Clone(privAdd[ck.CKA_PUBLIC_EXPONENT]),
	}
	return pubAdd, privAdd, nil
}

// rsaGenerateWithExponent makes an RSA key with a public exponent other
// than 65537, which crypto/rsa does not offer: two primes of half the size
// each, until their product has exactly the size asked and the exponent is
// invertible modulo lcm(p-1, q-1).
func rsaGenerateWithExponent(bits, e int) (*rsa.PrivateKey, error) {
	one := big.NewInt(1)
	E := big.NewInt(int64(e))
	for tries := 0; tries < 1000; tries++ {
		p, err := rand.Prime(rand.Reader, bits-bits/2)
		if err != nil {
			return nil, err
		}
		q, err := rand.Prime(rand.Reader, bits/2)
		if err != nil {
			return nil, err
		}
		if p.Cmp(q) == 0 {
			continue
		}
		n := new(big.Int).Mul(p, q)
		if n.BitLen() != bits {
			continue
		}
		pm1, qm1 := new(big.Int).Sub(p, one), new(big.Int).Sub(q, one)
		g := new(big.Int).GCD(nil, nil, pm1, qm1)
		lambda := new(big.Int).Div(new(big.Int).Mul(pm1, qm1), g)
		d := new(big.Int).ModInverse(E, lambda)
		if d == nil {
			continue
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: e}, D: d, Primes: []*big.Int{p, q}}
		k.Precompute()
		if k.Validate() != nil {
			continue
		}
		return k, nil
	}
	return nil, errors.New("rsa: no key found with that exponent")
}

// publicKey returns a key's RSA public key, within the sizes the policy
// takes.
func (r rsaPolicy) publicKey(k Key) (*rsa.PublicKey, error) {
	pub, err := rsaPublic(k)
	if err != nil {
		return nil, err
	}
	if b := pub.N.BitLen(); b < r.minBits || b > rsaMaxBits {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return pub, nil
}

// privateKey returns a private key's RSA key, within the sizes the policy
// takes.
func (r rsaPolicy) privateKey(k Key) (*rsa.PrivateKey, error) {
	if k.Class() != ck.CKO_PRIVATE_KEY {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if _, err := r.publicKey(k); err != nil {
		return nil, err
	}
	return rsaPrivate(k)
}

// signingKey returns a private key ready to sign, within the sizes the
// policy takes.
func (r rsaPolicy) signingKey(k Key) (*rsaSigningKey, error) {
	if _, err := r.privateKey(k); err != nil {
		return nil, err
	}
	return rsaSigning(k)
}

// pkcs1Signer returns the constructors of a PKCS#1 v1.5 signature:
// over the input's digest by the digest mechanism hashMech, or (hashMech
// 0, CKM_RSA_PKCS) over the input as given, which the caller has made a
// DigestInfo.
func (r rsaPolicy) pkcs1Signer(hashMech uint64) (sign, verify func(Key, *wire.Mechanism) (SignOp, error)) {
	h := sigHashes[hashMech]
	sign = func(k Key, m *wire.Mechanism) (SignOp, error) {
		if m.Present {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		sk, err := r.signingKey(k)
		if err != nil {
			return nil, err
		}
		return newSigner(h, func(in []byte) ([]byte, error) {
			if h == 0 && len(in) > sk.priv.Size()-11 {
				return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
			}
			sig, err := sk.signPKCS1v15(h, in)
			if err != nil {
				return nil, asRV(err, ck.CKR_FUNCTION_FAILED)
			}
			return sig, nil
		}, nil), nil
	}
	verify = func(k Key, m *wire.Mechanism) (SignOp, error) {
		if m.Present {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		pub, err := r.publicKey(k)
		if err != nil {
			return nil, err
		}
		return newSigner(h, nil, func(in, sig []byte) error {
			if h == 0 && len(in) > pub.Size()-11 {
				return ck.Error(ck.CKR_DATA_LEN_RANGE)
			}
			if len(sig) != pub.Size() {
				return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
			}
			if rsa.VerifyPKCS1v15(pub, h, in, sig) != nil {
				return ck.Error(ck.CKR_SIGNATURE_INVALID)
			}
			return nil
		}), nil
	}
	return sign, verify
}

// pssParams reads CK_RSA_PKCS_PSS_PARAMS for a key of modulus n: the hash
// (which must be hashMech, the mechanism's own, unless that is 0), MGF1
// over the same hash (crypto/rsa has no other), and a salt that fits.
func pssParams(m *wire.Mechanism, hashMech uint64, pub *rsa.PublicKey) (crypto.Hash, int, error) {
	if !m.Present {
		return 0, 0, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.PSSParams()
	if err != nil {
		return 0, 0, mechParamErr(err)
	}
	h, ok := sigHashes[p.HashAlg]
	if !ok || (hashMech != 0 && p.HashAlg != hashMech) || mgfHashes[p.MGF] != h {
		return 0, 0, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	// RFC 8017, 9.1.1: emLen >= hLen + sLen + 2.
	emLen := (pub.N.BitLen() - 1 + 7) / 8
	if p.SaltLen > uint64(emLen) || int(p.SaltLen) > emLen-h.Size()-2 {
		return 0, 0, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return h, int(p.SaltLen), nil
}

// pssSigner returns the constructors of a PSS signature: over the
// input's digest by hashMech, or (hashMech 0, CKM_RSA_PKCS_PSS) over the
// input as given, which must be a digest of the parameter's hash.
//
// Signing encodes PSS here (rsasign.go), so any salt length the key
// allows works, an empty one too; verifying with sLen 0 is done here too.
func (r rsaPolicy) pssSigner(hashMech uint64) (sign, verify func(Key, *wire.Mechanism) (SignOp, error)) {
	sign = func(k Key, m *wire.Mechanism) (SignOp, error) {
		sk, err := r.signingKey(k)
		if err != nil {
			return nil, err
		}
		h, salt, err := pssParams(m, hashMech, &sk.priv.PublicKey)
		if err != nil {
			return nil, err
		}
		if h == crypto.SHA1 && !r.sha1Sign {
			// SHA-1 in new signatures is legacy.
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		if salt == 0 && sk.raw == nil {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		return newSigner(sigHashes[hashMech], func(in []byte) ([]byte, error) {
			if len(in) != h.Size() {
				return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
			}
			sig, err := sk.signPSS(h, in, salt)
			if err != nil {
				return nil, asRV(err, ck.CKR_FUNCTION_FAILED)
			}
			return sig, nil
		}, nil), nil
	}
	verify = func(k Key, m *wire.Mechanism) (SignOp, error) {
		pub, err := r.publicKey(k)
		if err != nil {
			return nil, err
		}
		h, salt, err := pssParams(m, hashMech, pub)
		if err != nil {
			return nil, err
		}
		return newSigner(sigHashes[hashMech], nil, func(in, sig []byte) error {
			if len(in) != h.Size() {
				return ck.Error(ck.CKR_DATA_LEN_RANGE)
			}
			return verifyPSS(pub, h, in, sig, salt)
		}), nil
	}
	return sign, verify
}

// verifyPSS checks a PSS signature with exactly the given salt length.
func verifyPSS(pub *rsa.PublicKey, h crypto.Hash, digest, sig []byte, salt int) error {
	if len(sig) != pub.Size() {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	var err error
	if salt == 0 {
		err = verifyPSSNoSalt(pub, h, digest, sig)
	} else {
		err = rsa.VerifyPSS(pub, h, digest, sig, &rsa.PSSOptions{SaltLength: salt})
	}
	if err != nil {
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

var errBadSignature = ck.Error(ck.CKR_SIGNATURE_INVALID)

// verifyPSSNoSalt is RFC 8017's RSASSA-PSS-VERIFY (8.1.2, with
// EMSA-PSS-VERIFY of 9.1.2) for an empty salt, which crypto/rsa cannot
// ask for. Everything here is public, so math/big will do.
func verifyPSSNoSalt(pub *rsa.PublicKey, h crypto.Hash, digest, sig []byte) error {
	s := new(big.Int).SetBytes(sig)
	if s.Cmp(pub.N) >= 0 {
		return errBadSignature
	}
	em := new(big.Int).Exp(s, big.NewInt(int64(pub.E)), pub.N)
	emBits := pub.N.BitLen() - 1
	emLen := (emBits + 7) / 8
	hLen := h.Size()
	// The leftmost 8*emLen - emBits bits must be zero.
	if em.BitLen() > emBits || len(digest) != hLen || emLen < hLen+2 {
		return errBadSignature
	}
	buf := em.FillBytes(make([]byte, emLen))
	if buf[emLen-1] != 0xbc {
		return errBadSignature
	}
	db, hv := buf[:emLen-hLen-1], buf[emLen-hLen-1:emLen-1]
	mask := mgf1(h, hv, len(db))
	for i := range db {
		db[i] ^= mask[i]
	}
	db[0] &= 0xff >> (8*emLen - emBits)
	// DB is PS (zeros) || 0x01, and no salt after it.
	for _, b := range db[:len(db)-1] {
		if b != 0 {
			return errBadSignature
		}
	}
	if db[len(db)-1] != 0x01 {
		return errBadSignature
	}
	d := h.New()
	d.Write(make([]byte, 8))
	d.Write(digest)
	if subtle.ConstantTimeCompare(d.Sum(nil), hv) != 1 {
		return errBadSignature
	}
	return nil
}

// mgf1 is RFC 8017's MGF1 over h.
func mgf1(h crypto.Hash, seed []byte, n int) []byte {
	out := make([]byte, 0, n+h.Size())
	d := h.New()
	for c := uint32(0); len(out) < n; c++ {
		d.Reset()
		d.Write(seed)
		d.Write([]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
		out = d.Sum(out)
	}
	return out[:n]
}

// rsaPadding is an RSA encryption scheme, bound to its parameters by
// rsaScheme.
type rsaPadding int

const (
	rsaPKCS1v15 rsaPadding = iota
	rsaOAEP
)

// rsaScheme is an encryption scheme with its parameters.
type rsaScheme struct {
	oaep *rsa.OAEPOptions // nil: PKCS#1 v1.5
}

// schemeOf reads a mechanism's parameters for padding p.
func schemeOf(m *wire.Mechanism, p rsaPadding) (rsaScheme, error) {
	if p == rsaPKCS1v15 {
		if m.Present {
			return rsaScheme{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		return rsaScheme{}, nil
	}
	if !m.Present {
		return rsaScheme{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p2, err := m.Param.OAEPParams()
	if err != nil {
		return rsaScheme{}, mechParamErr(err)
	}
	opts, err := oaepOptions(p2)
	return rsaScheme{oaep: opts}, err
}

// oaepOptions maps CK_RSA_PKCS_OAEP_PARAMS: any of the SHA-1 and SHA-2
// hashes, MGF1 over any of them (the two may differ), and a label given as
// CKZ_DATA_SPECIFIED (or, with no data, no source at all).
func oaepOptions(p wire.OAEPParams) (*rsa.OAEPOptions, error) {
	h, ok := sigHashes[p.HashAlg]
	mgf, mok := mgfHashes[p.MGF]
	if !ok || !mok {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	switch {
	case p.Source == ck.CKZ_DATA_SPECIFIED:
	case p.Source == 0 && len(p.SourceData) == 0:
	default:
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return &rsa.OAEPOptions{Hash: h, MGFHash: mgf, Label: append([]byte(nil), p.SourceData...)}, nil
}

// maxPlain is the longest message the scheme encrypts under a k-byte
// modulus (negative: none fits).
func (s rsaScheme) maxPlain(k int) int {
	if s.oaep == nil {
		return k - 11
	}
	return k - 2*s.oaep.Hash.Size() - 2
}

func (s rsaScheme) encrypt(pub *rsa.PublicKey, msg []byte) ([]byte, error) {
	if s.oaep == nil {
		return rsa.EncryptPKCS1v15(rand.Reader, pub, msg)
	}
	return rsa.EncryptOAEPWithOptions(rand.Reader, pub, msg, s.oaep)
}

// decrypt returns the plaintext, or an error that says nothing of why:
// for PKCS#1 v1.5, telling a bad padding from anything else is a
// Bleichenbacher oracle. (That the call succeeds or not still tells it,
// and the specification's CKM_RSA_PKCS cannot avoid that: prefer OAEP.)
func (s rsaScheme) decrypt(priv *rsa.PrivateKey, ct []byte) ([]byte, bool) {
	var out []byte
	var err error
	if s.oaep == nil {
		out, err = rsa.DecryptPKCS1v15(nil, priv, ct)
	} else {
		out, err = priv.Decrypt(nil, ct, s.oaep)
	}
	return out, err == nil
}

// rsaCipher is an RSA encryption or decryption: single-part only, as the
// specification lists them.
type rsaCipher struct {
	one func(in []byte) ([]byte, error)
}

func (c rsaCipher) One(in []byte) ([]byte, error) { return c.one(in) }
func (rsaCipher) Update([]byte) ([]byte, error)   { return nil, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED) }
func (rsaCipher) Final() ([]byte, error)          { return nil, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED) }

func (r rsaPolicy) cipherOp(k Key, m *wire.Mechanism, p rsaPadding, decrypt bool) (CipherOp, error) {
	s, err := schemeOf(m, p)
	if err != nil {
		return nil, err
	}
	if !decrypt {
		pub, err := r.publicKey(k)
		if err != nil {
			return nil, err
		}
		if s.maxPlain(pub.Size()) < 0 {
			return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		return rsaCipher{func(in []byte) ([]byte, error) {
			if len(in) > s.maxPlain(pub.Size()) {
				return nil, ck.Error(ck.CKR_DATA_LEN_RANGE)
			}
			out, err := s.encrypt(pub, in)
			if err != nil {
				return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
			}
			return out, nil
		}}, nil
	}
	priv, err := r.privateKey(k)
	if err != nil {
		return nil, err
	}
	if s.maxPlain(priv.Size()) < 0 {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return rsaCipher{func(in []byte) ([]byte, error) {
		if len(in) != priv.Size() {
			return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_LEN_RANGE)
		}
		out, ok := s.decrypt(priv, in)
		if !ok {
			return nil, ck.Error(ck.CKR_ENCRYPTED_DATA_INVALID)
		}
		return out, nil
	}}, nil
}

// wrap encrypts a key's encoding under an RSA public key.
func (r rsaPolicy) wrap(w Key, m *wire.Mechanism, p rsaPadding, enc []byte) ([]byte, error) {
	s, err := schemeOf(m, p)
	if err != nil {
		return nil, err
	}
	pub, err := r.publicKey(w)
	if err != nil {
		return nil, wrapKeyErr(err, ck.CKR_WRAPPING_KEY_SIZE_RANGE)
	}
	if len(enc) > s.maxPlain(pub.Size()) {
		// A private key's PKCS#8 never fits: CKM_RSA_AES_KEY_WRAP does.
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	out, err := s.encrypt(pub, enc)
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return out, nil
}

// unwrap decrypts a wrapped key with an RSA private key.
func (r rsaPolicy) unwrap(u Key, m *wire.Mechanism, p rsaPadding, wrapped []byte) ([]byte, error) {
	s, err := schemeOf(m, p)
	if err != nil {
		return nil, err
	}
	priv, err := r.privateKey(u)
	if err != nil {
		return nil, wrapKeyErr(err, ck.CKR_UNWRAPPING_KEY_SIZE_RANGE)
	}
	if len(wrapped) != priv.Size() {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_LEN_RANGE)
	}
	out, ok := s.decrypt(priv, wrapped)
	if !ok {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	}
	return out, nil
}

// wrapKeyErr names a wrapping key's size error for its role.
func wrapKeyErr(err error, sizeCode uint64) error {
	if errors.Is(err, ck.Error(ck.CKR_KEY_SIZE_RANGE)) {
		return ck.Error(sizeCode)
	}
	return err
}

// rsaAESParams reads CK_RSA_AES_KEY_WRAP_PARAMS.
func rsaAESParams(m *wire.Mechanism) (int, rsaScheme, error) {
	if !m.Present {
		return 0, rsaScheme{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.RSAAESKeyWrapParams()
	if err != nil {
		return 0, rsaScheme{}, mechParamErr(err)
	}
	if p.OAEP == nil || (p.AESKeyBits != 128 && p.AESKeyBits != 192 && p.AESKeyBits != 256) {
		return 0, rsaScheme{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	opts, err := oaepOptions(*p.OAEP)
	if err != nil {
		return 0, rsaScheme{}, err
	}
	return int(p.AESKeyBits / 8), rsaScheme{oaep: opts}, nil
}

// aesWrap is CKM_RSA_AES_KEY_WRAP (PKCS#11 3.0, 2.1.21): a fresh AES
// key wrapped with OAEP under the RSA key, followed by the target wrapped
// under that AES key with AES key wrap with padding.
func (r rsaPolicy) aesWrap(w Key, m *wire.Mechanism, enc []byte) ([]byte, error) {
	n, s, err := rsaAESParams(m)
	if err != nil {
		return nil, err
	}
	pub, err := r.publicKey(w)
	if err != nil {
		return nil, wrapKeyErr(err, ck.CKR_WRAPPING_KEY_SIZE_RANGE)
	}
	if s.maxPlain(pub.Size()) < n {
		return nil, ck.Error(ck.CKR_WRAPPING_KEY_SIZE_RANGE)
	}
	kek := make([]byte, n)
	defer wipe(kek)
	rand.Read(kek)
	first, err := s.encrypt(pub, kek)
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	return append(first, kwpWrap(b, kwpDefaultIV, enc)...), nil
}

// aesUnwrap undoes aesWrap.
func (r rsaPolicy) aesUnwrap(u Key, m *wire.Mechanism, wrapped []byte) ([]byte, error) {
	n, s, err := rsaAESParams(m)
	if err != nil {
		return nil, err
	}
	priv, err := r.privateKey(u)
	if err != nil {
		return nil, wrapKeyErr(err, ck.CKR_UNWRAPPING_KEY_SIZE_RANGE)
	}
	k := priv.Size()
	if len(wrapped) < k+16 || (len(wrapped)-k)%8 != 0 {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_LEN_RANGE)
	}
	kek, ok := s.decrypt(priv, wrapped[:k])
	defer wipe(kek)
	if !ok || len(kek) != n {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	}
	plain, err := kwpUnwrap(b, kwpDefaultIV, wrapped[k:])
	if err != nil {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	}
	return plain, nil
}
