package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"slices"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech/mechtest"
	"hsmemu/keystore"
)

// The secret-key mechanisms through the engine's calls: known answers
// from the standards, multi-part against single-part, the size-query
// convention, and the refusals. daemon/mech runs all of Wycheproof
// against the mechanisms themselves, and the benchmarks.

// hx decodes hex written with spaces, as the RFCs print it.
var hx = mechtest.Hex

// symUser starts a daemon with a token and returns a client with the user
// logged in on a read-write session.
func symUser(t *testing.T) (*testEngine, *client, uint64, uint64) {
	t.Helper()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("sym")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	return d, cl, slot, h
}

// secret creates a session secret key; extra attributes replace the
// defaults of the same type.
func (cl *client) secret(h, kt uint64, value []byte, extra ...wire.Attribute) uint64 {
	cl.T.Helper()
	return cl.Create(h, secretTmpl(kt, value, extra...)...)
}

func secretTmpl(kt uint64, value []byte, extra ...wire.Attribute) []wire.Attribute {
	attrs := []wire.Attribute{
		AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, kt), AB(ck.CKA_TOKEN, false),
	}
	if value != nil {
		attrs = append(attrs, A(ck.CKA_VALUE, value))
	}
	for _, e := range extra {
		attrs = slices.DeleteFunc(attrs, func(a wire.Attribute) bool { return a.Type == e.Type })
		attrs = append(attrs, e)
	}
	return attrs
}

// value reads a key's CKA_VALUE, which must be readable.
func (cl *client) value(h, obj uint64) []byte {
	cl.T.Helper()
	rv, ans := cl.Get(h, obj, ck.CKA_VALUE)
	if rv != ck.CKR_OK {
		cl.T.Fatalf("CKA_VALUE: %#x", rv)
	}
	return bytes.Clone(ans[0].Value)
}

func mechIV(typ uint64, iv []byte) wire.Value {
	return MP(typ, wire.Param{Kind: calls.PBytes, Bytes: iv})
}

func gcmMech(iv, aad []byte, tagBits uint64) wire.Value {
	return MP(ck.CKM_AES_GCM, wire.GCMParams{IV: iv, IVBits: uint64(len(iv)) * 8, AAD: aad, TagBits: tagBits}.Param())
}

func ctrMech(bits uint64, cb []byte) wire.Value {
	p := wire.CTRParams{CounterBits: bits}
	copy(p.CB[:], cb)
	return MP(ck.CKM_AES_CTR, p.Param())
}

// crypt is C_EncryptInit then C_Encrypt (or the decryption), which must
// succeed.
func (cl *client) crypt(decrypt bool, h uint64, m wire.Value, key uint64, in []byte) []byte {
	cl.T.Helper()
	init, one := "C_EncryptInit", "C_Encrypt"
	if decrypt {
		init, one = "C_DecryptInit", "C_Decrypt"
	}
	cl.Must(ck.CKR_OK, init, U(h), m, U(key))
	return bytes.Clone(cl.Must(ck.CKR_OK, one, U(h), B(in), Out(uint64(len(in))+64))[2].Bytes)
}

// cryptParts is the same in parts of the given sizes (cycling), checking
// each part's output against what is expected of the mode.
func (cl *client) cryptParts(decrypt bool, h uint64, m wire.Value, key uint64, in []byte, sizes []int) []byte {
	cl.T.Helper()
	init, update, final := "C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal"
	if decrypt {
		init, update, final = "C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal"
	}
	cl.Must(ck.CKR_OK, init, U(h), m, U(key))
	var all []byte
	for i := 0; len(in) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(in))
		all = append(all, bytes.Clone(cl.Must(ck.CKR_OK, update, U(h), B(in[:n]), Out(uint64(n)+64))[2].Bytes)...)
		in = in[n:]
	}
	return append(all, bytes.Clone(cl.Must(ck.CKR_OK, final, U(h), Out(1<<20))[1].Bytes)...)
}

