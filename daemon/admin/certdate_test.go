package admin

import (
	"testing"
	"time"
)

// TestCKDate: a certificate's validity as CK_DATEs, and no date where a
// CK_DATE has none (years 1900 to 9999), which the token would refuse
// and so refuse the certificate.
func TestCKDate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		t    time.Time
		want string
	}{
		{time.Date(2024, 2, 29, 23, 0, 0, 0, time.UTC), "20240229"},
		{time.Date(2024, 3, 1, 1, 0, 0, 0, time.FixedZone("", 2*3600)), "20240229"},
		{time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), "19000101"},
		{time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), "99991231"},
		{time.Date(1899, 12, 31, 0, 0, 0, 0, time.UTC), ""},
		{time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), ""},
	} {
		if got := string(ckDate(c.t)); got != c.want {
			t.Errorf("ckDate(%v) = %q, want %q", c.t, got, c.want)
		}
	}
}
