package token

import (
	"bytes"
	"context"
	"crypto"
	"crypto/des"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"math/big"
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/mech/mechtest"
	"hsmemu/keystore"
)

// The legacy policy through the engine's calls: which tokens have the
// legacy algorithms (none without Config.LegacyAlgorithms, standard
// tokens with it, premium tokens never), what their mechanism list and
// information say, and the legacy algorithms at work.

// legacyMechs are the mechanisms only the legacy table has.
var legacyMechs = []uint64{
	ck.CKM_DES_KEY_GEN, ck.CKM_DES2_KEY_GEN, ck.CKM_DES3_KEY_GEN, ck.CKM_DES_ECB, ck.CKM_DES_CBC,
	ck.CKM_DES_CBC_PAD, ck.CKM_DES3_ECB, ck.CKM_DES3_CBC, ck.CKM_DES3_CBC_PAD, ck.CKM_DES3_CMAC,
	ck.CKM_DSA_PARAMETER_GEN, ck.CKM_DSA_KEY_PAIR_GEN, ck.CKM_DSA, ck.CKM_DSA_SHA1, ck.CKM_DSA_SHA256,
}

// policySession logs a user in on a new token of the engine's default
// tier and returns the client, the slot and the session.
func policySession(t *testing.T, d *testEngine, label string) (*client, uint64, uint64) {
	t.Helper()
	cl := d.dial(t)
	slot := cl.NewToken(label)
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	return cl, slot, h
}

// mechList is C_GetMechanismList.
func (cl *client) mechList(slot uint64) []uint64 {
	cl.T.Helper()
	return slices.Clone(cl.Must(ck.CKR_OK, "C_GetMechanismList", U(slot), Out(512))[1].Ulongs)
}

func (cl *client) mechInfo(slot, typ uint64) *wire.MechanismInfo {
	cl.T.Helper()
	return cl.Must(ck.CKR_OK, "C_GetMechanismInfo", U(slot), U(typ), None())[2].Struct.(*wire.MechanismInfo)
}

// rsaKeyObjects imports a Go RSA key of the given size as a session key
// pair (the token cannot make one under 2048 bits without the policy).
func rsaKeyObjects(t *testing.T, cl *client, h uint64, bits int) (priv, pub uint64, k *rsa.PrivateKey) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	attrs, _, err := mech.PrivateKeyAttrs(k)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_RSA), AB(ck.CKA_TOKEN, false)}
	for typ, v := range attrs {
		tmpl = append(tmpl, A(typ, v))
	}
	priv = cl.Create(h, tmpl...)
	pub = cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_RSA), AB(ck.CKA_TOKEN, false),
		A(ck.CKA_MODULUS, k.N.Bytes()), A(ck.CKA_PUBLIC_EXPONENT, big.NewInt(int64(k.E)).Bytes()))
	return priv, pub, k
}

func desTemplate(kt uint64, v []byte) []wire.Attribute {
	return []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, kt), AB(ck.CKA_TOKEN, false), A(ck.CKA_VALUE, v)}
}

