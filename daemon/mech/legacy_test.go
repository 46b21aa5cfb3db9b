package mech

import (
	"bytes"
	"crypto"
	"crypto/des"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"math/big"
	"slices"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech/mechtest"
)

// The legacy policy: what the modern and the legacy tables hold and
// allow, and the legacy algorithms against NIST's CAVP triple-DES files
// and Wycheproof's DSA and RSA signature generation files.

// legacyOnly are the mechanisms only a legacy table has.
var legacyOnly = []uint64{
	ck.CKM_DES_KEY_GEN, ck.CKM_DES2_KEY_GEN, ck.CKM_DES3_KEY_GEN,
	ck.CKM_DES_ECB, ck.CKM_DES_CBC, ck.CKM_DES_CBC_PAD,
	ck.CKM_DES3_ECB, ck.CKM_DES3_CBC, ck.CKM_DES3_CBC_PAD, ck.CKM_DES3_CMAC,
	ck.CKM_DSA_PARAMETER_GEN, ck.CKM_DSA_KEY_PAIR_GEN, ck.CKM_DSA,
	ck.CKM_DSA_SHA1, ck.CKM_DSA_SHA224, ck.CKM_DSA_SHA256, ck.CKM_DSA_SHA384, ck.CKM_DSA_SHA512,
	ck.CKM_DSA_SHA3_224, ck.CKM_DSA_SHA3_256, ck.CKM_DSA_SHA3_384, ck.CKM_DSA_SHA3_512,
}

// sha1Signatures sign only in a legacy table.
var sha1Signatures = []uint64{ck.CKM_SHA1_RSA_PKCS, ck.CKM_SHA1_RSA_PKCS_PSS, ck.CKM_ECDSA_SHA1}

func TestPolicyTables(t *testing.T) {
	t.Parallel()
	modern := testTable(t)
	legacy := modern.WithLegacy()
	if modern.Legacy() || !legacy.Legacy() {
		t.Fatal("Legacy() does not tell the tables apart")
	}
	for _, typ := range legacyOnly {
		if _, ok := modern.Get(typ); ok {
			t.Errorf("%#x is in the modern table", typ)
		}
		m, ok := legacy.Get(typ)
		if !ok {
			t.Errorf("%#x is not in the legacy table", typ)
			continue
		}
		if m.Info().Flags == 0 {
			t.Errorf("%#x: no flags", typ)
		}
	}
	// The legacy table is the modern one and the legacy mechanisms.
	if got, want := len(legacy.Types()), len(modern.Types())+len(legacyOnly); got != want {
		t.Errorf("legacy table: %d mechanisms, want %d", got, want)
	}
	for _, typ := range modern.Types() {
		if _, ok := legacy.Get(typ); !ok {
			t.Errorf("%#x: in the modern table, not in the legacy one", typ)
		}
	}
	if !slices.IsSorted(legacy.Types()) {
		t.Error("legacy types not sorted")
	}
	// SHA-1 signatures: verify only, and the information says so.
	for _, typ := range sha1Signatures {
		m, _ := modern.Get(typ)
		l, _ := legacy.Get(typ)
		if m.Does(Sign) || !m.Does(Verify) || m.Info().Flags&(ck.CKF_SIGN|ck.CKF_VERIFY) != ck.CKF_VERIFY {
			t.Errorf("%#x, modern: sign %v, flags %#x", typ, m.Does(Sign), m.Info().Flags)
		}
		if !l.Does(Sign) || l.Info().Flags&ck.CKF_SIGN == 0 {
			t.Errorf("%#x, legacy: sign %v, flags %#x", typ, l.Does(Sign), l.Info().Flags)
		}
		if !m.Does(Sign) {
			if _, err := m.Sign(nil, &wire.Mechanism{Type: typ}); codeOf(err) != ck.CKR_MECHANISM_INVALID {
				t.Errorf("%#x, modern: Sign %v", typ, err)
			}
		}
	}
	// RSA's smallest key.
	for _, typ := range []uint64{ck.CKM_RSA_PKCS_KEY_PAIR_GEN, ck.CKM_RSA_PKCS, ck.CKM_SHA256_RSA_PKCS_PSS, ck.CKM_RSA_PKCS_OAEP} {
		m, _ := modern.Get(typ)
		l, _ := legacy.Get(typ)
		if m.Info().MinKeySize != 2048 || l.Info().MinKeySize != 1024 {
			t.Errorf("%#x: smallest keys %d (modern), %d (legacy)", typ, m.Info().MinKeySize, l.Info().MinKeySize)
		}
	}
	// HMAC-SHA1 is not a signature: it stays.
	if m, ok := modern.Get(ck.CKM_SHA_1_HMAC); !ok || !m.Does(Sign) {
		t.Error("HMAC-SHA1 does not sign in the modern table")
	}
	// Closing the legacy table leaves the shared nonce fillers running;
	// closing the modern one stops them.
	legacy.Close()
	select {
	case <-modern.nonces.done:
		t.Fatal("the legacy table's Close stopped the shared nonce pools")
	default:
	}
	modern.Close()
	<-legacy.nonces.done
}

