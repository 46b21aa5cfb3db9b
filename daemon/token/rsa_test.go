package token

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/internal/testenv"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
)

// Public-key mechanisms through the engine's calls: keys made by the
// token, checked against the standard library (and openssl) from their
// public attributes.

// bytesMech is a mechanism with a parameter where it takes none.
func bytesMech(t uint64) wire.Value {
	return wire.Value{Mechanism: &wire.Mechanism{Type: t, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}}
}

func pssMech(t, hashAlg, mgf, sLen uint64) wire.Value {
	return MP(t, wire.PSSParams{HashAlg: hashAlg, MGF: mgf, SaltLen: sLen}.Param())
}

func oaepParams(hashAlg, mgf uint64, label []byte) wire.OAEPParams {
	p := wire.OAEPParams{HashAlg: hashAlg, MGF: mgf}
	if label != nil {
		p.Source, p.SourceData = ck.CKZ_DATA_SPECIFIED, label
	}
	return p
}

func oaepMech(hashAlg, mgf uint64, label []byte) wire.Value {
	return MP(ck.CKM_RSA_PKCS_OAEP, oaepParams(hashAlg, mgf, label).Param())
}

// asymSession is a logged-in read-write session on a fresh token.
type asymSession struct {
	*client
	h uint64
}

func newAsymSession(t *testing.T) *asymSession {
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("asym")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	return &asymSession{client: cl, h: h}
}

// run runs a subtest whose calls fail it, not the parent.
func (s *asymSession) run(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		old := s.T
		s.T = t
		defer func() { s.T = old }()
		f(t)
	})
}

func (s *asymSession) genPair(m wire.Value, pub, priv []wire.Attribute) (uint64, uint64) {
	s.T.Helper()
	out := s.Must(ck.CKR_OK, "C_GenerateKeyPair", U(s.h), m, T(pub...), T(priv...), None(), None())
	return out[4].Ulong, out[5].Ulong
}

// attr reads one attribute, which must be readable. Like every helper
// here it returns a copy: what a call returns points into the client's
// reply buffer, which the next call overwrites.
func (s *asymSession) attr(obj, typ uint64) []byte {
	s.T.Helper()
	rv, ans := s.Get(s.h, obj, typ)
	if rv != ck.CKR_OK {
		s.T.Fatalf("attribute %#x of %d: %#x", typ, obj, rv)
	}
	return bytes.Clone(ans[0].Value)
}

func (s *asymSession) sign(key uint64, m wire.Value, data []byte) []byte {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_SignInit", U(s.h), m, U(key))
	return bytes.Clone(s.Must(ck.CKR_OK, "C_Sign", U(s.h), B(data), Out(2048))[2].Bytes)
}

// signParts signs data given in two parts.
func (s *asymSession) signParts(key uint64, m wire.Value, data []byte) []byte {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_SignInit", U(s.h), m, U(key))
	s.Must(ck.CKR_OK, "C_SignUpdate", U(s.h), B(data[:len(data)/2]))
	s.Must(ck.CKR_OK, "C_SignUpdate", U(s.h), B(data[len(data)/2:]))
	return bytes.Clone(s.Must(ck.CKR_OK, "C_SignFinal", U(s.h), Out(2048))[1].Bytes)
}

// verify returns C_Verify's answer.
func (s *asymSession) verify(key uint64, m wire.Value, data, sig []byte) uint64 {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_VerifyInit", U(s.h), m, U(key))
	rv, _ := s.Call("C_Verify", U(s.h), B(data), B(sig))
	return rv
}

func (s *asymSession) verifyParts(key uint64, m wire.Value, data, sig []byte) uint64 {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_VerifyInit", U(s.h), m, U(key))
	s.Must(ck.CKR_OK, "C_VerifyUpdate", U(s.h), B(data[:len(data)/2]))
	s.Must(ck.CKR_OK, "C_VerifyUpdate", U(s.h), B(data[len(data)/2:]))
	rv, _ := s.Call("C_VerifyFinal", U(s.h), B(sig))
	return rv
}

func (s *asymSession) cryptOne(op string, key uint64, m wire.Value, in []byte) []byte {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_"+op+"Init", U(s.h), m, U(key))
	return bytes.Clone(s.Must(ck.CKR_OK, "C_"+op, U(s.h), B(in), Out(4096))[2].Bytes)
}

// cryptErr expects a single-part encryption or decryption to fail.
func (s *asymSession) cryptErr(want uint64, op string, key uint64, m wire.Value, in []byte) {
	s.T.Helper()
	s.Must(ck.CKR_OK, "C_"+op+"Init", U(s.h), m, U(key))
	s.Must(want, "C_"+op, U(s.h), B(in), Out(4096))
	// The failure ended the operation.
	s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_"+op, U(s.h), B(in), Out(4096))
}

// flipBit returns sig with one bit flipped.
func flipBit(sig []byte) []byte {
	bad := bytes.Clone(sig)
	bad[len(bad)/2] ^= 0x10
	return bad
}

