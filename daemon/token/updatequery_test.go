package token

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"golang.org/x/crypto/chacha20"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

// An Update's size query runs the update and keeps its output; the
// follow-up with the same input gets it, one with other input gets that
// input's output from the state before the query (mech.Rewinder), and the
// module's C_SessionCancel with calls.CollectUpdate says it handed the
// kept output over, so that the next Update, whatever its input, goes on
// from there. Each stream is compared with the standard library's over
// the inputs the follow-ups brought.
func TestUpdateQueryRewinds(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("updq"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	key := aesKey(cl, h, false)
	chachaValue := bytes.Repeat([]byte{0x42}, 32)
	chachaKey := cl.Create(h, secretTmpl(ck.CKK_CHACHA20, chachaValue, AB(ck.CKA_ENCRYPT, true), AB(ck.CKA_DECRYPT, true))...)
	block, _ := aes.NewCipher(aesValue)
	iv := bytes.Repeat([]byte{5}, 16)
	cb := [16]byte{15: 0xfe} // the 32-bit counter carries within its bits after two blocks
	nonce := bytes.Repeat([]byte{9}, 12)

	// Parts of odd sizes, so that the block modes keep partial blocks
	// across the rewinds.
	parts := []string{"seventeen bytes..", "a", "thirty-three bytes of input here.", "", "the last part, 21 b."}
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	gcm, _ := cipher.NewGCM(block)
	cbcPadded := func() []byte {
		n := 16 - len(all)%16
		p := append(bytes.Clone(all), bytes.Repeat([]byte{byte(n)}, n)...)
		out := make([]byte, len(p))
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(out, p)
		return out
	}()
	ctr := make([]byte, len(all))
	cipher.NewCTR(block, cb[:]).XORKeyStream(ctr, all)
	chachaOut := make([]byte, len(all))
	cc, _ := chacha20.NewUnauthenticatedCipher(chachaValue, nonce)
	cc.SetCounter(7)
	cc.XORKeyStream(chachaOut, all)

	collect := func(flag uint64) {
		cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(calls.CollectUpdate|flag<<32))
	}
	mechs := []struct {
		name string
		m    wire.Value
		key  uint64
		want []byte
	}{
		{"cbc-pad", MP(ck.CKM_AES_CBC_PAD, wire.Param{Kind: calls.PBytes, Bytes: iv}), key, cbcPadded},
		{"ctr", MP(ck.CKM_AES_CTR, wire.CTRParams{CounterBits: 32, CB: cb}.Param()), key, ctr},
		{"gcm", MP(ck.CKM_AES_GCM, wire.GCMParams{IV: nonce, TagBits: 128}.Param()), key, gcm.Seal(nil, nonce, all, nil)},
		{"chacha20", MP(ck.CKM_CHACHA20, wire.ChaCha20Params{BlockCounter: binary.LittleEndian.AppendUint32(nil, 7), Nonce: nonce}.Param()), chachaKey, chachaOut},
	}
	// The ways a follow-up may come after its query: other input first,
	// then the same input; or the module's word that it handed the
	// output over.
	ways := []string{"other input", "other input, short buffer", "same input", "collected", "query again over other input"}
	for _, m := range mechs {
		for _, way := range ways {
			cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), m.m, U(m.key))
			var got []byte
			for _, p := range parts {
				decoy := p + "decoy input, longer"
				switch way {
				case "other input":
					cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(decoy), prefetch())
				case "other input, short buffer":
					cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(decoy), prefetch())
					// An empty output fits, and is delivered.
					if rv, out := cl.Call("C_EncryptUpdate", U(h), S(p), Out(0)); rv == ck.CKR_OK {
						got = append(got, out[2].Bytes...)
						continue
					} else if rv != ck.CKR_BUFFER_TOO_SMALL {
						t.Fatalf("%s, %s: short buffer: %#x", m.name, way, rv)
					}
				case "same input", "collected":
					q := cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(p), prefetch())
					if way == "collected" {
						// What the module served from the prefetch.
						got = append(got, q[2].Bytes...)
						collect(ck.CKF_ENCRYPT)
						continue
					}
				case "query again over other input":
					cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(p), SizeQuery())
					cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(decoy), SizeQuery())
				}
				out := cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(p), Out(256))
				got = append(got, out[2].Bytes...)
			}
			got = append(got, cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(256))[1].Bytes...)
			if !bytes.Equal(got, m.want) {
				t.Errorf("%s, %s: %x, want %x", m.name, way, got, m.want)
			}
		}
	}

	// Decryption, CBC with padding: the plaintext of the parts the
	// follow-ups brought, a block held back each time.
	cbc := MP(ck.CKM_AES_CBC_PAD, wire.Param{Kind: calls.PBytes, Bytes: iv})
	cl.Must(ck.CKR_OK, "C_DecryptInit", U(h), cbc, U(key))
	var plain []byte
	for _, n := range []int{17, 16, 0, 31} {
		part := cbcPadded[:n]
		cbcPadded = cbcPadded[n:]
		cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), S(string(bytes.Repeat([]byte{1}, 48))), prefetch())
		plain = append(plain, cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), S(string(part)), Out(256))[2].Bytes...)
	}
	plain = append(plain, cl.Must(ck.CKR_OK, "C_DecryptUpdate", U(h), S(string(cbcPadded)), Out(256))[2].Bytes...)
	plain = append(plain, cl.Must(ck.CKR_OK, "C_DecryptFinal", U(h), Out(256))[1].Bytes...)
	if !bytes.Equal(plain, all) {
		t.Errorf("cbc-pad decryption: %q, want %q", plain, all)
	}

	// A Final after an Update that was only measured is over the state
	// before that Update.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), mechs[0].m, U(key))
	firstOut := bytes.Clone(cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(parts[0]), Out(256))[2].Bytes)
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(parts[2]), prefetch())
	firstOut = append(firstOut, cl.Must(ck.CKR_OK, "C_EncryptFinal", U(h), Out(256))[1].Bytes...)
	first := []byte(parts[0])
	first = append(first, bytes.Repeat([]byte{byte(32 - len(first))}, 32-len(first))...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(first, first)
	if !bytes.Equal(firstOut, first) {
		t.Errorf("final after a measured update: %x, want %x", firstOut, first)
	}

	// The collect word for an operation with no kept output changes
	// nothing, and a C_SessionCancel without it still ends the operation.
	cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), mechs[1].m, U(key))
	collect(ck.CKF_ENCRYPT)
	whole := cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S(string(all)), Out(256))[2].Bytes
	if !bytes.Equal(whole, ctr) {
		t.Errorf("ctr after a collect word with nothing kept: %x, want %x", whole, ctr)
	}
	cl.Must(ck.CKR_OK, "C_EncryptUpdate", U(h), S("x"), prefetch())
	cl.Must(ck.CKR_OK, "C_SessionCancel", U(h), U(ck.CKF_ENCRYPT))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_EncryptUpdate", U(h), S("x"), Out(256))
}

