package mech

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkNoncePoolWorkers signs with P-256 from 1, 2 and 8 goroutines
// at once, each doing a call's worth of other work (hashing callWork
// bytes, some 10-20 us, standing in for the round trip and the daemon's
// dispatch) between signatures, and reports the signatures' p50 and p99
// latency beside the rate. Run it as the daemon's cores are counted,
// e.g. -cpu 2 on two cores: 8 workers on 2 Ps is the saturated case
// where the pool ran dry and the signers' latencies split in two.
// Workers at least GOMAXPROCS run under b.RunParallel.
func BenchmarkNoncePoolWorkers(b *testing.B) {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d, _ := priv.Bytes()
	sc, err := newECScalar(elliptic.P256(), d)
	if err != nil {
		b.Fatal(err)
	}
	const callWork = 8 << 10
	for _, workers := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			pools := newNoncePools()
			defer pools.close()
			p := pools.of(sc.curve)
			var (
				mu  sync.Mutex
				lat []time.Duration
			)
			// worker signs while next says so, keeping its latencies.
			worker := func(next func() bool) {
				digest := make([]byte, 32)
				call := make([]byte, callWork)
				own := make([]time.Duration, 0, 1024)
				for next() {
					sum := sha256.Sum256(call)
					digest[0] = sum[0]
					t := time.Now()
					if _, err := p.sign(sc.d, digest); err != nil {
						b.Error(err)
						return
					}
					own = append(own, time.Since(t))
				}
				mu.Lock()
				lat = append(lat, own...)
				mu.Unlock()
			}
			procs := runtime.GOMAXPROCS(0)
			start := time.Now()
			if workers >= procs && workers%procs == 0 {
				b.SetParallelism(workers / procs)
				b.RunParallel(func(pb *testing.PB) { worker(pb.Next) })
			} else {
				// Fewer workers than Ps: b.N shared among them.
				var left = b.N
				var wg sync.WaitGroup
				for range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						worker(func() bool {
							mu.Lock()
							defer mu.Unlock()
							left--
							return left >= 0
						})
					}()
				}
				wg.Wait()
			}
			elapsed := time.Since(start)
			if len(lat) == 0 {
				return
			}
			slices.Sort(lat)
			p50 := lat[len(lat)/2]
			p99 := lat[len(lat)*99/100]
			b.ReportMetric(float64(p50.Nanoseconds())/1e3, "p50-us")
			b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-us")
			b.ReportMetric(float64(p99)/float64(max(p50, 1)), "p99/p50")
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "sigs/s")
		})
	}
}