// rsa1024 is a 1024-bit key for the policy's tests.
func testRSAKey(t *testing.T, bits int) (priv, pub *testKey) {
	t.Helper()
	m, _ := legacyMechanisms[ck.CKM_RSA_PKCS_KEY_PAIR_GEN]
	pa, va, err := m.GeneratePair(&wire.Mechanism{Type: ck.CKM_RSA_PKCS_KEY_PAIR_GEN}, map[uint64][]byte{ck.CKA_MODULUS_BITS: ulong(uint64(bits))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_RSA, va), testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_RSA, pa)
}

func TestPolicyRSA(t *testing.T) {
	t.Parallel()
	gen := &wire.Mechanism{Type: ck.CKM_RSA_PKCS_KEY_PAIR_GEN}
	if _, _, err := mechanisms[gen.Type].GeneratePair(gen, map[uint64][]byte{ck.CKA_MODULUS_BITS: ulong(1024)}, nil); codeOf(err) != ck.CKR_KEY_SIZE_RANGE {
		t.Fatalf("modern RSA-1024 generation: %v", err)
	}
	priv, pub := testRSAKey(t, 1024)
	pss := func(h, mgf uint64) *wire.Mechanism {
		return &wire.Mechanism{Type: ck.CKM_RSA_PKCS_PSS, Present: true, Param: wire.PSSParams{HashAlg: h, MGF: mgf, SaltLen: 20}.Param()}
	}
	oaep := &wire.Mechanism{Type: ck.CKM_RSA_PKCS_OAEP, Present: true, Param: wire.OAEPParams{HashAlg: ck.CKM_SHA256, MGF: ck.CKG_MGF1_SHA256}.Param()}
	// Every use of a 1024-bit key is refused by the modern table, and
	// done by the legacy one.
	for _, c := range []struct {
		name string
		do   func(table map[uint64]*Mechanism) error
	}{
		{name: "sign", do: func(tb map[uint64]*Mechanism) error {
			_, err := tb[ck.CKM_SHA256_RSA_PKCS].Sign(priv, &wire.Mechanism{Type: ck.CKM_SHA256_RSA_PKCS})
			return err
		}},
		{name: "verify", do: func(tb map[uint64]*Mechanism) error {
			_, err := tb[ck.CKM_SHA256_RSA_PKCS].Verify(pub, &wire.Mechanism{Type: ck.CKM_SHA256_RSA_PKCS})
			return err
		}},
		{name: "encrypt", do: func(tb map[uint64]*Mechanism) error { _, err := tb[oaep.Type].Encrypt(pub, oaep); return err }},
		{name: "decrypt", do: func(tb map[uint64]*Mechanism) error { _, err := tb[oaep.Type].Decrypt(priv, oaep); return err }},
		{name: "wrap", do: func(tb map[uint64]*Mechanism) error {
			_, err := tb[oaep.Type].Wrap(pub, oaep, make([]byte, 16))
			return err
		}},
		{name: "unwrap", do: func(tb map[uint64]*Mechanism) error {
			_, err := tb[oaep.Type].Unwrap(priv, oaep, make([]byte, 128))
			if codeOf(err) == ck.CKR_WRAPPED_KEY_INVALID {
				return nil // got as far as decrypting
			}
			return err
		}},
	} {
		want := uint64(ck.CKR_KEY_SIZE_RANGE)
		switch c.name {
		case "wrap":
			want = ck.CKR_WRAPPING_KEY_SIZE_RANGE
		case "unwrap":
			want = ck.CKR_UNWRAPPING_KEY_SIZE_RANGE
		}
		if err := c.do(mechanisms); codeOf(err) != want {
			t.Errorf("modern %s: %v", c.name, err)
		}
		if err := c.do(legacyMechanisms); err != nil {
			t.Errorf("legacy %s: %v", c.name, err)
		}
	}
	// PSS with SHA-1: verified by both, signed by the legacy table only.
	big, bigPub := testRSAKey(t, 2048)
	if _, err := mechanisms[ck.CKM_RSA_PKCS_PSS].Sign(big, pss(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1)); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
		t.Errorf("modern PSS over SHA-1: %v", err)
	}
	digest := crypto.SHA1.New().Sum(nil)
	s, err := legacyMechanisms[ck.CKM_RSA_PKCS_PSS].Sign(big, pss(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1))
	if err != nil {
		t.Fatal(err)
	}
	s.Update(digest)
	sig, err := s.Sign()
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyOnce(bigPub, pss(ck.CKM_SHA_1, ck.CKG_MGF1_SHA1), digest, sig); err != nil {
		t.Errorf("modern verify of a legacy PSS-SHA1 signature: %v", err)
	}
	if _, err := mechanisms[ck.CKM_RSA_PKCS_PSS].Sign(big, pss(ck.CKM_SHA256, ck.CKG_MGF1_SHA256)); err != nil {
		t.Errorf("modern PSS over SHA-256: %v", err)
	}
}

