package e2e

import (
	"fmt"

	"github.com/miekg/pkcs11"
)

// The steps of TestDiffSoftHSM, in order: later ones log out, open
// read-only sessions and close all sessions.

const badHandle = 0x7fff1234

// ckaUniqueID is PKCS#11 3.0's CKA_UNIQUE_ID, which miekg/pkcs11 lacks.
const ckaUniqueID = 0x004

// sized runs an output call three times on one active operation, as a C
// application sizing its buffer does: NULL buffer, a buffer one byte
// short, the exact one; then once more (the operation is over).
func sized(m *diffMod, init func() error, call func(o output) ([]byte, uint64, error)) string {
	if err := init(); err != nil {
		return "init " + rv(err)
	}
	_, n, err := call(output{null: true})
	q := rvn(nil, n, err)
	if err != nil || n == 0 {
		return q
	}
	short := rvn(call(want(int(n) - 1)))
	exact := rvn(call(want(int(n))))
	after := rv(func() error { _, _, err := call(want(int(n))); return err }())
	return q + "; " + short + "; " + exact + "; " + after
}

func diffSteps() []diffStep {
	iv := make([]byte, 16)
	data32 := make([]byte, 32)
	return []diffStep{
		// Length queries, short buffers, exact buffers (5.2 "Conventions
		// for functions returning output in a variable-length buffer").
		{name: "C_Sign ECDSA sized", want: "CKR_OK n=64; CKR_BUFFER_TOO_SMALL n=64; CKR_OK n=64; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return sized(m, func() error { return m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), m.priv) },
					func(o output) ([]byte, uint64, error) { return m.raw.Out(rawSign, m.s, data32, o) })
			}},
		{name: "C_Encrypt AES-CBC-PAD 20 bytes sized", want: "CKR_OK n=32; CKR_BUFFER_TOO_SMALL n=32; CKR_OK n=32; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return sized(m, func() error { return m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_CBC_PAD, iv), m.aes) },
					func(o output) ([]byte, uint64, error) { return m.raw.Out(rawEncrypt, m.s, make([]byte, 20), o) })
			}},
		{name: "C_Encrypt AES-ECB 32 bytes sized", want: "CKR_OK n=32; CKR_BUFFER_TOO_SMALL n=32; CKR_OK n=32; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return sized(m, func() error { return m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_ECB, nil), m.aes) },
					func(o output) ([]byte, uint64, error) { return m.raw.Out(rawEncrypt, m.s, data32, o) })
			}},
		{name: "C_Decrypt AES-CBC-PAD of 20 bytes sized", want: "CKR_OK n=20; CKR_BUFFER_TOO_SMALL n=20; CKR_OK n=20; CKR_OPERATION_NOT_INITIALIZED", soft: "CKR_OK n=32; CKR_BUFFER_TOO_SMALL n=32; CKR_OK n=20; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				if err := m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_CBC_PAD, iv), m.aes); err != nil {
					return "EncryptInit " + rv(err)
				}
				ct, err := m.p.Encrypt(m.s, make([]byte, 20))
				if err != nil {
					return "Encrypt " + rv(err)
				}
				return sized(m, func() error { return m.p.DecryptInit(m.s, mech(pkcs11.CKM_AES_CBC_PAD, iv), m.aes) },
					func(o output) ([]byte, uint64, error) { return m.raw.Out(rawDecrypt, m.s, ct, o) })
			}},
		{name: "C_Digest SHA-256 sized", want: "CKR_OK n=32; CKR_BUFFER_TOO_SMALL n=32; CKR_OK n=32; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return sized(m, func() error { return m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)) },
					func(o output) ([]byte, uint64, error) { return m.raw.Out(rawDigest, m.s, data32, o) })
			}},
		{name: "C_WrapKey AES-KW sized", want: "CKR_OK n=40; CKR_BUFFER_TOO_SMALL n=40; CKR_OK n=40; CKR_OK",
			run: func(m *diffMod) string {
				return sized(m, func() error { return nil },
					func(o output) ([]byte, uint64, error) {
						return m.raw.Wrap(m.s, pkcs11.CKM_AES_KEY_WRAP, m.kek, m.aes, o)
					})
			}},

		// C_GetAttributeValue (5.7): each attribute's own case.
		{name: "GetAttributeValue NULL, short, exact", want: "CKR_BUFFER_TOO_SMALL 8 -1 8",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_LABEL, Null: true}, {Type: pkcs11.CKA_ID, Cap: 1}, {Type: pkcs11.CKA_CLASS, Cap: 8}}
				return lens(t, m.raw.GetAttrs(m.s, m.aes, t))
			}},
		{name: "GetAttributeValue valid+sensitive", want: "CKR_ATTRIBUTE_SENSITIVE 8 -1 7",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}, {Type: pkcs11.CKA_VALUE, Cap: 64}, {Type: pkcs11.CKA_LABEL, Null: true}}
				return lens(t, m.raw.GetAttrs(m.s, m.priv, t))
			}},
		{name: "GetAttributeValue valid+invalid type", want: "CKR_ATTRIBUTE_TYPE_INVALID 8 -1 7",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}, {Type: pkcs11.CKA_MODULUS, Cap: 64}, {Type: pkcs11.CKA_LABEL, Null: true}}
				return lens(t, m.raw.GetAttrs(m.s, m.priv, t))
			}},
		{name: "GetAttributeValue valid+vendor type", want: "CKR_ATTRIBUTE_TYPE_INVALID 8 -1",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}, {Type: pkcs11.CKA_VENDOR_DEFINED | 0x4242, Cap: 64}}
				return lens(t, m.raw.GetAttrs(m.s, m.aes, t))
			}},
		{name: "GetAttributeValue sensitive+invalid+short", want: "CKR_ATTRIBUTE_SENSITIVE -1 -1 -1 8",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_VALUE, Cap: 64}, {Type: pkcs11.CKA_MODULUS, Cap: 64},
					{Type: pkcs11.CKA_LABEL, Cap: 1}, {Type: pkcs11.CKA_CLASS, Cap: 8}}
				return lens(t, m.raw.GetAttrs(m.s, m.priv, t))
			}},
		{name: "GetAttributeValue sensitive NULL", want: "CKR_ATTRIBUTE_SENSITIVE -1",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_VALUE, Null: true}}
				return lens(t, m.raw.GetAttrs(m.s, m.priv, t))
			}},
		// A key's template attributes, none given: the empty template,
		// as CKA_ALLOWED_MECHANISMS none given is the empty list.
		{name: "GetAttributeValue templates a key lacks", want: "CKR_OK 0 0 0",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_WRAP_TEMPLATE, Null: true}, {Type: pkcs11.CKA_UNWRAP_TEMPLATE, Null: true},
					{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Null: true}}
				return lens(t, m.raw.GetAttrs(m.s, m.aes, t))
			}},
		{name: "GetAttributeValue bad object", want: "CKR_OBJECT_HANDLE_INVALID",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}}
				return rv(m.raw.GetAttrs(m.s, badHandle, t))
			}},

		// C_FindObjects (5.7).
		{name: "FindObjects empty template", want: "CKR_OK 4; CKR_OK",
			run: func(m *diffMod) string { return diffFind(m, nil) }},
		{name: "FindObjects by class", want: "CKR_OK 1; CKR_OK",
			run: func(m *diffMod) string {
				return diffFind(m, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)})
			}},
		{name: "FindObjects by CKA_ID", want: "CKR_OK 2; CKR_OK",
			run: func(m *diffMod) string {
				return diffFind(m, []*pkcs11.Attribute{attr(pkcs11.CKA_ID, []byte("ec"))})
			}},
		{name: "FindObjects label not there", want: "CKR_OK 0; CKR_OK",
			run: func(m *diffMod) string {
				return diffFind(m, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, "no-such-label")})
			}},
		{name: "FindObjects without Init", want: "CKR_OPERATION_NOT_INITIALIZED; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				_, _, err := m.p.FindObjects(m.s, 10)
				return rv(err) + "; " + rv(m.p.FindObjectsFinal(m.s))
			}},
		{name: "FindObjectsInit twice", want: "CKR_OK; CKR_OPERATION_ACTIVE; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.FindObjectsInit(m.s, nil))
				b := rv(m.p.FindObjectsInit(m.s, nil))
				return a + "; " + b + "; " + rv(m.p.FindObjectsFinal(m.s))
			}},

		// Bad handles.
		{name: "GetSessionInfo bad session", want: "CKR_SESSION_HANDLE_INVALID",
			run: func(m *diffMod) string {
				_, err := m.p.GetSessionInfo(badHandle)
				return rv(err)
			}},
		{name: "SignInit bad key", want: "CKR_KEY_HANDLE_INVALID", soft: "CKR_OBJECT_HANDLE_INVALID",
			run: func(m *diffMod) string {
				return rv(m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), badHandle))
			}},
		{name: "DestroyObject bad object", want: "CKR_OBJECT_HANDLE_INVALID",
			run: func(m *diffMod) string { return rv(m.p.DestroyObject(m.s, badHandle)) }},
		{name: "GetObjectSize bad object", want: "CKR_OBJECT_HANDLE_INVALID",
			run: func(m *diffMod) string {
				_, err := m.raw.ObjectSize(m.s, badHandle)
				return rv(err)
			}},
		{name: "SignInit with the public key", want: "CKR_KEY_FUNCTION_NOT_PERMITTED",
			run: func(m *diffMod) string {
				return rv(m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), m.pub))
			}},

		// Operations without Init, a second Init while active.
		{name: "Sign/Encrypt/Decrypt/Digest/Verify without Init", want: "[CKR_OPERATION_NOT_INITIALIZED CKR_OPERATION_NOT_INITIALIZED CKR_OPERATION_NOT_INITIALIZED CKR_OPERATION_NOT_INITIALIZED CKR_OPERATION_NOT_INITIALIZED]",
			run: func(m *diffMod) string {
				s := make([]string, 0, 5)
				for _, k := range []rawOp{rawSign, rawEncrypt, rawDecrypt, rawDigest} {
					_, _, err := m.raw.Out(k, m.s, data32, want(64))
					s = append(s, rv(err))
				}
				s = append(s, rv(m.p.Verify(m.s, data32, make([]byte, 64))))
				return fmt.Sprint(s)
			}},
		{name: "SignInit twice", want: "CKR_OK; CKR_OPERATION_ACTIVE; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), m.priv))
				b := rv(m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), m.priv))
				_, err := m.p.Sign(m.s, data32)
				return a + "; " + b + "; " + rv(err)
			}},
		{name: "DigestInit twice", want: "CKR_OK; CKR_OPERATION_ACTIVE; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)))
				b := rv(m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)))
				_, err := m.p.Digest(m.s, data32)
				return a + "; " + b + "; " + rv(err)
			}},
		{name: "EncryptInit twice", want: "CKR_OK; CKR_OPERATION_ACTIVE; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_ECB, nil), m.aes))
				b := rv(m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_ECB, nil), m.aes))
				_, err := m.p.Encrypt(m.s, data32)
				return a + "; " + b + "; " + rv(err)
			}},

		{name: "C_Encrypt bad session", want: "CKR_SESSION_HANDLE_INVALID n=32",
			run: func(m *diffMod) string {
				return rvn(m.raw.Out(rawEncrypt, badHandle, data32, want(32)))
			}},
		{name: "OpenSession bad slot", want: "CKR_SLOT_ID_INVALID",
			run: func(m *diffMod) string {
				_, err := m.p.OpenSession(0x7fff0001, pkcs11.CKF_SERIAL_SESSION)
				return rv(err)
			}},
		{name: "GetMechanismInfo bad slot", want: "CKR_SLOT_ID_INVALID",
			run: func(m *diffMod) string {
				_, err := m.p.GetMechanismInfo(0x7fff0001, mech(pkcs11.CKM_SHA256, nil))
				return rv(err)
			}},
		{name: "DigestUpdate then C_Digest", want: "CKR_OK; CKR_OK; CKR_OPERATION_ACTIVE n=32; CKR_OPERATION_NOT_INITIALIZED", soft: "CKR_OK; CKR_OK; CKR_OK n=32; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				a := rv(m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)))
				b := rv(m.p.DigestUpdate(m.s, data32))
				c := rvn(m.raw.Out(rawDigest, m.s, data32, want(32)))
				_, err := m.p.DigestFinal(m.s)
				return a + "; " + b + "; " + c + "; " + rv(err)
			}},
		// A Final or a single-part call that was only measured leaves
		// the operation active (5.2, and each Final's text): more
		// Updates may follow, and the Final covers them all. The query
		// goes through the module's prefetch and the short buffer is
		// served from the result it holds.
		{name: "DigestFinal sized, then DigestUpdate", want: "CKR_OK n=32; CKR_BUFFER_TOO_SMALL n=32; CKR_OK; CKR_OK n=32 of a+b; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return finalThenUpdate(m, rawDigest, func() error { return m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)) },
					func(in []byte) ([]byte, error) { return nil, m.p.DigestUpdate(m.s, in) })
			}},
		{name: "EncryptFinal CBC-PAD sized, then EncryptUpdate", want: "CKR_OK n=16; CKR_BUFFER_TOO_SMALL n=16; CKR_OK; CKR_OK n=16 of a+b; CKR_OPERATION_NOT_INITIALIZED",
			run: func(m *diffMod) string {
				return finalThenUpdate(m, rawEncrypt, func() error { return m.p.EncryptInit(m.s, mech(pkcs11.CKM_AES_CBC_PAD, iv), m.aes) },
					func(in []byte) ([]byte, error) { return m.p.EncryptUpdate(m.s, in) })
			}},
		{name: "C_Digest sized, then DigestUpdate", want: "CKR_OK n=32; CKR_OK; CKR_OK n=32 of a+b",
			run: func(m *diffMod) string {
				if err := m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)); err != nil {
					return "DigestInit " + rv(err)
				}
				q := rvn(m.raw.Out(rawDigest, m.s, data32, output{null: true}))
				u := rv(m.p.DigestUpdate(m.s, []byte("a+b")))
				got, n, err := m.raw.Final(rawDigest, m.s, want(64))
				return q + "; " + u + "; " + rvn(got, n, err) + overAB(m, rawDigest, func() error { return m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)) }, got, "a+b")
			}},

		// An unsupported function "should simply return the value
		// CKR_FUNCTION_NOT_SUPPORTED", whatever its arguments: the
		// operations it would have continued go on.
		{name: "DigestEncryptUpdate, NULL length, in a digest", want: "CKR_FUNCTION_NOT_SUPPORTED n=0; CKR_FUNCTION_NOT_SUPPORTED n=64; CKR_OK n=32",
			run: func(m *diffMod) string {
				if err := m.p.DigestInit(m.s, mech(pkcs11.CKM_SHA256, nil)); err != nil {
					return "DigestInit " + rv(err)
				}
				a := rvn(m.raw.DigestEncrypt(m.s, data32, output{noLen: true}))
				b := rvn(m.raw.DigestEncrypt(m.s, data32, want(64)))
				return a + "; " + b + "; " + rvn(m.raw.Out(rawDigest, m.s, data32, want(32)))
			}},

		// Mechanisms.
		{name: "GetMechanismInfo invalid", want: "CKR_MECHANISM_INVALID",
			run: func(m *diffMod) string {
				_, err := m.p.GetMechanismInfo(m.slot, mech(0x7fff0001, nil))
				return rv(err)
			}},

		// Templates (4.1.2, 5.7 C_CreateObject, 5.14 C_GenerateKey).
		{name: "CreateObject AES without CKA_VALUE", want: "CKR_TEMPLATE_INCOMPLETE",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES))
			}},
		// CKA_CHECK_VALUE (secret key objects): computed by the token for
		// every secret key, checked when a template gives it, kept
		// empty when a template asks for none.
		{name: "CreateObject AES, CKA_CHECK_VALUE", want: "CKR_OK 3 66e94b; CKR_ATTRIBUTE_VALUE_INVALID; CKR_OK 0 ",
			run: func(m *diffMod) string {
				aes := func(kcv []byte) (string, int, []byte) {
					t := []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
						attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_VALUE, make([]byte, 16))}
					if kcv != nil {
						t = append(t, attr(pkcs11.CKA_CHECK_VALUE, kcv))
					}
					o, err := m.p.CreateObject(m.s, t)
					if err != nil {
						return rv(err), 0, nil
					}
					defer m.p.DestroyObject(m.s, o)
					got, err := m.p.GetAttributeValue(m.s, o, []*pkcs11.Attribute{attr(pkcs11.CKA_CHECK_VALUE, nil)})
					if err != nil {
						return rv(err), 0, nil
					}
					return "CKR_OK", len(got[0].Value), got[0].Value
				}
				a, n, v := aes(nil)
				b, _, _ := aes([]byte{1, 2, 3})
				c, cn, cv := aes([]byte{})
				return fmt.Sprintf("%s %d %x; %s; %s %d %x", a, n, v, b, c, cn, cv)
			}},
		{name: "CreateObject without CKA_CLASS", want: "CKR_TEMPLATE_INCOMPLETE",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), attr(pkcs11.CKA_VALUE, data32))
			}},
		{name: "CreateObject AES with CKA_VALUE_LEN", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
					attr(pkcs11.CKA_VALUE, data32), attr(pkcs11.CKA_VALUE_LEN, 32))
			}},
		{name: "CreateObject AES with a 7-byte value", want: "CKR_ATTRIBUTE_VALUE_INVALID", soft: "CKR_OK",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
					attr(pkcs11.CKA_VALUE, make([]byte, 7)))
			}},
		{name: "CreateObject CKA_PRIVATE of 4 bytes", want: "CKR_ATTRIBUTE_VALUE_INVALID",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), attr(pkcs11.CKA_PRIVATE, []byte{0, 0, 0, 0}))
			}},
		{name: "CreateObject CKA_PRIVATE twice, differing", want: "CKR_TEMPLATE_INCONSISTENT", soft: "CKR_OK",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), attr(pkcs11.CKA_PRIVATE, false), attr(pkcs11.CKA_PRIVATE, true))
			}},
		{name: "CreateObject unknown class", want: "CKR_ATTRIBUTE_VALUE_INVALID",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, 0x7fff0001), attr(pkcs11.CKA_VALUE, data32))
			}},
		{name: "CreateObject secret key with CKA_MODULUS", want: "CKR_ATTRIBUTE_TYPE_INVALID",
			run: func(m *diffMod) string {
				return diffCreate(m, attr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
					attr(pkcs11.CKA_VALUE, data32), attr(pkcs11.CKA_MODULUS, data32))
			}},
		{name: "GenerateKey AES without CKA_VALUE_LEN", want: "CKR_TEMPLATE_INCOMPLETE",
			run: func(m *diffMod) string {
				return genKey(m)
			}},
		{name: "GenerateKey AES CKA_VALUE_LEN 7", want: "CKR_ATTRIBUTE_VALUE_INVALID",
			run: func(m *diffMod) string {
				return genKey(m, attr(pkcs11.CKA_VALUE_LEN, 7))
			}},
		{name: "GenerateKey AES class public key", want: "CKR_TEMPLATE_INCONSISTENT", soft: "CKR_ATTRIBUTE_VALUE_INVALID",
			run: func(m *diffMod) string {
				return genKey(m, attr(pkcs11.CKA_VALUE_LEN, 32), attr(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY))
			}},
		{name: "GenerateKey AES key type RSA", want: "CKR_TEMPLATE_INCONSISTENT",
			run: func(m *diffMod) string {
				return genKey(m, attr(pkcs11.CKA_VALUE_LEN, 32), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA))
			}},
		{name: "GenerateKey AES with CKA_VALUE", want: "CKR_TEMPLATE_INCONSISTENT", soft: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return genKey(m, attr(pkcs11.CKA_VALUE_LEN, 32), attr(pkcs11.CKA_VALUE, data32))
			}},
		// C_UnwrapKey's template names the class of the key it makes:
		// without one it lacks a necessary attribute (5.1).
		{name: "UnwrapKey without CKA_CLASS", want: "CKR_TEMPLATE_INCOMPLETE",
			run: func(m *diffMod) string {
				w, err := m.p.WrapKey(m.s, mech(pkcs11.CKM_AES_KEY_WRAP, nil), m.kek, m.aes)
				if err != nil {
					return "WrapKey " + rv(err)
				}
				o, err := m.p.UnwrapKey(m.s, mech(pkcs11.CKM_AES_KEY_WRAP, nil), m.kek, w,
					[]*pkcs11.Attribute{attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES), attr(pkcs11.CKA_TOKEN, false)})
				if err == nil {
					m.p.DestroyObject(m.s, o)
				}
				return rv(err)
			}},
		{name: "GenerateKeyPair EC without CKA_EC_PARAMS", want: "CKR_TEMPLATE_INCOMPLETE",
			run: func(m *diffMod) string {
				_, _, err := m.p.GenerateKeyPair(m.s, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil),
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)}, []*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)})
				return rv(err)
			}},
		{name: "GenerateKeyPair EC key type RSA", want: "CKR_TEMPLATE_INCONSISTENT",
			run: func(m *diffMod) string {
				_, _, err := m.p.GenerateKeyPair(m.s, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil),
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_EC_PARAMS, p256), attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA)},
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)})
				return rv(err)
			}},
		{name: "GenerateKeyPair EC bad CKA_EC_PARAMS", want: "CKR_DOMAIN_PARAMS_INVALID", soft: "CKR_GENERAL_ERROR",
			run: func(m *diffMod) string {
				_, _, err := m.p.GenerateKeyPair(m.s, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil),
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_EC_PARAMS, []byte{1, 2, 3})},
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)})
				return rv(err)
			}},
		// The private key's CKA_EC_PARAMS "MUST not be specified" when
		// generated (elliptic curve private key objects, footnote 4),
		// even the public template's.
		{name: "GenerateKeyPair EC, CKA_EC_PARAMS in the private template", want: "CKR_TEMPLATE_INCONSISTENT", soft: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				pub, priv, err := m.p.GenerateKeyPair(m.s, mech(pkcs11.CKM_EC_KEY_PAIR_GEN, nil),
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_EC_PARAMS, p256)},
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_EC_PARAMS, p256)})
				if err == nil {
					m.p.DestroyObject(m.s, pub)
					m.p.DestroyObject(m.s, priv)
				}
				return rv(err)
			}},

		// C_SetAttributeValue (4.1.2, 5.7), C_CopyObject, C_GetObjectSize.
		{name: "SetAttributeValue CKA_CLASS", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return rv(m.p.SetAttributeValue(m.s, m.aes, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA)}))
			}},
		{name: "SetAttributeValue CKA_KEY_TYPE", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return rv(m.p.SetAttributeValue(m.s, m.aes, []*pkcs11.Attribute{attr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_DES3)}))
			}},
		{name: "SetAttributeValue CKA_SENSITIVE off", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return rv(m.p.SetAttributeValue(m.s, m.priv, []*pkcs11.Attribute{attr(pkcs11.CKA_SENSITIVE, false)}))
			}},
		{name: "SetAttributeValue CKA_LABEL", want: "CKR_OK",
			run: func(m *diffMod) string {
				return rv(m.p.SetAttributeValue(m.s, m.aes, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, "diff-aes")}))
			}},
		{name: "CopyObject with a new label", want: "CKR_OK diff-copy 32",
			run: func(m *diffMod) string {
				o, err := m.p.CopyObject(m.s, m.aes, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, "diff-copy")})
				if err != nil {
					return rv(err)
				}
				a, err := m.p.GetAttributeValue(m.s, o, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, nil), attr(pkcs11.CKA_VALUE, nil)})
				m.p.DestroyObject(m.s, o)
				if err != nil {
					return "copy's attributes " + rv(err)
				}
				return fmt.Sprintf("CKR_OK %s %d", a[0].Value, len(a[1].Value))
			}},
		{name: "CopyObject changing CKA_CLASS", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return copyObj(m, m.aes, attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA))
			}},
		{name: "CopyObject sensitive off", want: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				return copyObj(m, m.priv, attr(pkcs11.CKA_SENSITIVE, false))
			}},
		{name: "CopyObject bad object", want: "CKR_OBJECT_HANDLE_INVALID", soft: "CKR_ARGUMENTS_BAD",
			run: func(m *diffMod) string { return copyObj(m, badHandle) }},
		{name: "GetObjectSize", want: "CKR_OK a size", soft: "CKR_OK unavailable",
			run: func(m *diffMod) string {
				n, err := m.raw.ObjectSize(m.s, m.aes)
				switch {
				case n == ckUnavailable:
					return rv(err) + " unavailable"
				case n > 0:
					return rv(err) + " a size"
				}
				return fmt.Sprintf("%s %d", rv(err), n)
			}},

		// Login and sessions (5.6).
		{name: "Login twice", want: "CKR_USER_ALREADY_LOGGED_IN",
			run: func(m *diffMod) string { return rv(m.p.Login(m.s, pkcs11.CKU_USER, userPIN)) }},
		{name: "Login SO while user is", want: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
			run: func(m *diffMod) string { return rv(m.p.Login(m.s, pkcs11.CKU_SO, soPIN)) }},
		{name: "Logout, Logout again", want: "CKR_OK; CKR_USER_NOT_LOGGED_IN", soft: "CKR_OK; CKR_OK",
			run: func(m *diffMod) string {
				return rv(m.p.Logout(m.s)) + "; " + rv(m.p.Logout(m.s))
			}},
		{name: "private key while logged out", want: "CKR_KEY_HANDLE_INVALID; CKR_OBJECT_HANDLE_INVALID; CKR_OK 0; CKR_OK", soft: "CKR_OBJECT_HANDLE_INVALID; CKR_OBJECT_HANDLE_INVALID; CKR_OK 0; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.SignInit(m.s, mech(pkcs11.CKM_ECDSA, nil), m.priv))
				if a == "CKR_OK" {
					m.p.Sign(m.s, data32)
				}
				t := []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}}
				b := rv(m.raw.GetAttrs(m.s, m.priv, t))
				return a + "; " + b + "; " + diffFind(m, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)})
			}},
		{name: "Login wrong PIN, then right", want: "CKR_PIN_INCORRECT; CKR_OK",
			run: func(m *diffMod) string {
				return rv(m.p.Login(m.s, pkcs11.CKU_USER, "wrong-pin-9")) + "; " + rv(m.p.Login(m.s, pkcs11.CKU_USER, userPIN))
			}},
		// A handle to a private object stays invalid after the next login
		// (C_Logout); a search finds the object again, under a new handle.
		{name: "private token object after logging in again", want: "CKR_OBJECT_HANDLE_INVALID; CKR_OK 1; CKR_OK",
			run: func(m *diffMod) string {
				label := attr(pkcs11.CKA_LABEL, "diff-relogin")
				o, err := m.p.CreateObject(m.s, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
					attr(pkcs11.CKA_TOKEN, true), attr(pkcs11.CKA_PRIVATE, true), label})
				if err != nil {
					return "CreateObject " + rv(err)
				}
				if err := m.p.Logout(m.s); err != nil {
					return "Logout " + rv(err)
				}
				if err := m.p.Login(m.s, pkcs11.CKU_USER, userPIN); err != nil {
					return "Login " + rv(err)
				}
				a := rv(m.raw.GetAttrs(m.s, o, []rawAttr{{Type: pkcs11.CKA_CLASS, Cap: 8}}))
				n := diffFind(m, []*pkcs11.Attribute{label})
				if err := m.p.FindObjectsInit(m.s, []*pkcs11.Attribute{label}); err == nil {
					if found, _, _ := m.p.FindObjects(m.s, 1); len(found) == 1 {
						m.p.DestroyObject(m.s, found[0])
					}
					m.p.FindObjectsFinal(m.s)
				}
				return a + "; " + n
			}},
		// "Trusted certificates cannot be modified" (certificate objects).
		{name: "SO-trusted certificate changed by the user", want: "CKR_ACTION_PROHIBITED", soft: "CKR_ATTRIBUTE_READ_ONLY",
			run: func(m *diffMod) string {
				if err := m.p.Logout(m.s); err != nil {
					return "Logout " + rv(err)
				}
				if err := m.p.Login(m.s, pkcs11.CKU_SO, soPIN); err != nil {
					return "Login SO " + rv(err)
				}
				cert, err := m.p.CreateObject(m.s, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
					attr(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509), attr(pkcs11.CKA_TOKEN, true), attr(pkcs11.CKA_PRIVATE, false),
					attr(pkcs11.CKA_LABEL, "diff-trusted"), attr(pkcs11.CKA_SUBJECT, []byte("subject")), attr(pkcs11.CKA_VALUE, []byte("der")),
					attr(pkcs11.CKA_TRUSTED, true)})
				m.p.Logout(m.s)
				if err := m.p.Login(m.s, pkcs11.CKU_USER, userPIN); err != nil {
					return "Login " + rv(err)
				}
				if err != nil {
					return "CreateObject " + rv(err)
				}
				defer m.p.DestroyObject(m.s, cert)
				err = m.p.SetAttributeValue(m.s, cert, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, "changed")})
				if is(err, pkcs11.CKR_ACTION_PROHIBITED) {
					return "CKR_ACTION_PROHIBITED" // a code miekg/pkcs11 does not name
				}
				return rv(err)
			}},
		// CKA_UNIQUE_ID (common attributes) and a public key's
		// CKA_PUBLIC_KEY_INFO, "DEFAULT derived from the underlying
		// public key data" (public key objects): lengths.
		{name: "CKA_UNIQUE_ID, CKA_PUBLIC_KEY_INFO of a generated key", want: "CKR_OK 32 91", soft: "CKR_ATTRIBUTE_TYPE_INVALID -1 0",
			run: func(m *diffMod) string {
				t := []rawAttr{{Type: ckaUniqueID, Null: true}, {Type: pkcs11.CKA_PUBLIC_KEY_INFO, Null: true}}
				return lens(t, m.raw.GetAttrs(m.s, m.pub, t))
			}},
		{name: "OpenSession without SERIAL", want: "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
			run: func(m *diffMod) string {
				_, err := m.p.OpenSession(m.slot, pkcs11.CKF_RW_SESSION)
				return rv(err)
			}},
		{name: "RO session writes", want: "CKR_SESSION_READ_ONLY; CKR_OK; CKR_SESSION_READ_ONLY; state 1",
			run: func(m *diffMod) string {
				ro, err := m.p.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					return "OpenSession " + rv(err)
				}
				defer m.p.CloseSession(ro)
				tok := []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), attr(pkcs11.CKA_TOKEN, true)}
				_, e1 := m.p.CreateObject(ro, tok)
				sess, e2 := m.p.CreateObject(ro, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), attr(pkcs11.CKA_TOKEN, false)})
				if e2 == nil {
					m.p.DestroyObject(ro, sess)
				}
				_, e3 := m.p.GenerateKey(ro, mech(pkcs11.CKM_AES_KEY_GEN, nil),
					[]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, true), attr(pkcs11.CKA_VALUE_LEN, 32)})
				info, _ := m.p.GetSessionInfo(ro)
				return fmt.Sprintf("%s; %s; %s; state %d", rv(e1), rv(e2), rv(e3), info.State)
			}},
		{name: "RO session SetPIN, copies", want: "CKR_SESSION_READ_ONLY; CKR_SESSION_READ_ONLY; CKR_OK",
			run: func(m *diffMod) string {
				ro, err := m.p.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					return "OpenSession " + rv(err)
				}
				defer m.p.CloseSession(ro)
				a := rv(m.p.SetPIN(ro, userPIN, userPIN))
				// The keys went with the logout (private session objects);
				// a public data object made here has not.
				o, err := m.p.CreateObject(m.s, []*pkcs11.Attribute{attr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
					attr(pkcs11.CKA_TOKEN, false), attr(pkcs11.CKA_PRIVATE, false)})
				if err != nil {
					return a + "; CreateObject " + rv(err)
				}
				defer m.p.DestroyObject(m.s, o)
				c, err := m.p.CopyObject(ro, o, []*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, true)})
				if err == nil {
					m.p.DestroyObject(m.s, c)
				}
				c2, err2 := m.p.CopyObject(ro, o, []*pkcs11.Attribute{attr(pkcs11.CKA_LABEL, "copy")})
				if err2 == nil {
					m.p.DestroyObject(m.s, c2)
				}
				return a + "; " + rv(err) + "; " + rv(err2)
			}},
		{name: "Login SO with an RO session open", want: "CKR_OK; CKR_SESSION_READ_ONLY_EXISTS",
			run: func(m *diffMod) string {
				ro, err := m.p.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					return "OpenSession " + rv(err)
				}
				defer m.p.CloseSession(ro)
				a := rv(m.p.Logout(m.s))
				return a + "; " + rv(m.p.Login(m.s, pkcs11.CKU_SO, soPIN))
			}},
		{name: "CloseAllSessions", want: "CKR_OK; CKR_SESSION_HANDLE_INVALID; state 2; CKR_OK 0; CKR_OK",
			run: func(m *diffMod) string {
				a := rv(m.p.CloseAllSessions(m.slot))
				_, err := m.p.GetSessionInfo(m.s)
				s, err2 := m.p.OpenSession(m.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
				if err2 != nil {
					return a + "; " + rv(err) + "; OpenSession " + rv(err2)
				}
				info, _ := m.p.GetSessionInfo(s)
				m.p.Login(s, pkcs11.CKU_USER, userPIN)
				n := diffFind(&diffMod{p: m.p, s: s}, nil)
				m.s = s
				return fmt.Sprintf("%s; %s; state %d; %s", a, rv(err), info.State, n)
			}},
	}
}

