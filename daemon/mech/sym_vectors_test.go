package mech

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// Wycheproof against the secret-key mechanisms in process, through the
// mechanism table (the same constructors the engine calls), and the
// benchmarks of those mechanisms beside the bare standard library.

// runCipher runs a cipher operation single-part (One if it has it) or in
// parts of the given size.
func runCipher(op CipherOp, in []byte, part int) ([]byte, error) {
	if part == 0 {
		if one, ok := op.(OneShot); ok {
			return one.One(in)
		}
		part = len(in) + 1
	}
	var out []byte
	for len(in) > 0 {
		n := min(part, len(in))
		o, err := op.Update(in[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, o...)
		in = in[n:]
	}
	o, err := op.Final()
	return append(out, o...), err
}

func TestWycheproofAESGCM(t *testing.T) {
	t.Parallel()
	entry := mechanisms[ck.CKM_AES_GCM]
	ran := 0
	for _, g := range mechtest.Wycheproof(t, "aes_gcm_test.json").TestGroups {
		for _, v := range g.Tests {
			k := testSecret(t, ck.CKK_AES, v.Key)
			m := &wire.Mechanism{Type: ck.CKM_AES_GCM, Present: true,
				Param: wire.GCMParams{IV: v.IV, IVBits: uint64(len(v.IV)) * 8, AAD: v.AAD, TagBits: uint64(g.TagSize)}.Param()}
			enc, err := entry.encrypt(k, m)
			if g.TagSize < gcmMinTagBits || len(v.IV) == 0 || len(v.IV) > gcmMaxIV {
				// Refused by design: short tags, empty or long IVs.
				if codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
					t.Errorf("%d: tag %d, IV %d bytes: %v", v.TcID, g.TagSize, len(v.IV), err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%d: %v", v.TcID, err)
				continue
			}
			ran++
			sealed := append(append([]byte(nil), v.CT...), v.Tag...)
			if v.Result == "valid" {
				if got, err := runCipher(enc, v.Msg, 0); err != nil || !bytes.Equal(got, sealed) {
					t.Errorf("%d: encrypt %x, %v", v.TcID, got, err)
				}
			}
			for _, part := range []int{0, 7} {
				dec, _ := entry.decrypt(k, m)
				got, err := runCipher(dec, sealed, part)
				switch {
				case v.Result == "invalid" && err == nil:
					t.Errorf("%d (parts %d): an invalid vector decrypts", v.TcID, part)
				case v.Result == "invalid" && codeOf(err) != ck.CKR_ENCRYPTED_DATA_INVALID:
					t.Errorf("%d (parts %d): %v", v.TcID, part, err)
				case v.Result != "invalid" && (err != nil || !bytes.Equal(got, v.Msg)):
					t.Errorf("%d (parts %d): decrypt %x, %v", v.TcID, part, got, err)
				}
			}
		}
	}
	if ran < 150 {
		t.Fatalf("ran only %d vectors", ran)
	}
}

// TestWycheproofKeyWrap runs AES-KW and AES-KWP, as wrapping and as
// encryption mechanisms.
func TestWycheproofKeyWrap(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		file string
		mech uint64
	}{
		{file: "aes_wrap_test.json", mech: ck.CKM_AES_KEY_WRAP},
		{file: "aes_kwp_test.json", mech: ck.CKM_AES_KEY_WRAP_KWP},
		{file: "aes_kwp_test.json", mech: ck.CKM_AES_KEY_WRAP_PAD},
	} {
		entry := mechanisms[c.mech]
		m := &wire.Mechanism{Type: c.mech}
		ran := 0
		for _, g := range mechtest.Wycheproof(t, c.file).TestGroups {
			for _, v := range g.Tests {
				k := testSecret(t, ck.CKK_AES, v.Key)
				if len(v.Key) != 16 && len(v.Key) != 24 && len(v.Key) != 32 {
					if _, err := entry.unwrap(k, m, v.CT); codeOf(err) != ck.CKR_KEY_SIZE_RANGE {
						t.Errorf("%s %d: a %d-byte key: %v", c.file, v.TcID, len(v.Key), err)
					}
					continue
				}
				ran++
				wrapped, werr := entry.wrap(k, m, v.Msg)
				plain, uerr := entry.unwrap(k, m, v.CT)
				dec, _ := entry.decrypt(k, m)
				dplain, derr := runCipher(dec, v.CT, 5)
				switch v.Result {
				case "valid":
					if werr != nil || !bytes.Equal(wrapped, v.CT) {
						t.Errorf("%s %d: wrap %x, %v", c.file, v.TcID, wrapped, werr)
					}
					if uerr != nil || !bytes.Equal(plain, v.Msg) || derr != nil || !bytes.Equal(dplain, v.Msg) {
						t.Errorf("%s %d: unwrap %x, %v; decrypt %v", c.file, v.TcID, plain, uerr, derr)
					}
				case "invalid":
					if uerr == nil || derr == nil {
						t.Errorf("%s %d: an invalid vector unwraps", c.file, v.TcID)
					}
					if code := codeOf(uerr); code != ck.CKR_WRAPPED_KEY_INVALID && code != ck.CKR_WRAPPED_KEY_LEN_RANGE {
						t.Errorf("%s %d: %v", c.file, v.TcID, uerr)
					}
				default: // acceptable: either way, but right if accepted
					if uerr == nil && !bytes.Equal(plain, v.Msg) {
						t.Errorf("%s %d: unwrap %x", c.file, v.TcID, plain)
					}
				}
			}
		}
		if ran < 100 {
			t.Fatalf("%s: ran only %d vectors", c.file, ran)
		}
	}
}

// TestWycheproofMACs runs AES-CMAC and HMAC over SHA-1, SHA-2 and
// SHA-3, with generic secret keys and with the HMACs' own key types
// (the HMACs' strictness about key types is TestHMACKeyTypes). Vectors with a
// truncated tag check the MAC's first bytes (the mechanisms make whole
// MACs, the _GENERAL variants not being offered).
func TestWycheproofMACs(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		file string
		mech uint64
		kt   uint64
	}{
		{file: "aes_cmac_test.json", mech: ck.CKM_AES_CMAC, kt: ck.CKK_AES},
		{file: "hmac_sha256_test.json", mech: ck.CKM_SHA256_HMAC, kt: ck.CKK_GENERIC_SECRET},
		{file: "hmac_sha1_test.json", mech: ck.CKM_SHA_1_HMAC, kt: ck.CKK_SHA_1_HMAC},
		{file: "hmac_sha224_test.json", mech: ck.CKM_SHA224_HMAC, kt: ck.CKK_SHA224_HMAC},
		{file: "hmac_sha384_test.json", mech: ck.CKM_SHA384_HMAC, kt: ck.CKK_GENERIC_SECRET},
		{file: "hmac_sha512_test.json", mech: ck.CKM_SHA512_HMAC, kt: ck.CKK_SHA512_HMAC},
		{file: "hmac_sha512_224_test.json", mech: ck.CKM_SHA512_224_HMAC, kt: ck.CKK_SHA512_224_HMAC},
		{file: "hmac_sha512_256_test.json", mech: ck.CKM_SHA512_256_HMAC, kt: ck.CKK_GENERIC_SECRET},
		{file: "hmac_sha3_224_test.json", mech: ck.CKM_SHA3_224_HMAC, kt: ck.CKK_SHA3_224_HMAC},
		{file: "hmac_sha3_256_test.json", mech: ck.CKM_SHA3_256_HMAC, kt: ck.CKK_GENERIC_SECRET},
		{file: "hmac_sha3_384_test.json", mech: ck.CKM_SHA3_384_HMAC, kt: ck.CKK_SHA3_384_HMAC},
		{file: "hmac_sha3_512_test.json", mech: ck.CKM_SHA3_512_HMAC, kt: ck.CKK_SHA3_512_HMAC},
	} {
		if !mechanisms[c.mech].Takes(c.kt) {
			t.Fatalf("%#x does not take key type %#x", c.mech, c.kt)
		}
		entry := mechanisms[c.mech]
		m := &wire.Mechanism{Type: c.mech}
		ran := 0
		for _, g := range mechtest.Wycheproof(t, c.file).TestGroups {
			for _, v := range g.Tests {
				k := testSecret(t, c.kt, v.Key)
				s, err := entry.sign(k, m)
				if err != nil {
					if v.Result == "valid" && len(v.Key) > 0 {
						t.Errorf("%s %d: %v", c.file, v.TcID, err)
					}
					continue
				}
				ran++
				for i := range v.Msg {
					s.Update(v.Msg[i : i+1])
				}
				mac, _ := s.Sign()
				same := bytes.Equal(mac[:len(v.Tag)], v.Tag)
				if same != (v.Result == "valid") {
					t.Errorf("%s %d (%s): MAC %x", c.file, v.TcID, v.Result, mac)
				}
				if len(v.Tag) == len(mac) {
					ver, _ := entry.verify(k, m)
					ver.Update(v.Msg)
					if err := ver.Verify(v.Tag); (err == nil) != (v.Result == "valid") {
						t.Errorf("%s %d (%s): verify %v", c.file, v.TcID, v.Result, err)
					}
				}
			}
		}
		if ran < 100 {
			t.Fatalf("%s: ran only %d vectors", c.file, ran)
		}
	}
}

