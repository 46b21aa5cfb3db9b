package token

import (
	"bytes"
	"slices"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/mech/mechtest"
)

// Key wrapping and derivation through the engine's calls.

// unwrapped is the template of a key unwrapped or derived so the test can
// read its value.
func readable(kt uint64, extra ...wire.Attribute) []wire.Attribute {
	return secretTmpl(kt, nil, append([]wire.Attribute{AB(ck.CKA_SENSITIVE, false), AB(ck.CKA_EXTRACTABLE, true)}, extra...)...)
}

func (cl *client) wrapKey(want uint64, h uint64, m wire.Value, kek, k uint64) []byte {
	cl.T.Helper()
	out := cl.Must(want, "C_WrapKey", U(h), m, U(kek), U(k), Out(4096))
	if out == nil {
		return nil
	}
	return bytes.Clone(out[4].Bytes)
}

func (cl *client) unwrapKey(want uint64, h uint64, m wire.Value, kek uint64, wrapped []byte, tmpl ...wire.Attribute) uint64 {
	cl.T.Helper()
	out := cl.Must(want, "C_UnwrapKey", U(h), m, U(kek), B(wrapped), T(tmpl...), None())
	if out == nil {
		return 0
	}
	return out[5].Ulong
}

func TestKeyWrapKnownAnswers(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	kek128 := hx("000102030405060708090A0B0C0D0E0F")
	kek256 := hx("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	kek192 := hx("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for _, c := range []struct {
		name    string
		m       uint64
		kek     []byte
		kt      uint64
		key     []byte
		wrapped []byte
	}{
		// RFC 3394 sections 4.1, 4.3 and 4.6.
		{name: "KW 128 under 128", m: ck.CKM_AES_KEY_WRAP, kek: kek128, kt: ck.CKK_AES, key: hx("00112233445566778899AABBCCDDEEFF"),
			wrapped: hx("1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5")},
		{name: "KW 128 under 256", m: ck.CKM_AES_KEY_WRAP, kek: kek256, kt: ck.CKK_AES, key: hx("00112233445566778899AABBCCDDEEFF"),
			wrapped: hx("64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7")},
		{name: "KW 256 under 256", m: ck.CKM_AES_KEY_WRAP, kek: kek256, kt: ck.CKK_AES, key: hx("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F"),
			wrapped: hx("28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21")},
		// RFC 5649 section 6, under both names.
		{name: "KWP 20 bytes", m: ck.CKM_AES_KEY_WRAP_KWP, kek: kek192, kt: ck.CKK_GENERIC_SECRET, key: hx("c37b7e6492584340 bed1220780894115 5068f738"),
			wrapped: hx("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a")},
		{name: "KWP 7 bytes", m: ck.CKM_AES_KEY_WRAP_KWP, kek: kek192, kt: ck.CKK_GENERIC_SECRET, key: hx("466f7250617369"),
			wrapped: hx("afbeb0f07dfbf541 9200f2ccb50bb24f")},
		{name: "KW_PAD 20 bytes", m: ck.CKM_AES_KEY_WRAP_PAD, kek: kek192, kt: ck.CKK_GENERIC_SECRET, key: hx("c37b7e6492584340 bed1220780894115 5068f738"),
			wrapped: hx("138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a")},
	} {
		kek := cl.secret(h, ck.CKK_AES, c.kek)
		k := cl.secret(h, c.kt, c.key)
		if got := cl.wrapKey(ck.CKR_OK, h, M(c.m), kek, k); !bytes.Equal(got, c.wrapped) {
			t.Errorf("%s: wrapped %x", c.name, got)
		}
		u := cl.unwrapKey(ck.CKR_OK, h, M(c.m), kek, c.wrapped, readable(c.kt)...)
		if got := cl.value(h, u); !bytes.Equal(got, c.key) {
			t.Errorf("%s: unwrapped %x", c.name, got)
		}
		_, ans := cl.Get(h, u, ck.CKA_LOCAL, ck.CKA_ALWAYS_SENSITIVE, ck.CKA_NEVER_EXTRACTABLE)
		if ans[0].Value[0] != 0 || ans[1].Value[0] != 0 || ans[2].Value[0] != 0 {
			t.Errorf("%s: an unwrapped key says %+v", c.name, ans)
		}
		// The same as an encryption mechanism.
		if got := cl.crypt(false, h, M(c.m), kek, c.key); !bytes.Equal(got, c.wrapped) {
			t.Errorf("%s: encrypted %x", c.name, got)
		}
		if got := cl.crypt(true, h, M(c.m), kek, c.wrapped); !bytes.Equal(got, c.key) {
			t.Errorf("%s: decrypted %x", c.name, got)
		}
		// Tampered with, cut, or under another IV: refused.
		bad := slices.Clone(c.wrapped)
		bad[len(bad)-1] ^= 1
		cl.unwrapKey(ck.CKR_WRAPPED_KEY_INVALID, h, M(c.m), kek, bad, readable(c.kt)...)
		cl.unwrapKey(ck.CKR_WRAPPED_KEY_LEN_RANGE, h, M(c.m), kek, c.wrapped[:len(c.wrapped)-1], readable(c.kt)...)
		cl.unwrapKey(ck.CKR_WRAPPED_KEY_LEN_RANGE, h, M(c.m), kek, c.wrapped[:8], readable(c.kt)...)
		iv := []byte{1, 2, 3, 4, 5, 6, 7, 8}
		if c.m != ck.CKM_AES_KEY_WRAP {
			iv = iv[:4]
		}
		other := cl.wrapKey(ck.CKR_OK, h, mechIV(c.m, iv), kek, k)
		if bytes.Equal(other, c.wrapped) {
			t.Errorf("%s: the IV parameter changes nothing", c.name)
		}
		cl.unwrapKey(ck.CKR_WRAPPED_KEY_INVALID, h, M(c.m), kek, other, readable(c.kt)...)
		u = cl.unwrapKey(ck.CKR_OK, h, mechIV(c.m, iv), kek, other, readable(c.kt)...)
		if got := cl.value(h, u); !bytes.Equal(got, c.key) {
			t.Errorf("%s: unwrapped with an IV %x", c.name, got)
		}
	}

	// KW does not wrap a key that is not whole semiblocks.
	kek := cl.secret(h, ck.CKK_AES, kek128)
	odd := cl.secret(h, ck.CKK_GENERIC_SECRET, make([]byte, 20))
	cl.wrapKey(ck.CKR_KEY_SIZE_RANGE, h, M(ck.CKM_AES_KEY_WRAP), kek, odd)

	// The size query on C_WrapKey.
	aes256 := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{0x42}, 32))
	q := cl.Must(ck.CKR_OK, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), U(aes256), SizeQuery())
	if q[4].Length != 40 {
		t.Fatalf("KWP size query: %d", q[4].Length)
	}
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_WrapKey", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(kek), U(aes256), Out(39))

	// A few Wycheproof KWP vectors as encryption.
	n := 0
	for _, g := range mechtest.Wycheproof(t, "aes_kwp_test.json").TestGroups {
		for _, v := range g.Tests {
			if v.TcID%17 != 0 {
				continue
			}
			n++
			k := cl.secret(h, ck.CKK_AES, v.Key)
			cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), M(ck.CKM_AES_KEY_WRAP_KWP), U(k))
			rv, out := cl.Call("C_Decrypt", U(h), B(v.CT), Out(uint64(len(v.CT))))
			switch {
			case v.Result == "invalid" && rv == ck.CKR_OK:
				t.Errorf("Wycheproof KWP %d: an invalid vector unwraps", v.TcID)
			case v.Result != "invalid" && (rv != ck.CKR_OK || !bytes.Equal(out[2].Bytes, v.Msg)):
				t.Errorf("Wycheproof KWP %d: %#x", v.TcID, rv)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d Wycheproof vectors through the engine", n)
	}
}

