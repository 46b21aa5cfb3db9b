package token

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"math/big"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
	"hsmemu/keystore"
)

// Elliptic-curve mechanisms through the engine's calls.

func TestECMechanisms(t *testing.T) {
	t.Parallel()
	s := newAsymSession(t)
	h := s.h

	// EC pairs: one per curve, their private keys sensitive; one more on
	// P-256, readable, extractable and able to derive.
	var ecPairs []ecPair
	var p256 ecPair
	var goP256 *ecdsa.PrivateKey
	s.run(t, "ec generate", func(t *testing.T) {
		for _, tc := range []struct {
			params []byte
			curve  elliptic.Curve
		}{
			{params: ecP256Params, curve: elliptic.P256()},
			{params: printableName("secp384r1"), curve: elliptic.P384()},
			{params: ecP521Params, curve: elliptic.P521()},
		} {
			pub, priv := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
				[]wire.Attribute{A(ck.CKA_EC_PARAMS, tc.params)},
				[]wire.Attribute{AB(ck.CKA_SENSITIVE, true)})
			s.checkGenerated(pub, ck.CKM_EC_KEY_PAIR_GEN)
			s.checkGenerated(priv, ck.CKM_EC_KEY_PAIR_GEN)
			if rv, _ := s.Get(h, priv, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
				t.Errorf("%s: sensitive CKA_VALUE: %#x", tc.curve.Params().Name, rv)
			}
			if !bytes.Equal(s.attr(priv, ck.CKA_EC_PARAMS), tc.params) {
				t.Errorf("%s: the private key's CKA_EC_PARAMS differ", tc.curve.Params().Name)
			}
			if !isTrue(s.attr(priv, ck.CKA_ALWAYS_SENSITIVE)) || isTrue(s.attr(priv, ck.CKA_NEVER_EXTRACTABLE)) == isTrue(s.attr(priv, ck.CKA_EXTRACTABLE)) {
				t.Errorf("%s: CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE", tc.curve.Params().Name)
			}
			ecPairs = append(ecPairs, ecPair{pub: pub, priv: priv, curve: tc.curve, goPub: s.ecPublicOf(pub, tc.curve)})
		}
		p256, goP256 = s.readableP256()

		// Curves the token does not have, and parameters that are none.
		for _, tc := range []struct {
			params []byte
			want   uint64
		}{
			{params: oidDER(asn1.ObjectIdentifier{1, 3, 36, 3, 3, 2, 8, 1, 1, 7}), want: ck.CKR_CURVE_NOT_SUPPORTED}, // brainpoolP256r1
			{params: edParams, want: ck.CKR_CURVE_NOT_SUPPORTED},
			{params: []byte{0x06, 0x01}, want: ck.CKR_DOMAIN_PARAMS_INVALID},
		} {
			s.Must(tc.want, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN), T(A(ck.CKA_EC_PARAMS, tc.params)), T(), None(), None())
		}
		s.Must(ck.CKR_TEMPLATE_INCOMPLETE, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN), T(), T(), None(), None())
		s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
			T(A(ck.CKA_EC_PARAMS, ecP256Params)), T(A(ck.CKA_EC_PARAMS, ecP384Params)), None(), None())
		// The private key's template names no domain parameters, even
		// the public one's (elliptic curve private key objects, footnote
		// 4: "MUST not be specified" when generated).
		for _, c := range []struct {
			gen    uint64
			params []byte
		}{
			{ck.CKM_EC_KEY_PAIR_GEN, ecP256Params},
			{ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, mech.ECParams("Ed25519")},
			{ck.CKM_EC_MONTGOMERY_KEY_PAIR_GEN, mech.ECParams("X25519")},
		} {
			s.Must(ck.CKR_TEMPLATE_INCONSISTENT, "C_GenerateKeyPair", U(h), M(c.gen),
				T(A(ck.CKA_EC_PARAMS, c.params)), T(A(ck.CKA_EC_PARAMS, c.params)), None(), None())
		}
	})
	if goP256 == nil {
		t.Fatal("no EC keys")
	}

	s.run(t, "ecdsa", func(t *testing.T) {
		for _, p := range append(ecPairs, p256) {
			size := (p.curve.Params().N.BitLen() + 7) / 8
			for _, tc := range []struct {
				mech uint64
				h    crypto.Hash
			}{
				{mech: ck.CKM_ECDSA, h: 0},
				{mech: ck.CKM_ECDSA_SHA224, h: crypto.SHA224},
				{mech: ck.CKM_ECDSA_SHA256, h: crypto.SHA256},
				{mech: ck.CKM_ECDSA_SHA384, h: crypto.SHA384},
				{mech: ck.CKM_ECDSA_SHA512, h: crypto.SHA512},
				{mech: ck.CKM_ECDSA_SHA3_256, h: crypto.SHA3_256},
				{mech: ck.CKM_ECDSA_SHA3_512, h: crypto.SHA3_512},
			} {
				name := p.curve.Params().Name
				in, d := asymMsg, []byte(nil)
				if tc.h == 0 {
					// CKM_ECDSA signs a digest the caller made.
					sum := sha512.Sum384(asymMsg)
					in, d = sum[:], sum[:]
				} else {
					hh := tc.h.New()
					hh.Write(asymMsg)
					d = hh.Sum(nil)
				}
				sig := s.sign(p.priv, M(tc.mech), in)
				if len(sig) != 2*size {
					t.Fatalf("%s %#x: signature of %d bytes, want %d", name, tc.mech, len(sig), 2*size)
				}
				if r, ss := rawECDSA(sig); !ecdsa.Verify(p.goPub, d, r, ss) {
					t.Errorf("%s %#x: Go does not verify the token's signature", name, tc.mech)
				}
				if rv := s.verify(p.pub, M(tc.mech), in, sig); rv != ck.CKR_OK {
					t.Errorf("%s %#x: the token does not verify its signature: %#x", name, tc.mech, rv)
				}
				if rv := s.verify(p.pub, M(tc.mech), in, flipBit(sig)); rv != ck.CKR_SIGNATURE_INVALID {
					t.Errorf("%s %#x: tampered signature: %#x", name, tc.mech, rv)
				}
				if rv := s.verify(p.pub, M(tc.mech), in, append(sig, 0)); rv != ck.CKR_SIGNATURE_LEN_RANGE {
					t.Errorf("%s %#x: long signature: %#x", name, tc.mech, rv)
				}
				if tc.h == 0 {
					continue
				}
				parts := s.signParts(p.priv, M(tc.mech), asymMsg)
				if r, ss := rawECDSA(parts); !ecdsa.Verify(p.goPub, d, r, ss) {
					t.Errorf("%s %#x: multi-part signature does not verify", name, tc.mech)
				}
				if rv := s.verifyParts(p.pub, M(tc.mech), asymMsg, sig); rv != ck.CKR_OK {
					t.Errorf("%s %#x: multi-part verification: %#x", name, tc.mech, rv)
				}
			}
		}
		// Go's signatures verify on the token.
		d := sha256.Sum256(asymMsg)
		r, ss, _ := ecdsa.Sign(rand.Reader, goP256, d[:])
		sig := append(r.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
		if rv := s.verify(p256.pub, M(ck.CKM_ECDSA_SHA256), asymMsg, sig); rv != ck.CKR_OK {
			t.Errorf("Go's ECDSA signature: %#x", rv)
		}

		// The size query: the signature is made once, and the call that
		// takes it with the same input gets the one measured (a prefetch
		// shows it: ECDSA signatures are random, so a second signing
		// would differ). A call that brings other input gets a signature
		// of that input, as a size query only returns a length.
		s.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(p256.priv))
		measured := s.Must(ck.CKR_OK, "C_Sign", U(h), B(asymMsg), wire.Value{Out: wire.OutSpec{Prefetch: true}})[2]
		if measured.Length != 64 || len(measured.Bytes) != 64 {
			t.Fatalf("prefetch: %+v", measured)
		}
		first := bytes.Clone(measured.Bytes)
		if n := s.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Sign", U(h), B(asymMsg), Out(63))[2].Length; n != 64 {
			t.Fatalf("short buffer: %d", n)
		}
		if kept := s.Must(ck.CKR_OK, "C_Sign", U(h), B(asymMsg), Out(64))[2].Bytes; !bytes.Equal(kept, first) {
			t.Error("the signature delivered after the size query is not the one measured")
		}
		s.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(p256.priv))
		s.Must(ck.CKR_OK, "C_Sign", U(h), B(asymMsg), SizeQuery())
		other := []byte("other data")
		sig = bytes.Clone(s.Must(ck.CKR_OK, "C_Sign", U(h), B(other), Out(64))[2].Bytes)
		do := sha256.Sum256(other)
		if r, ss := rawECDSA(sig); !ecdsa.Verify(p256.goPub, do[:], r, ss) {
			t.Error("the signature after a size query over other input is not of the call's input")
		}

		// Single-part only, and no parameter.
		s.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA), U(p256.priv))
		s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_SignUpdate", U(h), B(asymMsg))
		s.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Sign", U(h), B(asymMsg), Out(64))
		s.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_ECDSA), U(p256.pub))
		s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_VerifyUpdate", U(h), B(asymMsg))
		s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignInit", U(h), bytesMech(ck.CKM_ECDSA_SHA256), U(p256.priv))
	})

	s.run(t, "key usage", func(t *testing.T) {
		// A private key that may not sign; a public key asked to sign; a key
		// of another type.
		_, noSign := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
			[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)}, []wire.Attribute{AB(ck.CKA_SIGN, false)})
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(noSign))
		if rv, _ := s.Call("C_SignInit", U(h), M(ck.CKM_ECDSA_SHA256), U(p256.pub)); rv != ck.CKR_KEY_FUNCTION_NOT_PERMITTED && rv != ck.CKR_KEY_TYPE_INCONSISTENT {
			t.Errorf("signing with a public key: %#x", rv)
		}
		s.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(p256.priv))
		s.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_SHA256_RSA_PKCS), U(p256.priv))
		// CKA_ALLOWED_MECHANISMS.
		_, only := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
			[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)},
			[]wire.Attribute{A(ck.CKA_ALLOWED_MECHANISMS, keystore.Ulong(ck.CKM_ECDSA_SHA256))})
		s.sign(only, M(ck.CKM_ECDSA_SHA256), asymMsg)
		s.Must(ck.CKR_MECHANISM_INVALID, "C_SignInit", U(h), M(ck.CKM_ECDSA), U(only))
		// A key without CKA_DERIVE.
		s.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_DeriveKey", U(h),
			MP(ck.CKM_ECDH1_DERIVE, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: s.attr(p256.pub, ck.CKA_EC_POINT)}.Param()),
			U(ecPairs[0].priv), T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET)), None())
	})

	s.run(t, "eddsa", func(t *testing.T) {
		for _, params := range [][]byte{edParams, printableName("edwards25519")} {
			pub, priv := s.genPair(M(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN),
				[]wire.Attribute{A(ck.CKA_EC_PARAMS, params)}, []wire.Attribute{AB(ck.CKA_SENSITIVE, true)})
			s.checkGenerated(priv, ck.CKM_EC_EDWARDS_KEY_PAIR_GEN)
			if rv, _ := s.Get(h, priv, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
				t.Errorf("sensitive CKA_VALUE: %#x", rv)
			}
			var raw []byte
			if rest, err := asn1.Unmarshal(s.attr(pub, ck.CKA_EC_POINT), &raw); err != nil || len(rest) > 0 || len(raw) != ed25519.PublicKeySize {
				t.Fatalf("CKA_EC_POINT: %x", s.attr(pub, ck.CKA_EC_POINT))
			}
			goPub := ed25519.PublicKey(raw)
			for _, tc := range []struct {
				name string
				m    wire.Value
				opts ed25519.Options
			}{
				{name: "Ed25519", m: M(ck.CKM_EDDSA), opts: ed25519.Options{}},
				{name: "Ed25519ctx", m: MP(ck.CKM_EDDSA, wire.EdDSAParams{ContextData: []byte("ctx")}.Param()), opts: ed25519.Options{Context: "ctx"}},
				{name: "Ed25519ph", m: MP(ck.CKM_EDDSA, wire.EdDSAParams{PHFlag: true}.Param()), opts: ed25519.Options{Hash: crypto.SHA512}},
				{name: "Ed25519ph ctx", m: MP(ck.CKM_EDDSA, wire.EdDSAParams{PHFlag: true, ContextData: []byte("c")}.Param()), opts: ed25519.Options{Hash: crypto.SHA512, Context: "c"}},
			} {
				sig := s.sign(priv, tc.m, asymMsg)
				in := asymMsg
				if tc.opts.Hash == crypto.SHA512 {
					d := sha512.Sum512(asymMsg)
					in = d[:]
				}
				if err := ed25519.VerifyWithOptions(goPub, in, sig, &tc.opts); err != nil {
					t.Errorf("%s: Go does not verify the token's signature: %v", tc.name, err)
				}
				if rv := s.verify(pub, tc.m, asymMsg, sig); rv != ck.CKR_OK {
					t.Errorf("%s: the token does not verify its signature: %#x", tc.name, rv)
				}
				if rv := s.verify(pub, tc.m, asymMsg, flipBit(sig)); rv != ck.CKR_SIGNATURE_INVALID {
					t.Errorf("%s: tampered: %#x", tc.name, rv)
				}
				if rv := s.verify(pub, tc.m, asymMsg, sig[:63]); rv != ck.CKR_SIGNATURE_LEN_RANGE {
					t.Errorf("%s: short: %#x", tc.name, rv)
				}
			}
			// Pure Ed25519 is deterministic: the same as Go's.
			if sig := s.sign(priv, M(ck.CKM_EDDSA), asymMsg); !ed25519.Verify(goPub, asymMsg, sig) {
				t.Error("pure Ed25519")
			}
			s.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_EDDSA), U(priv))
			s.Must(ck.CKR_FUNCTION_NOT_SUPPORTED, "C_SignUpdate", U(h), B(asymMsg))
			s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignInit", U(h), MP(ck.CKM_EDDSA, wire.EdDSAParams{ContextData: make([]byte, 256)}.Param()), U(priv))
		}
		s.Must(ck.CKR_CURVE_NOT_SUPPORTED, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_EDWARDS_KEY_PAIR_GEN), T(A(ck.CKA_EC_PARAMS, ecP256Params)), T(), None(), None())
	})

	s.run(t, "ecdh", func(t *testing.T) {
		genericT := func(extra ...wire.Attribute) wire.Value {
			return T(append([]wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
				AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true)}, extra...)...)
		}
		derive := func(base uint64, p wire.ECDH1DeriveParams, tmpl wire.Value) []byte {
			t.Helper()
			k := s.Must(ck.CKR_OK, "C_DeriveKey", U(h), MP(ck.CKM_ECDH1_DERIVE, p.Param()), U(base), tmpl, None())[4].Ulong
			return s.attr(k, ck.CKA_VALUE)
		}
		// A second token key on P-256, able to derive.
		bPub, bPriv := s.genPair(M(ck.CKM_EC_KEY_PAIR_GEN),
			[]wire.Attribute{A(ck.CKA_EC_PARAMS, ecP256Params)}, []wire.Attribute{AB(ck.CKA_DERIVE, true)})
		aPoint, bPoint := s.attr(p256.pub, ck.CKA_EC_POINT), s.attr(bPub, ck.CKA_EC_POINT)
		ab := derive(p256.priv, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: bPoint}, genericT())
		// The peer's point bare, not in its OCTET STRING.
		ba := derive(bPriv, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: ecPoint(aPoint)}, genericT())
		if len(ab) != 32 || !bytes.Equal(ab, ba) {
			t.Fatalf("the two sides derive %x and %x", ab, ba)
		}
		// The same as Go's crypto/ecdh.
		goA, _ := goP256.ECDH()
		goB, err := ecdh.P256().NewPublicKey(ecPoint(bPoint))
		if err != nil {
			t.Fatal(err)
		}
		z, _ := goA.ECDH(goB)
		if !bytes.Equal(z, ab) {
			t.Fatalf("ECDH: token %x, Go %x", ab, z)
		}
		// And with a Go key as the peer.
		goC, _ := ecdh.P256().GenerateKey(rand.Reader)
		goAPub, _ := goP256.PublicKey.ECDH()
		zc, _ := goC.ECDH(goAPub)
		if got := derive(p256.priv, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: goC.PublicKey().Bytes()}, genericT()); !bytes.Equal(got, zc) {
			t.Fatalf("ECDH with Go's key: %x, want %x", got, zc)
		}
		// CKD_NULL cut to the length asked: the leading bytes.
		if got := derive(p256.priv, wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: bPoint}, genericT(AU(ck.CKA_VALUE_LEN, 16))); !bytes.Equal(got, z[:16]) {
			t.Fatalf("CKD_NULL to 16 bytes: %x", got)
		}
		// The X9.63 KDFs, with shared data.
		shared := []byte("shared info")
		for _, tc := range []struct {
			kdf uint64
			h   crypto.Hash
		}{{kdf: ck.CKD_SHA1_KDF, h: crypto.SHA1}, {kdf: ck.CKD_SHA256_KDF, h: crypto.SHA256}, {kdf: ck.CKD_SHA512_KDF, h: crypto.SHA512}} {
			want := testX963(tc.h, z, shared, 48)
			if got := derive(bPriv, wire.ECDH1DeriveParams{KDF: tc.kdf, SharedData: shared, PublicData: aPoint}, genericT(AU(ck.CKA_VALUE_LEN, 48))); !bytes.Equal(got, want) {
				t.Errorf("KDF %#x: %x, want %x", tc.kdf, got, want)
			}
		}
		// An AES key through the KDF.
		k := s.Must(ck.CKR_OK, "C_DeriveKey", U(h), MP(ck.CKM_ECDH1_DERIVE, wire.ECDH1DeriveParams{KDF: ck.CKD_SHA256_KDF, PublicData: bPoint}.Param()), U(p256.priv),
			T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_SENSITIVE, true)), None())[4].Ulong
		if n := ulongOf(s.attr(k, ck.CKA_VALUE_LEN)); n != 32 {
			t.Errorf("derived AES key: CKA_VALUE_LEN %d", n)
		}
		// Refusals.
		for _, tc := range []struct {
			name string
			p    wire.ECDH1DeriveParams
			tmpl wire.Value
			want uint64
		}{
			{name: "longer than the secret", p: wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: bPoint}, tmpl: genericT(AU(ck.CKA_VALUE_LEN, 33)), want: ck.CKR_KEY_SIZE_RANGE},
			{name: "shared data without a KDF", p: wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, SharedData: shared, PublicData: bPoint}, tmpl: genericT(), want: ck.CKR_MECHANISM_PARAM_INVALID},
			{name: "unknown KDF", p: wire.ECDH1DeriveParams{KDF: 0x77, PublicData: bPoint}, tmpl: genericT(), want: ck.CKR_MECHANISM_PARAM_INVALID},
			{name: "point off the curve", p: wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: append([]byte{4}, make([]byte, 64)...)}, tmpl: genericT(), want: ck.CKR_MECHANISM_PARAM_INVALID},
			{name: "point of another curve", p: wire.ECDH1DeriveParams{KDF: ck.CKD_NULL, PublicData: s.attr(ecPairs[1].pub, ck.CKA_EC_POINT)}, tmpl: genericT(), want: ck.CKR_MECHANISM_PARAM_INVALID},
		} {
			if rv, _ := s.Call("C_DeriveKey", U(h), MP(ck.CKM_ECDH1_DERIVE, tc.p.Param()), U(p256.priv), tc.tmpl, None()); rv != tc.want {
				t.Errorf("%s: %#x, want %#x", tc.name, rv, tc.want)
			}
		}
		s.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_DeriveKey", U(h), M(ck.CKM_ECDH1_DERIVE), U(p256.priv), genericT(), None())
	})

	s.run(t, "openssl", func(t *testing.T) {
		sig := s.sign(p256.priv, M(ck.CKM_ECDSA_SHA256), asymMsg)
		r, ss := rawECDSA(sig)
		der, err := asn1.Marshal(struct{ R, S *big.Int }{R: r, S: ss})
		if err != nil {
			t.Fatal(err)
		}
		opensslVerify(t, p256.goPub, der, asymMsg)
	})
}

// ecPoint unwraps CKA_EC_POINT's DER OCTET STRING.
func ecPoint(v []byte) []byte {
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err == nil && len(rest) == 0 {
		return raw
	}
	return v
}
