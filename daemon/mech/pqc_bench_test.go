package mech

import (
	"bytes"
	"crypto/mlkem"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/circl/sign"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The post-quantum mechanisms in process beside their bare library calls,
// in the same run, as the other mechanisms' (bench_test.go): "mech" is
// what the daemon does for C_SignInit then C_Sign (or C_Verify*, or the
// KEM calls) on a key object whose parsed form is kept; "bare" the library
// call on a key parsed once.

func BenchmarkMechMLDSA65Sign(b *testing.B) {
	_, priv := genPQC(b, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65)
	msg := make([]byte, 32)
	b.Run("mech", func(b *testing.B) {
		benchSign(b, priv, &wire.Mechanism{Type: ck.CKM_ML_DSA}, msg)
	})
	b.Run("bare", func(b *testing.B) {
		var sk mldsa65.PrivateKey
		if err := sk.UnmarshalBinary(priv.attrs[ck.CKA_VALUE]); err != nil {
			b.Fatal(err)
		}
		sig := make([]byte, mldsa65.SignatureSize)
		for b.Loop() {
			if err := mldsa65.SignTo(&sk, msg, nil, true, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMechMLDSA65Verify(b *testing.B) {
	pub, priv := genPQC(b, ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKK_ML_DSA, ck.CKP_ML_DSA_65)
	msg := make([]byte, 32)
	m := &wire.Mechanism{Type: ck.CKM_ML_DSA}
	sig, err := pqcSign(mechanisms[ck.CKM_ML_DSA], priv, m, msg)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("mech", func(b *testing.B) {
		for b.Loop() {
			if err := pqcVerify(mechanisms[ck.CKM_ML_DSA], pub, m, msg, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare", func(b *testing.B) {
		var pk mldsa65.PublicKey
		if err := pk.UnmarshalBinary(pub.attrs[ck.CKA_VALUE]); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if !mldsa65.Verify(&pk, msg, nil, sig) {
				b.Fatal("refused")
			}
		}
	})
}

func BenchmarkMechMLKEM768(b *testing.B) {
	pub, priv := genPQC(b, ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKK_ML_KEM, ck.CKP_ML_KEM_768)
	m := &wire.Mechanism{Type: ck.CKM_ML_KEM}
	kem := mechanisms[ck.CKM_ML_KEM]
	ct, _, err := kem.Encapsulate(pub, m)
	if err != nil {
		b.Fatal(err)
	}
	ek, err := mlkem.NewEncapsulationKey768(pub.attrs[ck.CKA_VALUE])
	if err != nil {
		b.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey768(priv.attrs[ck.CKA_SEED])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encapsulate/mech", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := kem.Encapsulate(pub, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encapsulate/bare", func(b *testing.B) {
		for b.Loop() {
			ek.Encapsulate()
		}
	})
	b.Run("decapsulate/mech", func(b *testing.B) {
		for b.Loop() {
			if _, err := kem.Decapsulate(priv, m, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decapsulate/bare", func(b *testing.B) {
		for b.Loop() {
			if _, err := dk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMLDSAImportExpanded is what C_CreateObject and C_UnwrapKey
// check of an ML-DSA private key given without its seed ("expanded": the
// range check, tr, and the pairwise-consistency test), the test's share
// of it ("pct"), and, beside them, the same key given by its seed
// ("seed": one key derivation). The test signs deterministically, so its
// cost is one key's number of rejection rounds: the keys cycle through 16
// to average them. cpu-ns/op is the thread's CPU time, which on a shared
// machine counts the other processes' turns much less than ns/op does.
func BenchmarkMLDSAImportExpanded(b *testing.B) {
	for _, set := range []uint64{ck.CKP_ML_DSA_44, ck.CKP_ML_DSA_65, ck.CKP_ML_DSA_87} {
		p := mldsaSets[set]
		var vals, seeds [][]byte
		var sks []sign.PrivateKey
		for i := range 16 {
			seed := bytes.Repeat([]byte{byte(i)}, mldsaSeedLen)
			_, sk := p.scheme.DeriveKey(seed)
			v, _ := sk.MarshalBinary()
			vals, seeds, sks = append(vals, v), append(seeds, seed), append(sks, sk)
		}
		b.Run(p.name+"/expanded", func(b *testing.B) {
			cpuLoop(b, func(i int) {
				m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: vals[i%16]}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, m); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(p.name+"/pct", func(b *testing.B) {
			cpuLoop(b, func(i int) {
				if !mldsaSignsForItsPublicKey(p, sks[i%16]) {
					b.Fatal("refused")
				}
			})
		})
		b.Run(p.name+"/seed", func(b *testing.B) {
			cpuLoop(b, func(i int) {
				m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: seeds[i%16]}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, m); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkMLKEMImportExpanded is what C_CreateObject and C_UnwrapKey
// check of an ML-KEM decapsulation key given without its seed
// ("expanded": H(ek), the ek's modulus check, dk_PKE's encoding and the
// pairwise-consistency test), the last two's share of it ("pct"), and the
// same key given by its seed ("seed").
func BenchmarkMLKEMImportExpanded(b *testing.B) {
	for _, set := range []uint64{ck.CKP_ML_KEM_512, ck.CKP_ML_KEM_768, ck.CKP_ML_KEM_1024} {
		p := mlkemSets[set]
		seed := bytes.Repeat([]byte{1}, mlkemSeedLen)
		_, sk := p.circl.DeriveKeyPair(seed)
		dk, _ := sk.MarshalBinary()
		b.Run(p.name+"/expanded", func(b *testing.B) {
			cpuLoop(b, func(int) {
				m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_VALUE: dk}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, m); err != nil {
					b.Fatal(err)
				}
			})
		})
		b.Run(p.name+"/pct", func(b *testing.B) {
			cpuLoop(b, func(int) {
				if !mlkemDKConsistent(p, dk) {
					b.Fatal("refused")
				}
			})
		})
		b.Run(p.name+"/seed", func(b *testing.B) {
			cpuLoop(b, func(int) {
				m := map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: seed}
				if err := CompletePQCKey(ck.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, m); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// cpuLoop runs f(0), f(1), ... b.N times on one thread and reports the
// thread's CPU time per call beside the wall time.
func cpuLoop(b *testing.B, f func(i int)) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(1, &ru) // RUSAGE_THREAD
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	i := 0
	for b.Loop() {
		f(i)
		i++
	}
	b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
}
