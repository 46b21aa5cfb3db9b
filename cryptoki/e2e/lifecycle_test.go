package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/module/moduletest"
)

// TestOperationLifecycle walks every operation family through the
// sequences of PKCS#11 v3.0 section 5.2 and each function's text, through
// the C module as an application calls it (every pointer may be NULL): a
// single-part call, a length query, a short buffer, each bad argument,
// parts, and the forms mixed. After each step it checks the rv and
// whether the operation is still active (a new Init answers
// CKR_OPERATION_ACTIVE only then). Every error but CKR_BUFFER_TOO_SMALL
// ends the operation, an error the module finds itself included; a length
// query keeps it. The whole table runs twice on one session: the second
// time every Init is one the daemon accepted before on an idle session,
// which the module holds back to send with the next call (docs/protocol.md,
// "Deferred Init"), and the rules must hold exactly the same.
func TestOperationLifecycle(t *testing.T) {
	p, _ := withModule(t)
	slot := newToken(t, p, "lifecycle")
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	aesValue := bytes.Repeat([]byte{0x42}, 32)
	macValue := bytes.Repeat([]byte{0x24}, 32)
	secret := func(kt uint, value []byte) uint64 {
		h, err := p.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		if err != nil {
			t.Fatal(err)
		}
		return uint64(h)
	}
	aesKey, macKey := secret(pkcs11.CKK_AES, aesValue), secret(pkcs11.CKK_GENERIC_SECRET, macValue)

	m, err := moduletest.Load(need(t).module) // the library miekg loaded: the same instance
	if err != nil {
		t.Fatal(err)
	}
	iv := bytes.Repeat([]byte{7}, 16)
	plain := []byte("forty bytes of plaintext, padded to 48!!")
	block, _ := aes.NewCipher(aesValue)
	pad := 16 - len(plain)%16
	padded := append(bytes.Clone(plain), bytes.Repeat([]byte{byte(pad)}, pad)...)
	ciphertext := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ciphertext, padded)
	digest := sha256.Sum256(plain)
	mac := hmac.New(sha256.New, macValue)
	mac.Write(plain)
	tag := mac.Sum(nil)

	type family struct {
		name  string
		kind  moduletest.Kind
		mech  uint64
		param []byte
		key   uint64
		in    []byte
		out   []byte // what the operation produces (the MAC, for verify)
		bad   []byte // an input the daemon refuses (nil: none), and with
		badRV ck.Error
	}
	families := []family{
		{name: "encrypt", kind: moduletest.KindEncrypt, mech: pkcs11.CKM_AES_CBC_PAD, param: iv, key: aesKey, in: plain, out: ciphertext},
		{name: "decrypt", kind: moduletest.KindDecrypt, mech: pkcs11.CKM_AES_CBC_PAD, param: iv, key: aesKey, in: ciphertext, out: plain,
			bad: ciphertext[:20], badRV: ck.CKR_ENCRYPTED_DATA_LEN_RANGE},
		{name: "digest", kind: moduletest.KindDigest, mech: pkcs11.CKM_SHA256, in: plain, out: digest[:]},
		{name: "sign", kind: moduletest.KindSign, mech: pkcs11.CKM_SHA256_HMAC, key: macKey, in: plain, out: tag},
		{name: "verify", kind: moduletest.KindVerify, mech: pkcs11.CKM_SHA256_HMAC, key: macKey, in: plain, out: tag},
	}

	big := moduletest.Buf{Cap: 256}
	in := func(b []byte) moduletest.In { return moduletest.In{Data: b} }
	nullIn := func(b []byte) moduletest.In { return moduletest.In{Data: b, Null: true} }
	sig := func(b []byte) moduletest.Buf { return moduletest.Buf{In: in(b)} }

	for pass := range 2 {
		for _, f := range families {
			mech := f.mech
			sess := uint64(s)
			init := func() ck.Error { return m.OpInit(f.kind, sess, &mech, f.param, f.key) }
			// step is one call: its rv, whether the operation is active
			// after it, and its output if it has one.
			type step struct {
				what   string
				do     func() moduletest.Out
				rv     ck.Error
				active bool
				out    []byte // nil: not checked
				length uint64 // 0: not checked
			}
			one := func(what string, i moduletest.In, b moduletest.Buf, rv ck.Error, active bool, out []byte, length uint64) step {
				return step{what: what, do: func() moduletest.Out { return m.OpOne(f.kind, sess, i, b) }, rv: rv, active: active, out: out, length: length}
			}
			update := func(what string, i moduletest.In, rv ck.Error, active bool) step {
				return step{what: what, do: func() moduletest.Out { return m.OpUpdate(f.kind, sess, i, big) }, rv: rv, active: active}
			}
			final := func(what string, b moduletest.Buf, rv ck.Error, active bool, out []byte, length uint64) step {
				return step{what: what, do: func() moduletest.Out { return m.OpFinal(f.kind, sess, b) }, rv: rv, active: active, out: out, length: length}
			}
			half := len(f.in) / 2
			n := uint64(len(f.out))
			var seqs map[string][]step
			if f.kind == moduletest.KindVerify {
				badTag := bytes.Clone(f.out)
				badTag[0] ^= 1
				seqs = map[string][]step{
					"single part":            {one("C_Verify", in(f.in), sig(f.out), ck.CKR_OK, false, nil, 0)},
					"wrong signature":        {one("C_Verify", in(f.in), sig(badTag), ck.CKR_SIGNATURE_INVALID, false, nil, 0)},
					"NULL signature":         {one("C_Verify", in(f.in), moduletest.Buf{In: nullIn(f.out)}, ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"NULL data":              {one("C_Verify", nullIn(f.in), sig(f.out), ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"parts":                  {update("C_VerifyUpdate", in(f.in[:half]), ck.CKR_OK, true), update("C_VerifyUpdate", in(f.in[half:]), ck.CKR_OK, true), final("C_VerifyFinal", sig(f.out), ck.CKR_OK, false, nil, 0)},
					"update then single":     {update("C_VerifyUpdate", in(f.in), ck.CKR_OK, true), one("C_Verify", in(f.in), sig(f.out), ck.CKR_OPERATION_ACTIVE, false, nil, 0)},
					"update NULL data":       {update("C_VerifyUpdate", nullIn(f.in), ck.CKR_ARGUMENTS_BAD, false)},
					"final NULL":             {update("C_VerifyUpdate", in(f.in), ck.CKR_OK, true), final("C_VerifyFinal", moduletest.Buf{In: nullIn(f.out)}, ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"final wrong":            {update("C_VerifyUpdate", in(f.in), ck.CKR_OK, true), final("C_VerifyFinal", sig(badTag), ck.CKR_SIGNATURE_INVALID, false, nil, 0)},
					"final short":            {update("C_VerifyUpdate", in(f.in), ck.CKR_OK, true), final("C_VerifyFinal", sig(f.out[:5]), ck.CKR_SIGNATURE_LEN_RANGE, false, nil, 0)},
					"Init with no mechanism": nil,
				}
			} else {
				seqs = map[string][]step{
					"single part":  {one("single", in(f.in), big, ck.CKR_OK, false, f.out, n)},
					"length query": {one("single, NULL buffer", in(f.in), moduletest.Buf{Null: true}, ck.CKR_OK, true, nil, n), one("single", in(f.in), big, ck.CKR_OK, false, f.out, n)},
					"short buffer": {one("single, short buffer", in(f.in), moduletest.Buf{Cap: 1}, ck.CKR_BUFFER_TOO_SMALL, true, nil, n), one("single", in(f.in), big, ck.CKR_OK, false, f.out, n)},
					"NULL length":  {one("single, NULL length pointer", in(f.in), moduletest.Buf{Cap: 256, NullLen: true}, ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"NULL data":    {one("single, NULL data", nullIn(f.in), big, ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"parts":        {update("update", in(f.in[:half]), ck.CKR_OK, true), update("update", in(f.in[half:]), ck.CKR_OK, true), final("final", big, ck.CKR_OK, false, nil, 0)},
					"final length query": {update("update", in(f.in), ck.CKR_OK, true), final("final, NULL buffer", moduletest.Buf{Null: true}, ck.CKR_OK, true, nil, 0),
						final("final", big, ck.CKR_OK, false, nil, 0)},
					"update then single":             {update("update", in(f.in), ck.CKR_OK, true), one("single", in(f.in), big, ck.CKR_OPERATION_ACTIVE, false, nil, 0)},
					"single length query then final": {one("single, NULL buffer", in(f.in), moduletest.Buf{Null: true}, ck.CKR_OK, true, nil, n), final("final", big, ck.CKR_OPERATION_ACTIVE, false, nil, 0)},
					"single short then final":        {one("single, short buffer", in(f.in), moduletest.Buf{Cap: 1}, ck.CKR_BUFFER_TOO_SMALL, true, nil, n), final("final", big, ck.CKR_OPERATION_ACTIVE, false, nil, 0)},
					"update NULL data":               {update("update, NULL data", nullIn(f.in), ck.CKR_ARGUMENTS_BAD, false)},
					"final NULL length":              {update("update", in(f.in), ck.CKR_OK, true), final("final, NULL length pointer", moduletest.Buf{Cap: 256, NullLen: true}, ck.CKR_ARGUMENTS_BAD, false, nil, 0)},
					"Init with no mechanism":         nil,
				}
				if f.bad != nil {
					seqs["refused input"] = []step{one("single, refused input", in(f.bad), big, f.badRV, false, nil, 0)}
				}
				if f.kind == moduletest.KindEncrypt {
					// An Update only measured did not happen (5.2): the
					// Final is over the first half alone, whose last block
					// it pads.
					first := append(bytes.Clone(f.in[:half]), bytes.Repeat([]byte{byte(32 - half)}, 32-half)...)
					cipher.NewCBCEncrypter(block, iv).CryptBlocks(first, first)
					seqs["update length query then final"] = []step{
						update("update", in(f.in[:half]), ck.CKR_OK, true),
						{what: "update, NULL buffer", do: func() moduletest.Out { return m.OpUpdate(f.kind, sess, in(f.in[half:]), moduletest.Buf{Null: true}) }, rv: ck.CKR_OK, active: true},
						final("final", big, ck.CKR_OK, false, first[16:], 16),
					}
				}
			}
			for _, name := range slices.Sorted(maps.Keys(seqs)) {
				steps := seqs[name]
				where := fmt.Sprintf("pass %d, %s, %s", pass+1, f.name, name)
				if rv := init(); rv != ck.CKR_OK {
					t.Fatalf("%s: Init: %v", where, rv)
				}
				if steps == nil {
					// An Init with a NULL mechanism ends the operation (3.0).
					steps = []step{{what: "Init(NULL)", do: func() moduletest.Out { return moduletest.Out{RV: m.OpInit(f.kind, sess, nil, nil, f.key)} }, rv: ck.CKR_OK}}
				}
				for i, st := range steps {
					got := st.do()
					if got.RV != st.rv {
						t.Fatalf("%s, step %d (%s): %v, want %v", where, i+1, st.what, got.RV, st.rv)
					}
					if st.length != 0 && got.Len != st.length {
						t.Errorf("%s, step %d (%s): length %d, want %d", where, i+1, st.what, got.Len, st.length)
					}
					if st.out != nil && !bytes.Equal(got.Data, st.out) {
						t.Errorf("%s, step %d (%s): output %x, want %x", where, i+1, st.what, got.Data, st.out)
					}
					// Is the operation still active? An Init says.
					switch rv := init(); {
					case st.active && rv != ck.CKR_OPERATION_ACTIVE:
						t.Fatalf("%s, step %d (%s): the operation ended (a new Init: %v)", where, i+1, st.what, rv)
					case !st.active && rv != ck.CKR_OK:
						t.Fatalf("%s, step %d (%s): the operation is still active (a new Init: %v)", where, i+1, st.what, rv)
					case !st.active:
						// The probe started one: end it, and the next
						// step's starts again below.
						if rv := m.OpInit(f.kind, sess, nil, nil, f.key); rv != ck.CKR_OK {
							t.Fatalf("%s: Init(NULL) after the probe: %v", where, rv)
						}
						if i+1 < len(steps) {
							t.Fatalf("%s: a step after the operation ended", where)
						}
					}
				}
			}
		}
	}
	// No operation left: C_SessionCancel of every kind is a no-op.
	if rv := m.SessionCancel(uint64(s), ck.CKF_ENCRYPT|ck.CKF_DECRYPT|ck.CKF_DIGEST|ck.CKF_SIGN|ck.CKF_VERIFY|ck.CKF_FIND_OBJECTS); rv != ck.CKR_OK {
		t.Fatalf("C_SessionCancel: %v", rv)
	}
}