// TestLegacyPolicyOff: without the policy the legacy algorithms are
// absent, and their keys refused, as they always were.
func TestLegacyPolicyOff(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl, slot, h := policySession(t, d, "modern")
	for _, s := range []uint64{freeSlot, slot} {
		list := cl.mechList(s)
		for _, m := range legacyMechs {
			if slices.Contains(list, m) {
				t.Errorf("slot %d lists %#x", s, m)
			}
			cl.Must(ck.CKR_MECHANISM_INVALID, "C_GetMechanismInfo", U(s), U(m), None())
		}
		for _, m := range []uint64{ck.CKM_SHA1_RSA_PKCS, ck.CKM_SHA1_RSA_PKCS_PSS, ck.CKM_ECDSA_SHA1} {
			if info := cl.mechInfo(s, m); info.Flags&(ck.CKF_SIGN|ck.CKF_VERIFY) != ck.CKF_VERIFY {
				t.Errorf("slot %d: %#x flags %#x", s, m, info.Flags)
			}
		}
		if info := cl.mechInfo(s, ck.CKM_RSA_PKCS_KEY_PAIR_GEN); info.MinKeySize != 2048 {
			t.Errorf("slot %d: RSA keys from %d bits", s, info.MinKeySize)
		}
	}
	// The legacy mechanisms and key types.
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_GenerateKey", U(h), M(ck.CKM_DES3_KEY_GEN), T(), None())
	desKey := make([]byte, 24)
	rand.Read(desKey)
	mech.SetDESParity(desKey)
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(desTemplate(ck.CKK_DES3, desKey)...), None())
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_DSA),
		A(ck.CKA_PRIME, []byte{23}), A(ck.CKA_SUBPRIME, []byte{11}), A(ck.CKA_BASE, []byte{2}), A(ck.CKA_VALUE, []byte{4})), None())
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(AU(ck.CKA_CLASS, ck.CKO_DOMAIN_PARAMETERS), AU(ck.CKA_KEY_TYPE, ck.CKK_DSA),
		A(ck.CKA_PRIME, []byte{23}), A(ck.CKA_SUBPRIME, []byte{11}), A(ck.CKA_BASE, []byte{2})), None())
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_GenerateKeyPair", U(h), M(ck.CKM_DSA_KEY_PAIR_GEN), T(), T(), None(), None())
	// RSA-1024: not made, and refused for every use.
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), T(AU(ck.CKA_MODULUS_BITS, 1024)), T(), None(), None())
	priv, pub, _ := rsaKeyObjects(t, cl, h, 1024)
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_SignInit", U(h), M(ck.CKM_SHA256_RSA_PKCS), U(priv))
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_VerifyInit", U(h), M(ck.CKM_SHA256_RSA_PKCS), U(pub))
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_EncryptInit", U(h), M(ck.CKM_RSA_PKCS), U(pub))
	// SHA-1 signatures: verified, not made.
	big2048, pub2048, gk := rsaKeyObjects(t, cl, h, 2048)
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_SignInit", U(h), M(ck.CKM_SHA1_RSA_PKCS), U(big2048))
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_SignInit", U(h), pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA_1, ck.CKG_MGF1_SHA1, 20), U(big2048))
	d1 := sha1.Sum([]byte("old"))
	sig, err := rsa.SignPKCS1v15(nil, gk, crypto.SHA1, d1[:])
	if err != nil {
		t.Fatal(err)
	}
	cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_SHA1_RSA_PKCS), U(pub2048))
	cl.Must(ck.CKR_OK, "C_Verify", U(h), S("old"), B(sig))
}