// TestWycheproofRSASignatureGeneration signs with Wycheproof's keys and
// compares: PKCS#1 v1.5 is deterministic. Keys under 2048 bits, and SHA-1,
// sign in the legacy table only.
func TestWycheproofRSASignatureGeneration(t *testing.T) {
	t.Parallel()
	byHash := map[string]uint64{
		"SHA-1": ck.CKM_SHA1_RSA_PKCS, "SHA-224": ck.CKM_SHA224_RSA_PKCS, "SHA-256": ck.CKM_SHA256_RSA_PKCS,
		"SHA-384": ck.CKM_SHA384_RSA_PKCS, "SHA-512": ck.CKM_SHA512_RSA_PKCS,
	}
	legacyOnly, both := 0, 0
	for _, file := range []string{"rsa_pkcs1_1024_sig_gen_test.json", "rsa_pkcs1_1536_sig_gen_test.json", "rsa_pkcs1_2048_sig_gen_test.json"} {
		for _, g := range mechtest.Wycheproof(t, file).TestGroups {
			typ, ok := byHash[g.Sha]
			if !ok {
				t.Fatalf("%s: %s", file, g.Sha)
			}
			parsed, err := x509.ParsePKCS8PrivateKey(g.PrivateKeyPkcs8)
			if err != nil {
				t.Fatal(err)
			}
			attrs, _, err := PrivateKeyAttrs(parsed)
			if err != nil {
				t.Fatal(err)
			}
			k := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_RSA, attrs)
			modernOK := g.KeySize >= 2048 && g.Sha != "SHA-1"
			m := &wire.Mechanism{Type: typ}
			if _, err := mechanisms[typ].Sign(k, m); modernOK != (err == nil) {
				t.Errorf("%s %s, modern: %v", file, g.Sha, err)
			}
			for _, vt := range g.Tests {
				op, err := legacyMechanisms[typ].Sign(k, m)
				if err != nil {
					t.Fatalf("%s #%d: %v", file, vt.TcID, err)
				}
				op.Update(vt.Msg)
				sig, err := op.Sign()
				if err != nil || !bytes.Equal(sig, vt.Sig) {
					t.Errorf("%s #%d: %x, %v", file, vt.TcID, sig, err)
				}
				if modernOK {
					both++
				} else {
					legacyOnly++
				}
			}
		}
	}
	t.Logf("%d signatures by the legacy table alone, %d by both", legacyOnly, both)
}

// desKey makes a DES key object of the key type that fits the CAVP keys:
// single DES when all three are equal, two-key when K3 is K1.
func desKey(t *testing.T, keys [3][]byte) *testKey {
	switch {
	case bytes.Equal(keys[0], keys[1]) && bytes.Equal(keys[1], keys[2]):
		return testSecret(t, ck.CKK_DES, keys[0])
	case bytes.Equal(keys[0], keys[2]):
		return testSecret(t, ck.CKK_DES2, slices.Concat(keys[0], keys[1]))
	}
	return testSecret(t, ck.CKK_DES3, slices.Concat(keys[0], keys[1], keys[2]))
}