func TestCBCPadWrap(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	kek := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{0x10}, 16))
	value := bytes.Repeat([]byte{0x5a}, 32)
	k := cl.secret(h, ck.CKK_AES, value)
	iv := bytes.Repeat([]byte{0x77}, 16)
	m := mechIV(ck.CKM_AES_CBC_PAD, iv)
	wrapped := cl.wrapKey(ck.CKR_OK, h, m, kek, k)
	if want := cl.crypt(false, h, m, kek, value); !bytes.Equal(wrapped, want) || len(wrapped) != 48 {
		t.Fatalf("CBC_PAD wrap %x, encryption %x", wrapped, want)
	}
	u := cl.unwrapKey(ck.CKR_OK, h, m, kek, wrapped, readable(ck.CKK_AES)...)
	if got := cl.value(h, u); !bytes.Equal(got, value) {
		t.Fatalf("CBC_PAD unwrap %x", got)
	}
	// Flipping the low bit of the second block's last byte turns the
	// padding's last byte from 0x10 into 0x11: bad padding.
	bad := slices.Clone(wrapped)
	bad[31] ^= 1
	cl.unwrapKey(ck.CKR_WRAPPED_KEY_INVALID, h, m, kek, bad, readable(ck.CKK_AES)...)
	cl.unwrapKey(ck.CKR_WRAPPED_KEY_LEN_RANGE, h, m, kek, wrapped[:40], readable(ck.CKK_AES)...)
	cl.wrapKey(ck.CKR_MECHANISM_PARAM_INVALID, h, M(ck.CKM_AES_CBC_PAD), kek, k)
	// Unwrapped with a length the template contradicts.
	cl.unwrapKey(ck.CKR_WRAPPED_KEY_INVALID, h, m, kek, wrapped, readable(ck.CKK_GENERIC_SECRET, AU(ck.CKA_VALUE_LEN, 16))...)
}