// TestLegacyPolicyOn: a standard token has the legacy algorithms, a
// premium one of the same daemon does not; the free slot answers for the
// tier C_InitToken gives.
func TestLegacyPolicyOn(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{LegacyAlgorithms: true})
	cl, slot, h := policySession(t, d, "legacy")

	// A premium token beside it, made in the keystore.
	ti, err := d.store.CreateToken(context.Background(), keystore.TokenSpec{Label: "premium", Tier: keystore.TierPremium, SOPIN: []byte(SOPIN)})
	if err != nil {
		t.Fatal(err)
	}
	premium := uint64(ti.ID)
	ph := cl.Open(premium, true)
	cl.Must(ck.CKR_OK, "C_Login", U(ph), U(ck.CKU_SO), S(SOPIN))
	cl.Must(ck.CKR_OK, "C_InitPIN", U(ph), S(UserPIN))
	cl.Must(ck.CKR_OK, "C_Logout", U(ph))
	cl.Must(ck.CKR_OK, "C_Login", U(ph), U(ck.CKU_USER), S(UserPIN))

	for _, c := range []struct {
		slot   uint64
		legacy bool
	}{{freeSlot, true}, {slot, true}, {premium, false}} {
		list := cl.mechList(c.slot)
		for _, m := range legacyMechs {
			if slices.Contains(list, m) != c.legacy {
				t.Errorf("slot %d: %#x listed %v", c.slot, m, !c.legacy)
			}
		}
		info := cl.mechInfo(c.slot, ck.CKM_SHA1_RSA_PKCS)
		if (info.Flags&ck.CKF_SIGN != 0) != c.legacy {
			t.Errorf("slot %d: CKM_SHA1_RSA_PKCS flags %#x", c.slot, info.Flags)
		}
		min := uint64(2048)
		if c.legacy {
			min = 1024
			info := cl.mechInfo(c.slot, ck.CKM_DES3_CBC)
			if info.Flags != ck.CKF_ENCRYPT|ck.CKF_DECRYPT || info.MinKeySize != 16 || info.MaxKeySize != 24 {
				t.Errorf("slot %d: CKM_DES3_CBC %+v", c.slot, info)
			}
		}
		if info := cl.mechInfo(c.slot, ck.CKM_RSA_PKCS_KEY_PAIR_GEN); info.MinKeySize != min {
			t.Errorf("slot %d: RSA keys from %d bits", c.slot, info.MinKeySize)
		}
	}
	// The premium token refuses them all.
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_GenerateKey", U(ph), M(ck.CKM_DES3_KEY_GEN), T(), None())
	cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_GenerateKeyPair", U(ph), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN), T(AU(ck.CKA_MODULUS_BITS, 1024)), T(), None(), None())
	desKey := make([]byte, 24)
	rand.Read(desKey)
	mech.SetDESParity(desKey)
	cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(ph), T(desTemplate(ck.CKK_DES3, desKey)...), None())

	t.Run("triple DES", func(t *testing.T) {
		k := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_DES3_KEY_GEN), T(AB(ck.CKA_TOKEN, false), AB(ck.CKA_SENSITIVE, false)), None())[3].Ulong
		rv, ans := cl.Get(h, k, ck.CKA_VALUE, ck.CKA_KEY_TYPE, ck.CKA_KEY_GEN_MECHANISM)
		if rv != ck.CKR_OK || len(ans[0].Value) != 24 || !mech.DESParityOK(ans[0].Value) || UlongOf(ans[1].Value) != ck.CKK_DES3 || UlongOf(ans[2].Value) != ck.CKM_DES3_KEY_GEN {
			t.Fatalf("generated key: %#x %+v", rv, ans)
		}
		value := bytes.Clone(ans[0].Value)
		// No CKA_VALUE_LEN: the key type says the length.
		if rv, _ := cl.Get(h, k, ck.CKA_VALUE_LEN); rv != ck.CKR_ATTRIBUTE_TYPE_INVALID {
			t.Errorf("CKA_VALUE_LEN of a DES3 key: %#x", rv)
		}
		iv := []byte("8bytesIV")
		plain := []byte("twenty-four bytes, three")
		ct := cl.crypt(false, h, mechIV(ck.CKM_DES3_CBC, iv), k, plain)
		b, _ := des.NewTripleDESCipher(value)
		want := make([]byte, len(plain))
		cbcEncrypt(b, iv, want, plain)
		if !bytes.Equal(ct, want) {
			t.Fatalf("DES3-CBC: %x, want %x", ct, want)
		}
		if got := cl.crypt(true, h, mechIV(ck.CKM_DES3_CBC, iv), k, ct); !bytes.Equal(got, plain) {
			t.Fatalf("DES3-CBC decrypt: %q", got)
		}
		// CBC_PAD in parts, and as a wrapping mechanism for an AES key.
		padded := cl.cryptParts(false, h, mechIV(ck.CKM_DES3_CBC_PAD, iv), k, []byte("odd length"), []int{3})
		if got := cl.crypt(true, h, mechIV(ck.CKM_DES3_CBC_PAD, iv), k, padded); string(got) != "odd length" {
			t.Fatalf("CBC_PAD: %q", got)
		}
		aes := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{9}, 16))
		wrapped := cl.wrapKey(ck.CKR_OK, h, mechIV(ck.CKM_DES3_CBC_PAD, iv), k, aes)
		back := cl.unwrapKey(ck.CKR_OK, h, mechIV(ck.CKM_DES3_CBC_PAD, iv), k, wrapped, readable(ck.CKK_AES)...)
		if !bytes.Equal(cl.value(h, back), bytes.Repeat([]byte{9}, 16)) {
			t.Fatal("AES key through DES3-CBC_PAD wrap")
		}
		// A DES3 key wrapped under AES and back.
		kek := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{3}, 32))
		w := cl.wrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, k)
		k2 := cl.unwrapKey(ck.CKR_OK, h, M(ck.CKM_AES_KEY_WRAP), kek, w, readable(ck.CKK_DES3)...)
		if !bytes.Equal(cl.value(h, k2), value) {
			t.Fatal("DES3 key through AES key wrap")
		}
		// Parity: a key without it is refused on create.
		bad := bytes.Clone(value)
		bad[0] ^= 1
		cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(desTemplate(ck.CKK_DES3, bad)...), None())
		cl.Must(ck.CKR_ATTRIBUTE_VALUE_INVALID, "C_CreateObject", U(h), T(desTemplate(ck.CKK_DES2, value)...), None())
		// Two-key triple DES and CMAC (SP 800-38B's example).
		two := cl.Create(h, desTemplate(ck.CKK_DES2, mechtest.Hex("4cf15134a2850dd5 8a3d10ba80570d38"))...)
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_DES3_CMAC), U(two))
		mac := cl.Must(ck.CKR_OK, "C_Sign", U(h), B(mechtest.Hex("6bc1bee22e409f96")), Out(8))[2].Bytes
		if !bytes.Equal(mac, mechtest.Hex("4ff2ab813c53ce83")) {
			t.Errorf("DES3-CMAC: %x", mac)
		}
		// Single DES.
		one := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_DES_KEY_GEN), T(AB(ck.CKA_TOKEN, false)), None())[3].Ulong
		if got := cl.crypt(true, h, M(ck.CKM_DES_ECB), one, cl.crypt(false, h, M(ck.CKM_DES_ECB), one, []byte("8 bytes!"))); string(got) != "8 bytes!" {
			t.Errorf("DES-ECB: %q", got)
		}
		cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_EncryptInit", U(h), M(ck.CKM_DES_ECB), U(k))
	})

	t.Run("DSA", func(t *testing.T) {
		params := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_DSA_PARAMETER_GEN), T(AB(ck.CKA_TOKEN, false), AU(ck.CKA_PRIME_BITS, 1024)), None())[3].Ulong
		rv, ans := cl.Get(h, params, ck.CKA_CLASS, ck.CKA_KEY_TYPE, ck.CKA_PRIME, ck.CKA_SUBPRIME, ck.CKA_BASE, ck.CKA_PRIME_BITS, ck.CKA_LOCAL)
		if rv != ck.CKR_OK || UlongOf(ans[0].Value) != ck.CKO_DOMAIN_PARAMETERS || UlongOf(ans[1].Value) != ck.CKK_DSA ||
			UlongOf(ans[5].Value) != 1024 || !isTrue(ans[6].Value) {
			t.Fatalf("domain parameters: %#x %+v", rv, ans)
		}
		p, q, g := bytes.Clone(ans[2].Value), bytes.Clone(ans[3].Value), bytes.Clone(ans[4].Value)
		cl.Must(ck.CKR_TEMPLATE_INCOMPLETE, "C_GenerateKey", U(h), M(ck.CKM_DSA_PARAMETER_GEN), T(), None())
		cl.Must(ck.CKR_KEY_SIZE_RANGE, "C_GenerateKey", U(h), M(ck.CKM_DSA_PARAMETER_GEN), T(AU(ck.CKA_PRIME_BITS, 512)), None())
		// Created parameters get their sizes computed.
		created := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_DOMAIN_PARAMETERS), AU(ck.CKA_KEY_TYPE, ck.CKK_DSA), A(ck.CKA_PRIME, p), A(ck.CKA_SUBPRIME, q), A(ck.CKA_BASE, g))
		if rv, ans := cl.Get(h, created, ck.CKA_PRIME_BITS, ck.CKA_SUBPRIME_BITS); rv != ck.CKR_OK || UlongOf(ans[0].Value) != 1024 || UlongOf(ans[1].Value) != 160 {
			t.Fatalf("created parameters: %#x %+v", rv, ans)
		}
		out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_DSA_KEY_PAIR_GEN),
			T(AB(ck.CKA_TOKEN, false), A(ck.CKA_PRIME, p), A(ck.CKA_SUBPRIME, q), A(ck.CKA_BASE, g)), T(AB(ck.CKA_TOKEN, false), AB(ck.CKA_SENSITIVE, true)), None(), None())
		pub, priv := out[4].Ulong, out[5].Ulong
		if rv, ans := cl.Get(h, priv, ck.CKA_PRIME, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE || !bytes.Equal(ans[0].Value, p) {
			t.Fatalf("private key: %#x", rv)
		}
		for _, m := range []uint64{ck.CKM_DSA_SHA1, ck.CKM_DSA_SHA256, ck.CKM_DSA_SHA3_256} {
			cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(m), U(priv))
			sig := bytes.Clone(cl.Must(ck.CKR_OK, "C_Sign", U(h), S("message"), Out(64))[2].Bytes)
			if len(sig) != 40 {
				t.Fatalf("%#x: %d-byte signature", m, len(sig))
			}
			cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(m), U(pub))
			cl.Must(ck.CKR_OK, "C_Verify", U(h), S("message"), B(sig))
			cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(m), U(pub))
			cl.Must(ck.CKR_SIGNATURE_INVALID, "C_Verify", U(h), S("massage"), B(sig))
		}
		// Wycheproof's DSA keys and vectors, a sample through the calls.
		ran := 0
		for _, gr := range mechtest.Wycheproof(t, "dsa_2048_224_sha224_p1363_test.json").TestGroups {
			pk := gr.PublicKey
			k := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_DSA), AB(ck.CKA_TOKEN, false),
				A(ck.CKA_PRIME, pk.P), A(ck.CKA_SUBPRIME, pk.Q), A(ck.CKA_BASE, pk.G), A(ck.CKA_VALUE, pk.Y))
			for _, v := range gr.Tests {
				if v.TcID%5 != 0 {
					continue
				}
				cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_DSA_SHA224), U(k))
				rv, _ := cl.Call("C_Verify", U(h), B(v.Msg), B(v.Sig))
				if (rv == ck.CKR_OK) != (v.Result == "valid") && v.Result != "acceptable" {
					t.Errorf("Wycheproof DSA %d (%s): %#x", v.TcID, v.Result, rv)
				}
				ran++
			}
		}
		if ran < 15 {
			t.Fatalf("only %d vectors", ran)
		}
	})

	t.Run("RSA-1024 and SHA-1", func(t *testing.T) {
		out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_RSA_PKCS_KEY_PAIR_GEN),
			T(AB(ck.CKA_TOKEN, false), AU(ck.CKA_MODULUS_BITS, 1024)), T(AB(ck.CKA_TOKEN, false)), None(), None())
		pub, priv := out[4].Ulong, out[5].Ulong
		_, ans := cl.Get(h, pub, ck.CKA_MODULUS, ck.CKA_PUBLIC_EXPONENT)
		gp := &rsa.PublicKey{N: new(big.Int).SetBytes(ans[0].Value), E: int(new(big.Int).SetBytes(ans[1].Value).Int64())}
		if gp.N.BitLen() != 1024 {
			t.Fatalf("a %d-bit modulus", gp.N.BitLen())
		}
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_SHA1_RSA_PKCS), U(priv))
		sig := cl.Must(ck.CKR_OK, "C_Sign", U(h), S("old"), Out(256))[2].Bytes
		d := sha1.Sum([]byte("old"))
		if err := rsa.VerifyPKCS1v15(gp, crypto.SHA1, d[:], sig); err != nil {
			t.Fatal(err)
		}
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), pssMech(ck.CKM_RSA_PKCS_PSS, ck.CKM_SHA_1, ck.CKG_MGF1_SHA1, 20), U(priv))
		sig = cl.Must(ck.CKR_OK, "C_Sign", U(h), B(d[:]), Out(256))[2].Bytes
		if err := rsa.VerifyPSS(gp, crypto.SHA1, d[:], sig, &rsa.PSSOptions{SaltLength: 20}); err != nil {
			t.Fatal(err)
		}
		// ECDSA with SHA-1 signs too.
		ecOut := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
			T(AB(ck.CKA_TOKEN, false), A(ck.CKA_EC_PARAMS, mech.ECParams("P-256"))), T(AB(ck.CKA_TOKEN, false)), None(), None())
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ECDSA_SHA1), U(ecOut[5].Ulong))
		sig = bytes.Clone(cl.Must(ck.CKR_OK, "C_Sign", U(h), S("old"), Out(256))[2].Bytes)
		cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_ECDSA_SHA1), U(ecOut[4].Ulong))
		cl.Must(ck.CKR_OK, "C_Verify", U(h), S("old"), B(sig))
	})

}

