package bench

import (
	"crypto/rand"
	"fmt"

	"github.com/miekg/pkcs11"
)

// An op is one operation the harness measures. prepare makes what the op
// needs on a module (keys, a signature to verify) once; each worker then
// gets its own buffers and, where a call mutates it, its own mechanism.
type op struct {
	name string
	what string
	// needs lists the mechanisms the op must find, each with the flag it
	// must carry; choose lists alternatives of which the first offered
	// is used (and reported).
	needs  []mechNeed
	choose []mechNeed
	// calls is how many PKCS#11 calls one op makes.
	calls int
	// single ops run at concurrency 1 only: login state belongs to the
	// application, not to a session.
	single bool
	// logsOut ops leave the application logged out; the runner logs in
	// again after them (the keys are token objects, which outlive that).
	logsOut bool
	// output ops make a call with an output buffer, which applications
	// make in one of two conventions (Options.Conventions); conv is the
	// one this copy of the op measures ("" for the others).
	output  bool
	conv    string
	prepare func(e *opEnv) (*prepared, error)
	// bare, when set, makes the library call the op is compared with,
	// measured in this process in the same runs (Report.Bare).
	bare func() (func() error, error)
}

// The calling conventions of a call with an output buffer.
const (
	OneCall = "one-call" // a buffer large enough, one call
	TwoCall = "two-call" // a NULL buffer for the length first, then the call
)

// id names the op with its convention, where it has one.
func (o *op) id() string {
	if o.conv == "" {
		return o.name
	}
	return o.name + "/" + o.conv
}

type mechNeed struct {
	mech uint
	flag uint
}

// opEnv is what prepare works with.
type opEnv struct {
	m       *module
	s       session // the module's first session, logged in
	mech    uint    // the mechanism chosen from op.choose, if any
	pin     string
	objects int
	twoCall bool // the op's output calls ask for the length first
	session bool // its keys are session objects, not token objects
}

// prepared is an op ready to run on one module.
type prepared struct {
	worker  func() (worker, error)
	cleanup func()
}

// A worker runs an op in its own session. do is the measured call; when
// it returns housekeep=true the runner calls tidy outside the clock (to
// destroy the keys unwrap made, say).
type worker struct {
	do   func(s session) (housekeep bool, err error)
	tidy func(s session) error
	done func()
}

var (
	oidP256    = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	oidEd25519 = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}
	// edwards25519 as a PrintableString, the form older modules know.
	nameEd25519 = append([]byte{0x13, 0x0c}, "edwards25519"...)
)

const (
	ckmSHA256 = 0x250
	ckmEdDSA  = 0x1057
	ckmEdGen  = 0x1055
	ckkEd     = 0x40
	ckmKWP    = 0x210B
	ckmKWPad  = 0x210A
	ckmKW     = 0x2109
)

// mechNames names the mechanisms the ops may report.
var mechNames = map[uint]string{
	ckmKWP: "CKM_AES_KEY_WRAP_KWP", ckmKWPad: "CKM_AES_KEY_WRAP_PAD", ckmKW: "CKM_AES_KEY_WRAP",
}

func mechName(m uint) string {
	if n, ok := mechNames[m]; ok {
		return n
	}
	return fmt.Sprintf("mechanism 0x%x", m)
}

// The keys the ops use are token objects, as a keystore's keys are; they
// carry this label, and the harness destroys them when it ends.
var (
	keyLabel      = []byte("hsmemu-bench-key")
	generateLabel = []byte("hsmemu-bench-generate") // generate-aes-256's keys, destroyed as made
)

// aesKey is an AES-256 token key for the given uses.
func aesKey(e *opEnv, extractable bool, uses ...uint) (object, error) {
	attrs := []attr{
		ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		ulongAttr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		ulongAttr(pkcs11.CKA_VALUE_LEN, 32),
		boolAttr(pkcs11.CKA_TOKEN, !e.session),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, extractable),
		bytesAttr(pkcs11.CKA_LABEL, keyLabel),
	}
	for _, u := range uses {
		attrs = append(attrs, boolAttr(u, true))
	}
	t := newTemplate(attrs...)
	defer t.free()
	mech := newMech(pkcs11.CKM_AES_KEY_GEN, nil)
	defer mech.free()
	k, err := e.m.generateKey(e.s, mech, t)
	if err != nil {
		return 0, fmt.Errorf("C_GenerateKey AES-256: %w", err)
	}
	return k, nil
}