// A Final or a single-part call that was only measured (a size query, a
// prefetch, or CKR_BUFFER_TOO_SMALL) leaves the operation active and
// takes nothing in (PKCS#11 5.2; C_DigestFinal "always terminates the
// active digest operation unless it returns CKR_BUFFER_TOO_SMALL or is a
// successful call ... to determine the length"): more Updates may
// follow, and the Final is over everything they brought.
func TestUpdateAfterMeasuredFinal(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("updfin"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))

	key := aesKey(cl, h, false)
	hmacValue := bytes.Repeat([]byte{7}, 32)
	hmacKey := cl.Create(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
		AB(ck.CKA_TOKEN, false), AB(ck.CKA_SIGN, true), A(ck.CKA_VALUE, hmacValue))
	block, _ := aes.NewCipher(aesValue)
	iv := bytes.Repeat([]byte{5}, 16)
	cb := [16]byte{15: 0xfe}
	a, b := "the first part, 22 b..", "and the second, of 27 bytes"
	ab := []byte(a + b)

	padded := append(bytes.Clone(ab), bytes.Repeat([]byte{byte(16 - len(ab)%16)}, 16-len(ab)%16)...)
	cbcPad := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(cbcPad, padded)
	ctr := make([]byte, len(ab))
	cipher.NewCTR(block, cb[:]).XORKeyStream(ctr, ab)
	gcm, _ := cipher.NewGCM(block)
	digest := sha256.Sum256(ab)
	mac := hmac.New(sha256.New, hmacValue)
	mac.Write(ab)

	cases := []struct {
		name                string
		init, one, upd, fin string
		m                   wire.Value
		key                 uint64
		in                  [2][]byte // the two Updates' inputs
		want                []byte
	}{
		{"digest", "C_DigestInit", "C_Digest", "C_DigestUpdate", "C_DigestFinal", M(ck.CKM_SHA256), 0, [2][]byte{[]byte(a), []byte(b)}, digest[:]},
		{"hmac", "C_SignInit", "C_Sign", "C_SignUpdate", "C_SignFinal", M(ck.CKM_SHA256_HMAC), hmacKey, [2][]byte{[]byte(a), []byte(b)}, mac.Sum(nil)},
		{"cbc-pad encrypt", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", mechIV(ck.CKM_AES_CBC_PAD, iv), key, [2][]byte{[]byte(a), []byte(b)}, cbcPad},
		// A measured Final must succeed: whole blocks, no padding.
		{"cbc decrypt", "C_DecryptInit", "C_Decrypt", "C_DecryptUpdate", "C_DecryptFinal", mechIV(ck.CKM_AES_CBC, iv), key, [2][]byte{cbcPad[:32], cbcPad[32:]}, padded},
		{"ctr", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", ctrMech(32, cb[:]), key, [2][]byte{[]byte(a), []byte(b)}, ctr},
		{"gcm", "C_EncryptInit", "C_Encrypt", "C_EncryptUpdate", "C_EncryptFinal", gcmMech(iv[:12], nil, 128), key, [2][]byte{[]byte(a), []byte(b)}, gcm.Seal(nil, iv[:12], ab, nil)},
	}
	// The ways the first measurement comes: a Final's size query, its
	// prefetch, a short buffer for it, or the single-part call's size
	// query before any Update.
	ways := []string{"final size query", "final prefetch", "final short buffer", "single-part size query"}
	for _, c := range cases {
		for _, way := range ways {
			if way == "final short buffer" && (c.name == "cbc decrypt" || c.name == "ctr") {
				continue // their Final's output is empty: any buffer fits
			}
			args := func(v ...wire.Value) []wire.Value {
				if c.key == 0 {
					return append([]wire.Value{U(h), c.m}, v...)
				}
				return append([]wire.Value{U(h), c.m, U(c.key)}, v...)
			}
			cl.Must(ck.CKR_OK, c.init, args()...)
			// update runs an Update; the digest and MAC ones return nothing.
			var got []byte
			update := func(in []byte) {
				if c.upd == "C_DigestUpdate" || c.upd == "C_SignUpdate" {
					cl.Must(ck.CKR_OK, c.upd, U(h), S(string(in)))
					return
				}
				got = append(got, cl.Must(ck.CKR_OK, c.upd, U(h), S(string(in)), Out(256))[2].Bytes...)
			}
			if way == "single-part size query" {
				cl.Must(ck.CKR_OK, c.one, U(h), S(string(c.in[0])), SizeQuery())
			}
			update(c.in[0])
			switch way {
			case "final size query":
				cl.Must(ck.CKR_OK, c.fin, U(h), SizeQuery())
			case "final prefetch":
				cl.Must(ck.CKR_OK, c.fin, U(h), prefetch())
			case "final short buffer":
				cl.Must(ck.CKR_BUFFER_TOO_SMALL, c.fin, U(h), Out(1))
			}
			update(c.in[1])
			got = append(got, cl.Must(ck.CKR_OK, c.fin, U(h), Out(256))[1].Bytes...)
			if !bytes.Equal(got, c.want) {
				t.Errorf("%s, %s: %x, want %x", c.name, way, got, c.want)
			}
			cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, c.fin, U(h), Out(256))
		}
	}
}