// TestLegacyKeysOutliveThePolicy: a DES3 key made under the policy, on a
// daemon restarted without it, stays, and its mechanisms are gone.
func TestLegacyKeysOutliveThePolicy(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{LegacyAlgorithms: true})
	cl, slot, h := policySession(t, d, "outlive")
	k := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_DES3_KEY_GEN), T(AB(ck.CKA_TOKEN, true), A(ck.CKA_LABEL, []byte("des3"))), None())[3].Ulong
	cl.crypt(false, h, M(ck.CKM_DES3_ECB), k, make([]byte, 8))
	d.stop()
	d.start(t, Config{})
	cl = d.dial(t)
	h = cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	found := cl.Find(h, A(ck.CKA_LABEL, []byte("des3")))
	if len(found) != 1 {
		t.Fatalf("found %v", found)
	}
	if slices.Contains(cl.mechList(slot), ck.CKM_DES3_ECB) {
		t.Fatal("CKM_DES3_ECB listed without the policy")
	}
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_EncryptInit", U(h), M(ck.CKM_DES3_ECB), U(found[0]))
}

// cbcEncrypt is CBC by hand over a cipher.Block, the reference for the
// token's.
func cbcEncrypt(b interface {
	Encrypt(dst, src []byte)
	BlockSize() int
}, iv, dst, src []byte) {
	bs := b.BlockSize()
	prev := bytes.Clone(iv)
	for i := 0; i < len(src); i += bs {
		blk := make([]byte, bs)
		for j := range blk {
			blk[j] = src[i+j] ^ prev[j]
		}
		b.Encrypt(dst[i:i+bs], blk)
		prev = dst[i : i+bs]
	}
}