func TestCAVPTripleDES(t *testing.T) {
	t.Parallel()
	counts := map[uint64]int{}
	for _, file := range mechtest.TDESFiles() {
		cbc := bytes.Contains([]byte(file), []byte("CBC"))
		for _, r := range mechtest.LoadTDES(t, file) {
			// Each record through the key type it fits, and as a
			// three-key triple DES key too.
			keys := []*testKey{desKey(t, r.Keys), testSecret(t, ck.CKK_DES3, slices.Concat(r.Keys[0], r.Keys[1], r.Keys[2]))}
			for _, k := range keys {
				typ := map[bool]uint64{false: ck.CKM_DES3_ECB, true: ck.CKM_DES3_CBC}[cbc]
				if k.kt == ck.CKK_DES {
					typ = map[bool]uint64{false: ck.CKM_DES_ECB, true: ck.CKM_DES_CBC}[cbc]
				}
				m := &wire.Mechanism{Type: typ}
				if cbc {
					m = &wire.Mechanism{Type: typ, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: r.IV}}
				}
				entry := legacyMechanisms[typ]
				in, want := r.Plain, r.CT
				ctor := entry.Encrypt
				if r.Decrypt {
					in, want, ctor = r.CT, r.Plain, entry.Decrypt
				}
				for _, part := range []int{0, 5} {
					op, err := ctor(k, m)
					if err != nil {
						t.Fatalf("%s %s: %v", file, r.Count, err)
					}
					if got, err := runCipher(op, in, part); err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s %s (key type %#x, parts %d): %x, %v", file, r.Count, k.kt, part, got, err)
					}
				}
				counts[k.kt]++
			}
		}
	}
	if counts[ck.CKK_DES3] < 1000 {
		t.Fatalf("only %d records as three-key triple DES", counts[ck.CKK_DES3])
	}
	t.Logf("records run: %d as DES3, %d as DES2, %d as DES", counts[ck.CKK_DES3], counts[ck.CKK_DES2], counts[ck.CKK_DES])
}

func TestTripleDESCMAC(t *testing.T) {
	t.Parallel()
	ran := 0
	for _, r := range mechtest.LoadTDESCMAC(t) {
		k := desKey(t, r.Keys)
		if k.kt == ck.CKK_DES {
			t.Fatalf("%s: single DES", r.Count)
		}
		m := &wire.Mechanism{Type: ck.CKM_DES3_CMAC}
		op, err := legacyMechanisms[m.Type].Sign(k, m)
		if err != nil {
			t.Fatal(err)
		}
		op.Update(r.Message)
		if mac, err := op.Sign(); err != nil || !bytes.Equal(mac, r.MAC) {
			t.Errorf("%s: %x, %v", r.Count, mac, err)
		}
		if err := verifyOnceIn(legacyMechanisms, k, m, r.Message, r.MAC); err != nil {
			t.Errorf("%s: verify %v", r.Count, err)
		}
		ran++
	}
	t.Logf("%d MACs", ran)
}

func TestDESKeyGeneration(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		mech uint64
		n    int
	}{{ck.CKM_DES_KEY_GEN, 8}, {ck.CKM_DES2_KEY_GEN, 16}, {ck.CKM_DES3_KEY_GEN, 24}} {
		m := legacyMechanisms[c.mech]
		for range 50 {
			add, err := m.Generate(&wire.Mechanism{Type: c.mech}, map[uint64][]byte{})
			if err != nil {
				t.Fatal(err)
			}
			v := add[ck.CKA_VALUE]
			if len(v) != c.n || !DESParityOK(v) || !desKeyGood(v) {
				t.Fatalf("%#x: %x", c.mech, v)
			}
		}
		if _, err := m.Generate(&wire.Mechanism{Type: c.mech, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}, nil); codeOf(err) != ck.CKR_MECHANISM_PARAM_INVALID {
			t.Errorf("%#x with a parameter: %v", c.mech, err)
		}
	}
	if desKeyGood(hexDES("0101010101010101")) || desKeyGood(slices.Concat(hexDES("0123456789abcdef"), hexDES("0123456789abcdef"), hexDES("fedcba9876543210"))) {
		t.Error("a weak key, or single DES as triple, passes")
	}
	// SetDESParity against crypto/des: a key and its parity-fixed copy
	// encrypt alike (DES ignores the parity bits).
	raw := []byte{0x00, 0x13, 0x34, 0x57, 0x79, 0x9b, 0xbc, 0xdf}
	fixed := slices.Clone(raw)
	SetDESParity(fixed)
	if !DESParityOK(fixed) || DESParityOK(raw) {
		t.Fatalf("parity: %x -> %x", raw, fixed)
	}
	a, _ := des.NewCipher(raw)
	b, _ := des.NewCipher(fixed)
	x, y := make([]byte, 8), make([]byte, 8)
	a.Encrypt(x, []byte("8 bytes!"))
	b.Encrypt(y, []byte("8 bytes!"))
	if !bytes.Equal(x, y) {
		t.Error("parity changed the key")
	}
}

