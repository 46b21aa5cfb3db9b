package cli

import (
	"testing"
	"time"
)

func TestParseDays(t *testing.T) {
	const day = 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"30d", 30 * day, false},
		{"0d", 0, false},
		{"720h", 720 * time.Hour, false},
		{"1d12h", day + 12*time.Hour, false},
		{"90m", 90 * time.Minute, false},
		{"d", 0, true},
		{"+3d", 0, true},
		{"-3d", 0, true},
		{"3.5d", 0, true},
		{"3dd", 0, true},
		{"3d-1h", 0, true},
		{"30", 0, true},
		{"thirty days", 0, true},
	} {
		got, err := parseDays(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("parseDays(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestParseExpiry(t *testing.T) {
	before := time.Now().Add(30 * 24 * time.Hour).Unix()
	got, err := parseExpiry("30d")
	after := time.Now().Add(30 * 24 * time.Hour).Unix()
	if err != nil || got < before || got > after {
		t.Errorf("30d: %d, %v; want %d..%d", got, err, before, after)
	}
	if got, err := parseExpiry("2030-01-02T03:04:05Z"); err != nil || got != time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).Unix() {
		t.Errorf("a time: %d, %v", got, err)
	}
	for _, bad := range []string{"0d", "-1h", "yesterday"} {
		if _, err := parseExpiry(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
