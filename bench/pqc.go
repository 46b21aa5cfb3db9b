package bench

import (
	"crypto/mlkem"
	"fmt"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// The post-quantum ops: ML-DSA-65 signing, verification and key pair
// generation, ML-KEM-768 encapsulation and decapsulation (PKCS#11 3.2,
// through the module's 3.2 list). Each has a bare counterpart, the same
// library call in this process, measured in the same runs
// (Report.Bare): how far the module is from the arithmetic itself.

// madeKeys collects the session keys a worker's calls make, destroyed
// outside the clock every 256.
type madeKeys struct{ made []object }

func (k *madeKeys) add(o object) bool { k.made = append(k.made, o); return len(k.made) >= 256 }

func (k *madeKeys) tidy(e *opEnv, s session) error {
	for _, o := range k.made {
		if err := e.m.destroy(s, o); err != nil {
			return fmt.Errorf("C_DestroyObject: %w", err)
		}
	}
	k.made = k.made[:0]
	return nil
}

// pqPair is a token key pair of a post-quantum parameter set.
func pqPair(e *opEnv, gen, set uint, pubUse, privUse uint) (object, object, error) {
	pubT := newTemplate(ulongAttr(ck.CKA_PARAMETER_SET, set), boolAttr(pkcs11.CKA_TOKEN, true),
		boolAttr(pubUse, true), bytesAttr(pkcs11.CKA_LABEL, keyLabel))
	defer pubT.free()
	privT := newTemplate(boolAttr(pkcs11.CKA_TOKEN, true), boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true), boolAttr(privUse, true), bytesAttr(pkcs11.CKA_LABEL, keyLabel))
	defer privT.free()
	m := newMech(gen, nil)
	defer m.free()
	pk, sk, err := e.m.generateKeyPair(e.s, m, pubT, privT)
	if err != nil {
		return 0, 0, fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	return pk, sk, nil
}

func mldsa65Pair(e *opEnv) (object, object, error) {
	return pqPair(e, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKP_ML_DSA_65, pkcs11.CKA_VERIFY, pkcs11.CKA_SIGN)
}

func mlkem768Pair(e *opEnv) (object, object, error) {
	return pqPair(e, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKP_ML_KEM_768, ck.CKA_ENCAPSULATE, ck.CKA_DECAPSULATE)
}

// kemSecretTemplate is the session AES-256 key a KEM op makes.
func kemSecretTemplate() *template {
	return newTemplate(
		ulongAttr(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		ulongAttr(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_ENCRYPT, true),
	)
}

// bareSign and the others are the library calls the ops are set beside.
func bareSign() (func() error, error) {
	_, sk, err := mldsa65.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	data, sig := randomBytes(32), make([]byte, mldsa65.SignatureSize)
	return func() error { return mldsa65.SignTo(sk, data, nil, true, sig) }, nil
}

func bareVerify() (func() error, error) {
	pk, sk, err := mldsa65.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	data, sig := randomBytes(32), make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(sk, data, nil, true, sig); err != nil {
		return nil, err
	}
	return func() error {
		if !mldsa65.Verify(pk, data, nil, sig) {
			return fmt.Errorf("ML-DSA-65 verification failed")
		}
		return nil
	}, nil
}

func bareGenerate() (func() error, error) {
	return func() error { _, _, err := mldsa65.GenerateKey(nil); return err }, nil
}

func bareEncapsulate() (func() error, error) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, err
	}
	ek := dk.EncapsulationKey()
	return func() error { ek.Encapsulate(); return nil }, nil
}

func bareDecapsulate() (func() error, error) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, err
	}
	_, ct := dk.EncapsulationKey().Encapsulate()
	return func() error { _, err := dk.Decapsulate(ct); return err }, nil
}