func TestSymMechanismInfo(t *testing.T) {
	t.Parallel()
	_, cl, slot, _ := symUser(t)
	list := cl.Must(ck.CKR_OK, "C_GetMechanismList", U(slot), Out(256))[1].Ulongs
	enc, wrap := uint64(ck.CKF_ENCRYPT|ck.CKF_DECRYPT), uint64(ck.CKF_WRAP|ck.CKF_UNWRAP)
	mac := uint64(ck.CKF_SIGN | ck.CKF_VERIFY | ck.CKF_MESSAGE_SIGN | ck.CKF_MESSAGE_VERIFY | ck.CKF_MULTI_MESSAGE)
	for _, c := range []struct {
		mech     uint64
		min, max uint64
		flags    uint64
	}{
		{mech: ck.CKM_AES_KEY_GEN, min: 16, max: 32, flags: ck.CKF_GENERATE},
		{mech: ck.CKM_GENERIC_SECRET_KEY_GEN, min: 8, max: 8 << 16, flags: ck.CKF_GENERATE},
		{mech: ck.CKM_AES_ECB, min: 16, max: 32, flags: enc},
		{mech: ck.CKM_AES_CBC, min: 16, max: 32, flags: enc},
		{mech: ck.CKM_AES_CBC_PAD, min: 16, max: 32, flags: enc | wrap},
		{mech: ck.CKM_AES_CTR, min: 16, max: 32, flags: enc},
		{mech: ck.CKM_AES_GCM, min: 16, max: 32, flags: enc | ck.CKF_MESSAGE_ENCRYPT | ck.CKF_MESSAGE_DECRYPT | ck.CKF_MULTI_MESSAGE},
		{mech: ck.CKM_AES_KEY_WRAP, min: 16, max: 32, flags: enc | wrap},
		{mech: ck.CKM_AES_KEY_WRAP_KWP, min: 16, max: 32, flags: enc | wrap},
		{mech: ck.CKM_AES_KEY_WRAP_PAD, min: 16, max: 32, flags: enc | wrap},
		{mech: ck.CKM_AES_CMAC, min: 16, max: 32, flags: mac},
		{mech: ck.CKM_SHA_1_HMAC, min: 8, max: 8 << 16, flags: mac},
		{mech: ck.CKM_SHA224_HMAC, min: 8, max: 8 << 16, flags: mac},
		{mech: ck.CKM_SHA256_HMAC, min: 8, max: 8 << 16, flags: mac},
		{mech: ck.CKM_SHA384_HMAC, min: 8, max: 8 << 16, flags: mac},
		{mech: ck.CKM_SHA512_HMAC, min: 8, max: 8 << 16, flags: mac},
		{mech: ck.CKM_HKDF_DERIVE, min: 8, max: 8 << 16, flags: ck.CKF_DERIVE},
	} {
		if !slices.Contains(list, c.mech) {
			t.Errorf("mechanism %#x not listed", c.mech)
			continue
		}
		info := cl.Must(ck.CKR_OK, "C_GetMechanismInfo", U(slot), U(c.mech), None())[2].Struct.(*wire.MechanismInfo)
		if *info != (wire.MechanismInfo{MinKeySize: c.min, MaxKeySize: c.max, Flags: c.flags}) {
			t.Errorf("mechanism %#x: info %+v", c.mech, info)
		}
	}
}

func TestSymKeyGeneration(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	gen := func(want uint64, m uint64, attrs ...wire.Attribute) uint64 {
		t.Helper()
		out := cl.Must(want, "C_GenerateKey", U(h), M(m), T(attrs...), None())
		if out == nil {
			return 0
		}
		return out[3].Ulong
	}
	k := gen(ck.CKR_OK, ck.CKM_AES_KEY_GEN, AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_SENSITIVE, true), AB(ck.CKA_EXTRACTABLE, false))
	rv, ans := cl.Get(h, k, ck.CKA_KEY_TYPE, ck.CKA_VALUE_LEN, ck.CKA_LOCAL, ck.CKA_KEY_GEN_MECHANISM,
		ck.CKA_ALWAYS_SENSITIVE, ck.CKA_NEVER_EXTRACTABLE, ck.CKA_CLASS)
	if rv != ck.CKR_OK {
		t.Fatalf("attributes: %#x", rv)
	}
	if ulongOf(ans[0].Value) != ck.CKK_AES || ulongOf(ans[1].Value) != 32 || ans[2].Value[0] != 1 ||
		ulongOf(ans[3].Value) != ck.CKM_AES_KEY_GEN || ans[4].Value[0] != 1 || ans[5].Value[0] != 1 ||
		ulongOf(ans[6].Value) != ck.CKO_SECRET_KEY {
		t.Fatalf("generated AES key: %+v", ans)
	}
	if rv, _ := cl.Get(h, k, ck.CKA_VALUE); rv != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("value of a sensitive key: %#x", rv)
	}
	// It works: a GCM round trip.
	iv := make([]byte, 12)
	ct := cl.crypt(false, h, gcmMech(iv, nil, 128), k, []byte("hello"))
	if got := cl.crypt(true, h, gcmMech(iv, nil, 128), k, ct); string(got) != "hello" {
		t.Fatalf("round trip: %q", got)
	}

	// Extractable and not sensitive: neither flag set; the value readable.
	for _, n := range []uint64{16, 24} {
		k = gen(ck.CKR_OK, ck.CKM_AES_KEY_GEN, AU(ck.CKA_VALUE_LEN, n), AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true))
		_, ans = cl.Get(h, k, ck.CKA_ALWAYS_SENSITIVE, ck.CKA_NEVER_EXTRACTABLE)
		if ans[0].Value[0] != 0 || ans[1].Value[0] != 0 || len(cl.value(h, k)) != int(n) {
			t.Fatalf("AES-%d: %+v", n*8, ans)
		}
	}
	g := gen(ck.CKR_OK, ck.CKM_GENERIC_SECRET_KEY_GEN, AU(ck.CKA_VALUE_LEN, 48))
	if v := cl.value(h, g); len(v) != 48 || bytes.Equal(v, make([]byte, 48)) {
		t.Fatalf("generic secret %x", v)
	}
	_, ans = cl.Get(h, g, ck.CKA_KEY_TYPE, ck.CKA_KEY_GEN_MECHANISM)
	if ulongOf(ans[0].Value) != ck.CKK_GENERIC_SECRET || ulongOf(ans[1].Value) != ck.CKM_GENERIC_SECRET_KEY_GEN {
		t.Fatalf("generic secret: %+v", ans)
	}

	for _, c := range []struct {
		name  string
		mech  uint64
		want  uint64
		attrs []wire.Attribute
	}{
		{name: "AES without a length", mech: ck.CKM_AES_KEY_GEN, want: ck.CKR_TEMPLATE_INCOMPLETE, attrs: nil},
		{name: "AES of 20 bytes", mech: ck.CKM_AES_KEY_GEN, want: ck.CKR_ATTRIBUTE_VALUE_INVALID, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 20)}},
		{name: "AES of no bytes", mech: ck.CKM_AES_KEY_GEN, want: ck.CKR_ATTRIBUTE_VALUE_INVALID, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 0)}},
		{name: "AES with a value", mech: ck.CKM_AES_KEY_GEN, want: ck.CKR_TEMPLATE_INCONSISTENT, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 16), A(ck.CKA_VALUE, make([]byte, 16))}},
		{name: "AES gen of a generic secret", mech: ck.CKM_AES_KEY_GEN, want: ck.CKR_TEMPLATE_INCONSISTENT, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 16), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET)}},
		{name: "generic without a length", mech: ck.CKM_GENERIC_SECRET_KEY_GEN, want: ck.CKR_TEMPLATE_INCOMPLETE, attrs: nil},
		{name: "generic of no bytes", mech: ck.CKM_GENERIC_SECRET_KEY_GEN, want: ck.CKR_ATTRIBUTE_VALUE_INVALID, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 0)}},
		{name: "generic too long", mech: ck.CKM_GENERIC_SECRET_KEY_GEN, want: ck.CKR_KEY_SIZE_RANGE, attrs: []wire.Attribute{AU(ck.CKA_VALUE_LEN, 1<<20)}},
	} {
		if rv, _ := cl.Call("C_GenerateKey", U(h), M(c.mech), T(c.attrs...), None()); rv != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, rv, c.want)
		}
	}
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_GenerateKey", U(h), mechIV(ck.CKM_AES_KEY_GEN, []byte{1}), T(AU(ck.CKA_VALUE_LEN, 16)), None())
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_GenerateKey", U(h), M(ck.CKM_AES_CBC), T(AU(ck.CKA_VALUE_LEN, 16)), None())
}