func hexDES(s string) []byte { return mechtest.Hex(s) }

func TestDESRefusals(t *testing.T) {
	t.Parallel()
	k3 := testSecret(t, ck.CKK_DES3, bytes.Repeat([]byte{0x13}, 24))
	k1 := testSecret(t, ck.CKK_DES, bytes.Repeat([]byte{0x13}, 8))
	iv := func(typ uint64, n int) *wire.Mechanism {
		return &wire.Mechanism{Type: typ, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: make([]byte, n)}}
	}
	for _, c := range []struct {
		name string
		err  error
		want uint64
	}{
		{name: "DES key for DES3", err: func() error { _, err := legacyMechanisms[ck.CKM_DES3_ECB].Encrypt(k1, &wire.Mechanism{}); return err }(), want: ck.CKR_KEY_TYPE_INCONSISTENT},
		{name: "DES3 key for DES", err: func() error { _, err := legacyMechanisms[ck.CKM_DES_ECB].Encrypt(k3, &wire.Mechanism{}); return err }(), want: ck.CKR_KEY_TYPE_INCONSISTENT},
		{name: "16-byte IV", err: func() error {
			_, err := legacyMechanisms[ck.CKM_DES3_CBC].Encrypt(k3, iv(ck.CKM_DES3_CBC, 16))
			return err
		}(), want: ck.CKR_MECHANISM_PARAM_INVALID},
		{name: "ECB partial block", err: func() error {
			op, _ := legacyMechanisms[ck.CKM_DES3_ECB].Encrypt(k3, &wire.Mechanism{})
			_, err := runCipher(op, make([]byte, 12), 0)
			return err
		}(), want: ck.CKR_DATA_LEN_RANGE},
		{name: "unwrap of a partial block", err: func() error {
			_, err := legacyMechanisms[ck.CKM_DES3_CBC_PAD].Unwrap(k3, iv(ck.CKM_DES3_CBC_PAD, 8), make([]byte, 12))
			return err
		}(), want: ck.CKR_WRAPPED_KEY_LEN_RANGE},
	} {
		if codeOf(c.err) != c.want {
			t.Errorf("%s: %v", c.name, c.err)
		}
	}
	// CBC_PAD wraps and unwraps, 8-byte blocks.
	m := iv(ck.CKM_DES3_CBC_PAD, 8)
	w, err := legacyMechanisms[m.Type].Wrap(k3, m, []byte("sixteen byte key"))
	if err != nil || len(w) != 24 {
		t.Fatalf("wrap: %x, %v", w, err)
	}
	if p, err := legacyMechanisms[m.Type].Unwrap(k3, m, w); err != nil || string(p) != "sixteen byte key" {
		t.Fatalf("unwrap: %q, %v", p, err)
	}
}

// verifyOnceIn runs one verification through a table's mechanism.
func verifyOnceIn(tb map[uint64]*Mechanism, k Key, m *wire.Mechanism, msg, sig []byte) error {
	op, err := tb[m.Type].Verify(k, m)
	if err != nil {
		return err
	}
	if err := op.Update(msg); err != nil {
		return err
	}
	return op.Verify(sig)
}

// derToP1363 turns a DER ECDSA or DSA signature into r || s of size bytes
// each, accepting only DER (a BER encoding, or extra bytes, is not); ok
// is false for what cannot be a signature of that size.
func derToP1363(der []byte, size int) ([]byte, bool) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, false
	}
	if again, err := asn1.Marshal(sig); err != nil || !bytes.Equal(again, der) {
		return nil, false
	}
	if sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 8*size || sig.S.BitLen() > 8*size {
		return nil, false
	}
	return append(sig.R.FillBytes(make([]byte, size)), sig.S.FillBytes(make([]byte, size))...), true
}

