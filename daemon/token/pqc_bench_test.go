package token

import (
	"crypto/mlkem"
	"slices"
	"testing"
	"time"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
)

// BenchmarkEnginePQC measures the post-quantum calls through the whole
// engine in process (the calls encoded and decoded as on the wire,
// dispatched, the key object resolved, its session key made and kept),
// without module or socket, beside the bare library call on the same
// key, in the same run: "engine" over "bare" is the engine's overhead
// (docs/performance.md, "Post-quantum operations"). Each iteration runs
// the engine call and the bare call one after the other, and the medians
// of each are reported with their ratio: on a shared machine whose load
// drifts, pairs taken together keep the ratio honest where two separate
// benchmarks would not. Each KEM call's session key is destroyed every
// 256 calls, outside the clock.
func BenchmarkEnginePQC(b *testing.B) {
	d := startEngine(b, Config{})
	cl := d.dial(b)
	slot := cl.NewToken("bench")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	gen := func(m, set uint64) (uint64, uint64) {
		out := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(m), T(AU(ck.CKA_PARAMETER_SET, set)), T(AB(ck.CKA_SENSITIVE, false)), None(), None())
		return out[4].Ulong, out[5].Ulong
	}
	attr := func(o, typ uint64) []byte {
		_, ans := cl.Get(h, o, typ)
		return append([]byte(nil), ans[0].Value...)
	}
	msg := make([]byte, 32)
	dsaPub, dsaPriv := gen(ck.CKM_ML_DSA_KEY_PAIR_GEN, ck.CKP_ML_DSA_65)
	var sk mldsa65.PrivateKey
	var pk mldsa65.PublicKey
	if sk.UnmarshalBinary(attr(dsaPriv, ck.CKA_VALUE)) != nil || pk.UnmarshalBinary(attr(dsaPub, ck.CKA_VALUE)) != nil {
		b.Fatal("the token's ML-DSA key does not parse")
	}
	sig := make([]byte, mldsa65.SignatureSize)
	if err := mldsa65.SignTo(&sk, msg, nil, true, sig); err != nil {
		b.Fatal(err)
	}
	kemPub, kemPriv := gen(ck.CKM_ML_KEM_KEY_PAIR_GEN, ck.CKP_ML_KEM_768)
	dk, err := mlkem.NewDecapsulationKey768(attr(kemPriv, ck.CKA_SEED))
	if err != nil {
		b.Fatal(err)
	}
	ek := dk.EncapsulationKey()
	_, ct := ek.Encapsulate()
	aes := T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_AES), AB(ck.CKA_ENCRYPT, true))
	var made []uint64
	keep := func(k uint64) { made = append(made, k) }
	tidy := func() {
		for _, k := range made {
			cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(k))
		}
		made = made[:0]
	}
	for _, op := range []struct {
		name         string
		engine, bare func()
	}{
		{"sign-ml-dsa-65", func() {
			cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_ML_DSA), U(dsaPriv))
			cl.Must(ck.CKR_OK, "C_Sign", U(h), B(msg), Out(8192))
		}, func() {
			if err := mldsa65.SignTo(&sk, msg, nil, true, sig); err != nil {
				b.Fatal(err)
			}
		}},
		{"verify-ml-dsa-65", func() {
			cl.Must(ck.CKR_OK, "C_VerifyInit", U(h), M(ck.CKM_ML_DSA), U(dsaPub))
			cl.Must(ck.CKR_OK, "C_Verify", U(h), B(msg), B(sig))
		}, func() {
			if !mldsa65.Verify(&pk, msg, nil, sig) {
				b.Fatal("refused")
			}
		}},
		{"encapsulate-ml-kem-768", func() {
			keep(cl.Must(ck.CKR_OK, "C_EncapsulateKey", U(h), M(ck.CKM_ML_KEM), U(kemPub), aes, Out(2048), None())[5].Ulong)
		}, func() { ek.Encapsulate() }},
		{"decapsulate-ml-kem-768", func() {
			keep(cl.Must(ck.CKR_OK, "C_DecapsulateKey", U(h), M(ck.CKM_ML_KEM), U(kemPriv), aes, B(ct), None())[5].Ulong)
		}, func() {
			if _, err := dk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
		}},
	} {
		b.Run(op.name, func(b *testing.B) {
			var eng, bare []time.Duration
			i := 0
			for b.Loop() {
				// Alternate which goes first, so that neither always
				// runs on caches the other warmed.
				t0 := time.Now()
				if i%2 == 0 {
					op.engine()
					t1 := time.Now()
					op.bare()
					eng, bare = append(eng, t1.Sub(t0)), append(bare, time.Since(t1))
				} else {
					op.bare()
					t1 := time.Now()
					op.engine()
					bare, eng = append(bare, t1.Sub(t0)), append(eng, time.Since(t1))
				}
				if i++; len(made) >= 256 {
					b.StopTimer()
					tidy()
					b.StartTimer()
				}
			}
			tidy()
			e, r := median(eng), median(bare)
			b.ReportMetric(float64(e.Nanoseconds()), "engine-ns/op")
			b.ReportMetric(float64(r.Nanoseconds()), "bare-ns/op")
			b.ReportMetric(float64(e)/float64(r), "engine/bare")
		})
	}
}

// median is the median of d, which it sorts.
func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}