// NIST SP 800-38A, F.1.1, F.2.1, F.5.1: AES-128.
var (
	sp38aKey   = hx("2b7e151628aed2a6abf7158809cf4f3c")
	sp38aPlain = hx(`6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
		30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710`)
)

func TestAESKnownAnswers(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, sp38aKey)
	for _, c := range []struct {
		name string
		m    wire.Value
		ct   []byte
	}{
		{name: "ECB", m: M(ck.CKM_AES_ECB), ct: hx(`3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf
			43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4`)},
		{name: "CBC", m: mechIV(ck.CKM_AES_CBC, hx("000102030405060708090a0b0c0d0e0f")), ct: hx(`7649abac8119b246cee98e9b12e9197d
			5086cb9b507219ee95db113a917678b2 73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7`)},
		{name: "CTR", m: ctrMech(128, hx("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")), ct: hx(`874d6191b620e3261bef6864990db6ce
			9806f66b7970fdff8617187bb9fffdff 5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee`)},
		// CTR's counter is the low 64 bits here; the data does not wrap it.
		{name: "CTR 64-bit counter", m: ctrMech(64, hx("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")), ct: hx(`874d6191b620e3261bef6864990db6ce
			9806f66b7970fdff8617187bb9fffdff 5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee`)},
	} {
		if got := cl.crypt(false, h, c.m, k, sp38aPlain); !bytes.Equal(got, c.ct) {
			t.Errorf("%s encrypt: %x", c.name, got)
		}
		if got := cl.crypt(true, h, c.m, k, c.ct); !bytes.Equal(got, sp38aPlain) {
			t.Errorf("%s decrypt: %x", c.name, got)
		}
	}

	// GCM: McGrew and Viega's test case 4 (in NIST's GCM specification),
	// with the tag whole and cut to 96 bits.
	gk := cl.secret(h, ck.CKK_AES, hx("feffe9928665731c6d6a8f9467308308"))
	iv, aad := hx("cafebabefacedbaddecaf888"), hx("feedfacedeadbeeffeedfacedeadbeefabaddad2")
	plain := hx(`d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
		1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39`)
	ct := hx(`42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
		21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091`)
	tag := hx("5bc94fbc3221a5db94fae95ae7121a47")
	for _, bits := range []uint64{128, 96} {
		want := append(slices.Clip(ct), tag[:bits/8]...)
		if got := cl.crypt(false, h, gcmMech(iv, aad, bits), gk, plain); !bytes.Equal(got, want) {
			t.Errorf("GCM-%d encrypt: %x", bits, got)
		}
		if got := cl.crypt(true, h, gcmMech(iv, aad, bits), gk, want); !bytes.Equal(got, plain) {
			t.Errorf("GCM-%d decrypt: %x", bits, got)
		}
	}

	// A few Wycheproof vectors, among them IVs of 8 and 16 bytes.
	n := 0
	for _, g := range mechtest.Wycheproof(t, "aes_gcm_test.json").TestGroups {
		if g.TagSize < 96 {
			continue
		}
		for _, v := range g.Tests {
			if g.IVSize < 8 || v.TcID%13 != 0 {
				continue
			}
			n++
			k := cl.secret(h, ck.CKK_AES, v.Key)
			m := gcmMech(v.IV, v.AAD, uint64(g.TagSize))
			sealed := append(slices.Clip(v.CT), v.Tag...)
			rv, out := cl.Call("C_DecryptInit", U(h), m, U(k))
			if rv == ck.CKR_OK {
				rv, out = cl.Call("C_Decrypt", U(h), B(sealed), Out(uint64(len(sealed))))
			}
			switch {
			case v.Result == "invalid" && rv == ck.CKR_OK:
				t.Errorf("Wycheproof GCM %d: an invalid vector decrypts", v.TcID)
			case v.Result != "invalid" && (rv != ck.CKR_OK || !bytes.Equal(out[2].Bytes, v.Msg)):
				t.Errorf("Wycheproof GCM %d: %#x", v.TcID, rv)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d Wycheproof vectors through the engine", n)
	}
}

// cipherCase is one mode with an input length it accepts.
type cipherCase struct {
	name string
	m    wire.Value
	n    int // plaintext length
}

func cipherCases() []cipherCase {
	iv16 := hx("000102030405060708090a0b0c0d0e0f")
	return []cipherCase{
		{name: "ECB", m: M(ck.CKM_AES_ECB), n: 160},
		{name: "CBC", m: mechIV(ck.CKM_AES_CBC, iv16), n: 160},
		{name: "CBC_PAD", m: mechIV(ck.CKM_AES_CBC_PAD, iv16), n: 161},
		{name: "CBC_PAD whole blocks", m: mechIV(ck.CKM_AES_CBC_PAD, iv16), n: 160},
		{name: "CTR", m: ctrMech(32, iv16), n: 161},
		{name: "GCM", m: gcmMech(iv16[:12], []byte("aad"), 128), n: 161},
		{name: "GCM 8-byte IV, 104-bit tag", m: gcmMech(iv16[:8], []byte("aad"), 104), n: 161},
		{name: "KW", m: M(ck.CKM_AES_KEY_WRAP), n: 160},
		{name: "KWP", m: M(ck.CKM_AES_KEY_WRAP_KWP), n: 161},
	}
}

func TestCipherMultiPart(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, hx("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
	for _, c := range cipherCases() {
		plain := make([]byte, c.n)
		rand.Read(plain)
		ct := cl.crypt(false, h, c.m, k, plain)
		if got := cl.crypt(true, h, c.m, k, ct); !bytes.Equal(got, plain) {
			t.Errorf("%s: round trip differs", c.name)
		}
		for _, sizes := range [][]int{{1}, {15}, {17}, {33}, {1, 15, 17, 33}, {16}, {0, 7}} {
			if got := cl.cryptParts(false, h, c.m, k, plain, sizes); !bytes.Equal(got, ct) {
				t.Errorf("%s: encryption in parts %v differs", c.name, sizes)
			}
			if got := cl.cryptParts(true, h, c.m, k, ct, sizes); !bytes.Equal(got, plain) {
				t.Errorf("%s: decryption in parts %v differs", c.name, sizes)
			}
		}
	}

	// What each Update releases: whole blocks; CBC_PAD decryption holds the
	// last back; GCM decryption releases nothing before the tag is checked.
	iv := hx("000102030405060708090a0b0c0d0e0f")
	update := func(name string, in []byte) []byte {
		return bytes.Clone(cl.Must(ck.CKR_OK, name, U(h), B(in), Out(1024))[2].Bytes)
	}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), mechIV(ck.CKM_AES_CBC, iv), U(k))
	if a, b := update("C_EncryptUpdate", make([]byte, 15)), update("C_EncryptUpdate", make([]byte, 2)); len(a) != 0 || len(b) != 16 {
		t.Fatalf("CBC updates: %d then %d bytes", len(a), len(b))
	}
	cl.Must(ck.CKR_DATA_LEN_RANGE, "C_EncryptFinal", U(h), Out(64))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptFinal", U(h), Out(64))

	ct := cl.crypt(false, h, mechIV(ck.CKM_AES_CBC_PAD, iv), k, make([]byte, 32)) // and a block of padding
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), mechIV(ck.CKM_AES_CBC_PAD, iv), U(k))
	if a, b := update("C_DecryptUpdate", ct[:16]), update("C_DecryptUpdate", ct[16:]); len(a) != 0 || len(b) != 32 {
		t.Fatalf("CBC_PAD decrypt updates: %d then %d bytes", len(a), len(b))
	}
	// The block held back was all padding.
	if last := bytes.Clone(cl.Must(ck.CKR_OK, "C_DecryptFinal", U(h), Out(64))[1].Bytes); len(last) != 0 {
		t.Fatalf("CBC_PAD decrypt final: %d bytes", len(last))
	}

	gm := gcmMech(iv[:12], nil, 128)
	ct = cl.crypt(false, h, gm, k, make([]byte, 40))
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), gm, U(k))
	for _, part := range [][]byte{ct[:20], ct[20:50], ct[50:]} {
		if out := update("C_DecryptUpdate", part); len(out) != 0 {
			t.Fatalf("GCM decrypt update released %d bytes", len(out))
		}
	}
	if last := bytes.Clone(cl.Must(ck.CKR_OK, "C_DecryptFinal", U(h), Out(64))[1].Bytes); !bytes.Equal(last, make([]byte, 40)) {
		t.Fatalf("GCM decrypt final: %x", last)
	}
	// The single-part call after an Update is refused, and ends it.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gm, U(k))
	update("C_EncryptUpdate", []byte("x"))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_Encrypt", U(h), S("x"), Out(64))
}