// finalThenUpdate measures a Final after an Update (a NULL buffer, then
// one byte short), brings one more Update, and takes the Final: it must
// be what the single-part call gives over both Updates' input.
func finalThenUpdate(m *diffMod, k rawOp, init func() error, update func(in []byte) ([]byte, error)) string {
	if err := init(); err != nil {
		return "init " + rv(err)
	}
	a, b := []byte("the first part, 22 b.."), []byte("and the second")
	out, err := update(a)
	if err != nil {
		return "update " + rv(err)
	}
	_, n, err := m.raw.Final(k, m.s, output{null: true})
	s := rvn(nil, n, err)
	if err != nil || n == 0 {
		return s
	}
	s += "; " + rvn(m.raw.Final(k, m.s, want(int(n)-1)))
	more, err := update(b)
	s += "; " + rv(err)
	last, n, err := m.raw.Final(k, m.s, want(64))
	s += "; " + rvn(last, n, err)
	s += overAB(m, k, init, append(append(out, more...), last...), string(a)+string(b))
	_, _, err = m.raw.Final(k, m.s, want(64))
	return s + "; " + rv(err)
}

// overAB says whether got is what the single-part call gives over in,
// after init.
func overAB(m *diffMod, k rawOp, init func() error, got []byte, in string) string {
	if err := init(); err != nil {
		return " (init " + rv(err) + ")"
	}
	one, _, err := m.raw.Out(k, m.s, []byte(in), want(64))
	if err != nil || string(one) != string(got) {
		return fmt.Sprintf(" not of a+b (%s)", rv(err))
	}
	return " of a+b"
}