func TestWycheproofHKDF(t *testing.T) {
	t.Parallel()
	ran := 0
	for _, g := range mechtest.Wycheproof(t, "hkdf_sha256_test.json").TestGroups {
		for _, v := range g.Tests {
			if len(v.IKM) == 0 {
				continue // a generic secret key is never empty
			}
			p := wire.HKDFParams{Extract: true, Expand: true, PRFHashMechanism: ck.CKM_SHA256,
				SaltType: ck.CKF_HKDF_SALT_NULL, Info: v.Info}
			if len(v.Salt) > 0 {
				p.SaltType, p.Salt = ck.CKF_HKDF_SALT_DATA, v.Salt
			}
			m := &wire.Mechanism{Type: ck.CKM_HKDF_DERIVE, Present: true, Param: p.Param()}
			got, err := deriveHKDF(testSecret(t, ck.CKK_GENERIC_SECRET, v.IKM), m, v.Size)
			ran++
			switch {
			case v.Result == "invalid" && err == nil:
				t.Errorf("%d: an invalid vector derives", v.TcID)
			case v.Result != "invalid" && (err != nil || !bytes.Equal(got, v.OKM)):
				t.Errorf("%d: %x, %v", v.TcID, got, err)
			}
		}
	}
	if ran < 50 {
		t.Fatalf("ran only %d vectors", ran)
	}
}