func TestCipherSizeQuery(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{7}, 32))
	iv := bytes.Repeat([]byte{9}, 16)
	plain := []byte("thirty-three bytes of plain text!")
	for _, m := range []wire.Value{mechIV(ck.CKM_AES_CBC_PAD, iv), gcmMech(iv[:12], []byte("a"), 128)} {
		want := cl.crypt(false, h, m, k, plain)

		// C_Encrypt: NULL, too small, exact.
		cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), m, U(k))
		q := cl.Must(ck.CKR_OK, "C_Encrypt", U(h), B(plain), SizeQuery())
		if q[2].Length != uint64(len(want)) || q[2].Bytes != nil {
			t.Fatalf("size query: %+v, want %d", q[2], len(want))
		}
		cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Encrypt", U(h), B(plain), Out(q[2].Length-1))
		if got := bytes.Clone(cl.Must(ck.CKR_OK, "C_Encrypt", U(h), B(plain), Out(q[2].Length))[2].Bytes); !bytes.Equal(got, want) {
			t.Fatalf("C_Encrypt after the size query: %x", got)
		}
		cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Encrypt", U(h), B(plain), Out(64))

		// C_EncryptUpdate then C_EncryptFinal, each measured first.
		cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), m, U(k))
		q = cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(plain), SizeQuery())
		got := bytes.Clone(cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(plain), Out(q[2].Length))[2].Bytes)
		if uint64(len(got)) != q[2].Length {
			t.Fatalf("C_EncryptUpdate: %d bytes, measured %d", len(got), q[2].Length)
		}
		fq := cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), SizeQuery())
		if fq[1].Length > 0 {
			cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_EncryptFinal", U(h), Out(fq[1].Length-1))
		}
		got = append(got, bytes.Clone(cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(fq[1].Length))[1].Bytes)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("in parts after size queries: %x", got)
		}

		// C_Decrypt and C_DecryptFinal.
		cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), m, U(k))
		q = cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(want), SizeQuery())
		if q[2].Length != uint64(len(plain)) {
			t.Fatalf("decrypt size query: %d", q[2].Length)
		}
		cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Decrypt", U(h), B(want), Out(3))
		if got := bytes.Clone(cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(want), Out(q[2].Length))[2].Bytes); !bytes.Equal(got, plain) {
			t.Fatalf("C_Decrypt: %q", got)
		}
		cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), m, U(k))
		got = bytes.Clone(cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), B(want), Out(1024))[2].Bytes)
		fq = cl.Must(ck.CKR_OK, "C_DecryptFinal", U(h), SizeQuery())
		cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_DecryptFinal", U(h), Out(fq[1].Length-1))
		got = append(got, bytes.Clone(cl.Must(ck.CKR_OK, "C_DecryptFinal", U(h), Out(fq[1].Length))[1].Bytes)...)
		if !bytes.Equal(got, plain) {
			t.Fatalf("decryption in parts after size queries: %q", got)
		}
		cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DecryptFinal", U(h), Out(64))
	}
}