// rsaPublicOf reads an RSA public key from its attributes.
func (s *asymSession) rsaPublicOf(obj uint64) *rsa.PublicKey {
	s.T.Helper()
	n := new(big.Int).SetBytes(s.attr(obj, ck.CKA_MODULUS))
	e := new(big.Int).SetBytes(s.attr(obj, ck.CKA_PUBLIC_EXPONENT))
	return &rsa.PublicKey{N: n, E: int(e.Int64())}
}

// ecPublicOf reads an EC public key from CKA_EC_POINT, checking that it is
// the DER OCTET STRING of an uncompressed point.
func (s *asymSession) ecPublicOf(obj uint64, c elliptic.Curve) *ecdsa.PublicKey {
	s.T.Helper()
	v := s.attr(obj, ck.CKA_EC_POINT)
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err != nil || len(rest) != 0 {
		s.T.Fatalf("CKA_EC_POINT is not a DER OCTET STRING: %x", v)
	}
	size := (c.Params().BitSize + 7) / 8
	if len(raw) != 1+2*size || raw[0] != 4 {
		s.T.Fatalf("CKA_EC_POINT holds %x, not an uncompressed point", raw)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(c, raw)
	if err != nil {
		s.T.Fatal(err)
	}
	return pub
}

func (s *asymSession) checkGenerated(obj, mech uint64) {
	s.T.Helper()
	if v := s.attr(obj, ck.CKA_LOCAL); !isTrue(v) {
		s.T.Errorf("object %d: CKA_LOCAL %x", obj, v)
	}
	if v := ulongOf(s.attr(obj, ck.CKA_KEY_GEN_MECHANISM)); v != mech {
		s.T.Errorf("object %d: CKA_KEY_GEN_MECHANISM %#x, want %#x", obj, v, mech)
	}
}

// rawECDSA splits a PKCS#11 ECDSA signature.
func rawECDSA(sig []byte) (r, s *big.Int) {
	n := len(sig) / 2
	return new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])
}

// digestInfo is PKCS#1's DigestInfo of a SHA-256 digest, what CKM_RSA_PKCS
// signs for a SHA-256 signature.
func digestInfo(d []byte) []byte {
	prefix := []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}
	return append(prefix, d...)
}

var (
	ecP256Params = mech.ECParams("P-256")
	ecP384Params = mech.ECParams("P-384")
	ecP521Params = mech.ECParams("P-521")
	edParams     = mech.ECParams("Ed25519")
)

func printableName(s string) []byte {
	b, err := asn1.MarshalWithParams(s, "printable")
	if err != nil {
		panic(err)
	}
	return b
}

// ecPair is a token key pair on a NIST curve, with its public key as Go
// reads it from the attributes.
type ecPair struct {
	pub, priv uint64
	curve     elliptic.Curve
	goPub     *ecdsa.PublicKey
}

// readableP256 makes a P-256 pair whose private key is readable,
// extractable and able to derive, and returns it with the private key as
// Go reads it from CKA_VALUE.
func (s *asymSession) readableP256() (ecPair, *ecdsa.PrivateKey) {
	s.T.Helper()
	pub, priv := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
		[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)},
		[]wire.Attribute{AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true), AB(ck.CKA_DERIVE, true)})
	p := ecPair{pub: pub, priv: priv, curve: elliptic.P256(), goPub: s.ecPublicOf(pub, elliptic.P256())}
	goPriv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), s.attr(priv, ck.CKA_VALUE))
	if err != nil || !goPriv.PublicKey.Equal(p.goPub) {
		s.T.Fatalf("CKA_VALUE is not the public key's scalar: %v", err)
	}
	return p, goPriv
}

// asymMsg is what the tests sign.
var asymMsg = []byte("the quick brown fox jumps over the lazy dog, twice over")