// wrapKeys makes the wrapping key and the extractable key it wraps.
func wrapKeys(e *opEnv) (kek, key object, err error) {
	if kek, err = aesKey(e, false, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP); err != nil {
		return 0, 0, err
	}
	if key, err = aesKey(e, true, pkcs11.CKA_ENCRYPT); err != nil {
		e.m.destroy(e.s, kek)
		return 0, 0, err
	}
	return kek, key, nil
}

// keyPair makes a token key pair for signing.
func keyPair(e *opEnv, mech uint, pub []attr) (object, object, error) {
	pubT := newTemplate(append(pub, boolAttr(pkcs11.CKA_TOKEN, !e.session), boolAttr(pkcs11.CKA_VERIFY, true),
		bytesAttr(pkcs11.CKA_LABEL, keyLabel))...)
	defer pubT.free()
	privT := newTemplate(boolAttr(pkcs11.CKA_TOKEN, !e.session), boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true), boolAttr(pkcs11.CKA_SIGN, true), bytesAttr(pkcs11.CKA_LABEL, keyLabel))
	defer privT.free()
	m := newMech(mech, nil)
	defer m.free()
	pk, sk, err := e.m.generateKeyPair(e.s, m, pubT, privT)
	if err != nil {
		return 0, 0, fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	return pk, sk, nil
}