func TestGCMTamper(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{3}, 16))
	plain := []byte("attack at dawn, or maybe at ten")
	for _, iv := range [][]byte{bytes.Repeat([]byte{1}, 12), bytes.Repeat([]byte{1}, 16)} {
		for _, bits := range []uint64{128, 96} {
			aad := []byte("header")
			sealed := cl.crypt(false, h, gcmMech(iv, aad, bits), k, plain)
			flip := func(i int) []byte {
				b := slices.Clone(sealed)
				b[i] ^= 1
				return b
			}
			for _, c := range []struct {
				name  string
				in    []byte
				aad   []byte
				wantR uint64
			}{
				{name: "tag", in: flip(len(sealed) - 1), aad: aad, wantR: ck.CKR_ENCRYPTED_DATA_INVALID},
				{name: "ciphertext", in: flip(0), aad: aad, wantR: ck.CKR_ENCRYPTED_DATA_INVALID},
				{name: "AAD", in: sealed, aad: []byte("heades"), wantR: ck.CKR_ENCRYPTED_DATA_INVALID},
				{name: "no AAD", in: sealed, aad: nil, wantR: ck.CKR_ENCRYPTED_DATA_INVALID},
				{name: "shorter than the tag", in: sealed[:bits/8-1], aad: aad, wantR: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
			} {
				m := gcmMech(iv, c.aad, bits)
				cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), m, U(k))
				if rv, out := cl.Call("C_Decrypt", U(h), B(c.in), Out(1024)); rv != c.wantR || (out != nil && len(out[2].Bytes) > 0) {
					t.Errorf("IV %d, tag %d, %s: %#x", len(iv), bits, c.name, rv)
				}
				cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Decrypt", U(h), B(c.in), Out(1024))
				// In parts: nothing comes out, and Final fails.
				cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), m, U(k))
				if out := cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), B(c.in), Out(1024)); len(out[2].Bytes) != 0 {
					t.Errorf("%s: an update released plaintext", c.name)
				}
				if rv, out := cl.Call("C_DecryptFinal", U(h), Out(1024)); rv != c.wantR || (out != nil && len(out[1].Bytes) > 0) {
					t.Errorf("IV %d, tag %d, %s in parts: %#x", len(iv), bits, c.name, rv)
				}
			}
		}
	}

	// Parameters refused.
	for _, c := range []struct {
		name string
		m    wire.Value
	}{
		{name: "no parameter", m: M(ck.CKM_AES_GCM)},
		{name: "a 64-bit tag", m: gcmMech(make([]byte, 12), nil, 64)},
		{name: "a 100-bit tag", m: gcmMech(make([]byte, 12), nil, 100)},
		{name: "a 136-bit tag", m: gcmMech(make([]byte, 12), nil, 136)},
		{name: "no IV", m: gcmMech(nil, nil, 128)},
		{name: "a 257-byte IV", m: gcmMech(make([]byte, 257), nil, 128)},
	} {
		if rv, _ := cl.Call("C_EncryptInit", U(h), c.m, U(k)); rv != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%s: %#x", c.name, rv)
		}
	}
}