var pqcOps = []op{
	{
		name:    "sign-ml-dsa-65",
		calls:   2,
		what:    "C_SignInit and C_Sign, CKM_ML_DSA (hedged, no context) on 32 bytes, ML-DSA-65",
		needs:   []mechNeed{{ck.CKM_ML_DSA_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {ck.CKM_ML_DSA, pkcs11.CKF_SIGN}},
		prepare: signOp(mldsa65Pair, ck.CKM_ML_DSA, 32),
		bare:    bareSign,
	},
	{
		name:  "verify-ml-dsa-65",
		calls: 2,
		what:  "C_VerifyInit and C_Verify, CKM_ML_DSA on 32 bytes, ML-DSA-65",
		needs: []mechNeed{{ck.CKM_ML_DSA_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {ck.CKM_ML_DSA, pkcs11.CKF_VERIFY}},
		prepare: func(e *opEnv) (*prepared, error) {
			pk, sk, err := mldsa65Pair(e)
			if err != nil {
				return nil, err
			}
			m := newMech(ck.CKM_ML_DSA, nil)
			data, sig := randomBytes(32), make([]byte, 8192)
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
		bare: bareVerify,
	},
	{
		name:  "generate-ml-dsa-65",
		calls: 1,
		what:  "C_GenerateKeyPair, CKM_ML_DSA_KEY_PAIR_GEN, ML-DSA-65 session keys (destroyed outside the clock)",
		needs: []mechNeed{{ck.CKM_ML_DSA_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}},
		prepare: func(e *opEnv) (*prepared, error) {
			m := newMech(ck.CKM_ML_DSA_KEY_PAIR_GEN, nil)
			return &prepared{
				worker: func() (worker, error) {
					pubT := newTemplate(ulongAttr(ck.CKA_PARAMETER_SET, ck.CKP_ML_DSA_65), boolAttr(pkcs11.CKA_TOKEN, false))
					privT := newTemplate(boolAttr(pkcs11.CKA_TOKEN, false), boolAttr(pkcs11.CKA_SIGN, true))
					var k madeKeys
					return worker{
						do: func(s session) (bool, error) {
							pk, sk, err := e.m.generateKeyPair(s, m, pubT, privT)
							if err != nil {
								return false, err
							}
							k.add(pk)
							return k.add(sk), nil
						},
						tidy: func(s session) error { return k.tidy(e, s) },
						done: func() { pubT.free(); privT.free() },
					}, nil
				},
				cleanup: m.free,
			}, nil
		},
		bare: bareGenerate,
	},
	{
		name:  "encapsulate-ml-kem-768",
		calls: 1,
		what:  "C_EncapsulateKey (3.2), CKM_ML_KEM, ML-KEM-768, into a session AES-256 key (destroyed outside the clock)",
		needs: []mechNeed{{ck.CKM_ML_KEM_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {ck.CKM_ML_KEM, ck.CKF_ENCAPSULATE}},
		prepare: func(e *opEnv) (*prepared, error) {
			pk, sk, err := mlkem768Pair(e)
			if err != nil {
				return nil, err
			}
			m := newMech(ck.CKM_ML_KEM, nil)
			return &prepared{
				worker: func() (worker, error) {
					t, ct := kemSecretTemplate(), make([]byte, 2048)
					var k madeKeys
					return worker{
						do: func(s session) (bool, error) {
							_, key, err := e.m.encapsulate(s, m, pk, t, ct)
							if err != nil {
								return false, err
							}
							return k.add(key), nil
						},
						tidy: func(s session) error { return k.tidy(e, s) },
						done: t.free,
					}, nil
				},
				cleanup: func() { m.free(); destroyAll(e, pk, sk)() },
			}, nil
		},
		bare: bareEncapsulate,
	},
	{
		name:  "decapsulate-ml-kem-768",
		calls: 1,
		what:  "C_DecapsulateKey (3.2), CKM_ML_KEM, ML-KEM-768, into a session AES-256 key (destroyed outside the clock)",
		needs: []mechNeed{{ck.CKM_ML_KEM_KEY_PAIR_GEN, pkcs11.CKF_GENERATE_KEY_PAIR}, {ck.CKM_ML_KEM, ck.CKF_DECAPSULATE}},
		prepare: func(e *opEnv) (*prepared, error) {
			pk, sk, err := mlkem768Pair(e)
			if err != nil {
				return nil, err
			}
			m := newMech(ck.CKM_ML_KEM, nil)
			t := kemSecretTemplate()
			buf := make([]byte, 2048)
			n, first, err := e.m.encapsulate(e.s, m, pk, t, buf)
			t.free()
			if err != nil {
				m.free()
				destroyAll(e, pk, sk)()
				return nil, fmt.Errorf("C_EncapsulateKey: %w", err)
			}
			e.m.destroy(e.s, first)
			ct := buf[:n]
			return &prepared{
				worker: func() (worker, error) {
					t, in := kemSecretTemplate(), append([]byte(nil), ct...)
					var k madeKeys
					return worker{
						do: func(s session) (bool, error) {
							key, err := e.m.decapsulate(s, m, sk, t, in)
							if err != nil {
								return false, err
							}
							return k.add(key), nil
						},
						tidy: func(s session) error { return k.tidy(e, s) },
						done: t.free,
					}, nil
				},
				cleanup: func() { m.free(); destroyAll(e, pk, sk)() },
			}, nil
		},
		bare: bareDecapsulate,
	},
}

// The post-quantum ops run before login, which must stay last.
func init() {
	last := ops[len(ops)-1]
	ops = append(append(ops[:len(ops)-1:len(ops)-1], pqcOps...), last)
}

// bareProbe is one op's bare library call.
type bareProbe struct {
	op  string
	do  func() error
	res *Result
}

// startBare makes the bare calls of the selected ops that have one.
func startBare(sel []*op) []*bareProbe {
	var out []*bareProbe
	for _, o := range sel {
		if o.bare == nil {
			continue
		}
		p := &bareProbe{op: o.name, res: &Result{Op: o.name, Module: "(bare library call)", Concurrency: 1, Status: "ok"}}
		do, err := o.bare()
		if err != nil {
			p.res.Status, p.res.Reason = "failed", err.Error()
		}
		p.do = do
		out = append(out, p)
	}
	return out
}

// measure times the bare call the way a worker times a module's (timeOp).
func (p *bareProbe) measure(opt Options) {
	if p.res.Status != "ok" {
		return
	}
	w := worker{do: func(session) (bool, error) { return false, p.do() }}
	if _, _, err := timeOp(newPhase(1), w, 0, opt.Warmup, nil); err != nil {
		p.res.Status, p.res.Reason = "failed", err.Error()
		return
	}
	h := NewHistogram()
	n, active, err := timeOp(newPhase(1), w, 0, opt.Duration, h)
	if err != nil {
		p.res.Status, p.res.Reason = "failed", err.Error()
		return
	}
	p.res.addCell(Cell{Ops: n, Active: active, OpsPerS: float64(n) / active.Seconds(), Latency: h})
}

// setBareRatios relates each op's p50 at concurrency 1 to its bare call's
// p50 plus one socket round trip: what a module in another process cannot
// do without (the module sends an Init with the call that follows it).
func setBareRatios(results []Result, bare []Result, floor *Result) {
	var rt float64
	if floor != nil && floor.Status == "ok" {
		rt = float64(floor.P50)
	}
	for _, b := range bare {
		if b.Status != "ok" || b.P50 <= 0 {
			continue
		}
		for i := range results {
			r := &results[i]
			if r.Op == b.Op && r.Status == "ok" && r.Concurrency == 1 {
				r.BareRatio = float64(r.P50) / (float64(b.P50) + rt)
			}
		}
	}
}