// diffFind is a search's answer: the CK_RV of each call and the count.
func diffFind(m *diffMod, t []*pkcs11.Attribute) string {
	if err := m.p.FindObjectsInit(m.s, t); err != nil {
		return "FindObjectsInit " + rv(err)
	}
	var all []pkcs11.ObjectHandle
	var err error
	for {
		var got []pkcs11.ObjectHandle
		if got, _, err = m.p.FindObjects(m.s, 3); err != nil || len(got) == 0 {
			break
		}
		all = append(all, got...)
	}
	return fmt.Sprintf("%s %d; %s", rv(err), len(all), rv(m.p.FindObjectsFinal(m.s)))
}

func diffCreate(m *diffMod, t ...*pkcs11.Attribute) string {
	o, err := m.p.CreateObject(m.s, append([]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)}, t...))
	if err == nil {
		m.p.DestroyObject(m.s, o)
	}
	return rv(err)
}

func genKey(m *diffMod, t ...*pkcs11.Attribute) string {
	o, err := m.p.GenerateKey(m.s, mech(pkcs11.CKM_AES_KEY_GEN, nil), append([]*pkcs11.Attribute{attr(pkcs11.CKA_TOKEN, false)}, t...))
	if err == nil {
		m.p.DestroyObject(m.s, o)
	}
	return rv(err)
}

func copyObj(m *diffMod, o pkcs11.ObjectHandle, t ...*pkcs11.Attribute) string {
	c, err := m.p.CopyObject(m.s, o, t)
	if err == nil {
		m.p.DestroyObject(m.s, c)
	}
	return rv(err)
}