// destroyAll is a cleanup that destroys what prepare made.
func destroyAll(e *opEnv, objs ...object) func() {
	return func() {
		for _, o := range objs {
			e.m.destroy(e.s, o)
		}
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// signOp measures SignInit and Sign with a key pair made by gen.
func signOp(gen func(e *opEnv) (object, object, error), mech uint, dataLen int) func(e *opEnv) (*prepared, error) {
	return func(e *opEnv) (*prepared, error) {
		pk, sk, err := gen(e)
		if err != nil {
			return nil, err
		}
		m := newMech(mech, nil)
		return &prepared{
			worker: func() (worker, error) {
				data, sig := randomBytes(dataLen), make([]byte, 8192)
				return worker{do: func(s session) (bool, error) {
					_, err := e.m.sign(s, m, sk, data, sig, e.twoCall)
					return false, err
				}}, nil
			},
			cleanup: func() { m.free(); destroyAll(e, pk, sk)() },
		}, nil
	}
}

func ecP256(e *opEnv) (object, object, error) {
	return keyPair(e, pkcs11.CKM_EC_KEY_PAIR_GEN, []attr{bytesAttr(pkcs11.CKA_EC_PARAMS, oidP256)})
}

func rsa2048(e *opEnv) (object, object, error) {
	return keyPair(e, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, []attr{
		ulongAttr(pkcs11.CKA_MODULUS_BITS, 2048),
		bytesAttr(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
	})
}

// ed25519 names the curve by OID, then as a PrintableString for modules
// that know only that form.
func ed25519(e *opEnv) (object, object, error) {
	pk, sk, err := keyPair(e, ckmEdGen, []attr{bytesAttr(pkcs11.CKA_EC_PARAMS, oidEd25519)})
	if err == nil {
		return pk, sk, nil
	}
	return keyPair(e, ckmEdGen, []attr{bytesAttr(pkcs11.CKA_EC_PARAMS, nameEd25519)})
}

// ops lists every operation in the order they run.
var ops = []op{
	{
		name:   "wrap",
		output: true,
		calls:  1,
		what:   "C_WrapKey of an AES-256 key under an AES-256 key",
		choose: []mechNeed{{ckmKWP, pkcs11.CKF_WRAP}, {ckmKWPad, pkcs11.CKF_WRAP}, {ckmKW, pkcs11.CKF_WRAP}},
		needs:  []mechNeed{{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE}},
		prepare: func(e *opEnv) (*prepared, error) {
			kek, key, err := wrapKeys(e)
			if err != nil {
				return nil, err
			}
			m := newMech(e.mech, nil)
			return &prepared{
				worker: func() (worker, error) {
					out := make([]byte, 256)
					return worker{do: func(s session) (bool, error) {
						_, err := e.m.wrap(s, m, kek, key, out, e.twoCall)
						return false, err
					}}, nil
				},
				cleanup: func() { m.free(); destroyAll(e, kek, key)() },
			}, nil
		},
	},
	{
		name:   "unwrap",
		calls:  1,
		what:   "C_UnwrapKey of an AES-256 key into a session object",
		choose: []mechNeed{{ckmKWP, pkcs11.CKF_UNWRAP}, {ckmKWPad, pkcs11.CKF_UNWRAP}, {ckmKW, pkcs11.CKF_UNWRAP}},
		needs:  []mechNeed{{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE}},
		prepare: func(e *opEnv) (*prepared, error) {
			kek, key, err := wrapKeys(e)
			if err != nil {
				return nil, err
			}
			m := newMech(e.mech, nil)
			buf := make([]byte, 256)
			n, err := e.m.wrap(e.s, m, kek, key, buf, false)
			e.m.destroy(e.s, key)
			if err != nil {
				m.free()
				e.m.destroy(e.s, kek)
				return nil, fmt.Errorf("C_WrapKey: %w", err)
			}
			wrapped := buf[:n]
			return &prepared{
				worker: func() (worker, error) {
					t := newTemplate(
						ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
						ulongAttr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
						boolAttr(pkcs11.CKA_TOKEN, false),
						boolAttr(pkcs11.CKA_ENCRYPT, true),
					)
					in := append([]byte(nil), wrapped...)
					var made []object
					return worker{
						do: func(s session) (bool, error) {
							k, err := e.m.unwrap(s, m, kek, in, t)
							if err != nil {
								return false, err
							}
							made = append(made, k)
							return len(made) >= 256, nil
						},
						tidy: func(s session) error {
							for _, k := range made {
								if err := e.m.destroy(s, k); err != nil {
									return fmt.Errorf("C_DestroyObject: %w", err)
								}
							}
							made = made[:0]
							return nil
						},
						done: t.free,
					}, nil
				},
				cleanup: func() { m.free(); e.m.destroy(e.s, kek) },
			}, nil
		},
	},
	{
		name:    "sign-ecdsa-p256",
		output:  true,
		calls:   2,
		what:    "C_SignInit and C_Sign, CKM_ECDSA on a 32-byte hash, P-256",
		needs:   []mechNeed{{pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {pkcs11.CKM_ECDSA, pkcs11.CKF_SIGN}},
		prepare: signOp(ecP256, pkcs11.CKM_ECDSA, 32),
	},
	{
		name:    "sign-rsa-2048",
		output:  true,
		calls:   2,
		what:    "C_SignInit and C_Sign, CKM_SHA256_RSA_PKCS on 32 bytes, RSA-2048",
		needs:   []mechNeed{{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {pkcs11.CKM_SHA256_RSA_PKCS, pkcs11.CKF_SIGN}},
		prepare: signOp(rsa2048, pkcs11.CKM_SHA256_RSA_PKCS, 32),
	},
	{
		name:    "sign-ed25519",
		output:  true,
		calls:   2,
		what:    "C_SignInit and C_Sign, CKM_EDDSA on 32 bytes, Ed25519",
		needs:   []mechNeed{{ckmEdGen, pkcs11.CKF_GENERATE_KEY_PAIR}, {ckmEdDSA, pkcs11.CKF_SIGN}},
		prepare: signOp(ed25519, ckmEdDSA, 32),
	},
	{
		name:  "verify-ecdsa-p256",
		calls: 2,
		what:  "C_VerifyInit and C_Verify, CKM_ECDSA, P-256",
		needs: []mechNeed{{pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {pkcs11.CKM_ECDSA, pkcs11.CKF_VERIFY}},
		prepare: func(e *opEnv) (*prepared, error) {
			pk, sk, err := ecP256(e)
			if err != nil {
				return nil, err
			}
			m := newMech(pkcs11.CKM_ECDSA, nil)
			data, sig := randomBytes(32), make([]byte, 256)
			n, err := e.m.sign(e.s, m, sk, data, sig, false)
			if err != nil {
				m.free()
				destroyAll(e, pk, sk)()
				return nil, fmt.Errorf("C_Sign: %w", err)
			}
			sig = sig[:n]
			return &prepared{
				worker: func() (worker, error) {
					d, sg := append([]byte(nil), data...), append([]byte(nil), sig...)
					return worker{do: func(s session) (bool, error) {
						return false, e.m.verify(s, m, pk, d, sg)
					}}, nil
				},
				cleanup: func() { m.free(); destroyAll(e, pk, sk)() },
			}, nil
		},
	},
	{
		name:   "encrypt-aes-gcm-1k",
		output: true,
		calls:  2,
		what:   "C_EncryptInit and C_Encrypt, CKM_AES_GCM (96-bit IV, 128-bit tag), 1 KiB, AES-256",
		needs:  []mechNeed{{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE}, {pkcs11.CKM_AES_GCM, pkcs11.CKF_ENCRYPT}},
		prepare: func(e *opEnv) (*prepared, error) {
			key, err := aesKey(e, false, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
			if err != nil {
				return nil, err
			}
			return &prepared{
				worker: func() (worker, error) {
					m := newGCMMech(12, 128)
					data, out := randomBytes(1024), make([]byte, 1024+64)
					return worker{
						do: func(s session) (bool, error) {
							m.nextIV()
							_, err := e.m.encrypt(s, m, key, data, out, e.twoCall)
							return false, err
						},
						done: m.free,
					}, nil
				},
				cleanup: destroyAll(e, key),
			}, nil
		},
	},
	{
		name:   "hmac-sha256",
		output: true,
		calls:  2,
		what:   "C_SignInit and C_Sign, CKM_SHA256_HMAC on 1 KiB, 256-bit generic secret",
		needs:  []mechNeed{{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKF_GENERATE}, {pkcs11.CKM_SHA256_HMAC, pkcs11.CKF_SIGN}},
		prepare: func(e *opEnv) (*prepared, error) {
			t := newTemplate(
				ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				ulongAttr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
				ulongAttr(pkcs11.CKA_VALUE_LEN, 32),
				boolAttr(pkcs11.CKA_TOKEN, !e.session),
				boolAttr(pkcs11.CKA_PRIVATE, true),
				boolAttr(pkcs11.CKA_SIGN, true),
				boolAttr(pkcs11.CKA_VERIFY, true),
				bytesAttr(pkcs11.CKA_LABEL, keyLabel),
			)
			defer t.free()
			gen := newMech(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)
			defer gen.free()
			key, err := e.m.generateKey(e.s, gen, t)
			if err != nil {
				return nil, fmt.Errorf("C_GenerateKey generic secret: %w", err)
			}
			m := newMech(pkcs11.CKM_SHA256_HMAC, nil)
			return &prepared{
				worker: func() (worker, error) {
					data, mac := randomBytes(1024), make([]byte, 64)
					return worker{do: func(s session) (bool, error) {
						_, err := e.m.sign(s, m, key, data, mac, e.twoCall)
						return false, err
					}}, nil
				},
				cleanup: func() { m.free(); destroyAll(e, key)() },
			}, nil
		},
	},
	{
		name:   "digest-sha256-1k",
		output: true,
		calls:  2,
		what:   "C_DigestInit and C_Digest, CKM_SHA256, 1 KiB",
		needs:  []mechNeed{{ckmSHA256, pkcs11.CKF_DIGEST}},
		prepare: func(e *opEnv) (*prepared, error) {
			m := newMech(ckmSHA256, nil)
			return &prepared{
				worker: func() (worker, error) {
					data, out := randomBytes(1024), make([]byte, 64)
					return worker{do: func(s session) (bool, error) {
						_, err := e.m.digest(s, m, data, out, e.twoCall)
						return false, err
					}}, nil
				},
				cleanup: m.free,
			}, nil
		},
	},
	{
		name:  "random-32",
		calls: 1,
		what:  "C_GenerateRandom of 32 bytes",
		prepare: func(e *opEnv) (*prepared, error) {
			return &prepared{worker: func() (worker, error) {
				out := make([]byte, 32)
				return worker{do: func(s session) (bool, error) { return false, e.m.random(s, out) }}, nil
			}, cleanup: func() {}}, nil
		},
	},
	{
		name:    "find",
		calls:   3,
		what:    "C_FindObjectsInit, C_FindObjects and C_FindObjectsFinal by CKA_LABEL among the token's bench objects",
		prepare: prepareFind,
	},
	{
		name:  "generate-aes-256",
		calls: 2,
		what:  "C_GenerateKey of an AES-256 token object, then C_DestroyObject",
		needs: []mechNeed{{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKF_GENERATE}},
		prepare: func(e *opEnv) (*prepared, error) {
			return &prepared{
				worker: func() (worker, error) {
					t := newTemplate(
						ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
						ulongAttr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
						ulongAttr(pkcs11.CKA_VALUE_LEN, 32),
						boolAttr(pkcs11.CKA_TOKEN, true),
						boolAttr(pkcs11.CKA_PRIVATE, true),
						boolAttr(pkcs11.CKA_ENCRYPT, true),
						bytesAttr(pkcs11.CKA_LABEL, generateLabel),
					)
					m := newMech(pkcs11.CKM_AES_KEY_GEN, nil)
					return worker{
						do:   func(s session) (bool, error) { return false, e.m.generateDestroy(s, m, t) },
						done: func() { t.free(); m.free() },
					}, nil
				},
				cleanup: func() {},
			}, nil
		},
	},
	{
		name:    "login",
		calls:   2,
		what:    "C_Login (user) and C_Logout",
		single:  true,
		logsOut: true,
		prepare: func(e *opEnv) (*prepared, error) {
			pin := cBytes([]byte(e.pin))
			return &prepared{
				worker: func() (worker, error) {
					return worker{do: func(s session) (bool, error) {
						return false, e.m.loginLogout(s, pin, len(e.pin))
					}}, nil
				},
				cleanup: func() { cFree(pin) },
			}, nil
		},
	},
}

// findApp marks the objects find searches among.
const findApp = "hsmemu bench find"

func findLabel(i int) []byte { return []byte(fmt.Sprintf("hsmemu-bench-find-%06d", i)) }

// prepareFind makes sure the token holds exactly e.objects bench objects
// (populateFind does the slow part, timed, before any run).
func prepareFind(e *opEnv) (*prepared, error) {
	if e.objects <= 0 {
		return nil, errUnsupported("no objects to search among (--find-among 0)")
	}
	return &prepared{
		worker: func() (worker, error) {
			var i int
			stride := findStride(e.objects)
			ts := make([]*template, e.objects)
			for n := range ts {
				ts[n] = newTemplate(ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), bytesAttr(pkcs11.CKA_LABEL, findLabel(n)))
			}
			return worker{
				do: func(s session) (bool, error) {
					i = (i + stride) % len(ts)
					found, err := e.m.find(s, ts[i], 2)
					if err != nil {
						return false, err
					}
					if len(found) != 1 {
						return false, fmt.Errorf("find by label found %d objects, want 1", len(found))
					}
					return false, nil
				},
				done: func() {
					for _, t := range ts {
						t.free()
					}
				},
			}, nil
		},
		cleanup: func() {},
	}, nil
}

// populateFind creates the bench objects find searches among, unless the
// token already holds exactly that many. It reports whether it made any.
func populateFind(m *module, s session, n int) (bool, error) {
	app := newTemplate(ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), bytesAttr(pkcs11.CKA_APPLICATION, []byte(findApp)))
	defer app.free()
	have, err := m.findAll(s, app)
	if err != nil {
		return false, fmt.Errorf("count the bench objects: %w", err)
	}
	if len(have) == n && hasSampleLabels(m, s, n) {
		return false, nil
	}
	for _, o := range have {
		if err := m.destroy(s, o); err != nil {
			return false, fmt.Errorf("remove old bench objects: %w", err)
		}
	}
	value := []byte("hsmemu bench")
	for i := 0; i < n; i++ {
		t := newTemplate(
			ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			boolAttr(pkcs11.CKA_TOKEN, true),
			boolAttr(pkcs11.CKA_PRIVATE, false),
			bytesAttr(pkcs11.CKA_LABEL, findLabel(i)),
			bytesAttr(pkcs11.CKA_APPLICATION, []byte(findApp)),
			bytesAttr(pkcs11.CKA_VALUE, value),
		)
		_, err := m.create(s, t)
		t.free()
		if err != nil {
			return true, fmt.Errorf("create bench object %d: %w", i, err)
		}
	}
	return true, nil
}

// hasSampleLabels samples the labels find looks for (the first, the middle
// and the last; a search costs SoftHSMv2 a pass over every object): each
// must be there once, or the token is populated again.
func hasSampleLabels(m *module, s session, n int) bool {
	for _, i := range []int{0, n / 2, n - 1} {
		t := newTemplate(ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_DATA), bytesAttr(pkcs11.CKA_LABEL, findLabel(i)))
		found, err := m.find(s, t, 2)
		t.free()
		if err != nil || len(found) != 1 {
			return false
		}
	}
	return true
}

// findStride is a step through n labels that visits each of them before
// any repeats: a prime that does not divide n.
func findStride(n int) int {
	for _, p := range []int{7919, 7907, 7901} {
		if n%p != 0 {
			return p
		}
	}
	return 1
}

// errUnsupported marks an op a module cannot run, which is not a failure.
type errUnsupported string

func (e errUnsupported) Error() string { return string(e) }