func TestBlockModeErrors(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{5}, 24))
	iv := make([]byte, 16)

	// Bad CBC_PAD padding: blocks made with plain CBC whose last byte is
	// no valid padding (0, 17, or 2 after a byte that is not 2).
	for _, last := range [][]byte{append(make([]byte, 15), 0), append(make([]byte, 15), 17), append(make([]byte, 14), 1, 2)} {
		ct := cl.crypt(false, h, mechIV(ck.CKM_AES_CBC, iv), k, append(make([]byte, 16), last...))
		cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), mechIV(ck.CKM_AES_CBC_PAD, iv), U(k))
		cl.Must(ck.CKR_ENCRYPTED_DATA_INVALID, "C_Decrypt", U(h), B(ct), Out(64))
	}
	// A whole block of padding (16 × 0x10) is valid, and yields nothing.
	ct := cl.crypt(false, h, mechIV(ck.CKM_AES_CBC, iv), k, bytes.Repeat([]byte{16}, 16))
	if got := cl.crypt(true, h, mechIV(ck.CKM_AES_CBC_PAD, iv), k, ct); len(got) != 0 {
		t.Fatalf("a padding block decrypts to %x", got)
	}

	for _, c := range []struct {
		name    string
		decrypt bool
		m       wire.Value
		in      []byte
		want    uint64
	}{
		{name: "ECB, partial block", decrypt: false, m: M(ck.CKM_AES_ECB), in: make([]byte, 17), want: ck.CKR_DATA_LEN_RANGE},
		{name: "ECB decrypt, partial block", decrypt: true, m: M(ck.CKM_AES_ECB), in: make([]byte, 15), want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{name: "CBC, partial block", decrypt: false, m: mechIV(ck.CKM_AES_CBC, iv), in: make([]byte, 31), want: ck.CKR_DATA_LEN_RANGE},
		{name: "CBC decrypt, partial block", decrypt: true, m: mechIV(ck.CKM_AES_CBC, iv), in: make([]byte, 33), want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{name: "CBC_PAD decrypt, partial block", decrypt: true, m: mechIV(ck.CKM_AES_CBC_PAD, iv), in: make([]byte, 31), want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{name: "CBC_PAD decrypt, nothing", decrypt: true, m: mechIV(ck.CKM_AES_CBC_PAD, iv), in: nil, want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{name: "KW, not semiblocks", decrypt: false, m: M(ck.CKM_AES_KEY_WRAP), in: make([]byte, 20), want: ck.CKR_DATA_LEN_RANGE},
		{name: "KW, one semiblock", decrypt: false, m: M(ck.CKM_AES_KEY_WRAP), in: make([]byte, 8), want: ck.CKR_DATA_LEN_RANGE},
		{name: "KW decrypt, bad", decrypt: true, m: M(ck.CKM_AES_KEY_WRAP), in: make([]byte, 24), want: ck.CKR_ENCRYPTED_DATA_INVALID},
		{name: "KWP, nothing", decrypt: false, m: M(ck.CKM_AES_KEY_WRAP_KWP), in: nil, want: ck.CKR_DATA_LEN_RANGE},
		{name: "KWP decrypt, bad", decrypt: true, m: M(ck.CKM_AES_KEY_WRAP_KWP), in: make([]byte, 16), want: ck.CKR_ENCRYPTED_DATA_INVALID},
		{name: "KWP decrypt, short", decrypt: true, m: M(ck.CKM_AES_KEY_WRAP_KWP), in: make([]byte, 8), want: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
	} {
		init, one := "C_EncryptInit", "C_Encrypt"
		if c.decrypt {
			init, one = "C_DecryptInit", "C_Decrypt"
		}
		cl.Must(ck.CKR_OK, init, U(h), c.m, U(k))
		if rv, _ := cl.Call(one, U(h), B(c.in), Out(1024)); rv != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, rv, c.want)
		}
	}

	for _, c := range []struct {
		name string
		m    wire.Value
	}{
		{name: "CBC without an IV", m: M(ck.CKM_AES_CBC)},
		{name: "CBC with an 8-byte IV", m: mechIV(ck.CKM_AES_CBC, make([]byte, 8))},
		{name: "CBC_PAD with a 17-byte IV", m: mechIV(ck.CKM_AES_CBC_PAD, make([]byte, 17))},
		{name: "ECB with a parameter", m: mechIV(ck.CKM_AES_ECB, make([]byte, 16))},
		{name: "CTR without parameter", m: M(ck.CKM_AES_CTR)},
		{name: "CTR counter of 0 bits", m: ctrMech(0, iv)},
		{name: "CTR counter of 129 bits", m: ctrMech(129, iv)},
		{name: "KW with a 16-byte IV", m: mechIV(ck.CKM_AES_KEY_WRAP, make([]byte, 16))},
		{name: "KWP with an 8-byte IV", m: mechIV(ck.CKM_AES_KEY_WRAP_KWP, make([]byte, 8))},
	} {
		if rv, _ := cl.Call("C_EncryptInit", U(h), c.m, U(k)); rv != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%s: %#x", c.name, rv)
		}
	}
}

func TestCTRCounterWrap(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	k := cl.secret(h, ck.CKK_AES, sp38aKey)
	// An 8-bit counter at 0xfe has two blocks left.
	cb := hx("f0f1f2f3f4f5f6f7f8f9fafbfcfdfefe")
	ct := cl.crypt(false, h, ctrMech(8, cb), k, make([]byte, 32))
	b, _ := aes.NewCipher(sp38aKey)
	want := make([]byte, 32)
	cipher.NewCTR(b, cb).XORKeyStream(want, want)
	if !bytes.Equal(ct, want) {
		t.Fatalf("CTR before the wrap: %x", ct)
	}
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), ctrMech(8, cb), U(k))
	cl.Must(ck.CKR_DATA_LEN_RANGE, "C_Encrypt", U(h), B(make([]byte, 33)), Out(64))
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), ctrMech(8, cb), U(k))
	cl.Must(ck.CKR_ENCRYPTED_DATA_LEN_RANGE, "C_Decrypt", U(h), B(make([]byte, 33)), Out(64))
	// In parts, the same limit counts across them.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), ctrMech(8, cb), U(k))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 17)), Out(64))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 15)), Out(64))
	cl.Must(ck.CKR_DATA_LEN_RANGE, "C_EncryptUpdate", U(h), B(make([]byte, 1)), Out(64))
	// A 128-bit counter at its last value has one block left.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), ctrMech(128, bytes.Repeat([]byte{0xff}, 16)), U(k))
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), B(make([]byte, 16)), Out(64))
	cl.Must(ck.CKR_DATA_LEN_RANGE, "C_EncryptUpdate", U(h), B(make([]byte, 1)), Out(64))
}