// TestLegacyCAVPThroughEngine runs a sample of NIST's triple-DES records
// through C_Encrypt and C_Decrypt.
func TestLegacyCAVPThroughEngine(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{LegacyAlgorithms: true})
	cl, _, h := policySession(t, d, "cavp")
	ran := 0
	for _, file := range []string{
		"ciphers/3DES/CBC/TCBCMMT1.rsp", "ciphers/3DES/CBC/TCBCMMT2.rsp", "ciphers/3DES/CBC/TCBCMMT3.rsp",
		"ciphers/3DES/ECB/TECBMMT1.rsp", "ciphers/3DES/ECB/TECBMMT2.rsp", "ciphers/3DES/ECB/TECBMMT3.rsp",
	} {
		for _, r := range mechtest.LoadTDES(t, file) {
			v := slices.Concat(r.Keys[0], r.Keys[1], r.Keys[2])
			k := cl.Create(h, desTemplate(ck.CKK_DES3, v)...)
			m := M(ck.CKM_DES3_ECB)
			if r.IV != nil {
				m = mechIV(ck.CKM_DES3_CBC, r.IV)
			}
			in, want := r.Plain, r.CT
			if r.Decrypt {
				in, want = r.CT, r.Plain
			}
			if got := cl.crypt(r.Decrypt, h, m, k, in); !bytes.Equal(got, want) {
				t.Errorf("%s %s: %x", file, r.Count, got)
			}
			ran++
		}
	}
	if ran < 120 {
		t.Fatalf("only %d records", ran)
	}
}
