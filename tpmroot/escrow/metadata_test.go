package escrow

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func testMetadata() Metadata {
	return Metadata{
		Version:   1,
		Threshold: 2,
		DomainID:  DomainID([]byte("hsmemu escrow test vector secret")),
		Custodians: []CustodianInfo{
			{Name: "x25519", Fingerprint: "SHA256:fCMCgzEPYYWiZIRaf3/zFcLw8kukCtY3IYGChD+fmpQ", Index: 1},
			{Name: "p256", Fingerprint: "SHA256:2ZxQqZQ+sOvQBTy0ws7RiAawdacv4D3pCo55ot+dRU8", Index: 2},
			{Name: "rsa2048", Fingerprint: "SHA256:wbtxgjwpP+bye9cYzFe9hL+vMI+pVRPNqFODQMphYcY", Index: 3},
		},
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	t.Parallel()
	m := testMetadata()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Metadata
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip: got %+v, want %+v", got, m)
	}
	// The stored form is what testdata/shares/metadata.json holds.
	if want := readTestdata(t, "shares/metadata.json"); !bytes.Equal(b, want) {
		t.Errorf("MarshalBinary =\n%s\nwant\n%s", b, want)
	}
}

func TestMetadataRejected(t *testing.T) {
	t.Parallel()
	good, err := testMetadata().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("metadata has no %q", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{name: "empty", data: nil},
		{name: "not json", data: []byte("version=1")},
		{name: "version 2", data: edit(`"version": 1`, `"version": 2`)},
		{name: "threshold 0", data: edit(`"threshold": 2`, `"threshold": 0`)},
		{name: "threshold above n", data: edit(`"threshold": 2`, `"threshold": 4`)},
		{name: "short domain", data: edit(`"domain_id": "`, `"domain_id": "00`)},
		{name: "domain not hex", data: edit(`"domain_id": "`, `"domain_id": "zz`)},
		{name: "index 0", data: edit(`"index": 1`, `"index": 0`)},
		{name: "index 256", data: edit(`"index": 1`, `"index": 256`)},
		{name: "duplicate index", data: edit(`"index": 1`, `"index": 2`)},
		{name: "duplicate name", data: edit(`"name": "p256"`, `"name": "x25519"`)},
		{name: "duplicate key", data: edit(`wbtxgjwpP+bye9cYzFe9hL+vMI+pVRPNqFODQMphYcY`, `2ZxQqZQ+sOvQBTy0ws7RiAawdacv4D3pCo55ot+dRU8`)},
		{name: "bad fingerprint", data: edit(`SHA256:wbtx`, `SHA1:wbtx`)},
		{name: "bad name", data: edit(`"name": "p256"`, `"name": "p256\n"`)},
		{name: "unknown field", data: edit(`"version": 1`, `"version": 1, "secret": "x"`)},
		{name: "trailing data", data: append(bytes.Clone(good), "{}"...)},
		{name: "no custodians", data: []byte(`{"version":1,"threshold":1,"domain_id":"` + strings.Repeat("00", 32) + `","custodians":[]}`)},
		{name: "huge", data: append(bytes.Clone(good), bytes.Repeat([]byte(" "), maxMetadata)...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := Metadata{Version: 42}
			err := m.UnmarshalBinary(tt.data)
			if err == nil {
				t.Fatalf("UnmarshalBinary succeeded: %+v", m)
			}
			t.Log(err)
			if m.Version != 42 {
				t.Error("UnmarshalBinary modified its receiver on error")
			}
		})
	}
	if _, err := (Metadata{}).MarshalBinary(); err == nil {
		t.Error("MarshalBinary of empty metadata succeeded")
	}
}

// FuzzMetadataUnmarshal checks that UnmarshalBinary never panics, and that
// whatever it accepts is valid: it marshals again, and reads back the same.
func FuzzMetadataUnmarshal(f *testing.F) {
	good, err := testMetadata().MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"version":1,"threshold":1,"domain_id":"` + strings.Repeat("ab", 32) +
		`","custodians":[{"name":"a","fingerprint":"SHA256:` + strings.Repeat("A", 43) + `","index":255}]}`))
	f.Add(bytes.Replace(good, []byte(`"index": 1`), []byte(`"index": 1e0`), 1))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"VERSION":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Metadata
		if err := m.UnmarshalBinary(data); err != nil {
			return
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted metadata does not marshal: %v", err)
		}
		var m2 Metadata
		if err := m2.UnmarshalBinary(b); err != nil {
			t.Fatalf("marshalled metadata does not unmarshal: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the metadata: %+v, %+v", m, m2)
		}
		b2, err := m2.MarshalBinary()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("MarshalBinary is not stable: %v", err)
		}
	})
}