func TestSymKeyPolicy(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	iv := make([]byte, 16)
	generic := cl.secret(h, ck.CKK_GENERIC_SECRET, make([]byte, 32))
	noEncrypt := cl.secret(h, ck.CKK_AES, make([]byte, 32), AB(ck.CKA_ENCRYPT, false))
	noSign := cl.secret(h, ck.CKK_GENERIC_SECRET, make([]byte, 32), AB(ck.CKA_SIGN, false))
	onlyGCM := cl.secret(h, ck.CKK_AES, make([]byte, 32), A(ck.CKA_ALLOWED_MECHANISMS, keystore.Ulong(ck.CKM_AES_GCM)))
	ak := cl.secret(h, ck.CKK_AES, make([]byte, 16))

	cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_EncryptInit", U(h), mechIV(ck.CKM_AES_CBC, iv), U(generic))
	cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_AES_CMAC), U(generic))
	cl.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_EncryptInit", U(h), mechIV(ck.CKM_AES_CBC, iv), U(noEncrypt))
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), mechIV(ck.CKM_AES_CBC, iv), U(noEncrypt))
	cl.Must(ck.CKR_OK, "C_Decrypt", U(h), B(make([]byte, 16)), Out(16))
	cl.Must(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, "C_SignInit", U(h), M(ck.CKM_SHA256_HMAC), U(noSign))
	cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_SHA256_HMAC), U(noSign))
	cl.Must(ck.CKR_SIGNATURE_LEN_RANGE, "C_Verify", U(h), S("data"), S("sig"))
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_EncryptInit", U(h), mechIV(ck.CKM_AES_CBC, iv), U(onlyGCM))
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcmMech(iv[:12], nil, 128), U(onlyGCM))
	cl.Must(ck.CKR_OK, "C_Encrypt", U(h), S("data"), Out(64))
	// HMAC takes generic secrets and its own key type, not AES keys (nor
	// another HMAC's key type); a parameter is refused.
	cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_SHA384_HMAC), U(ak))
	cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_VerifyInit", U(h), M(ck.CKM_SHA256_HMAC), U(ak))
	hk := cl.secret(h, ck.CKK_SHA384_HMAC, bytes.Repeat([]byte{5}, 48))
	cl.Must(ck.CKR_KEY_TYPE_INCONSISTENT, "C_SignInit", U(h), M(ck.CKM_SHA256_HMAC), U(hk))
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_SHA384_HMAC), U(hk))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_SignInit", U(h), M(ck.CKM_SHA384_HMAC), U(hk))
	if mac := cl.Must(ck.CKR_OK, "C_Sign", U(h), S("data"), Out(64)); len(mac[2].Bytes) != 48 {
		t.Fatalf("HMAC-SHA384 with a CKK_SHA384_HMAC key: %d bytes", len(mac[2].Bytes))
	}
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_SHA384_HMAC), U(generic))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("data"), Out(64))
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_VerifyInit", U(h), wire.Value{Mechanism: &wire.Mechanism{
		Type: ck.CKM_SHA256_HMAC, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: []byte{32}}}}, U(generic))
	// Mechanisms that do not do what is asked.
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_SignInit", U(h), M(ck.CKM_AES_ECB), U(ak))
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_EncryptInit", U(h), M(ck.CKM_SHA256_HMAC), U(ak))
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_WrapKey", U(h), M(ck.CKM_AES_ECB), U(ak), U(ak), Out(64))
}