func TestWrapPolicy(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("wrap policy")

	// The SO makes a trusted wrapping key (public, so the user sees it).
	so := d.dial(t)
	sh := so.Open(slot, true)
	so.Must(ck.CKR_OK, "C_Login", U(sh), U(ck.CKU_SO), S(SOPIN))
	so.Create(sh, secretTmpl(ck.CKK_AES, bytes.Repeat([]byte{1}, 32),
		AB(ck.CKA_TOKEN, true), AB(ck.CKA_PRIVATE, false), AB(ck.CKA_TRUSTED, true), A(ck.CKA_LABEL, []byte("trusted kek")))...)
	so.Must(ck.CKR_OK, "C_Logout", U(sh))

	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	found := cl.Find(h, A(ck.CKA_LABEL, []byte("trusted kek")))
	if len(found) != 1 {
		t.Fatalf("trusted key: %v", found)
	}
	trusted := found[0]
	kek := cl.secret(h, ck.CKK_AES, bytes.Repeat([]byte{2}, 32))
	kw := M(ck.CKM_AES_KEY_WRAP_KWP)

	unextractable := cl.secret(h, ck.CKK_AES, make([]byte, 16), AB(ck.CKA_EXTRACTABLE, false))
	cl.wrapKey(ck.CKR_KEY_UNEXTRACTABLE, h, kw, kek, unextractable)
	withTrusted := cl.secret(h, ck.CKK_AES, make([]byte, 16), AB(ck.CKA_WRAP_WITH_TRUSTED, true))
	cl.wrapKey(ck.CKR_KEY_NOT_WRAPPABLE, h, kw, kek, withTrusted)
	wrapped := cl.wrapKey(ck.CKR_OK, h, kw, trusted, withTrusted)
	u := cl.unwrapKey(ck.CKR_OK, h, kw, trusted, wrapped, readable(ck.CKK_AES)...)
	if got := cl.value(h, u); !bytes.Equal(got, make([]byte, 16)) {
		t.Fatalf("unwrapped %x", got)
	}

	plain := cl.secret(h, ck.CKK_AES, make([]byte, 16))
	noWrap := cl.secret(h, ck.CKK_AES, make([]byte, 32), AB(ck.CKA_WRAP, false), AB(ck.CKA_UNWRAP, false))
	generic := cl.secret(h, ck.CKK_GENERIC_SECRET, make([]byte, 32))
	cl.wrapKey(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, h, kw, noWrap, plain)
	cl.wrapKey(ck.CKR_WRAPPING_KEY_TYPE_INCONSISTENT, h, kw, generic, plain)
	cl.unwrapKey(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, h, kw, noWrap, wrapped, readable(ck.CKK_AES)...)
	cl.unwrapKey(ck.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT, h, kw, generic, wrapped, readable(ck.CKK_AES)...)
	cl.wrapKey(ck.CKR_MECHANISM_INVALID, h, M(ck.CKM_AES_GCM), kek, plain)
}

