package keystore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"reflect"
	"testing"
)

func sampleDump() *Dump {
	return &Dump{Engine: EnginePostgres, SchemaVersion: 1, DomainID: bytes.Repeat([]byte{0xd0}, 32), Created: 1_700_000_000,
		Tables: []DumpTable{
			{Name: "root", Columns: []string{"id", "sealed", "escrow"}, Rows: [][]any{{int64(1), []byte{1, 2, 3}, nil}}},
			{Name: "tokens", Columns: []string{"id", "label", "mac"}, Identity: "id", IdentityLast: 9,
				Rows: [][]any{{int64(1), "a", []byte{}}, {int64(-5), "", bytes.Repeat([]byte{9}, 300)}}},
			{Name: "empty", Columns: []string{"x"}},
		}}
}

func encodeDump(t testing.TB, d *Dump) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := d.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo reports %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

// TestDumpRoundTrip: what WriteTo writes, ParseDump reads back the same,
// NULL and empty bytes kept apart.
func TestDumpRoundTrip(t *testing.T) {
	d := sampleDump()
	got, err := ParseDump(encodeDump(t, d))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("read back\n%#v\nwrote\n%#v", got, d)
	}
}

// TestDumpDamaged: every byte flipped and every cut is refused, not read
// as something else; a file that is no dump says so.
func TestDumpDamaged(t *testing.T) {
	b := encodeDump(t, sampleDump())
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x01
		if _, err := ParseDump(c); err == nil {
			t.Fatalf("byte %d flipped: read", i)
		}
	}
	for n := range len(b) {
		if _, err := ParseDump(b[:n]); err == nil {
			t.Fatalf("cut at %d: read", n)
		}
	}
	if _, err := ParseDump([]byte("SQLite format 3\x00")); !errors.Is(err, ErrNotDump) {
		t.Fatalf("an SQLite file: %v", err)
	}
}

// FuzzParseDump: whatever parses writes back byte for byte (one encoding
// per dump), and nothing panics. The checksum is made right on the
// fuzzer's input so that the parser behind it is what is fuzzed.
func FuzzParseDump(f *testing.F) {
	f.Add(encodeDump(f, sampleDump()))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !IsDump(b) {
			b = append([]byte(dumpMagic), b...)
		}
		b = withChecksum(b)
		d, err := ParseDump(b)
		if err != nil {
			return
		}
		if again := encodeDump(t, d); !bytes.Equal(again, b) {
			t.Fatalf("parsed, and wrote back differently")
		}
	})
}

// withChecksum is b with its last 32 bytes replaced by the checksum of
// the rest (or appended, if shorter).
func withChecksum(b []byte) []byte {
	body := b
	if len(b) >= 32+len(dumpMagic) {
		body = b[:len(b)-32]
	}
	sum := sha256Sum(body)
	return append(bytes.Clone(body), sum[:]...)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }
