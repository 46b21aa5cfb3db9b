package escrow

import (
	"bytes"
	"crypto"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// The files in testdata/shares were written by Split from fixtureSecret,
// 2-of-3, to the keys in testdata (generated with openssl genpkey; test keys
// that protect nothing). Share files are kept for years, so every later
// version of this package must still open these exact bytes. Regenerate them
// with -update only when the format version changes, and keep the old ones.
var update = flag.Bool("update", false, "rewrite the share files in testdata/shares")

var (
	fixtureSecret = []byte("hsmemu escrow test vector secret")
	fixtureNames  = []string{"x25519", "p256", "rsa2048"}
)

func fixturePath(name string) string {
	return filepath.Join("testdata", "shares", name+".share")
}

// fixtureFiles returns the stored share files in index order.
func fixtureFiles(t testing.TB) [][]byte {
	t.Helper()
	files := make([][]byte, len(fixtureNames))
	for i, n := range fixtureNames {
		files[i] = readTestdata(t, filepath.Join("shares", n+".share"))
	}
	return files
}

func fixtureKeys(t testing.TB) []crypto.PrivateKey {
	t.Helper()
	keys := make([]crypto.PrivateKey, len(fixtureNames))
	for i, n := range fixtureNames {
		keys[i] = fixtureKey(t, n)
	}
	return keys
}

// TestFixtures is deliberately not parallel: with -update it writes the
// files the parallel tests read, and parallel tests wait for it.
func TestFixtures(t *testing.T) {
	if *update {
		cs := make([]Custodian, len(fixtureNames))
		for i, n := range fixtureNames {
			cs[i] = fixtureCustodian(t, n)
		}
		files, meta, err := Split(fixtureSecret, 2, cs, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, f := range files {
			if err := os.WriteFile(fixturePath(fixtureNames[i]), f.File, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := meta.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", "shares", "metadata.json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var meta Metadata
	if err := meta.UnmarshalBinary(readTestdata(t, "shares/metadata.json")); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(meta, testMetadata()) {
		t.Errorf("testdata/shares/metadata.json = %+v", meta)
	}
	keys := fixtureKeys(t)
	shares := make([]*Share, len(keys))
	for i, f := range fixtureFiles(t) {
		s, err := DecryptShare(f, keys[i])
		if err != nil {
			t.Fatalf("%s: %v", fixtureNames[i], err)
		}
		if s.Index != byte(i+1) || s.Threshold != 2 || !bytes.Equal(s.DomainID, meta.DomainID) {
			t.Errorf("%s decrypted to %v", fixtureNames[i], s)
		}
		shares[i] = s
	}
	for _, pair := range [][2]int{{0, 1}, {0, 2}, {1, 2}} {
		got, err := Combine([]*Share{shares[pair[0]], shares[pair[1]]})
		if err != nil {
			t.Fatalf("Combine%v: %v", pair, err)
		}
		if !bytes.Equal(got, fixtureSecret) {
			t.Errorf("Combine%v = %q, want %q", pair, got, fixtureSecret)
		}
	}
}

// normalize is what parseShareFile forgives: CRLF line endings and white
// space around the block.
func normalize(file []byte) []byte {
	norm := bytes.ReplaceAll(file, []byte("\r\n"), []byte("\n"))
	return append(bytes.TrimSpace(norm), '\n')
}

// FuzzDecryptShare feeds mutated share files to DecryptShare with every
// fixture key. It must never panic, and it must never succeed unless the
// input is, up to normalize, one of the real files, opened with its own key.
func FuzzDecryptShare(f *testing.F) {
	real := fixtureFiles(f)
	keys := fixtureKeys(f)
	for i, file := range real {
		f.Add(file)
		f.Add(bytes.ReplaceAll(file, []byte("\n"), []byte("\r\n")))
		f.Add(editHeader(f, file, hdrIndex, "9"))
		f.Add(editHeader(f, file, hdrThreshold, "3"))
		f.Add(editHeader(f, file, hdrDomain, string(bytes.Repeat([]byte("0"), 64))))
		f.Add(editHeader(f, file, hdrCustodian, "mallory"))
		f.Add(editHeader(f, file, hdrFingerprint, fixtureCustodian(f, fixtureNames[(i+1)%3]).Fingerprint()))
		f.Add(editBody(f, file, func(b []byte) []byte { b[len(b)/2] ^= 1; return b }))
		f.Add(editBody(f, file, func(b []byte) []byte { return b[:len(b)/2] }))
		f.Add(file[:len(file)/2])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for ki, k := range keys {
			s, err := DecryptShare(data, k)
			if err != nil {
				if s != nil {
					t.Fatal("DecryptShare returned a share with an error")
				}
				continue
			}
			if !bytes.Equal(normalize(data), real[ki]) {
				t.Fatalf("a file that is not %s's share decrypted with its key:\n%q", fixtureNames[ki], data)
			}
			if s.Index != byte(ki+1) || s.Threshold != 2 || len(s.Value) != secretLen {
				t.Fatalf("%s's share decrypted to %v", fixtureNames[ki], s)
			}
		}
	})
}
