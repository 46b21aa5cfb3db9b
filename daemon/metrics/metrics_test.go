package metrics

import (
	"testing"
	"time"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
)

// BenchmarkCall is what the server adds to each PKCS#11 call: two clock
// reads and Call (a counter and a histogram; a mechanism's histogram for
// an Init).
func BenchmarkCall(b *testing.B) {
	m := New()
	random, _ := calls.ByName("C_GenerateRandom")
	signInit, _ := calls.ByName("C_SignInit")
	b.Run("C_GenerateRandom", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			m.Call(random.ID, ck.CKR_OK, 0, time.Since(start))
		}
	})
	b.Run("C_SignInit", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			m.Call(signInit.ID, ck.CKR_OK, ck.CKM_ECDSA, time.Since(start))
		}
	})
	b.Run("clock", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			_ = time.Since(start)
		}
	})
}

// TestHistogram: buckets are cumulative, the count is their total, and a
// duration past the last bound counts only in +Inf.
func TestHistogram(t *testing.T) {
	t.Parallel()
	var h histogram
	for _, d := range []time.Duration{time.Microsecond, 5 * time.Microsecond, 6 * time.Microsecond, time.Millisecond, time.Minute} {
		h.observe(d)
	}
	n, sum, b := h.snapshot()
	if n != 5 || b[5e-6] != 2 || b[1e-5] != 3 || b[1e-3] != 4 || b[10] != 4 {
		t.Fatalf("count %d buckets %v", n, b)
	}
	if want := (time.Minute + time.Millisecond + 12*time.Microsecond).Seconds(); sum < want-1e-9 || sum > want+1e-9 {
		t.Fatalf("sum %v, want %v", sum, want)
	}
}

// TestMechanismLabelsBounded: the mechanism label comes from the client's
// request, refused or not, so a client naming a new number in every
// C_SignInit must not make a series (and a histogram in memory) of each:
// numbers PKCS#11 does not name share one label.
func TestMechanismLabelsBounded(t *testing.T) {
	t.Parallel()
	m := New()
	signInit, _ := calls.ByName("C_SignInit")
	m.Call(signInit.ID, ck.CKR_OK, ck.CKM_ECDSA, time.Microsecond)
	for i := range uint64(5000) {
		m.Call(signInit.ID, ck.CKR_MECHANISM_INVALID, 0x7000_0000+i, time.Microsecond)
		m.Call(signInit.ID, ck.CKR_MECHANISM_INVALID, ck.CKM_VENDOR_DEFINED+i, time.Microsecond)
	}
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]uint64{}
	for _, f := range fams {
		if f.GetName() != "hsmemu_pkcs11_mechanism_call_duration_seconds" {
			continue
		}
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "mechanism" {
					labels[l.GetValue()] = mt.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	if len(labels) != 2 || labels["CKM_ECDSA"] != 1 || labels["other"] != 10000 {
		t.Fatalf("%d mechanism labels, want CKM_ECDSA and other: %v", len(labels), func() []string {
			var s []string
			for l := range labels {
				if len(s) < 5 {
					s = append(s, l)
				}
			}
			return s
		}())
	}
}
