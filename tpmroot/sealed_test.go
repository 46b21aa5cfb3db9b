package tpmroot_test

import (
	"bytes"
	"reflect"
	"testing"

	"hsmemu/tpmroot"
)

func sampleSealed() *tpmroot.Sealed {
	return &tpmroot.Sealed{
		Version:  tpmroot.SealedVersion,
		SRKName:  append([]byte{0x00, 0x0b}, bytes.Repeat([]byte{0x11}, 32)...),
		Public:   bytes.Repeat([]byte{0x22}, 50),
		Private:  bytes.Repeat([]byte{0x33}, 126),
		DomainID: bytes.Repeat([]byte{0x44}, 32),

		RecoveryPublic: bytes.Repeat([]byte{0x55}, 32),
		RecoveryMAC:    bytes.Repeat([]byte{0x66}, 32),
	}
}

// sampleSealedV1 is a master key sealed before PIN recovery keys.
func sampleSealedV1() *tpmroot.Sealed {
	s := sampleSealed()
	s.Version, s.RecoveryPublic, s.RecoveryMAC = 1, nil, nil
	return s
}

func TestSealedRoundTrip(t *testing.T) {
	t.Parallel()
	for _, s := range []*tpmroot.Sealed{sampleSealed(), sampleSealedV1()} {
		sealedRoundTrip(t, s)
	}
}

func sealedRoundTrip(t *testing.T, s *tpmroot.Sealed) {
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got tpmroot.Sealed
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&got, s) {
		t.Errorf("round trip: got %+v, want %+v", got, s)
	}
	// The result does not alias the input.
	b[len(b)-1] ^= 0xff
	if got.DomainID[31] != 0x44 {
		t.Error("UnmarshalBinary result aliases its input")
	}
}

func TestSealedRejects(t *testing.T) {
	t.Parallel()
	good, err := sampleSealed().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":                         nil,
		"magic":                         append([]byte("XSMK"), good[4:]...),
		"version 3":                     append(append([]byte("HSMK"), 3), good[5:]...),
		"version 1 with a recovery key": append(append([]byte("HSMK"), 1), good[5:]...),
		"truncated":                     good[:len(good)-1],
		"trailing":                      append(bytes.Clone(good), 0),
		"header only":                   good[:5],
	}
	for name, b := range cases {
		var s tpmroot.Sealed
		if err := s.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: UnmarshalBinary accepted %x", name, b)
		}
	}
	bad := map[string]func(*tpmroot.Sealed){
		"version 0":              func(s *tpmroot.Sealed) { s.Version = 0 },
		"short domain id":        func(s *tpmroot.Sealed) { s.DomainID = s.DomainID[:31] },
		"no private":             func(s *tpmroot.Sealed) { s.Private = nil },
		"no public":              func(s *tpmroot.Sealed) { s.Public = nil },
		"long name":              func(s *tpmroot.Sealed) { s.SRKName = make([]byte, 67) },
		"huge public":            func(s *tpmroot.Sealed) { s.Public = make([]byte, 70000) },
		"no recovery key":        func(s *tpmroot.Sealed) { s.RecoveryPublic = nil },
		"short recovery MAC":     func(s *tpmroot.Sealed) { s.RecoveryMAC = s.RecoveryMAC[:31] },
		"v1 with a recovery key": func(s *tpmroot.Sealed) { s.Version = 1 },
	}
	for name, edit := range bad {
		s := sampleSealed()
		edit(s)
		if b, err := s.MarshalBinary(); err == nil {
			t.Errorf("%s: MarshalBinary accepted it: %x", name, b)
		}
	}
}

// FuzzSealedUnmarshal: decoding never panics, and whatever decodes
// re-encodes to the same bytes.
func FuzzSealedUnmarshal(f *testing.F) {
	good, err := sampleSealed().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	if v1, err := sampleSealedV1().MarshalBinary(); err == nil {
		f.Add(v1)
	}
	f.Add([]byte("HSMK\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s tpmroot.Sealed
		if err := s.UnmarshalBinary(b); err != nil {
			return
		}
		again, err := s.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %x but cannot re-encode: %v", b, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n in  %x\n out %x", b, again)
		}
	})
}