// TestCMACSubkeys checks RFC 4493's subkeys (section 4, subkey
// generation), which the known answers exercise only through the MAC.
func TestCMACSubkeys(t *testing.T) {
	t.Parallel()
	b, _ := aes.NewCipher(mechtest.Hex("2b7e151628aed2a6abf7158809cf4f3c")) // SP 800-38A's key
	c := newCMAC(b)
	if !bytes.Equal(c.k1[:], mechtest.Hex("fbeed618357133667c85e08f7236a8de")) || !bytes.Equal(c.k2[:], mechtest.Hex("f7ddac306ae266ccf90bc11ee46d513b")) {
		t.Fatalf("K1 %x, K2 %x", c.k1, c.k2)
	}
	// Reset starts over.
	c.Write([]byte("something"))
	c.Reset()
	if got := c.Sum(nil); !bytes.Equal(got, mechtest.Hex("bb1d6929e95937287fa37d129b756746")) {
		t.Fatalf("after Reset: %x", got)
	}
}

// Benchmarks. Each "mech" case is what one engine operation costs the
// mechanism: its constructor (key schedule included, as every C_*Init
// builds one) and the computation; the other cases are the bare standard
// library doing the same, with and without its setup.

func BenchmarkMechGCMEncrypt1K(b *testing.B) {
	value := bytes.Repeat([]byte{1}, 32)
	k := testSecret(b, ck.CKK_AES, value)
	iv := make([]byte, 12)
	m := &wire.Mechanism{Type: ck.CKM_AES_GCM, Present: true, Param: wire.GCMParams{IV: iv, IVBits: 96, TagBits: 128}.Param()}
	data := make([]byte, 1024)
	entry := mechanisms[ck.CKM_AES_GCM]
	b.Run("mech", func(b *testing.B) {
		b.SetBytes(1024)
		b.ReportAllocs()
		for b.Loop() {
			op, err := entry.encrypt(k, m)
			if err != nil {
				b.Fatal(err)
			}
			op.(OneShot).One(data)
		}
	})
	b.Run("bare-with-setup", func(b *testing.B) {
		b.SetBytes(1024)
		b.ReportAllocs()
		for b.Loop() {
			blk, _ := aes.NewCipher(value)
			aead, _ := cipher.NewGCM(blk)
			aead.Seal(nil, iv, data, nil)
		}
	})
	b.Run("bare-seal", func(b *testing.B) {
		blk, _ := aes.NewCipher(value)
		aead, _ := cipher.NewGCM(blk)
		b.SetBytes(1024)
		b.ReportAllocs()
		for b.Loop() {
			aead.Seal(nil, iv, data, nil)
		}
	})
}