func TestRSAMechanisms(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h

	s.run(t, "info", func(t *testing.T) {
		const msgSV = ck.CKF_MESSAGE_SIGN | ck.CKF_MESSAGE_VERIFY
		for _, tc := range []struct {
			mech     uint64
			min, max uint64
			flags    uint64
		}{
			{mech: ck.CKM_RSA_PKCS_KEY_PAIR_GEN, min: 2048, max: 8192, flags: ck.CKF_GENERATE_KEY_PAIR},
			{mech: ck.CKM_RSA_PKCS, min: 2048, max: 16384, flags: ck.CKF_ENCRYPT | ck.CKF_DECRYPT | ck.CKF_SIGN | ck.CKF_VERIFY | ck.CKF_WRAP | ck.CKF_UNWRAP | msgSV},
			{mech: ck.CKM_RSA_PKCS_OAEP, min: 2048, max: 16384, flags: ck.CKF_ENCRYPT | ck.CKF_DECRYPT | ck.CKF_WRAP | ck.CKF_UNWRAP},
			{mech: ck.CKM_SHA256_RSA_PKCS_PSS, min: 2048, max: 16384, flags: ck.CKF_SIGN | ck.CKF_VERIFY | msgSV | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_SHA3_256_RSA_PKCS_PSS, min: 2048, max: 16384, flags: ck.CKF_SIGN | ck.CKF_VERIFY | msgSV | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_SHA1_RSA_PKCS, min: 2048, max: 16384, flags: ck.CKF_VERIFY | ck.CKF_MESSAGE_VERIFY | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_SHA1_RSA_PKCS_PSS, min: 2048, max: 16384, flags: ck.CKF_VERIFY | ck.CKF_MESSAGE_VERIFY | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_RSA_AES_KEY_WRAP, min: 2048, max: 16384, flags: ck.CKF_WRAP | ck.CKF_UNWRAP},
			{mech: ck.CKM_EC_KEY_PAIR_GEN, min: 224, max: 521, flags: ck.CKF_GENERATE_KEY_PAIR | ecCurveFlags},
			{mech: ck.CKM_ECDSA_SHA256, min: 224, max: 521, flags: ck.CKF_SIGN | ck.CKF_VERIFY | ecCurveFlags | msgSV | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_ECDSA_SHA1, min: 224, max: 521, flags: ck.CKF_VERIFY | ecCurveFlags | ck.CKF_MESSAGE_VERIFY | ck.CKF_MULTI_MESSAGE},
			{mech: ck.CKM_ECDH1_DERIVE, min: 224, max: 521, flags: ck.CKF_DERIVE | ecCurveFlags},
			{mech: ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, min: 255, max: 448, flags: ck.CKF_GENERATE_KEY_PAIR | ck.CKF_EC_NAMEDCURVE},
			{mech: ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, min: 255, max: 448, flags: ck.CKF_GENERATE_KEY_PAIR | ck.CKF_EC_NAMEDCURVE},
			{mech: ck.CKM_EDDSA, min: 255, max: 448, flags: ck.CKF_SIGN | ck.CKF_VERIFY | ck.CKF_EC_NAMEDCURVE | msgSV},
		} {
			info := s.Must(ck.CKR_OK, "C_GetMechanismInfo", U(freeSlot), U(tc.mech), None())[2].Struct.(*wire.MechanismInfo)
			if info.MinKeySize != tc.min || info.MaxKeySize != tc.max || info.Flags != tc.flags {
				t.Errorf("mechanism %#x: %+v", tc.mech, info)
			}
		}
	})

	// One RSA pair for everything RSA. Its private key is readable, so the
	// test can rebuild it in Go and check the token's CRT attributes.
	var rsaPub, rsaPriv uint64
	var goRSA *rsa.PrivateKey

	// One RSA pair for everything. Its private key is readable, so the
	// test can rebuild it in Go and check the token's CRT attributes.
	s.run(t, "rsa generate", func(t *testing.T) {
		pubT := []wire.Attribute{AU(ck.CKA_MODULUS_BITS, 2048), A(ck.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}), AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("rsa"))}
		privT := []wire.Attribute{AB(ck.CKA_TOKEN, true), AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true)}
		// Refused before any key is made.
		s.Must(ck.CKR_TEMPLATE_INCOMPLETE, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), T(pubT[1:]...), T(privT...), None(), None())
		s.Must(ck.CKR_KEY_SIZE_RANGE, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), T(AU(ck.CKA_MODULUS_BITS, 1024)), T(), None(), None())
		s.Must(ck.CKR_KEY_SIZE_RANGE, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), T(AU(ck.CKA_MODULUS_BITS, 16384)), T(), None(), None())
		s.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN),
			T(AU(ck.CKA_MODULUS_BITS, 2048), A(ck.CKA_PUBLIC_EXPONENT, []byte{4})), T(), None(), None())
		// A public exponent other than 65537 is honoured.
		p3, _ := s.genPair(M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN),
			[]wire.Attribute{AU(ck.CKA_MODULUS_BITS, 2048), A(ck.CKA_PUBLIC_EXPONENT, []byte{3})}, []wire.Attribute{})
		if pub := s.rsaPublicOf(p3); pub.E != 3 || pub.N.BitLen() != 2048 {
			t.Fatalf("exponent 3 asked: %d bits, e %d", pub.N.BitLen(), pub.E)
		}

		rsaPub, rsaPriv = s.genPair(M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), pubT, privT)
		s.checkGenerated(rsaPub, ck.CKM_RSA_PKCS_KEY_PAIR_GEN)
		s.checkGenerated(rsaPriv, ck.CKM_RSA_PKCS_KEY_PAIR_GEN)
		if bits := ulongOf(s.attr(rsaPub, ck.CKA_MODULUS_BITS)); bits != 2048 {
			t.Fatalf("CKA_MODULUS_BITS %d", bits)
		}
		pub := s.rsaPublicOf(rsaPub)
		if pub.N.BitLen() != 2048 || pub.E != 65537 {
			t.Fatalf("public key: %d bits, e %d", pub.N.BitLen(), pub.E)
		}
		if !bytes.Equal(s.attr(rsaPriv, ck.CKA_MODULUS), pub.N.Bytes()) {
			t.Fatal("the private key's modulus differs")
		}
		num := func(typ uint64) *big.Int { return new(big.Int).SetBytes(s.attr(rsaPriv, typ)) }
		goRSA = &rsa.PrivateKey{PublicKey: *pub, D: num(ck.CKA_PRIVATE_EXPONENT), Primes: []*big.Int{num(ck.CKA_PRIME_1), num(ck.CKA_PRIME_2)}}
		goRSA.Precomputed = rsa.PrecomputedValues{Dp: num(ck.CKA_EXPONENT_1), Dq: num(ck.CKA_EXPONENT_2), Qinv: num(ck.CKA_COEFFICIENT)}
		if err := goRSA.Validate(); err != nil {
			t.Fatalf("the token's RSA private key: %v", err)
		}
		if isTrue(s.attr(rsaPriv, ck.CKA_ALWAYS_SENSITIVE)) {
			t.Error("a key made readable is not always sensitive")
		}
	})
	if goRSA == nil {
		t.Fatal("no RSA key")
	}

	s.run(t, "rsa sign", func(t *testing.T) {
		digest := sha256.Sum256(asymMsg)
		for _, tc := range []struct {
			name  string
			m     wire.Value
			h     crypto.Hash
			pss   bool
			input []byte // for the single-part mechanisms
		}{
			{name: "RSA_PKCS", m: M(ck.CKM_RSA_PKCS), h: crypto.SHA256, pss: false, input: digestInfo(digest[:])},
			{name: "SHA224_RSA_PKCS", m: M(ck.CKM_SHA224_RSA_PKCS), h: crypto.SHA224, pss: false, input: nil},
			{name: "SHA256_RSA_PKCS", m: M(ck.CKM_SHA256_RSA_PKCS), h: crypto.SHA256, pss: false, input: nil},
			{name: "SHA384_RSA_PKCS", m: M(ck.CKM_SHA384_RSA_PKCS), h: crypto.SHA384, pss: false, input: nil},
			{name: "SHA512_RSA_PKCS", m: M(ck.CKM_SHA512_RSA_PKCS), h: crypto.SHA512, pss: false, input: nil},
			{name: "RSA_PKCS_PSS", m: pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 32), h: crypto.SHA256, pss: true, input: digest[:]},
			{name: "SHA3_256_RSA_PKCS", m: M(ck.CKM_SHA3_256_RSA_PKCS), h: crypto.SHA3_256, pss: false, input: nil},
			{name: "SHA3_384_RSA_PKCS_PSS", m: pssMech(ck.CKM_SHA3_384_RSA_PKCS_PSS, ck.CKM_SHA3_384, ck.CKG_MGF1_SHA3_384, 48), h: crypto.SHA3_384, pss: true, input: nil},
			{name: "SHA224_RSA_PKCS_PSS", m: pssMech(ck.CKM_SHA224_RSA_PKCS_PSS, ck.CKM_SHA224, ck.CKG_MGF1_SHA224, 28), h: crypto.SHA224, pss: true, input: nil},
			{name: "SHA256_RSA_PKCS_PSS", m: pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 32), h: crypto.SHA256, pss: true, input: nil},
			{name: "SHA384_RSA_PKCS_PSS", m: pssMech(ck.CKM_SHA384_RSA_PKCS_PSS, ck.CKM_SHA384, ck.CKG_MGF1_SHA384, 48), h: crypto.SHA384, pss: true, input: nil},
			{name: "SHA512_RSA_PKCS_PSS", m: pssMech(ck.CKM_SHA512_RSA_PKCS_PSS, ck.CKM_SHA512, ck.CKG_MGF1_SHA512, 1), h: crypto.SHA512, pss: true, input: nil},
		} {
			in := tc.input
			if in == nil {
				in = asymMsg
			}
			hh := tc.h.New()
			hh.Write(asymMsg)
			d := hh.Sum(nil)
			goVerify := func(sig []byte) error {
				if tc.pss {
					return rsa.VerifyPSS(&goRSA.PublicKey, tc.h, d, sig, &rsa.PSSOptions{})
				}
				return rsa.VerifyPKCS1v15(&goRSA.PublicKey, tc.h, d, sig)
			}
			sig := s.sign(rsaPriv, tc.m, in)
			if err := goVerify(sig); err != nil {
				t.Errorf("%s: Go does not verify the token's signature: %v", tc.name, err)
			}
			if rv := s.verify(rsaPub, tc.m, in, sig); rv != ck.CKR_OK {
				t.Errorf("%s: the token does not verify its signature: %#x", tc.name, rv)
			}
			if rv := s.verify(rsaPub, tc.m, in, flipBit(sig)); rv != ck.CKR_SIGNATURE_INVALID {
				t.Errorf("%s: tampered signature: %#x", tc.name, rv)
			}
			if rv := s.verify(rsaPub, tc.m, in, sig[1:]); rv != ck.CKR_SIGNATURE_LEN_RANGE {
				t.Errorf("%s: short signature: %#x", tc.name, rv)
			}
			if tc.input != nil {
				// Single-part only.
				s.Must(ck.CKR_OK, "C_SignInit", U(h), tc.m, U(rsaPriv))
				s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_SignUpdate", U(h), B(in))
				s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Sign", U(h), B(in), Out(512))
				continue
			}
			// Multi-part: the same signature (PKCS#1 v1.5 is
			// deterministic), or one as valid (PSS is not).
			parts := s.signParts(rsaPriv, tc.m, asymMsg)
			if err := goVerify(parts); err != nil {
				t.Errorf("%s: multi-part signature: %v", tc.name, err)
			}
			if !tc.pss && !bytes.Equal(parts, sig) {
				t.Errorf("%s: multi-part and single-part signatures differ", tc.name)
			}
			if rv := s.verifyParts(rsaPub, tc.m, asymMsg, sig); rv != ck.CKR_OK {
				t.Errorf("%s: multi-part verification: %#x", tc.name, rv)
			}
		}
		// Go's signatures verify on the token.
		goSig, _ := rsa.SignPSS(rand.Reader, goRSA, crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: 32})
		if rv := s.verify(rsaPub, pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 32), asymMsg, goSig); rv != ck.CKR_OK {
			t.Errorf("Go's PSS signature: %#x", rv)
		}
		// The salt length is checked exactly.
		if rv := s.verify(rsaPub, pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 20), asymMsg, goSig); rv != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("PSS signature with another salt length: %#x", rv)
		}
	})

	s.run(t, "rsa sign refusals", func(t *testing.T) {
		digest := sha256.Sum256(asymMsg)
		for _, tc := range []struct {
			name string
			m    wire.Value
		}{
			{name: "PSS without parameter", m: M(ck.CKM_SHA256_RSA_PKCS_PSS)},
			{name: "PSS MGF of another hash", m: pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA1, 32)},
			{name: "PSS hash not the mechanism's", m: pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA384, ck.CKG_MGF1_SHA384, 32)},
			{name: "PSS salt too long", m: pssMech(ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 256-32-1)},
			{name: "PKCS#1 v1.5 with a parameter", m: bytesMech(ck.CKM_SHA256_RSA_PKCS)},
		} {
			if rv, _ := s.Call("C_SignInit", U(h), tc.m, U(rsaPriv)); rv != ck.CKR_MECHANISM_PARAM_INVALID {
				t.Errorf("%s: %#x", tc.name, rv)
			}
		}
		// Raw inputs of the wrong size.
		s.Must(ck.CKR_OK, "C_SignInit", U(h), pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 32), U(rsaPriv))
		s.Must(ck.CKR_DATA_LEN_RANGE, "C_Sign", U(h), B(digest[:20]), Out(512))
		s.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_RSA_PKCS), U(rsaPriv))
		s.Must(ck.CKR_DATA_LEN_RANGE, "C_Sign", U(h), B(make([]byte, 256-10)), Out(512))
		// Verifying with an empty salt works: Go cannot make such a
		// signature, so the test makes one from the private key.
		sig := pssNoSalt(t, goRSA, digest[:])
		if rv := s.verify(rsaPub, pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 0), digest[:], sig); rv != ck.CKR_OK {
			t.Errorf("PSS with an empty salt: %#x", rv)
		}
		if rv := s.verify(rsaPub, pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 0), digest[:], flipBit(sig)); rv != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("tampered PSS with an empty salt: %#x", rv)
		}
		// And the token signs with an empty salt: deterministic, so the
		// same signature twice, and it verifies outside the token.
		empty := pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA256, ck.CKG_MGF1_SHA256, 0)
		sig1, sig2 := s.sign(rsaPriv, empty, digest[:]), s.sign(rsaPriv, empty, digest[:])
		if !bytes.Equal(sig1, sig2) {
			t.Error("PSS with an empty salt is not deterministic")
		}
		// Go's verifier with PSSSaltLengthAuto accepts any salt length,
		// none included.
		if err := rsa.VerifyPSS(&goRSA.PublicKey, crypto.SHA256, digest[:], sig1, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}); err != nil {
			t.Errorf("the token's empty-salt PSS signature: %v", err)
		}
	})

	s.run(t, "rsa encrypt", func(t *testing.T) {
		secret := []byte("a secret of some thirty-two byte")
		for _, tc := range []struct {
			name string
			m    wire.Value
			opts *rsa.OAEPOptions // nil: PKCS#1 v1.5
		}{
			{name: "PKCS#1 v1.5", m: M(ck.CKM_RSA_PKCS), opts: nil},
			{name: "OAEP SHA-1", m: oaepMech(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1, nil), opts: &rsa.OAEPOptions{Hash: crypto.SHA1}},
			{name: "OAEP SHA-1 label", m: oaepMech(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1, []byte("label")), opts: &rsa.OAEPOptions{Hash: crypto.SHA1, Label: []byte("label")}},
			{name: "OAEP SHA-256", m: oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, nil), opts: &rsa.OAEPOptions{Hash: crypto.SHA256}},
			{name: "OAEP SHA-256 label", m: oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, []byte("label")), opts: &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("label")}},
			{name: "OAEP SHA-256 MGF1-SHA-1", m: oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA1, nil), opts: &rsa.OAEPOptions{Hash: crypto.SHA256, MGFHash: crypto.SHA1}},
			{name: "OAEP SHA-512 MGF1-SHA-256 label", m: oaepMech(ck.CKM_SHA512, ck.CKG_MGF1_SHA256, []byte("l")), opts: &rsa.OAEPOptions{Hash: crypto.SHA512, MGFHash: crypto.SHA256, Label: []byte("l")}},
		} {
			// Go encrypts, the token decrypts.
			var ct []byte
			var err error
			if tc.opts == nil {
				ct, err = rsa.EncryptPKCS1v15(rand.Reader, &goRSA.PublicKey, secret)
			} else {
				ct, err = rsa.EncryptOAEPWithOptions(rand.Reader, &goRSA.PublicKey, secret, tc.opts)
			}
			if err != nil {
				t.Fatal(err)
			}
			if pt := s.cryptOne("Decrypt", rsaPriv, tc.m, ct); !bytes.Equal(pt, secret) {
				t.Errorf("%s: the token decrypts Go's ciphertext to %q", tc.name, pt)
			}
			// The token encrypts, Go decrypts.
			ct = s.cryptOne("Encrypt", rsaPub, tc.m, secret)
			var pt []byte
			if tc.opts == nil {
				pt, err = goRSA.Decrypt(nil, ct, nil)
			} else {
				pt, err = goRSA.Decrypt(nil, ct, tc.opts)
			}
			if err != nil || !bytes.Equal(pt, secret) {
				t.Errorf("%s: Go decrypts the token's ciphertext to %q, %v", tc.name, pt, err)
			}
			// A corrupted ciphertext, and one of the wrong size.
			s.cryptErr(ck.CKR_ENCRYPTED_DATA_INVALID, "Decrypt", rsaPriv, tc.m, flipBit(ct))
			s.cryptErr(ck.CKR_ENCRYPTED_DATA_LEN_RANGE, "Decrypt", rsaPriv, tc.m, ct[1:])
		}
		// The label must match.
		ct, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, &goRSA.PublicKey, secret, []byte("one"))
		s.cryptErr(ck.CKR_ENCRYPTED_DATA_INVALID, "Decrypt", rsaPriv, oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, []byte("two")), ct)
		// Too long to encrypt.
		s.cryptErr(ck.CKR_DATA_LEN_RANGE, "Encrypt", rsaPub, oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, nil), make([]byte, 256-2*32-1))
		s.cryptErr(ck.CKR_DATA_LEN_RANGE, "Encrypt", rsaPub, M(ck.CKM_RSA_PKCS), make([]byte, 256-10))
		// Single-part only; parameters checked.
		s.Must(ck.CKR_OK, "C_EncryptInit", U(h), M(ck.CKM_RSA_PKCS), U(rsaPub))
		s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_EncryptUpdate", U(h), B(secret), Out(512))
		s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Encrypt", U(h), B(secret), Out(512))
		for _, bad := range []wire.Value{
			M(ck.CKM_RSA_PKCS_OAEP),
			oaepMech(ck.CKM_MD5, ck.CKG_MGF1_SHA1, nil),
			oaepMech(ck.CKM_SHA256, 0x99, nil),
			MP(ck.CKM_RSA_PKCS_OAEP, wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256, Source: 2}.Param()),
		} {
			if rv, _ := s.Call("C_EncryptInit", U(h), bad, U(rsaPub)); rv != ck.CKR_MECHANISM_PARAM_INVALID {
				t.Errorf("OAEP parameter %+v: %#x", bad.Mechanism.Param, rv)
			}
		}
		// The size query keeps the plaintext for the second call.
		ct, _ = rsa.EncryptOAEP(sha256.New(), rand.Reader, &goRSA.PublicKey, secret, nil)
		s.Must(ck.CKR_OK, "C_DecryptInit", U(h), oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, nil), U(rsaPriv))
		if n := s.Must(ck.CKR_OK, "C_Decrypt", U(h), B(ct), SizeQuery())[2].Length; n != uint64(len(secret)) {
			t.Errorf("size query: %d", n)
		}
		if pt := bytes.Clone(s.Must(ck.CKR_OK, "C_Decrypt", U(h), B(ct), Out(512))[2].Bytes); !bytes.Equal(pt, secret) {
			t.Errorf("after the size query: %q", pt)
		}
	})

	s.run(t, "wrap", func(t *testing.T) {
		p256, goP256 := s.readableP256()
		// An AES key under RSA-OAEP and PKCS#1 v1.5.
		aes := s.Create(h, AESKey("wrapped", false, true)...)
		aesValue := s.attr(aes, ck.CKA_VALUE)
		unwrapT := T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_EXTRACTABLE, true), AB(ck.CKA_SENSITIVE, false))
		for _, tc := range []struct {
			m    wire.Value
			opts crypto.DecrypterOpts // Go's view of the same mechanism; nil: PKCS#1 v1.5
		}{
			{m: oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, []byte("wrap")), opts: &rsa.OAEPOptions{Hash: crypto.SHA256, Label: []byte("wrap")}},
			{m: oaepMech(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1, nil), opts: &rsa.OAEPOptions{Hash: crypto.SHA1}},
			{m: M(ck.CKM_RSA_PKCS)},
		} {
			m := tc.m
			wrapped := bytes.Clone(s.Must(ck.CKR_OK, "C_WrapKey", U(h), m, U(rsaPub), U(aes), Out(1024))[4].Bytes)
			if len(wrapped) != 256 {
				t.Fatalf("wrapped AES key: %d bytes", len(wrapped))
			}
			plain, _ := goRSA.Decrypt(nil, wrapped, tc.opts)
			if !bytes.Equal(plain, aesValue) {
				t.Errorf("Go unwraps %x", plain)
			}
			k := s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), m, U(rsaPriv), B(wrapped), unwrapT, None())[5].Ulong
			if v := s.attr(k, ck.CKA_VALUE); !bytes.Equal(v, aesValue) {
				t.Errorf("unwrapped AES key: %x", v)
			}
			s.Must(ck.CKR_WRAPPED_KEY_INVALID, "C_UnwrapKey", U(h), m, U(rsaPriv), B(flipBit(wrapped)), unwrapT, None())
			s.Must(ck.CKR_WRAPPED_KEY_LEN_RANGE, "C_UnwrapKey", U(h), m, U(rsaPriv), B(wrapped[1:]), unwrapT, None())
		}
		// The private key cannot wrap, nor the public key unwrap.
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_WrapKey", U(h), M(ck.CKM_RSA_PKCS), U(rsaPriv), U(aes), Out(1024))
		// An RSA private key's PKCS#8 does not fit in one RSA block.
		s.Must(ck.CKR_KEY_SIZE_RANGE, "C_WrapKey", U(h), oaepMech(ck.CKM_SHA256, ck.CKG_MGF1_SHA256, nil), U(rsaPub), U(rsaPriv), Out(4096))

		// An EC private key under RSA-AES key wrap, unwrapped, then used.
		rsaAES := MP(ck.CKM_RSA_AES_KEY_WRAP, wire.RSAAESKeyWrapParams{AESKeyBits: 256, OAEP: &wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256}}.Param())
		wrapped := bytes.Clone(s.Must(ck.CKR_OK, "C_WrapKey", U(h), rsaAES, U(rsaPub), U(p256.priv), Out(4096))[4].Bytes)
		// Go reads it: OAEP, then RFC 5649.
		kek, err := goRSA.Decrypt(nil, wrapped[:256], &rsa.OAEPOptions{Hash: crypto.SHA256})
		if err != nil || len(kek) != 32 {
			t.Fatalf("the wrapped AES key: %d bytes, %v", len(kek), err)
		}
		pkcs8 := testKWPUnwrap(t, kek, wrapped[256:])
		goKey, err := x509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil || !goKey.(*ecdsa.PrivateKey).Equal(goP256) {
			t.Fatalf("the wrapped private key: %v", err)
		}
		ecT := T(AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC), AB(ck.CKA_SIGN, true), A(ck.CKA_LABEL, []byte("unwrapped")))
		// Its domain parameters are the wrapped key's, never the
		// template's (elliptic curve private key objects, footnote 6).
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(wrapped),
			T(AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_EC), A(ck.CKA_EC_PARAMS, ecP256Params)), None())
		k := s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(wrapped), ecT, None())[5].Ulong
		if v := s.attr(k, ck.CKA_LOCAL); isTrue(v) {
			t.Error("an unwrapped key is not local")
		}
		sig := s.sign(k, M(ck.CKM_ECDSA_SHA256), asymMsg)
		d := sha256.Sum256(asymMsg)
		if r, ss := rawECDSA(sig); !ecdsa.Verify(p256.goPub, d[:], r, ss) {
			t.Error("the unwrapped key's signature does not verify")
		}
		// The RSA private key itself fits under RSA-AES.
		wrappedRSA := bytes.Clone(s.Must(ck.CKR_OK, "C_WrapKey", U(h), rsaAES, U(rsaPub), U(rsaPriv), Out(4096))[4].Bytes)
		rk := s.Must(ck.CKR_OK, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(wrappedRSA),
			T(AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_RSA)), None())[5].Ulong
		sig = s.sign(rk, M(ck.CKM_SHA256_RSA_PKCS), asymMsg)
		if err := rsa.VerifyPKCS1v15(&goRSA.PublicKey, crypto.SHA256, d[:], sig); err != nil {
			t.Errorf("the unwrapped RSA key: %v", err)
		}
		// Broken blobs and parameters.
		s.Must(ck.CKR_WRAPPED_KEY_INVALID, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(flipBit(wrapped)), ecT, None())
		bad := slices.Clone(wrapped)
		bad[len(bad)-1] ^= 1
		s.Must(ck.CKR_WRAPPED_KEY_INVALID, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(bad), ecT, None())
		s.Must(ck.CKR_WRAPPED_KEY_LEN_RANGE, "C_UnwrapKey", U(h), rsaAES, U(rsaPriv), B(wrapped[:260]), ecT, None())
		rsaAES128 := MP(ck.CKM_RSA_AES_KEY_WRAP, wire.RSAAESKeyWrapParams{AESKeyBits: 128, OAEP: &wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256}}.Param())
		s.Must(ck.CKR_WRAPPED_KEY_INVALID, "C_UnwrapKey", U(h), rsaAES128, U(rsaPriv), B(wrapped), ecT, None())
		for _, p := range []wire.RSAAESKeyWrapParams{
			{AESKeyBits: 256},
			{AESKeyBits: 100, OAEP: &wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256}},
		} {
			s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_WrapKey", U(h), MP(ck.CKM_RSA_AES_KEY_WRAP, p.Param()), U(rsaPub), U(p256.priv), Out(4096))
		}
		// A sensitive but extractable key still wraps; an unextractable
		// one does not.
		_, sensitive := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
			[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)}, []wire.Attribute{AB(ck.CKA_SENSITIVE, true)})
		s.Must(ck.CKR_OK, "C_WrapKey", U(h), rsaAES, U(rsaPub), U(sensitive), Out(4096))
		_, locked := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
			[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)}, []wire.Attribute{AB(ck.CKA_EXTRACTABLE, false)})
		s.Must(ck.CKR_KEY_UNEXTRACTABLE, "C_WrapKey", U(h), rsaAES, U(rsaPub), U(locked), Out(4096))
	})

	s.run(t, "openssl", func(t *testing.T) {
		d := sha256.Sum256(asymMsg)
		sig := s.sign(rsaPriv, M(ck.CKM_SHA256_RSA_PKCS), asymMsg)
		if err := rsa.VerifyPKCS1v15(&goRSA.PublicKey, crypto.SHA256, d[:], sig); err != nil {
			t.Fatal(err)
		}
		opensslVerify(t, &goRSA.PublicKey, sig, asymMsg)
	})
}