var wpDSA = map[string]uint64{
	"SHA-1": ck.CKM_DSA_SHA1, "SHA-224": ck.CKM_DSA_SHA224, "SHA-256": ck.CKM_DSA_SHA256,
	"SHA-384": ck.CKM_DSA_SHA384, "SHA-512": ck.CKM_DSA_SHA512,
}

// TestWycheproofDSA runs every DSA file: the P1363 ones (r || s, as
// PKCS#11 has it) as they are, the DER ones through a strict DER parse.
func TestWycheproofDSA(t *testing.T) {
	t.Parallel()
	run, refusedDER := 0, 0
	for _, file := range []string{
		"dsa_2048_224_sha224_p1363_test.json", "dsa_2048_224_sha256_p1363_test.json",
		"dsa_2048_256_sha256_p1363_test.json", "dsa_3072_256_sha256_p1363_test.json",
		"dsa_2048_224_sha224_test.json", "dsa_2048_224_sha256_test.json",
		"dsa_2048_256_sha256_test.json", "dsa_3072_256_sha256_test.json",
	} {
		p1363 := bytes.Contains([]byte(file), []byte("p1363"))
		for _, g := range mechtest.Wycheproof(t, file).TestGroups {
			typ, ok := wpDSA[g.Sha]
			if !ok {
				t.Fatalf("%s: %s", file, g.Sha)
			}
			pk := g.PublicKey
			k := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_DSA, map[uint64][]byte{
				ck.CKA_PRIME: pk.P, ck.CKA_SUBPRIME: pk.Q, ck.CKA_BASE: pk.G, ck.CKA_VALUE: pk.Y,
			})
			size := (new(big.Int).SetBytes(pk.Q).BitLen() + 7) / 8
			m := &wire.Mechanism{Type: typ}
			if _, ok := mechanisms[typ]; ok {
				t.Fatalf("%#x in the modern table", typ)
			}
			for _, vt := range g.Tests {
				sig := []byte(vt.Sig)
				if !p1363 {
					var ok bool
					if sig, ok = derToP1363(vt.Sig, size); !ok {
						if vt.Result == "valid" {
							t.Errorf("%s #%d: a valid signature that is not DER", file, vt.TcID)
						}
						refusedDER++
						continue
					}
				}
				err := verifyOnceIn(legacyMechanisms, k, m, vt.Msg, sig)
				if c := codeOf(err); err != nil && c != ck.CKR_SIGNATURE_INVALID && c != ck.CKR_SIGNATURE_LEN_RANGE {
					t.Errorf("%s #%d: %v", file, vt.TcID, err)
				}
				vecOutcome(t, file, vt, err == nil, err)
				run++
			}
		}
	}
	t.Logf("%d vectors run, %d refused as not DER", run, refusedDER)
}

