package e2e

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// An Update in both calling conventions through the module and a daemon:
// one call with a buffer large enough, and a length query then the call
// (what miekg/pkcs11, OpenSSL's libp11 and Java do), over a stream that
// AES-CBC encrypts in parts (docs/performance.md, "One round trip per
// operation in either convention"). Each iteration makes one Update of
// each convention in turn, on the same operation, so that both see the
// same machine; the metrics are each one's median latency and their
// ratio, which a shared machine's noise moves less than ns/op.
//
//	go test -run '^$' -bench 'UpdateConventions' -count 6 ./cryptoki/e2e/
func BenchmarkUpdateConventions(b *testing.B) {
	d := startDaemon(b)
	b.Setenv("HSMEMU_SOCKET", d.sock)
	m := openMiekg(b, "hsmemu", need(b).module)
	l, err := messageFuncs(need(b).module)
	if err != nil {
		b.Fatal(err)
	}
	p, s := m.p, m.s
	key, err := p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer p.DestroyObject(s, key)
	cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, bytes.Repeat([]byte{1}, 16))}
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Nanoseconds())
	}
	for _, size := range []int{64, 1024} {
		part := bytes.Repeat([]byte{7}, size)
		b.Run(fmt.Sprintf("op=encrypt-update-aes-cbc-%d", size), func(b *testing.B) {
			if err := p.EncryptInit(s, cbc, key); err != nil {
				b.Fatal(err)
			}
			var one, two []time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, _, err := l.CryptUpdate(false, s, part, want(size)); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, _, err := l.CryptUpdate(false, s, part, output{null: true}); err != nil {
					b.Fatal(err)
				}
				if _, _, err := l.CryptUpdate(false, s, part, want(size)); err != nil {
					b.Fatal(err)
				}
				one, two = append(one, t1.Sub(t0)), append(two, time.Since(t1))
			}
			if _, err := p.EncryptFinal(s); err != nil {
				b.Fatal(err)
			}
			o, t := p50(one), p50(two)
			b.ReportMetric(o, "one-call-p50-ns")
			b.ReportMetric(t, "two-call-p50-ns")
			b.ReportMetric(t/o, "two÷one")
		})
	}
}