// The KWP benchmarks wrap and unwrap an AES-256 key (four semiblocks: W
// makes 6 × 4 = 24 AES block operations). There is no library beside the
// implementation here to compare with, so "impl" is the implementation
// with its cipher made beforehand, and "aes-24-blocks" the floor: the 24
// bare AES block operations the algorithm cannot avoid.
func benchKWP(b *testing.B, unwrap bool) {
	kek := bytes.Repeat([]byte{2}, 32)
	k := testSecret(b, ck.CKK_AES, kek)
	m := &wire.Mechanism{Type: ck.CKM_AES_KEY_WRAP_KWP}
	entry := mechanisms[ck.CKM_AES_KEY_WRAP_KWP]
	secret := bytes.Repeat([]byte{3}, 32)
	blk, _ := aes.NewCipher(kek)
	wrapped := kwpWrap(blk, kwpDefaultIV, secret)
	b.Run("mech", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var err error
			if unwrap {
				_, err = entry.unwrap(k, m, wrapped)
			} else {
				_, err = entry.wrap(k, m, secret)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("impl", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if unwrap {
				kwpUnwrap(blk, kwpDefaultIV, wrapped)
			} else {
				kwpWrap(blk, kwpDefaultIV, secret)
			}
		}
	})
	b.Run("aes-24-blocks", func(b *testing.B) {
		var x [16]byte
		b.ReportAllocs()
		for b.Loop() {
			for range 24 {
				if unwrap {
					blk.Decrypt(x[:], x[:])
				} else {
					blk.Encrypt(x[:], x[:])
				}
			}
		}
	})
}

func BenchmarkMechKWPWrap(b *testing.B)   { benchKWP(b, false) }
func BenchmarkMechKWPUnwrap(b *testing.B) { benchKWP(b, true) }

func BenchmarkMechHMACSHA256(b *testing.B) {
	value := bytes.Repeat([]byte{4}, 32)
	k := testSecret(b, ck.CKK_GENERIC_SECRET, value)
	m := &wire.Mechanism{Type: ck.CKM_SHA256_HMAC}
	entry := mechanisms[ck.CKM_SHA256_HMAC]
	data := make([]byte, 1024)
	b.Run("mech", func(b *testing.B) {
		b.SetBytes(1024)
		b.ReportAllocs()
		for b.Loop() {
			op, err := entry.sign(k, m)
			if err != nil {
				b.Fatal(err)
			}
			op.Update(data)
			op.Sign()
		}
	})
	b.Run("bare", func(b *testing.B) {
		b.SetBytes(1024)
		b.ReportAllocs()
		for b.Loop() {
			h := hmac.New(sha256.New, value)
			h.Write(data)
			h.Sum(nil)
		}
	})
}

// TestTruncatedGCM checks the short-tag GCM for IVs other than 12 bytes
// against its definition (the full tag, cut), and that it refuses any
// change.
func TestTruncatedGCM(t *testing.T) {
	t.Parallel()
	blk, _ := aes.NewCipher(bytes.Repeat([]byte{9}, 16))
	plain, aad := []byte("some plaintext, not block-aligned"), []byte("aad")
	for _, ivLen := range []int{1, 8, 16, 60} {
		full, _ := cipher.NewGCMWithNonceSize(blk, ivLen)
		iv := bytes.Repeat([]byte{7}, ivLen)
		want := full.Seal(nil, iv, plain, aad)
		for tag := 12; tag < 16; tag++ {
			g, err := newGCM(blk, ivLen, tag)
			if err != nil {
				t.Fatal(err)
			}
			sealed := g.Seal(nil, iv, plain, aad)
			if !bytes.Equal(sealed, want[:len(plain)+tag]) {
				t.Fatalf("IV %d, tag %d: %x", ivLen, tag, sealed)
			}
			if got, err := g.Open(nil, iv, sealed, aad); err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("IV %d, tag %d: open %q, %v", ivLen, tag, got, err)
			}
			for i := range sealed {
				bad := bytes.Clone(sealed)
				bad[i] ^= 0x80
				if _, err := g.Open(nil, iv, bad, aad); err == nil {
					t.Fatalf("IV %d, tag %d: byte %d flipped, still opens", ivLen, tag, i)
				}
			}
			if _, err := g.Open(nil, iv, sealed, nil); err == nil {
				t.Fatalf("IV %d, tag %d: opens without its AAD", ivLen, tag)
			}
		}
	}
}