// RFC 5869 appendix A.1, A.3 and A.4.
var (
	rfc5869IKM1  = bytes.Repeat([]byte{0x0b}, 22)
	rfc5869Salt1 = hx("000102030405060708090a0b0c")
	rfc5869Info1 = hx("f0f1f2f3f4f5f6f7f8f9")
	rfc5869PRK1  = hx("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
	rfc5869OKM1  = hx("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
)

func hkdfMech(p wire.HKDFParams) wire.Value { return MP(ck.CKM_HKDF_DERIVE, p.Param()) }

func TestHKDFKnownAnswers(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	derive := func(want uint64, m wire.Value, base uint64, tmpl ...wire.Attribute) uint64 {
		t.Helper()
		out := cl.Must(want, "C_DeriveKey", U(h), m, U(base), T(tmpl...), None())
		if out == nil {
			return 0
		}
		return out[4].Ulong
	}
	canDerive := AB(ck.CKA_DERIVE, true)
	base1 := cl.secret(h, ck.CKK_GENERIC_SECRET, rfc5869IKM1, canDerive)
	for _, c := range []struct {
		name string
		ikm  []byte
		p    wire.HKDFParams
		n    uint64
		want []byte
	}{
		{name: "A.1", ikm: rfc5869IKM1, p: wire.HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256,
			SaltType: ck.CKF_HKDF_SALT_DATA, Salt: rfc5869Salt1, Info: rfc5869Info1}, n: 42, want: rfc5869OKM1},
		{name: "A.1 extract", ikm: rfc5869IKM1, p: wire.HKDFParams{Extract: true, PRFHashMechanism: ck.CKM_SHA256,
			SaltType: ck.CKF_HKDF_SALT_DATA, Salt: rfc5869Salt1}, n: 0, want: rfc5869PRK1},
		{name: "A.1 extract, length given", ikm: rfc5869IKM1, p: wire.HKDFParams{Extract: true, PRFHashMechanism: ck.CKM_SHA256,
			SaltType: ck.CKF_HKDF_SALT_DATA, Salt: rfc5869Salt1}, n: 32, want: rfc5869PRK1},
		{name: "A.1 expand", ikm: rfc5869PRK1, p: wire.HKDFParams{Expand: true, PRFHashMechanism: ck.CKM_SHA256, Info: rfc5869Info1}, n: 42, want: rfc5869OKM1},
		{name: "A.3", ikm: rfc5869IKM1, p: wire.HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256,
			SaltType: ck.CKF_HKDF_SALT_NULL}, n: 42,
			want: hx("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")},
		{name: "A.4", ikm: bytes.Repeat([]byte{0x0b}, 11), p: wire.HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA_1,
			SaltType: ck.CKF_HKDF_SALT_DATA, Salt: rfc5869Salt1, Info: rfc5869Info1}, n: 42,
			want: hx("085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896")},
	} {
		base := cl.secret(h, ck.CKK_GENERIC_SECRET, c.ikm, canDerive)
		tmpl := readable(ck.CKK_GENERIC_SECRET)
		if c.n != 0 {
			tmpl = append(tmpl, AU(ck.CKA_VALUE_LEN, c.n))
		}
		k := derive(ck.CKR_OK, hkdfMech(c.p), base, tmpl...)
		if got := cl.value(h, k); !bytes.Equal(got, c.want) {
			t.Errorf("%s: %x", c.name, got)
		}
	}

	// An AES key derived: its length is the template's; it encrypts.
	full := wire.HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256, SaltType: ck.CKF_HKDF_SALT_DATA, Salt: rfc5869Salt1, Info: rfc5869Info1}
	ak := derive(ck.CKR_OK, hkdfMech(full), base1, readable(ck.CKK_AES, AU(ck.CKA_VALUE_LEN, 32))...)
	if got := cl.value(h, ak); !bytes.Equal(got, rfc5869OKM1[:32]) {
		t.Fatalf("derived AES key %x", got)
	}
	cl.crypt(false, h, M(ck.CKM_AES_ECB), ak, make([]byte, 16))
	derive(ck.CKR_TEMPLATE_INCOMPLETE, hkdfMech(full), base1, readable(ck.CKK_AES)...)
	derive(ck.CKR_ATTRIBUTE_VALUE_INVALID, hkdfMech(full), base1, readable(ck.CKK_AES, AU(ck.CKA_VALUE_LEN, 20))...)

	with := func(f func(p *wire.HKDFParams)) wire.Value {
		p := full
		f(&p)
		return hkdfMech(p)
	}
	gen42 := readable(ck.CKK_GENERIC_SECRET, AU(ck.CKA_VALUE_LEN, 42))
	for _, c := range []struct {
		name string
		m    wire.Value
		tmpl []wire.Attribute
		want uint64
	}{
		{name: "no parameter", m: M(ck.CKM_HKDF_DERIVE), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "neither extract nor expand", m: with(func(p *wire.HKDFParams) { p.Extract, p.Expand = false, false }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "MD5", m: with(func(p *wire.HKDFParams) { p.PRFHashMechanism = ck.CKM_MD5 }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "an HMAC for a hash", m: with(func(p *wire.HKDFParams) { p.PRFHashMechanism = ck.CKM_SHA256_HMAC }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "a salt key", m: with(func(p *wire.HKDFParams) { p.SaltType, p.Salt, p.SaltKey = ck.CKF_HKDF_SALT_KEY, nil, base1 }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "salt data missing", m: with(func(p *wire.HKDFParams) { p.Salt = nil }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "a null salt given", m: with(func(p *wire.HKDFParams) { p.SaltType = ck.CKF_HKDF_SALT_NULL }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "an unknown salt type", m: with(func(p *wire.HKDFParams) { p.SaltType = 8 }), tmpl: gen42, want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "expand without a length", m: hkdfMech(full), tmpl: readable(ck.CKK_GENERIC_SECRET), want: ck.CKR_TEMPLATE_INCOMPLETE},
		{name: "expand too long", m: hkdfMech(full), tmpl: readable(ck.CKK_GENERIC_SECRET, AU(ck.CKA_VALUE_LEN, 255*32+1)), want: ck.CKR_KEY_SIZE_RANGE},
		{name: "extract to another length", m: with(func(p *wire.HKDFParams) { p.Expand = false }), tmpl: readable(ck.CKK_GENERIC_SECRET, AU(ck.CKA_VALUE_LEN, 16)), want: ck.CKR_TEMPLATE_INCONSISTENT},
	} {
		if rv, _ := cl.Call("C_DeriveKey", U(h), c.m, U(base1), T(c.tmpl...), None()); rv != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, rv, c.want)
		}
	}
	// Expanding to the most allowed works.
	derive(ck.CKR_OK, hkdfMech(full), base1, readable(ck.CKK_GENERIC_SECRET, AU(ck.CKA_VALUE_LEN, 255*32))...)

	noDerive := cl.secret(h, ck.CKK_GENERIC_SECRET, rfc5869IKM1)
	aesBase := cl.secret(h, ck.CKK_AES, make([]byte, 16), canDerive)
	derive(ck.CKR_KEY_FUNCTION_NOT_PERMITTED, hkdfMech(full), noDerive, gen42...)
	derive(ck.CKR_KEY_TYPE_INCONSISTENT, hkdfMech(full), aesBase, gen42...)
}