func testX963(h crypto.Hash, z, shared []byte, n int) []byte {
	var out []byte
	for i := byte(1); len(out) < n; i++ {
		d := h.New()
		d.Write(z)
		d.Write([]byte{0, 0, 0, i})
		d.Write(shared)
		out = d.Sum(out)
	}
	return out[:n]
}

// pssNoSalt makes a PSS signature with an empty salt over digest (SHA-256,
// MGF1-SHA-256), which crypto/rsa cannot: EMSA-PSS-ENCODE of RFC 8017,
// 9.1.1, then the raw private operation with math/big (a test, not a
// token: timing does not matter here).
func pssNoSalt(t *testing.T, priv *rsa.PrivateKey, digest []byte) []byte {
	t.Helper()
	emBits := priv.N.BitLen() - 1
	emLen := (emBits + 7) / 8
	hh := sha256.New()
	hh.Write(make([]byte, 8))
	hh.Write(digest)
	hv := hh.Sum(nil)
	db := make([]byte, emLen-len(hv)-1)
	db[len(db)-1] = 1
	mask := testMGF1(hv, len(db))
	for i := range db {
		db[i] ^= mask[i]
	}
	db[0] &= 0xff >> (8*emLen - emBits)
	em := append(append(db, hv...), 0xbc)
	s := new(big.Int).Exp(new(big.Int).SetBytes(em), priv.D, priv.N)
	return s.FillBytes(make([]byte, priv.Size()))
}