func TestMACKnownAnswers(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	sign := func(m uint64, k uint64, data []byte, parts int) []byte {
		t.Helper()
		cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(m), U(k))
		if parts == 0 {
			return bytes.Clone(cl.Must(ck.CKR_OK, "C_Sign", U(h), B(data), Out(64))[2].Bytes)
		}
		for len(data) > 0 {
			n := min(parts, len(data))
			cl.Must(ck.CKR_OK, "C_SignUpdate", U(h), B(data[:n]))
			data = data[n:]
		}
		return bytes.Clone(cl.Must(ck.CKR_OK, "C_SignFinal", U(h), Out(64))[1].Bytes)
	}
	verify := func(want uint64, m uint64, k uint64, data, sig []byte, parts bool) {
		t.Helper()
		cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(m), U(k))
		if !parts {
			cl.Must(want, "C_Verify", U(h), B(data), B(sig))
			return
		}
		cl.Must(ck.CKR_OK, "C_VerifyUpdate", U(h), B(data[:len(data)/2]))
		cl.Must(ck.CKR_OK, "C_VerifyUpdate", U(h), B(data[len(data)/2:]))
		cl.Must(want, "C_VerifyFinal", U(h), B(sig))
	}

	// RFC 4231 test cases 1, 2 and 6 (and RFC 2202's first for SHA-1).
	key1 := cl.secret(h, ck.CKK_GENERIC_SECRET, bytes.Repeat([]byte{0x0b}, 20))
	jefe := cl.secret(h, ck.CKK_GENERIC_SECRET, []byte("Jefe"))
	long := cl.secret(h, ck.CKK_GENERIC_SECRET, bytes.Repeat([]byte{0xaa}, 131))
	what := []byte("what do ya want for nothing?")
	largeKey := []byte("Test Using Larger Than Block-Size Key - Hash Key First")
	for _, c := range []struct {
		name string
		m    uint64
		k    uint64
		data []byte
		mac  []byte
	}{
		{name: "SHA-1 case 1", m: ck.CKM_SHA_1_HMAC, k: key1, data: []byte("Hi There"), mac: hx("b617318655057264e28bc0b6fb378c8ef146be00")},
		{name: "SHA-224 case 1", m: ck.CKM_SHA224_HMAC, k: key1, data: []byte("Hi There"), mac: hx("896fb1128abbdf196832107cd49df33f47b4b1169912ba4f53684b22")},
		{name: "SHA-256 case 1", m: ck.CKM_SHA256_HMAC, k: key1, data: []byte("Hi There"), mac: hx("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")},
		{name: "SHA-384 case 1", m: ck.CKM_SHA384_HMAC, k: key1, data: []byte("Hi There"), mac: hx(`afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
			faea9ea9076ede7f4af152e8b2fa9cb6`)},
		{name: "SHA-512 case 1", m: ck.CKM_SHA512_HMAC, k: key1, data: []byte("Hi There"), mac: hx(`87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
			daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854`)},
		{name: "SHA-256 case 2", m: ck.CKM_SHA256_HMAC, k: jefe, data: what, mac: hx("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")},
		{name: "SHA-512 case 2", m: ck.CKM_SHA512_HMAC, k: jefe, data: what, mac: hx(`164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
			9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737`)},
		{name: "SHA-256 case 6", m: ck.CKM_SHA256_HMAC, k: long, data: largeKey, mac: hx("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")},
	} {
		for _, parts := range []int{0, 1, 5} {
			if got := sign(c.m, c.k, c.data, parts); !bytes.Equal(got, c.mac) {
				t.Errorf("%s (parts %d): %x", c.name, parts, got)
			}
		}
		verify(ck.CKR_OK, c.m, c.k, c.data, c.mac, false)
		verify(ck.CKR_OK, c.m, c.k, c.data, c.mac, true)
		bad := slices.Clone(c.mac)
		bad[3] ^= 0x40
		verify(ck.CKR_SIGNATURE_INVALID, c.m, c.k, c.data, bad, false)
		verify(ck.CKR_SIGNATURE_INVALID, c.m, c.k, c.data, bad, true)
		verify(ck.CKR_SIGNATURE_LEN_RANGE, c.m, c.k, c.data, c.mac[:len(c.mac)-1], false)
		verify(ck.CKR_SIGNATURE_LEN_RANGE, c.m, c.k, c.data, append(slices.Clip(c.mac), 0), true)
	}

	// RFC 4493, section 4: AES-128 CMAC of 0, 16, 40 and 64 bytes.
	cmacKey := cl.secret(h, ck.CKK_AES, sp38aKey)
	for _, c := range []struct {
		n   int
		mac []byte
	}{
		{n: 0, mac: hx("bb1d6929e95937287fa37d129b756746")},
		{n: 16, mac: hx("070a16b46b4d4144f79bdd9dd04a287c")},
		{n: 40, mac: hx("dfa66747de9ae63030ca32611497c827")},
		{n: 64, mac: hx("51f0bebf7e3b9d92fc49741779363cfe")},
	} {
		for _, parts := range []int{0, 1, 15, 16, 17} {
			if got := sign(ck.CKM_AES_CMAC, cmacKey, sp38aPlain[:c.n], parts); !bytes.Equal(got, c.mac) {
				t.Errorf("CMAC of %d bytes (parts %d): %x", c.n, parts, got)
			}
		}
		verify(ck.CKR_OK, ck.CKM_AES_CMAC, cmacKey, sp38aPlain[:c.n], c.mac, false)
		verify(ck.CKR_SIGNATURE_INVALID, ck.CKM_AES_CMAC, cmacKey, sp38aPlain[:c.n], make([]byte, 16), true)
		verify(ck.CKR_SIGNATURE_LEN_RANGE, ck.CKM_AES_CMAC, cmacKey, sp38aPlain[:c.n], c.mac[:8], false)
	}

	// The size query on C_Sign keeps the operation and its MAC.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_SHA256_HMAC), U(jefe))
	if q := cl.Must(ck.CKR_OK, "C_Sign", U(h), B(what), SizeQuery()); q[2].Length != 32 {
		t.Fatalf("HMAC size query: %d", q[2].Length)
	}
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Sign", U(h), B(what), Out(31))
	if got := bytes.Clone(cl.Must(ck.CKR_OK, "C_Sign", U(h), B(what), Out(32))[2].Bytes); !bytes.Equal(got, hx("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")) {
		t.Fatalf("HMAC after the size query: %x", got)
	}
}