// TestDSA generates domain parameters and a key pair and signs with
// every mechanism, checking against crypto/dsa's verification through
// the other mechanisms.
func TestDSA(t *testing.T) {
	t.Parallel()
	gen := legacyMechanisms[ck.CKM_DSA_PARAMETER_GEN]
	if gen.GenClass() != ck.CKO_DOMAIN_PARAMETERS || gen.GenKeyType() != ck.CKK_DSA {
		t.Fatalf("parameter generation makes class %#x, key type %#x", gen.GenClass(), gen.GenKeyType())
	}
	if _, err := gen.Generate(&wire.Mechanism{}, map[uint64][]byte{}); codeOf(err) != ck.CKR_TEMPLATE_INCOMPLETE {
		t.Fatalf("no CKA_PRIME_BITS: %v", err)
	}
	for _, bits := range []uint64{512, 1536, 4096} {
		if _, err := gen.Generate(&wire.Mechanism{}, map[uint64][]byte{ck.CKA_PRIME_BITS: ulong(bits)}); codeOf(err) != ck.CKR_KEY_SIZE_RANGE {
			t.Fatalf("%d bits: %v", bits, err)
		}
	}
	params, err := gen.Generate(&wire.Mechanism{}, map[uint64][]byte{ck.CKA_PRIME_BITS: ulong(1024)})
	if err != nil {
		t.Fatal(err)
	}
	if new(big.Int).SetBytes(params[ck.CKA_PRIME]).BitLen() != 1024 || new(big.Int).SetBytes(params[ck.CKA_SUBPRIME]).BitLen() != 160 {
		t.Fatalf("parameters of %d and %d bits", new(big.Int).SetBytes(params[ck.CKA_PRIME]).BitLen(), new(big.Int).SetBytes(params[ck.CKA_SUBPRIME]).BitLen())
	}
	pubT := map[uint64][]byte{ck.CKA_PRIME: params[ck.CKA_PRIME], ck.CKA_SUBPRIME: params[ck.CKA_SUBPRIME], ck.CKA_BASE: params[ck.CKA_BASE]}
	kp := legacyMechanisms[ck.CKM_DSA_KEY_PAIR_GEN]
	if _, _, err := kp.GeneratePair(&wire.Mechanism{}, map[uint64][]byte{ck.CKA_PRIME: params[ck.CKA_PRIME]}, nil); codeOf(err) != ck.CKR_TEMPLATE_INCOMPLETE {
		t.Fatalf("no subprime: %v", err)
	}
	pa, va, err := kp.GeneratePair(&wire.Mechanism{}, pubT, nil)
	if err != nil {
		t.Fatal(err)
	}
	for t2, v := range pubT {
		pa[t2] = v
	}
	pub := testKeyObject(t, ck.CKO_PUBLIC_KEY, ck.CKK_DSA, pa)
	priv := testKeyObject(t, ck.CKO_PRIVATE_KEY, ck.CKK_DSA, va)
	msg := []byte("a DSA signature")
	for typ, h := range dsaHashes {
		in := msg
		if h == 0 {
			d := crypto.SHA256.New()
			d.Write(msg)
			in = d.Sum(nil)
		}
		m := &wire.Mechanism{Type: typ}
		op, err := legacyMechanisms[typ].Sign(priv, m)
		if err != nil {
			t.Fatal(err)
		}
		op.Update(in)
		sig, err := op.Sign()
		if err != nil || len(sig) != 40 {
			t.Fatalf("%#x: %x, %v", typ, sig, err)
		}
		if err := verifyOnceIn(legacyMechanisms, pub, m, in, sig); err != nil {
			t.Errorf("%#x: %v", typ, err)
		}
		sig[3] ^= 1
		if err := verifyOnceIn(legacyMechanisms, pub, m, in, sig); codeOf(err) != ck.CKR_SIGNATURE_INVALID {
			t.Errorf("%#x, a changed signature: %v", typ, err)
		}
	}
	// CKM_DSA takes digests of the lengths the specification lists.
	op, _ := legacyMechanisms[ck.CKM_DSA].Sign(priv, &wire.Mechanism{Type: ck.CKM_DSA})
	op.Update(make([]byte, 21))
	if _, err := op.Sign(); codeOf(err) != ck.CKR_DATA_LEN_RANGE {
		t.Errorf("CKM_DSA on 21 bytes: %v", err)
	}
	if _, ok := PublicKey(priv); ok != nil {
		t.Errorf("PublicKey of a DSA private key: %v", ok)
	}
	if KeyBits(pub) != 1024 {
		t.Errorf("KeyBits %d", KeyBits(pub))
	}
	// A DSA private key is not wrapped: x509 has no PKCS#8 for it.
	if _, err := EncodeKey(priv); codeOf(err) != ck.CKR_KEY_NOT_WRAPPABLE {
		t.Errorf("EncodeKey: %v", err)
	}
}

// Ensure the PKCS#1 v1.5 encodings of the SHA-3 hashes are crypto/rsa's.
func TestSHA3DigestInfo(t *testing.T) {
	t.Parallel()
	k, pub := testRSAKey(t, 2048)
	rk, _ := rsaPrivate(k)
	for typ, h := range map[uint64]crypto.Hash{
		ck.CKM_SHA3_224_RSA_PKCS: crypto.SHA3_224, ck.CKM_SHA3_256_RSA_PKCS: crypto.SHA3_256,
		ck.CKM_SHA3_384_RSA_PKCS: crypto.SHA3_384, ck.CKM_SHA3_512_RSA_PKCS: crypto.SHA3_512,
	} {
		d := h.New()
		d.Write([]byte("msg"))
		want, err := rsa.SignPKCS1v15(nil, rk, h, d.Sum(nil))
		if err != nil {
			t.Fatal(err)
		}
		op, err := mechanisms[typ].Sign(k, &wire.Mechanism{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		op.Update([]byte("msg"))
		if got, err := op.Sign(); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%#x: %x, %v", typ, got, err)
		}
		if err := verifyOnce(pub, &wire.Mechanism{Type: typ}, []byte("msg"), want); err != nil {
			t.Errorf("%#x verify: %v", typ, err)
		}
	}
}