// testKWPUnwrap is RFC 5649's unwrap, written again from the RFC for the
// test, apart from the token's.
func testKWPUnwrap(t *testing.T, kek, c []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(kek)
	if err != nil || len(c) < 24 || len(c)%8 != 0 {
		t.Fatalf("KWP: %d bytes, %v", len(c), err)
	}
	n := len(c)/8 - 1
	a := bytes.Clone(c[:8])
	r := bytes.Clone(c[8:])
	blk := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			binary.BigEndian.PutUint64(blk, binary.BigEndian.Uint64(a)^uint64(n*j+i))
			copy(blk[8:], r[8*(i-1):8*i])
			b.Decrypt(blk, blk)
			copy(a, blk[:8])
			copy(r[8*(i-1):8*i], blk[8:])
		}
	}
	mli := int(binary.BigEndian.Uint32(a[4:]))
	if !bytes.Equal(a[:4], []byte{0xA6, 0x59, 0x59, 0xA6}) || mli > len(r) || mli <= len(r)-8 {
		t.Fatalf("KWP: integrity check failed (%x)", a)
	}
	return r[:mli]
}

// opensslVerify checks a SHA-256 signature with openssl: the public key
// as PEM, the signature as openssl takes it (DER for ECDSA).
func opensslVerify(t *testing.T, pub crypto.PublicKey, sig, msg []byte) {
	t.Helper()
	bin := testenv.Command(t, "openssl", "openssl")
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{
		"pub.pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"sig":     sig,
		"bad":     flipBit(sig),
		"msg":     msg,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(sigFile string) (string, error) {
		cmd := exec.Command(bin, "dgst", "-sha256", "-verify", "pub.pem", "-signature", sigFile, "msg")
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify("sig"); err != nil || !strings.Contains(out, "Verified OK") {
		t.Fatalf("openssl does not verify the token's signature: %v\n%s", err, out)
	}
	if out, err := verify("bad"); err == nil {
		t.Fatalf("openssl verifies a tampered signature:\n%s", out)
	}
}

// oidDER encodes an OID as CKA_EC_PARAMS.
func oidDER(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic(err)
	}
	return b
}

// ecCurveFlags are what CK_MECHANISM_INFO says of the NIST curves: over
// prime fields, named, with uncompressed points.
const ecCurveFlags = ck.CKF_EC_F_P | ck.CKF_EC_NAMEDCURVE | ck.CKF_EC_UNCOMPRESS

// testMGF1 is RFC 8017's MGF1 over SHA-256, written again for the tests.
func testMGF1(seed []byte, n int) []byte {
	var out []byte
	for c := uint32(0); len(out) < n; c++ {
		h := sha256.New()
		h.Write(seed)
		h.Write([]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
		out = h.Sum(out)
	}
	return out[:n]
}
